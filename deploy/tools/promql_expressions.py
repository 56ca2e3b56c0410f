#!/usr/bin/env python3
"""Every PromQL expression mnemo's deployment files hand to Prometheus, ready to evaluate.

Sources: the rules file (deploy/prometheus/mnemo-rules.yml: recording and alerting rules), the
Grafana dashboard (deploy/kubernetes/monitoring/grafana-dashboard.json: each panel target and
query variable), prometheus-adapter's rules (deploy/kubernetes/autoscaling/
prometheus-adapter-values.yaml: each metricsQuery) and KEDA's triggers
(deploy/kubernetes/autoscaling/keda/scaledobject.yaml). Template syntax is replaced by valid
PromQL: Grafana's $__rate_interval / $__interval → 1m, $__range → 1h, any other variable
($instance, ${instance}, ${instance:regex}, [[instance]]) → .*, label_values(metric, label) →
metric; the adapter's <<.Series>> → the series' name, <<.LabelMatchers>> → pod=~".*",
<<.GroupBy>> → pod.

  deploy/tools/promql_expressions.py     one JSON object per line: {"source", "where", "expr"}

Importable (the replica tests evaluate each expression against a real Prometheus):
  from deploy.tools.promql_expressions import expressions
  for e in expressions(): ...  # dicts with keys source, where, expr
"""
import json
import pathlib
import re
import sys
from typing import Iterator, Optional

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = "deploy/prometheus/mnemo-rules.yml"
DASHBOARD = "deploy/kubernetes/monitoring/grafana-dashboard.json"
ADAPTER = "deploy/kubernetes/autoscaling/prometheus-adapter-values.yaml"
KEDA = "deploy/kubernetes/autoscaling/keda/scaledobject.yaml"

_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
_GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", re.S)


def grafana_to_promql(expr: str) -> str:
    """`expr` with Grafana's variables and functions replaced by valid PromQL."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return _INTERVALS.get(name, ".*")
    expr = _GRAFANA_VAR.sub(sub, expr)
    m = _LABEL_VALUES.match(expr)
    return m.group(1) if m else expr


def adapter_to_promql(query: str, series: str) -> str:
    """A prometheus-adapter metricsQuery template as PromQL for one series name."""
    return (query.replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'pod=~".*"')
            .replace("<<.GroupBy>>", "pod"))


def _rules(root: pathlib.Path) -> Iterator[dict]:
    doc = yaml.safe_load((root / RULES).read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            kind, name = ("record", rule["record"]) if "record" in rule else ("alert", rule["alert"])
            yield {"source": RULES, "where": f"group {group['name']}, {kind} {name}",
                   "expr": rule["expr"].strip()}


def _panels(panels: list) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard(root: pathlib.Path) -> Iterator[dict]:
    dash = json.loads((root / DASHBOARD).read_text(encoding="utf-8"))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query
        yield {"source": DASHBOARD, "where": f"variable {var['name']}",
               "expr": grafana_to_promql(query)}
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield {"source": DASHBOARD,
                       "where": f"panel {panel.get('id')} \"{panel.get('title', '')}\", "
                                f"target {target.get('refId', '?')}",
                       "expr": grafana_to_promql(target["expr"])}


def _adapter(root: pathlib.Path) -> Iterator[dict]:
    values = yaml.safe_load((root / ADAPTER).read_text(encoding="utf-8"))
    for rule in values["rules"]["custom"]:
        series = re.match(r"\s*([A-Za-z_:][\w:]*)", rule["seriesQuery"]).group(1)
        yield {"source": ADAPTER, "where": f"rule {rule['name']['as']}, seriesQuery",
               "expr": rule["seriesQuery"]}
        yield {"source": ADAPTER, "where": f"rule {rule['name']['as']}, metricsQuery",
               "expr": adapter_to_promql(rule["metricsQuery"], series)}


def _keda(root: pathlib.Path) -> Iterator[dict]:
    obj = yaml.safe_load((root / KEDA).read_text(encoding="utf-8"))
    for trigger in obj["spec"]["triggers"]:
        if trigger["type"] == "prometheus":
            yield {"source": KEDA, "where": f"trigger {trigger.get('name', '?')}",
                   "expr": trigger["metadata"]["query"].strip()}


def expressions(root: Optional[pathlib.Path] = None) -> list:
    """Every expression, as dicts {"source": repository path, "where": place in it, "expr"}."""
    root = pathlib.Path(root) if root is not None else ROOT
    out = []
    for source in (_rules, _dashboard, _adapter, _keda):
        out.extend(source(root))
    return out


def main() -> int:
    for e in expressions():
        print(json.dumps(e, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
