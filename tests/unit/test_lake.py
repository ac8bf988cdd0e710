from __future__ import annotations

import uuid

import pandas as pd
import pytest

from backend.data.batch import validate
from backend.data.events import RatingEvent
from backend.data.lake import Lake


def rating_frame(n: int, offset: int = 0) -> pd.DataFrame:
    recs = [{"event_id": str(uuid.uuid4()), "ts": "2024-01-01T00:00:00Z", "user_id": i + 1,
             "item_id": 5, "rating": 3} for i in range(n)]
    frame = validate(RatingEvent, recs).valid.drop(columns="_pos")
    frame["kafka_partition"] = 0
    frame["kafka_offset"] = range(offset, offset + n)
    return frame


def test_write_read_roundtrip_and_stats(tmp_path):
    lake = Lake(tmp_path)
    a, b = rating_frame(3), rating_frame(2, offset=3)
    lake.write("events.rating", a)
    lake.write("events.rating", b)
    back = lake.read("events.rating")
    assert len(back) == 5 and set(back["event_id"]) == set(a["event_id"]) | set(b["event_id"])
    assert str(back["ts"].dtype) == "datetime64[us, UTC]"
    stats = lake.stats()
    assert stats["events.rating"]["rows"] == 5 and stats["events.rating"]["files"] == 2
    assert str(stats["events.rating"]["newest_ts"]).startswith("2024-01-01")
    assert stats["events.watch"] == {"rows": 0, "files": 0, "newest_ts": None}
    ids, files = lake.event_ids("events.rating", days=1)
    assert ids == set(back["event_id"]) and len(files) == 2
    assert lake.event_ids("events.rating", days=1, skip=files) == (set(), set())


def test_partial_files_are_invisible(tmp_path):
    lake = Lake(tmp_path)
    path = lake.write("events.rating", rating_frame(2))
    (path.parent / ".tmp-part-crashed.parquet").write_bytes(b"PAR1 half written")
    assert lake.count("events.rating") == 2
    assert len(lake.read("events.rating")) == 2
    assert not list(path.parent.glob(".tmp-*.parquet"))[0].name.endswith(path.name)


def test_empty_topic_reads_typed_empty_frame(tmp_path):
    frame = Lake(tmp_path).read("events.watch")
    assert frame.empty and "minutes" in frame.columns


def test_unknown_topic_refused(tmp_path):
    with pytest.raises(ValueError):
        Lake(tmp_path).read("events.nope")


def test_cached_read_equals_a_full_read_and_reads_only_new_files(tmp_path, monkeypatch):
    lake, cache = Lake(tmp_path / "lake"), tmp_path / "cache"
    cols = ["event_id", "user_id", "ts"]
    assert lake.read("events.rating", cols, cache=cache).empty  # nothing landed yet
    lake.write("events.rating", rating_frame(3))
    first = lake.read("events.rating", cols, cache=cache)
    lake.write("events.rating", rating_frame(2, offset=3))
    read = []
    real = Lake._read_files
    monkeypatch.setattr(Lake, "_read_files", staticmethod(
        lambda files, *a: read.append(len(files)) or real(files, *a)))
    second = lake.read("events.rating", cols, cache=cache)
    assert read == [1]  # only the file landed since the cache was written
    full = lake.read("events.rating", cols)
    read.clear()
    assert len(first) == 3 and sorted(second["event_id"]) == sorted(full["event_id"])
    assert second.dtypes.equals(full.dtypes)
    assert lake.read("events.rating", cols, cache=cache)["event_id"].is_unique and read == []
    other = lake.read("events.rating", ["event_id"], cache=cache)  # its own column set
    assert len(other) == 5 and list(other.columns) == ["event_id"]


def test_cache_of_another_lake_or_broken_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    old = Lake(tmp_path / "old")
    old.write("events.rating", rating_frame(4))
    assert len(old.read("events.rating", ["event_id"], cache=cache)) == 4
    new = Lake(tmp_path / "new")  # the cache names files this lake does not have
    new.write("events.rating", rating_frame(1))
    assert len(new.read("events.rating", ["event_id"], cache=cache)) == 1
    for f in cache.glob("*.parquet"):
        f.write_bytes(b"not parquet")
    assert len(new.read("events.rating", ["event_id"], cache=cache)) == 1
