"""docs/configuration.md is generated from Settings and must match it."""

from __future__ import annotations

from pathlib import Path

from backend.core.settings import Settings
from backend.ops.configdoc import render, rows


def test_configuration_reference_matches_settings():
    committed = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert committed == render(), "run `reco config-doc > docs/configuration.md`"


def test_every_leaf_setting_is_listed_once():
    names = [r[0] for r in rows(Settings)]
    assert len(names) == len(set(names))
    for section in ("KAFKA", "SERVE", "SCHEDULE", "TRAIN", "SIM", "ANALYTICS", "RAY"):
        assert any(n.startswith(f"RECO_{section}__") for n in names)
    assert "RECO_SCHEDULE__RETRAIN_INTERVAL" in names and "RECO_KAFKA__EMBEDDED_TLS" in names
