"""config/monitoring/: the alert rules pass promtool, and every vxgate metric that the rules and
the dashboard use is one vxgate really exports (a renamed metric would silently never fire)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from salmon_app.metrics import Metrics

from test_quarantine import ROOT

MONITORING = os.path.join(ROOT, "config", "monitoring")
RULES = os.path.join(MONITORING, "vxgate.rules.yml")
DASHBOARD = os.path.join(MONITORING, "vxgate-dashboard.json")


def exported_names(vxgate):
    """Every sample name vxgate exports: the registry's counters and histograms, and a live scrape."""
    from prometheus_client import generate_latest
    running = vxgate()
    text = generate_latest(running.gateway.metrics.registry).decode()
    names = set(re.findall(r"^(vxgate_\w+?)(?:\{| )", text, re.M))
    names.update(re.findall(r"^# TYPE (vxgate_\w+) gauge", text, re.M))      # gauges without samples yet
    for family in Metrics().registry.collect():
        names.update(sample.name for sample in family.samples)
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def used_names(text):
    return set(re.findall(r"\b(vxgate_\w+)", text))


def test_rules_and_dashboard_use_only_exported_metrics(vxgate):
    names = exported_names(vxgate)
    rules = open(RULES).read()
    dashboard = json.load(open(DASHBOARD))
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for used in sorted(used_names(rules) | used_names(exprs)):
        assert used in names, "%s is not a metric vxgate exports" % used


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout + result.stderr


def test_readme_lists_every_metric(vxgate):
    readme = open(os.path.join(ROOT, "README.md")).read()
    from prometheus_client import generate_latest
    running = vxgate()
    text = generate_latest(running.gateway.metrics.registry).decode()
    for name in set(re.findall(r"^# TYPE (vxgate_\w+) ", text, re.M)):
        assert "`%s`" % name in readme, name
