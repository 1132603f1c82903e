"""The shipped operations files: alert rules checked and unit-tested by promtool, the
Grafana dashboard only names metrics filter-prometheus really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from ..filter.transcripts import events
from .test_metrics import Rig

OPS = Path(__file__).resolve().parents[3] / "ops"
RULES = OPS / "prometheus" / "opensmtpd-alerts.yml"
RULE_TESTS = OPS / "prometheus" / "opensmtpd-alerts.test.yml"
DASHBOARD = OPS / "grafana" / "opensmtpd-dashboard.json"
_NAME = re.compile(r"\b(smtpd_[a-z_]+|process_[a-z_]+|up)\b")
_TABLE_NAME = re.compile(r"\b(opensmtpd_[a-z_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: apt-get install prometheus (make deps does)"
    return found


def exported_names() -> set[str]:
    rig = Rig()
    rig.feed(*[line for line in events("7.6") if line.startswith("report|")])
    rig.feed("report|0.7|1.0|smtp-in|filter-response|0123456789abcdef|helo|reject|550 no",
             "report|0.7|1.0|smtp-in|filter-response|0123456789abcdef|helo|disconnect|421 x")
    names = set()
    for line in rig.exposition().splitlines():
        if not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names | {"up"}


def test_promtool_check_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True,
                            text=True, timeout=60, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"]
              if case["exp_alerts"]}
    assert alerts == tested


def table_metric_names() -> set[str]:
    """What the table metrics export (opensmtpd.table.metrics), as scraped."""
    import os
    import subprocess
    import sys
    import tempfile

    from prometheus_client import CollectorRegistry, generate_latest

    from opensmtpd.table.metrics import ENV, Collector

    with tempfile.TemporaryDirectory() as path:
        code = ("from opensmtpd.table.metrics import TableMetrics\n"
                "m = TableMetrics('t')\n"
                "m.answered('lookup', 'alias', 'found', 0.1); m.deadline_missed('lookup', 'a')\n"
                "m.handler_raised('lookup', 'alias'); m.in_flight(1)\n"
                "for f in ('consul_synced', 'consul_stale', 'consul_entries',\n"
                "          'consul_max_staleness'): m.set(f, 1)\n"
                "for f in ('consul_errors', 'child_restarts', 'child_deadline',\n"
                "          'child_malformed'): m.count(f)\n"
                "print('ready', flush=True); import sys; sys.stdin.read()\n")
        writer = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, ENV: path},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:  # alive while scraped: its live gauges count only then
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
            registry = CollectorRegistry()
            registry.register(Collector(path))  # type: ignore[arg-type]
            text = generate_latest(registry).decode()
        finally:
            writer.communicate(timeout=60)
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_rules_and_dashboard_use_exported_metrics() -> None:
    exported = exported_names()
    tables = table_metric_names()
    assert "opensmtpd_table_requests_total" in tables
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in _NAME.findall(rule["expr"]):
                assert name in exported or f"{name}_bucket" in exported, (rule["alert"], name)
            for name in _TABLE_NAME.findall(rule["expr"]):
                assert name in tables, (rule["alert"], name)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        for name in _NAME.findall(expr):
            assert name in exported, (expr, name)
        for name in _TABLE_NAME.findall(expr):
            assert name in tables, (expr, name)
    assert any("opensmtpd_table_" in expr for expr in exprs)


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "OpenSMTPD"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    for p in dashboard["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for target in p.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job="$job"' in target["expr"]


@pytest.mark.parametrize("path", [RULES, RULE_TESTS])
def test_yaml_parses(path: Path) -> None:
    assert yaml.safe_load(path.read_text())
