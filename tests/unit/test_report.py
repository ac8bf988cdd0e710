"""`reco report` on fixture data: every section, its numbers equal to the snapshot's."""

from __future__ import annotations

import json
import re

from backend.analytics.snapshot import Snapshot
from backend.core.settings import Settings
from backend.ops.report import SECTIONS, write_report
from tests.unit.test_dashboard import var  # noqa: F401  (the fixture)


def test_report_has_every_section_with_the_snapshots_numbers(var, tmp_path):  # noqa: F811
    settings = Settings(var_dir=var)
    snap = Snapshot.model_validate_json((var / "analytics" / "latest.json").read_text())
    paths = write_report(settings, tmp_path / "out", pdf=False)
    page = paths["html"].read_text()
    assert "<script src" not in page and "http://" not in page.replace(
        "http://www.w3.org", "")  # self-contained: no script or resource fetched
    blocks = dict(re.findall(r'<script type="application/json" id="data-(\w+)">(.*?)</script>',
                             page, flags=re.S))
    assert list(blocks) == list(SECTIONS)
    for key in SECTIONS:
        assert f'<section id="{key}">' in page
    dump = json.loads(snap.model_dump_json())
    numbers = {k: json.loads(v.replace("<\\/", "</")) for k, v in blocks.items()}
    assert numbers["fairness"] == dump["fairness"]
    assert numbers["feedback"] == {"echo": dump["echo"], "tail": dump["tail"]}
    assert numbers["ab"] == dump["ab"] and numbers["security"]["spam"] == dump["spam"]
    assert set(numbers["models"]["models"]) == {"A", "B"}
    assert numbers["models"]["models"]["A"]["production"]["variant"] == "A"
    assert page.count("<svg") >= 3  # charts drawn as inline SVG
    assert json.loads(paths["json"].read_text())["sections"] == numbers
