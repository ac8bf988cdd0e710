"""The analytics history's retention (backend/analytics/cycle.py): snapshots and health
probes older than `analytics.history_days` go, a running experiment's probes stay."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from backend.analytics.cycle import history_start, prune_history
from backend.core.layout import Keys
from backend.core.store import Store

END = pd.Timestamp("2026-12-06T12:00:00Z")


def test_snapshots_and_probes_before_the_cut_go_and_the_rest_stay(tmp_path):
    store = Store.local(tmp_path)
    days = [40, 31, 30, 2, 0]  # days before END
    for d in days:
        at = END - pd.Timedelta(days=d)
        store.put_json(Keys.snapshot(at.strftime("%Y%m%dT%H%M%SZ")), {"d": d})
        store.log(Keys.probes).append({"ts": at.isoformat(), "ok": True})
    store.put_json(Keys.latest_snapshot, {"d": 0})
    cut = history_start(END, 30, None)
    assert cut == END - pd.Timedelta(days=30)
    assert prune_history(store, cut) == (2, 2)
    left = [store.get_json(k)["d"] for k in store.keys(Keys.snapshots) if k.endswith(".json")]
    assert sorted(left) == [0, 2, 30] and store.get_json(Keys.latest_snapshot) == {"d": 0}
    probes = Store.local(tmp_path).log(Keys.probes)  # as another process reads it
    assert [pd.Timestamp(r["ts"]) for r in probes.read()] == [
        END - pd.Timedelta(days=d) for d in (30, 2, 0)]
    assert prune_history(store, cut) == (0, 0)  # nothing more to go


def test_the_newest_probe_stays_and_a_running_experiment_keeps_its_own(tmp_path):
    store = Store.local(tmp_path)
    for d in (50, 45):
        store.log(Keys.probes).append({"ts": (END - pd.Timedelta(days=d)).isoformat()})
    assert prune_history(store, history_start(END, 30, None)) == (0, 1)
    assert len(store.log(Keys.probes).read()) == 1  # the log numbers on from it
    started = datetime(2026, 10, 1, tzinfo=UTC)
    assert history_start(END, 30, started) == pd.Timestamp(started)
    assert history_start(END.tz_localize(None), 1, None) == END - pd.Timedelta(days=1)
