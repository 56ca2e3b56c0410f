#!/usr/bin/env bash
# Checks the deployment files offline (no cluster, no Prometheus server):
#   - yamllint (.yamllint) on deploy/;
#   - `kubectl kustomize` renders every kustomization under deploy/kubernetes with kubectl 1.20
#     (Debian's kubernetes-client), and again with a newer kubectl when one is on PATH;
#   - every rendered document validated: built-in kinds by kubernetes-validate --strict against
#     Kubernetes 1.28, the custom resources (PodMonitor, PrometheusRule, ScaledObject) by schemas
#     of their own, plus the pods' security, probe, resource, drain-time and TLS rules
#     (deploy/tools/validate_manifests.py), whose tests (tests/deploy) run first;
#   - promtool check rules on deploy/prometheus/mnemo-rules.yml, and the PrometheusRule generated
#     from it up to date (deploy/tools/sync_prometheus_rule.py --check);
#   - the Grafana dashboard is valid JSON and every panel has a PromQL expression;
#   - every PromQL expression of the rules, dashboard and autoscalers
#     (deploy/tools/promql_expressions.py) parses (promtool, as recording rules).
# Installs what it needs first (tools/setup.sh deploy).
#   tools/check_deploy.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$SECONDS
tools/setup.sh deploy

py=$root/.venv/bin/python
kubectl=$root/.cache/kubernetes-client/usr/bin/kubectl
if [ ! -x "$kubectl" ]; then
  kubectl=/usr/bin/kubectl
fi
kubectl_version() { "$1" version --client -o json 2>/dev/null | "$py" -c \
  'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'; }
reference=$(kubectl_version "$kubectl")
case $reference in
  v1.20.*) ;;
  *) echo "check_deploy: $kubectl is $reference, not Debian's kubectl 1.20" >&2; exit 1 ;;
esac
renderers=("$kubectl")
other=$(command -v kubectl || true)
if [ -n "$other" ] && [ "$(kubectl_version "$other")" != "$reference" ]; then
  renderers+=("$other")
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== yamllint deploy/"
"$root/.venv/bin/yamllint" --strict -c .yamllint deploy/ .yamllint

mapfile -t dirs < <(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort)
rendered=()
for k in "${renderers[@]}"; do
  version=$(kubectl_version "$k")
  echo "== kubectl $version kustomize: ${#dirs[@]} kustomizations"
  for dir in "${dirs[@]}"; do
    file=$out/$version-$(echo "${dir#deploy/kubernetes/}" | tr / -).yaml
    if ! "$k" kustomize "$dir" >"$file" 2>"$file.err"; then
      cat "$file.err" >&2
      echo "check_deploy: kubectl $version kustomize $dir failed" >&2
      exit 1
    fi
    # Newer kustomize warns about fields kubectl 1.20's needs (bases, patchesStrategicMerge,
    # patchesJson6902).
    grep -v "^# Warning: '\(bases\|patchesStrategicMerge\|patchesJson6902\)' is deprecated" \
      "$file.err" >&2 || true
    rendered+=("$file")
  done
done

echo "== validator rules (tests/deploy)"
KUBECTL=$kubectl "$py" -m pytest -q -p no:cacheprovider tests/deploy

echo "== validate rendered manifests"
"$py" deploy/tools/validate_manifests.py --kubernetes-version 1.28.0 "${rendered[@]}" |
  sed "s#$out/##"

echo "== promtool check rules"
promtool check rules deploy/prometheus/mnemo-rules.yml
"$py" deploy/tools/sync_prometheus_rule.py --check

echo "== dashboard and PromQL expressions"
"$py" - "$out/expressions.yml" <<'PY'
import json
import sys

import yaml

from deploy.tools.promql_expressions import DASHBOARD, expressions

dash = json.load(open(DASHBOARD, encoding="utf-8"))
bad = []


def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


count = 0
for p in panels(dash["panels"]):
    if p.get("type") == "row":
        continue
    count += 1
    if not any(t.get("expr", "").strip() for t in p.get("targets", [])):
        bad.append(f"{DASHBOARD}: panel {p.get('id')} \"{p.get('title')}\" has no expression")
for line in bad:
    print(f"dashboard: {line}")
exprs = expressions()
rules = [{"record": f"mnemo_check:expression_{i}", "expr": e["expr"]} for i, e in enumerate(exprs)]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}, f)
with open(sys.argv[1] + ".where", "w", encoding="utf-8") as f:
    f.writelines(f"mnemo_check:expression_{i}: {e['source']}: {e['where']}\n"
                 for i, e in enumerate(exprs))
print(f"dashboard: {count} panels, each with an expression; {len(exprs)} PromQL expressions")
sys.exit(1 if bad else 0)
PY
if ! promtool check rules "$out/expressions.yml" >"$out/promtool.log" 2>&1; then
  cat "$out/promtool.log" >&2
  echo "check_deploy: expressions that do not parse:" >&2
  grep -o 'mnemo_check:expression_[0-9]*' "$out/promtool.log" | sort -u |
    while read -r name; do grep "^$name: " "$out/expressions.yml.where"; done >&2
  exit 1
fi
echo "promtool: every expression parses"
echo "== deploy checks passed ($((SECONDS - start)) s)"
