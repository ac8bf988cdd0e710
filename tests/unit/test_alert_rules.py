"""The shipped alerting rules: valid for promtool, unit-tested by promtool on series that must
and must not raise each alert, reading only series the platform exports, and the scrape
config equal to what `reco up` renders for the default settings."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from backend.analytics.cycle import GAUGE_NAMES
from backend.core.settings import AnalyticsSettings, Settings
from backend.ops.alerting import DEPLOY, RULES, render
from backend.serving.metrics import COUNTERS, GAUGES, LATENCY

PROMTOOL = shutil.which("promtool")  # Debian's prometheus package; `make test` installs it


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool missing: apt-get install prometheus"
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True,
                          timeout=120)


def test_rules_and_config_pass_promtool():
    for args in (("check", "rules", "rules.yml"), ("check", "config", "prometheus.yml"),
                 ("test", "rules", "rules_test.yml")):
        out = promtool(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)


def test_promtool_tests_can_fail(tmp_path):
    """The rule tests are not vacuous: a rule that never fires fails them."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "SpamFlagged":
                rule["expr"] = "max(ray_reco_analytics_spam_flagged) > 1000"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(DEPLOY / "rules_test.yml", tmp_path)
    out = subprocess.run([str(PROMTOOL), "test", "rules", "rules_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "SpamFlagged" in out.stdout + out.stderr


def test_every_alert_the_issue_names_reads_series_the_platform_exports():
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"]}
    assert set(rules) == {"EchoChamberRising", "TailStarvation", "SampleRatioMismatch",
                          "SpamFlagged", "ModelRefused", "LatencyP95AboveObjective",
                          "BrokerDegraded"}
    exported = {f"ray_reco_analytics_{n}" for n in GAUGE_NAMES} | set(COUNTERS) | set(GAUGES)
    exported |= {f"{LATENCY[0]}_bucket"}
    for name, rule in rules.items():
        series = set(re.findall(r"\b(ray_reco_\w+|reco_\w+)", rule["expr"]))
        assert series and series <= exported, (name, series - exported)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_latency_rule_holds_the_sla_objective():
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                if r["alert"] == "LatencyP95AboveObjective")
    objective_s = AnalyticsSettings().sla_p95_ms / 1000
    assert rule["expr"].endswith(f"> {objective_s:g}")


def test_the_shipped_scrape_config_is_the_default_rendering(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("RECO_"):
            monkeypatch.delenv(key)
    assert (DEPLOY / "prometheus.yml").read_text() == render(Settings(_env_file=None))
