from __future__ import annotations

import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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
    assert stats["events.rating"]["version"] == 1  # two commits: versions 0 and 1
    assert stats["events.watch"] == {"rows": 0, "files": 0, "version": None, "newest_ts": None}
    ids, files = lake.event_ids("events.rating", days=1)
    assert ids == set(back["event_id"]) and len(files) == 2
    assert lake.event_ids("events.rating", days=1, skip=files) == (set(), set())


def test_files_no_commit_names_are_invisible(tmp_path):
    """A writer that died after writing its data file and before its commit left a file the
    table's log does not name: readers never see it."""
    lake = Lake(tmp_path)
    lake.write("events.rating", rating_frame(2))
    (day,) = (tmp_path / "events.rating").glob("date=*")
    pq.write_table(pa.Table.from_pandas(rating_frame(5), preserve_index=False),
                   day / "part-00000-orphan-c000.snappy.parquet")
    assert lake.count("events.rating") == 2
    assert len(lake.read("events.rating")) == 2 and len(lake.files("events.rating")) == 1


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
    monkeypatch.setattr(Lake, "_read_files",
                        lambda self, files, *a: read.append(len(files)) or real(self, files, *a))
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


def test_writers_racing_on_one_table_lose_and_duplicate_nothing(tmp_path):
    """Four ingest actors append to one topic's table at once: every commit lands once."""
    from concurrent.futures import ThreadPoolExecutor

    lake = Lake(tmp_path)
    frames = [rating_frame(10, offset=10 * i) for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: Lake(tmp_path).write("events.rating", f), frames))
    back = lake.read("events.rating")
    assert len(back) == 240 and back["event_id"].is_unique
    assert set(back["event_id"]) == {e for f in frames for e in f["event_id"]}
    assert lake.version("events.rating") == 23  # one commit each


def test_a_version_reads_as_it_was_and_vacuum_keeps_the_versions_asked_for(tmp_path):
    from datetime import timedelta

    lake = Lake(tmp_path)
    for i in range(4):
        lake.write("events.rating", rating_frame(5, offset=5 * i))
    trained_on = lake.version("events.rating")  # a model's provenance names this
    assert trained_on == 3
    lake.write("events.rating", rating_frame(5, offset=20))
    assert len(lake.read_table("events.rating", ["event_id"], version=trained_on)) == 20
    result = lake.compact("events.rating")
    assert result["numFilesRemoved"] == 5 and len(lake.files("events.rating")) == 1
    assert len(lake.read("events.rating")) == 25
    removed = lake.vacuum("events.rating", timedelta(0), keep_versions=[trained_on])
    assert len(removed) == 1  # the fifth write's file: the kept version never named it
    assert len(lake.read_table("events.rating", ["event_id"], version=trained_on)) == 20
    with pytest.raises(OSError):  # a version neither kept nor current: its files are gone
        lake.read_table("events.rating", ["event_id"], version=trained_on + 1)
    assert len(lake.read("events.rating")) == 25


def test_vacuum_removes_files_no_commit_names_once_older_than_its_cut(tmp_path):
    """A refused commit's or a crashed writer's file goes once it is older than the cut
    (of an hour at least); a younger one (a write in progress) and every committed file
    stay."""
    import os
    import shutil
    import time
    from datetime import timedelta
    from pathlib import Path

    lake = Lake(tmp_path)
    for i in range(3):
        lake.write("events.rating", rating_frame(5, offset=5 * i))
    named = [Path(f.removeprefix("file://")) for f in lake.files("events.rating")]
    old, young = (named[0].with_name(f"orphan-{w}.parquet") for w in ("old", "young"))
    for orphan in (old, young):
        shutil.copy(named[0], orphan)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert lake.vacuum("events.rating", timedelta(0)) == []  # no cut: no file is orphaned
    removed = lake.vacuum("events.rating", timedelta(hours=1))
    assert [Path(r).name for r in removed] == [old.name]
    assert not old.exists() and young.exists() and all(p.exists() for p in named)
    assert len(lake.read("events.rating")) == 15


def test_reco_lake_compact_and_vacuum_keep_what_served_models_were_trained_on(settings,
                                                                             monkeypatch):
    from click.testing import CliRunner

    from backend.ml.recommenders import Popularity
    from backend.ops.cli import main as cli
    from registry import open_registry
    from registry.manifest import LakeProvenance
    from tests.unit.test_recommenders import dataset
    from tests.unit.test_registry import PROVENANCE

    monkeypatch.setenv("RECO_VAR_DIR", str(settings.var_dir))
    lake = Lake.open(settings)
    for i in range(4):
        lake.write("events.rating", rating_frame(5, offset=5 * i))
    registry = open_registry(settings, signer=True)
    trained = PROVENANCE.model_copy(update={"lake": LakeProvenance(
        files=4, files_sha256="0" * 64, max_offsets={}, versions={"events.rating": 3})})
    registry.promote("A", registry.register("A", Popularity().fit(*dataset()), trained))
    lake.write("events.rating", rating_frame(5, offset=20))
    runner = CliRunner()
    out = runner.invoke(cli, ["lake", "compact", "events.rating"])
    assert out.exit_code == 0 and "files removed=5 added=1" in out.output, out.output
    out = runner.invoke(cli, ["lake", "vacuum", "--older-than", "30m"])  # rounds up to 1 h
    assert "events.rating: deleted 0 files" in out.output, out.output
    out = runner.invoke(cli, ["lake", "vacuum", "--older-than", "0", "--dry-run"])
    assert "events.rating: would delete 1 files; kept versions [3]" in out.output, out.output
    out = runner.invoke(cli, ["lake", "vacuum", "--older-than", "0"])
    assert "events.rating: deleted 1 files; kept versions [3]" in out.output
    assert len(lake.read_table("events.rating", ["event_id"], version=3)) == 20
    assert runner.invoke(cli, ["lake", "vacuum", "--older-than", "soon"]).exit_code == 2
    assert runner.invoke(cli, ["lake", "compact", "events.nope"]).exit_code == 2
    stats = runner.invoke(cli, ["lake", "stats"]).output
    assert "events.rating" in stats and "25" in stats
