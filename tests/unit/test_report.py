"""`reco report` on fixture data: every section, its numbers equal to the snapshot's."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from backend.analytics.snapshot import Snapshot
from backend.core.settings import Settings
from dashboard.report import SECTIONS, write_report
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


def test_the_report_page_writes_the_report_of_the_sidebars_range(var):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    from tests.unit.test_dashboard import PAGES

    at = AppTest.from_file(str(PAGES / "report.py"), default_timeout=120)
    at.session_state["time_range"] = "15 min"
    at.run()
    assert not at.exception and "last 15 minutes" in at.caption[0].value
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    written = list((var / "reports").glob("*/report.json"))
    assert len(written) == 1 and str(written[0].parent) in at.success[0].value
    record = json.loads(written[0].read_text())
    span = datetime.fromisoformat(record["generated"]) - datetime.fromisoformat(record["since"])
    assert timedelta(minutes=15) <= span < timedelta(minutes=16)
