#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (`kubectl kustomize` output) offline.

Every document is checked against a schema, none is skipped:
  - built-in kinds with kubernetes-validate in strict mode (unknown fields are errors) against
    the Kubernetes version given (--kubernetes-version, default 1.28);
  - the custom resources used here (PodMonitor and PrometheusRule of the Prometheus Operator,
    KEDA's ScaledObject), which kubernetes-validate does not know, against the small schemas
    below: required fields, field names and types of what mnemo uses;
  - a kind in neither is an error.
Then mnemo's own rules for its pods: the securityContext docs/deploy.md promises, probes,
resources, a termination grace period longer than the preStop sleep plus MNEMO_SHUTDOWN_GRACE
(the drain arithmetic), and the TLS and tenant settings (security_rules: probes on the health
listener once the main one speaks TLS, Secrets read-only, the files the server re-reads on
volumes the kubelet updates); and for an Ingress in front of TLS replicas, GRPCS with a client
certificate (ingress_rules). Tests: tests/deploy/test_validate_manifests.py.
  deploy/tools/validate_manifests.py [--kubernetes-version V] RENDERED.yaml ...
"""
import argparse
import re
import sys

import jsonschema
import kubernetes_validate.utils as kv
import yaml

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_STRMAP = {"type": "object", "additionalProperties": _STR}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}


def _obj(properties, required=(), extra=False):
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": extra}


_METADATA = _obj({"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP},
                 ["name"])
_SELECTOR = _obj({"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}})
_RELABEL = _obj({"action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop",
                                     "labelkeep", "lowercase", "uppercase", "keepequal",
                                     "dropequal"]},
                 "sourceLabels": _STRS, "separator": _STR, "targetLabel": _STR, "regex": _STR,
                 "modulus": {"type": "integer"}, "replacement": _STR})
_RULE = {"oneOf": [
    _obj({"record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"}, "expr": _STR,
          "labels": _STRMAP}, ["record", "expr"]),
    _obj({"alert": _STR, "expr": _STR, "for": _DURATION, "keep_firing_for": _DURATION,
          "labels": _STRMAP, "annotations": _STRMAP}, ["alert", "expr"]),
]}
_BEHAVIOR = {"type": "object"}  # autoscaling/v2 HPA behavior: checked by Kubernetes itself

CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _obj({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _obj({
            "selector": _SELECTOR,
            "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": _STRS}),
            "jobLabel": _STR,
            "podTargetLabels": _STRS,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _obj({
                "port": _STR, "path": _STR, "scheme": {"enum": ["http", "https"]},
                "interval": _DURATION, "scrapeTimeout": _DURATION,
                "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": _RELABEL},
                "metricRelabelings": {"type": "array", "items": _RELABEL},
            }, ["port"])},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _obj({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _obj({"groups": {"type": "array", "minItems": 1, "items": _obj({
            "name": _STR, "interval": _DURATION, "limit": {"type": "integer"},
            "rules": {"type": "array", "minItems": 1, "items": _RULE},
        }, ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    ("keda.sh/v1alpha1", "ScaledObject"): _obj({
        "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
        "spec": _obj({
            "scaleTargetRef": _obj({"apiVersion": _STR, "kind": _STR, "name": _STR,
                                    "envSourceContainerName": _STR}, ["name"]),
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": _obj({
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": _obj({"name": _STR, "behavior": _BEHAVIOR}),
            }),
            "triggers": {"type": "array", "minItems": 1, "items": _obj({
                "type": _STR, "name": _STR,
                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                "metadata": _STRMAP,
                "authenticationRef": _obj({"name": _STR, "kind": _STR}, ["name"]),
            }, ["type", "metadata"])},
        }, ["scaleTargetRef", "triggers"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}

POD_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "Job"}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def container_env(container: dict, config_maps: dict) -> dict:
    """The container's environment: its ConfigMaps' data, then its env entries over them. An
    entry set by valueFrom is there with the value None (known to be set, not to what)."""
    env = {}
    for ref in container.get("envFrom", []):
        env.update(config_maps.get(ref.get("configMapRef", {}).get("name"), {}))
    env.update({e["name"]: e.get("value") for e in container.get("env", [])})
    return env


def _port(address: str):
    """The port of HOST:PORT, or None."""
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() else None


# Files the server re-reads while it runs (--tls-reload-interval; the auth file every second),
# and the replica token, read once at start-up.
RELOADED_FILES = ("MNEMO_TLS_CERT", "MNEMO_TLS_KEY", "MNEMO_TLS_CLIENT_CA", "MNEMO_AUTH_FILE")
FILES = RELOADED_FILES + ("MNEMO_REPLICA_TOKEN_FILE",)


def security_rules(spec: dict, container: dict, env: dict) -> list:
    """The TLS and tenant rules for one container of a pod spec; a list of problems."""
    problems = []
    name = f"container {container['name']}"
    has = env.__contains__
    if has("MNEMO_TLS_CERT") != has("MNEMO_TLS_KEY"):
        problems.append(f"{name}: MNEMO_TLS_CERT and MNEMO_TLS_KEY go together")
    if has("MNEMO_TLS_CLIENT_CA") and not has("MNEMO_TLS_CERT"):
        problems.append(f"{name}: MNEMO_TLS_CLIENT_CA needs MNEMO_TLS_CERT (the server exits)")
    if has("MNEMO_REPLICA_TOKEN_FILE") and not has("MNEMO_REPLICA_ID"):
        problems.append(f"{name}: MNEMO_REPLICA_TOKEN_FILE needs MNEMO_REPLICA_ID (the server "
                        "exits)")
    # HandOffSession needs an admin tenant's credentials: a token, or (mTLS) a certificate whose
    # subject the auth file maps to one.
    if (has("MNEMO_AUTH_FILE") and has("MNEMO_REPLICA_ID") and
            not has("MNEMO_REPLICA_TOKEN_FILE") and not has("MNEMO_TLS_CLIENT_CA")):
        problems.append(f"{name}: replicas with MNEMO_AUTH_FILE need MNEMO_REPLICA_TOKEN_FILE "
                        "(an admin tenant's token), or every hand-off is refused UNAUTHENTICATED")
    # The kubelet's gRPC probes speak plaintext only: on a TLS port they fail, forever.
    if has("MNEMO_TLS_CERT"):
        health = _port(env.get("MNEMO_HEALTH_LISTEN") or "")
        if health is None:
            problems.append(f"{name}: MNEMO_TLS_CERT without MNEMO_HEALTH_LISTEN HOST:PORT: the "
                            "kubelet's gRPC probes cannot speak TLS")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(probe, {}).get("grpc", {}).get("port")
            if health is not None and port is not None and port != health:
                problems.append(f"{name}: {probe} on port {port}, which speaks TLS "
                                f"(MNEMO_TLS_CERT): probe the health listener, port {health} "
                                "(MNEMO_HEALTH_LISTEN)")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def secret(volume):
        return "secret" in volume or any(
            "secret" in s for s in volume.get("projected", {}).get("sources", []))

    mounts = container.get("volumeMounts", [])
    for m in mounts:
        if secret(volumes.get(m["name"], {})) and m.get("readOnly") is not True:
            problems.append(f"{name}: Secret volume {m['name']} mounted at {m['mountPath']} "
                            "without readOnly: true")
    for setting in FILES:
        path = env.get(setting)
        if not path:
            continue
        # The mount that holds the file: the longest mountPath above it (a subPath mount is
        # the file itself).
        holders = [m for m in mounts
                   if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
        if not holders:
            problems.append(f"{name}: {setting}={path} is on no volume of the container")
            continue
        m = max(holders, key=lambda m: len(m["mountPath"]))
        if setting in RELOADED_FILES and ("subPath" in m or "subPathExpr" in m):
            problems.append(f"{name}: {setting}={path} is mounted with subPath ({m['name']}): "
                            "the kubelet never updates a subPath mount, so a renewed or edited "
                            "file never reaches the server; mount the volume as a directory")
    return problems


def pod_rules(doc: dict, config_maps: dict) -> list:
    """mnemo's rules for a workload's pod template; a list of problems."""
    problems = []
    spec = doc["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
        problems.append("pod securityContext: runAsNonRoot true and runAsUser 10001 expected")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext: seccompProfile RuntimeDefault expected")
    env_config = {}
    for c in spec["containers"]:
        name = f"container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation false expected")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem true expected")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop [ALL] expected")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"{name}: no {probe}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "grpc" not in c.get(probe, {}):
                problems.append(f"{name}: {probe} should use grpc.health.v1 (grpc:)")
        res = c.get("resources", {})
        for kind in ("cpu", "memory"):
            if kind not in res.get("requests", {}) or kind not in res.get("limits", {}):
                problems.append(f"{name}: resources.requests and limits need {kind}")
        for ref in c.get("envFrom", []):
            env_config.update(config_maps.get(ref.get("configMapRef", {}).get("name"), {}))
        env_config.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
        # The drain arithmetic (docs/deploy.md "Draining").
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = float(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0].endswith("sleep") else 0
        grace = _seconds(env_config.get("MNEMO_SHUTDOWN_GRACE", "30s"))
        period = spec.get("terminationGracePeriodSeconds", 30)
        if period < sleep + grace + 30:
            problems.append(f"{name}: terminationGracePeriodSeconds {period} leaves less than 30 s "
                            f"to write sessions after preStop {sleep:g} s + shutdown grace "
                            f"{grace:g} s")
        problems += security_rules(spec, c, container_env(c, config_maps))
    return problems


_INGRESS = "nginx.ingress.kubernetes.io/"


def ingress_rules(doc: dict, docs: list) -> list:
    """An ingress-nginx Ingress routing to pods whose main listener speaks TLS (MNEMO_TLS_CERT)
    must speak TLS to them, verify them and, when they require client certificates
    (MNEMO_TLS_CLIENT_CA), present one; a list of problems. Services and pods come from docs."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs
                   if d.get("kind") == "ConfigMap"}
    services = {d["metadata"]["name"]: d.get("spec", {}).get("selector") or {} for d in docs
                if d.get("kind") == "Service"}
    pods = [(d["spec"]["template"].get("metadata", {}).get("labels", {}),
             container_env(c, config_maps))
            for d in docs if d.get("kind") in POD_KINDS
            for c in d["spec"]["template"]["spec"]["containers"]]
    spec = doc.get("spec", {})
    backends = [p["backend"]["service"]["name"]
                for r in spec.get("rules", []) for p in r.get("http", {}).get("paths", [])
                if "service" in p.get("backend", {})]
    if "service" in spec.get("defaultBackend", {}):
        backends.append(spec["defaultBackend"]["service"]["name"])
    envs = [env for service in backends if services.get(service)
            for labels, env in pods if services[service].items() <= labels.items()]
    if not any("MNEMO_TLS_CERT" in env for env in envs):
        return []
    notes = doc["metadata"].get("annotations", {})
    problems = []
    if notes.get(_INGRESS + "backend-protocol") != "GRPCS":
        problems.append("routes to replicas that speak TLS (MNEMO_TLS_CERT): "
                        f"{_INGRESS}backend-protocol GRPCS expected, not "
                        f"{notes.get(_INGRESS + 'backend-protocol')}")
    if notes.get(_INGRESS + "proxy-ssl-verify") != "on":
        problems.append(f"{_INGRESS}proxy-ssl-verify \"on\" expected: without it the router takes "
                        "any certificate for a replica's")
    if (any("MNEMO_TLS_CLIENT_CA" in env for env in envs) and
            "/" not in notes.get(_INGRESS + "proxy-ssl-secret", "")):
        problems.append("routes to replicas that require client certificates "
                        f"(MNEMO_TLS_CLIENT_CA): {_INGRESS}proxy-ssl-secret NAMESPACE/NAME "
                        "expected (tls.crt, tls.key, ca.crt)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.28.0")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failures = 0
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs
                       if d.get("kind") == "ConfigMap"}
        counts = {"kubernetes-validate": 0, "custom schema": 0}
        for doc in docs:
            what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            problems = []
            try:
                if not all(key):
                    problems.append("no apiVersion or kind")
                elif key in CUSTOM_SCHEMAS:
                    jsonschema.validate(doc, CUSTOM_SCHEMAS[key])
                    counts["custom schema"] += 1
                else:
                    kv.validate(doc, args.kubernetes_version, strict=True)
                    counts["kubernetes-validate"] += 1
            except kv.SchemaNotFoundError:
                problems.append(f"{key[0]} {key[1]} is neither a Kubernetes {args.kubernetes_version}"
                                " kind nor one with a schema in deploy/tools/validate_manifests.py")
            except jsonschema.ValidationError as e:
                where = "/".join(str(p) for p in e.absolute_path)
                problems.append(f"{where}: {e.message}")
            if doc.get("kind") in POD_KINDS:
                problems += pod_rules(doc, config_maps)
            if doc.get("kind") == "Ingress":
                problems += ingress_rules(doc, docs)
            for p in problems:
                print(f"validate: {what}: {p}")
            failures += bool(problems)
        print(f"validate: {path}: {len(docs)} documents; valid: {counts['kubernetes-validate']} "
              f"by kubernetes-validate --strict {args.kubernetes_version}, "
              f"{counts['custom schema']} by custom-resource schemas")
    if failures:
        print(f"validate: {failures} invalid document(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
