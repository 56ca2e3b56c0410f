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
resources, and a termination grace period longer than the preStop sleep plus
MNEMO_SHUTDOWN_GRACE (the drain arithmetic).
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
