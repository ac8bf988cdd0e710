"""The analytics engine: lake events -> one `Snapshot` of every responsible-ML figure.

`AnalyticsLogic.snapshot` is pure (frames in, typed snapshot out). It cuts the window once
(`window.LogWindow`: the flattened-item arrays, the users' arms) and hands it to one component
per section: fairness, tail, feedback (echo chamber), spam, experiment (A/B), SLA, drift.
The metric definitions live in `backend.ml.metrics.*`; the components only select windows
and groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd

from backend.analytics import drift, experiment, fairness, feedback, sla, spam, tail
from backend.analytics.snapshot import Counts, Snapshot, Spam, Window
from backend.analytics.window import LogWindow, RecoLog, served
from backend.core.memory import reused_heap
from backend.core.settings import AnalyticsSettings
from registry.experiments import Experiment as ExperimentRecord

__all__ = ["AnalyticsLogic", "RecoLog"]


class AnalyticsLogic:
    """Snapshots under one configuration. The experiment section reads `experiment` (the
    running one; see experiment.py) or, without one, the window under the
    default split: `variants`' first two share the users as `split` (the first's share),
    changed at `split_changes` (the audit trail's split events)."""

    def __init__(self, cfg: AnalyticsSettings, split: float = 0.5,
                 split_changes: Sequence[pd.Timestamp] = (),
                 variants: Sequence[str] = ("A", "B"),
                 experiment: ExperimentRecord | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.split_changes = list(split_changes)
        self.variants = list(variants)
        self.experiment = experiment

    def snapshot(self, reco: RecoLog, watch: pd.DataFrame, rating: pd.DataFrame,
                 items: pd.DataFrame, users: pd.DataFrame, end: pd.Timestamp,
                 probes: pd.DataFrame | None = None) -> Snapshot:
        """Every figure for the window [end - window, end)."""
        cfg = self.cfg
        with reused_heap(), ThreadPoolExecutor(1, thread_name_prefix="spam") as pool:
            win = LogWindow.of(reco, watch, rating, items, cfg.window_minutes, end)
            # the spam section (its similarity products release the GIL) on the second core
            # while the others run: every section only reads the window
            spam_section = pool.submit(lambda: spam.compute(
                cfg, win.rating_in, win.rating_before[["item_id", "rating"]],
                win.unprompted(reco, win.rating_in)))
            return self._sections(reco, win, items, users, probes, spam_section)

    def _sections(self, reco: RecoLog, win: LogWindow, items: pd.DataFrame,
                  users: pd.DataFrame, probes: pd.DataFrame | None,
                  spam_section: Future[Spam]) -> Snapshot:
        cfg = self.cfg
        counted = served(reco, win, cfg.echo_windows)  # the echo's windows, the last this one
        exposure = {v: counted.exposure(v) for v in [*win.variants, "all"]}
        fair = fairness.compute(cfg, reco, win, exposure, items, users)
        return Snapshot(
            window=Window(start=str(pd.Timestamp(win.start, tz="UTC")),
                          end=str(pd.Timestamp(win.end, tz="UTC")),
                          minutes=cfg.window_minutes),
            counts=Counts(recommendations=int(win.in_win.sum()),
                          recommended_items=int(win.lengths[win.in_win].sum()),
                          watches=len(win.watch_in), ratings=len(win.rating_in),
                          users=len(win.arm), catalog=len(win.catalog),
                          traffic_minutes=win.traffic_minutes(reco)),
            fairness=fair,
            tail=tail.compute(cfg, win, exposure),
            echo=feedback.compute(cfg, reco, win, counted),
            spam=spam_section.result(),
            ab=experiment.compute(cfg, self.split, reco, win, fair, self.split_changes,
                                  arms=self.variants, record=self.experiment, probes=probes),
            sla=sla.compute(reco, win, probes),
            drift=drift.compute(win))
