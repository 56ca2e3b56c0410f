#!/usr/bin/env python3
"""Writes deploy/kubernetes/monitoring/prometheus-rule.yaml from deploy/prometheus/mnemo-rules.yml.

The plain rules file is the source (promtool checks it); the PrometheusRule carries its groups
verbatim, comments included, under spec.groups. `--check` writes nothing and exits 1 when the
committed PrometheusRule differs from what this would write (tools/check_deploy.sh runs it).
  deploy/tools/sync_prometheus_rule.py [--check]
"""
import argparse
import difflib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/mnemo-rules.yml"
TARGET = ROOT / "deploy/kubernetes/monitoring/prometheus-rule.yaml"

HEADER = """\
# Generated from deploy/prometheus/mnemo-rules.yml by deploy/tools/sync_prometheus_rule.py: edit
# that file and rerun the tool. The Prometheus Operator loads it when the Prometheus's
# ruleSelector matches these labels (docs/deploy.md "Monitoring").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mnemo
  labels:
    app.kubernetes.io/name: mnemo
    app.kubernetes.io/component: monitoring
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule for a rules file: its `groups:` line and everything after, indented."""
    lines = rules_text.splitlines()
    try:
        start = lines.index("groups:")
    except ValueError:
        sys.exit(f"{RULES}: no top-level 'groups:' line")
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    want = render(RULES.read_text(encoding="utf-8"))
    if not args.check:
        TARGET.write_text(want, encoding="utf-8")
        return 0
    have = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if have == want:
        print(f"prometheus rule: {TARGET.relative_to(ROOT)} matches {RULES.relative_to(ROOT)}")
        return 0
    sys.stdout.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                               str(TARGET.relative_to(ROOT)), "generated"))
    print(f"prometheus rule: {TARGET.relative_to(ROOT)} is stale: run deploy/tools/"
          "sync_prometheus_rule.py")
    return 1


if __name__ == "__main__":
    sys.exit(main())
