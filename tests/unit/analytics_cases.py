"""Small hand-written inputs for the snapshot components' unit tests."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from backend.analytics.window import LogWindow, RecoLog

END = pd.Timestamp("2024-03-01T12:00:00Z")
# six items, one genre each except item 3; one release year, so features are genres only
ITEMS = pd.DataFrame({"item_id": [1, 2, 3, 4, 5, 6],
                      "genres": [["Drama"], ["Comedy"], ["Drama", "Comedy"], ["Horror"],
                                 ["Drama"], ["Comedy"]],
                      "year": [2000] * 6})
USERS = pd.DataFrame({"user_id": [1, 2, 3, 4], "age": [20, 30, 40, 60],
                      "gender": ["F", "M", "F", "M"]})


def ago(minutes: float) -> pd.Timestamp:
    return END - pd.Timedelta(minutes=minutes)


def reco_log(rows: list[tuple[float, int, str, list[int]]], latency: float = 10.0) -> RecoLog:
    """(minutes before END, user, variant, items) per response."""
    table = pa.table({
        "ts": pa.array([ago(m) for m, *_ in rows], pa.timestamp("us", tz="UTC")),
        "user_id": pa.array([u for _, u, _, _ in rows], pa.int64()),
        "variant": pa.array([v for _, _, v, _ in rows], pa.string()),
        "latency_ms": pa.array([latency + i for i in range(len(rows))], pa.float64()),
        "items": pa.array([items for *_, items in rows], pa.list_(pa.int64()))})
    return RecoLog.from_table(table)


def watches(rows: list[tuple[float, int, int]]) -> pd.DataFrame:
    """(minutes before END, user, item) per watch."""
    return pd.DataFrame({"ts": pd.Series([ago(m) for m, _, _ in rows],
                                         dtype="datetime64[us, UTC]"),
                         "user_id": pd.Series([u for _, u, _ in rows], dtype="int64"),
                         "item_id": pd.Series([i for _, _, i in rows], dtype="int64")})


def ratings(rows: list[tuple[float, int, int, int]]) -> pd.DataFrame:
    """(minutes before END, user, item, rating) per rating."""
    return watches([(m, u, i) for m, u, i, _ in rows]).assign(
        rating=pd.Series([r for *_, r in rows], dtype="int64"))


def window(reco: RecoLog, watch: pd.DataFrame | None = None,
           rating: pd.DataFrame | None = None, minutes: float = 60,
           items: pd.DataFrame = ITEMS) -> LogWindow:
    return LogWindow.of(reco, watches([]) if watch is None else watch,
                        ratings([]) if rating is None else rating, items, minutes, END)
