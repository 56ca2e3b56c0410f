"""The rules of deploy/tools/validate_manifests.py: the rendered overlays pass them, and each
rule catches the mistake it is for, made on a copy of the rendered secure overlay.
Run by tools/check_deploy.sh (kubectl 1.20 from tools/setup.sh deploy; $KUBECTL names another).
"""
import copy
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from deploy.tools import validate_manifests as vm

ROOT = pathlib.Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"


def _kubectl():
    for k in (os.environ.get("KUBECTL"), ROOT / ".cache/kubernetes-client/usr/bin/kubectl",
              shutil.which("kubectl")):
        if k and os.access(k, os.X_OK):
            return str(k)
    pytest.skip("no kubectl (tools/setup.sh deploy installs it)")


def render(overlay: str) -> list:
    out = subprocess.run([_kubectl(), "kustomize", str(OVERLAYS / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def secure_docs():
    return render("secure")


def problems(docs: list) -> list:
    """Every problem the mnemo rules find in a rendered overlay."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs
                   if d.get("kind") == "ConfigMap"}
    found = []
    for d in docs:
        if d["kind"] in vm.POD_KINDS:
            found += vm.pod_rules(d, config_maps)
        if d["kind"] == "Ingress":
            found += vm.ingress_rules(d, docs)
    return found


def _one(docs, kind):
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def server(docs):
    return _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def config(docs):
    return _one(docs, "ConfigMap")["data"]


def assert_one(docs, *words):
    found = problems(docs)
    assert len(found) == 1 and all(w in found[0] for w in words), found


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "per-pod-volumes", "secure"])
def test_overlays_pass(overlay):
    assert problems(render(overlay)) == []


def test_secure_overlay_turns_on_tls_tenants_and_health_probes(secure_docs):
    env = config(secure_docs)
    for setting in ("MNEMO_TLS_CERT", "MNEMO_TLS_KEY", "MNEMO_TLS_CLIENT_CA", "MNEMO_AUTH_FILE",
                    "MNEMO_REPLICA_TOKEN_FILE"):
        assert env[setting].startswith("/etc/mnemo/"), setting
    assert env["MNEMO_REFLECTION"] == "off"
    c = server(secure_docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == 8081
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 8081
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    notes = _one(secure_docs, "Ingress")["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probe_on_the_tls_port(secure_docs, probe):
    docs = copy.deepcopy(secure_docs)
    server(docs)[probe]["grpc"]["port"] = 50051
    assert_one(docs, probe, "50051", "8081")


def test_tls_without_health_listener(secure_docs):
    docs = copy.deepcopy(secure_docs)
    del config(docs)["MNEMO_HEALTH_LISTEN"]
    assert_one(docs, "MNEMO_HEALTH_LISTEN", "cannot speak TLS")


def test_tls_in_env_rather_than_config_map(secure_docs):
    docs = copy.deepcopy(secure_docs)
    server(docs)["env"].append({"name": "MNEMO_HEALTH_LISTEN", "value": "0.0.0.0:8082"})
    found = problems(docs)
    assert len(found) == 3 and all("port 8081" in p and "port 8082" in p for p in found), found


def test_probes_of_a_plaintext_server_may_use_the_main_port():
    docs = render("cpu")
    assert server(docs)["readinessProbe"]["grpc"]["port"] == 50051
    assert problems(docs) == []


def test_secret_volume_not_read_only(secure_docs):
    docs = copy.deepcopy(secure_docs)
    mount = next(m for m in server(docs)["volumeMounts"] if m["name"] == "tls")
    del mount["readOnly"]
    assert_one(docs, "Secret volume tls", "readOnly")


def test_projected_secret_volume_not_read_only(secure_docs):
    docs = copy.deepcopy(secure_docs)
    spec = _one(docs, "StatefulSet")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "auth")
    volume["projected"] = {"sources": [{"secret": volume.pop("secret")}]}
    mount = next(m for m in server(docs)["volumeMounts"] if m["name"] == "auth")
    mount["readOnly"] = False
    assert_one(docs, "Secret volume auth", "readOnly")


@pytest.mark.parametrize("setting,volume", [("MNEMO_AUTH_FILE", "auth"),
                                            ("MNEMO_TLS_CERT", "tls")])
def test_reloaded_file_mounted_with_sub_path(secure_docs, setting, volume):
    docs = copy.deepcopy(secure_docs)
    path = config(docs)[setting]
    mount = next(m for m in server(docs)["volumeMounts"] if m["name"] == volume)
    if volume == "tls":  # one file of the three by subPath, the others stay in the directory
        server(docs)["volumeMounts"].append(
            {"name": volume, "mountPath": path, "subPath": "tls.crt", "readOnly": True})
    else:
        mount.update(mountPath=path, subPath=pathlib.PurePath(path).name)
    assert_one(docs, setting, "subPath", "never updates")


def test_replica_token_may_be_mounted_with_sub_path(secure_docs):
    # Read once at start-up: a subPath mount loses nothing.
    docs = copy.deepcopy(secure_docs)
    path = config(docs)["MNEMO_REPLICA_TOKEN_FILE"]
    mount = next(m for m in server(docs)["volumeMounts"] if m["name"] == "replica-token")
    mount.update(mountPath=path, subPath="token")
    assert problems(docs) == []


def test_file_on_no_volume(secure_docs):
    docs = copy.deepcopy(secure_docs)
    config(docs)["MNEMO_AUTH_FILE"] = "/etc/mnemo/tenants/auth.json"
    assert_one(docs, "MNEMO_AUTH_FILE=/etc/mnemo/tenants/auth.json", "no volume")


@pytest.mark.parametrize("drop,words", [
    ("MNEMO_TLS_KEY", ("MNEMO_TLS_CERT and MNEMO_TLS_KEY go together",)),
    ("MNEMO_REPLICA_TOKEN_FILE", None),  # mTLS: the replicas' certificate may be an admin's
])
def test_tls_settings_that_go_together(secure_docs, drop, words):
    docs = copy.deepcopy(secure_docs)
    del config(docs)[drop]
    if words:
        assert_one(docs, *words)
    else:
        assert problems(docs) == []


def test_client_ca_without_certificate(secure_docs):
    docs = copy.deepcopy(secure_docs)
    for setting in ("MNEMO_TLS_CERT", "MNEMO_TLS_KEY"):
        del config(docs)[setting]
    found = problems(docs)
    assert any("MNEMO_TLS_CLIENT_CA needs MNEMO_TLS_CERT" in p for p in found), found


def test_auth_file_replicas_without_credentials_for_hand_off(secure_docs):
    docs = copy.deepcopy(secure_docs)
    for setting in ("MNEMO_REPLICA_TOKEN_FILE", "MNEMO_TLS_CLIENT_CA"):
        del config(docs)[setting]
    found = problems(docs)
    assert any("need MNEMO_REPLICA_TOKEN_FILE" in p for p in found), found


def test_replica_token_without_replica_id(secure_docs):
    docs = copy.deepcopy(secure_docs)
    c = server(docs)
    c["env"] = [e for e in c["env"] if e["name"] != "MNEMO_REPLICA_ID"]
    assert_one(docs, "MNEMO_REPLICA_TOKEN_FILE needs MNEMO_REPLICA_ID")


def test_ingress_plaintext_to_tls_replicas(secure_docs):
    docs = copy.deepcopy(secure_docs)
    _one(docs, "Ingress")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/backend-protocol"] = "GRPC"
    assert_one(docs, "backend-protocol GRPCS expected", "GRPC")


@pytest.mark.parametrize("annotation,words", [
    ("proxy-ssl-secret", ("require client certificates", "proxy-ssl-secret")),
    ("proxy-ssl-verify", ("proxy-ssl-verify", "any certificate")),
])
def test_ingress_without_client_certificate_or_verification(secure_docs, annotation, words):
    docs = copy.deepcopy(secure_docs)
    del _one(docs, "Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/"
                                                         + annotation]
    assert_one(docs, *words)


def test_ingress_to_plaintext_replicas_needs_nothing():
    assert vm.ingress_rules(_one(render("cpu"), "Ingress"), render("cpu")) == []
