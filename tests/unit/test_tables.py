"""The console's figure tables: missing figures in words, readable numbers, column help."""

from __future__ import annotations

import pandas as pd

from dashboard import data, tables
from dashboard.tables import figure


def test_missing_figures_read_as_words_not_none_or_nan():
    df = pd.DataFrame({"arm": ["B", "C"], "cuped_diff": [0.0123456, None],
                       "rows": pd.Series([100_000, None], dtype="Int64")})
    html = tables.styled(df).to_html()
    assert "not enough data" in html and "None" not in html and "nan" not in html.lower()
    assert "0.01235" in html and "100000" in html
    assert "not available" in tables.styled(df, missing="not available").to_html()


def test_figures_keep_four_significant_digits():
    assert [figure(x) for x in (3e-9, 0.5, 12.3456, 123456.7, 7, "ok", True)] == [
        "3e-09", "0.5", "12.35", "123,457", "7", "ok", "True"]


def test_every_column_of_the_figure_tables_has_help():
    """Each column of the A/B, guardrail, epoch, detector and registry tables has a text."""
    from backend.analytics import experiment
    from backend.core.settings import AnalyticsSettings
    from tests.unit.test_analytics_experiment import fair, three_arm_case
    from tests.unit.test_dashboard import snapshot

    reco, win, exp, probes = three_arm_case()
    ab = experiment.compute(AnalyticsSettings(), 0.5, reco, win, {v: fair() for v in "ABC"},
                            record=exp, probes=probes)
    snap = snapshot().model_copy(update={"ab": ab})
    frames = [data.arms_frame(snap), data.comparisons_frame(snap), data.guardrails_frame(snap),
              data.epochs_frame(snap), data.detector_frame(snap)]
    assert all(not f.empty for f in frames)
    registry = ["variant", "version", "alias", "signature", "ndcg", "coverage", "gini", "rows",
                "git", "created"]
    columns = {c for f in frames for c in f.columns} | set(registry)
    assert columns - set(tables.HELP) == set()
    assert set(tables.column_help(frames[0])) == set(frames[0].columns)
    assert tables.column_help(frames[0], {"users": "x"})["users"]["help"] == "x"
