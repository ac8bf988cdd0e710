"""The event lake: one Delta Lake table per topic under `lake/<topic>` in the shared store (a
local folder or an S3 bucket), partitioned by `date` (the landing date, UTC, processing time,
so a replay never scatters history; filter on `ts` for event time).

Why Delta (`deltalake`, delta-rs): a micro-batch is one atomic commit, from any number of
ingest actors on any node at once (each commit is created create-only, `If-None-Match` on S3;
a writer that loses the race rebases and retries); a new optional field in an event contract
merges into the table's schema (old rows read it as null, old readers never ask for it);
`compact` and `vacuum` keep the file count and the disk bounded; and a table version names the
exact rows a model was trained on (`read_table(..., version=)`), which a file list cannot
once files are compacted away (`vacuum` keeps the versions asked for). The measurements
behind the choice: docs/storage.md.

Readers: pandas (`read`), pyarrow (`read_table`), or Ray Data over `files(topic)` with
`filesystem`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from backend.data.events import EVENT_MODELS, arrow_schema

if TYPE_CHECKING:
    from backend.core.settings import Settings

log = logging.getLogger(__name__)
PARTITION = "date"
COMMIT_RETRIES = 100  # racing ingest actors rebase and retry; more than delta-rs's 15
WRITE_ATTEMPTS = 5
# checkpoints as usual, but the log is never cut back: a version a model's provenance names
# must still open (delta-rs drops log entries older than 30 days at each checkpoint)
HOOKS = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)


class Lake:
    def __init__(self, root: str | Path, storage_options: dict[str, str] | None = None,
                 filesystem: pafs.FileSystem | None = None) -> None:
        """`root`: a local folder, or `s3://bucket/prefix/lake` with the `storage_options`
        delta-rs needs and the pyarrow `filesystem` that reads its files."""
        self.root = str(root).rstrip("/")
        self.options = storage_options
        self.fs = filesystem or pafs.LocalFileSystem()
        self._tables: dict[str, DeltaTable] = {}

    @classmethod
    def open(cls, settings: Settings) -> Lake:
        """The lake of `settings`: `lake/` in the shared store."""
        cfg = settings.store
        assert cfg.uri is not None
        if not cfg.is_s3:
            return cls(cfg.local_root / "lake")
        return cls(cfg.uri.rstrip("/") + "/lake", cfg.delta_options(), cfg.arrow_filesystem())

    def table_uri(self, topic: str) -> str:
        if topic not in EVENT_MODELS:
            raise ValueError(f"unknown topic {topic!r}")
        return f"{self.root}/{topic}"

    def table(self, topic: str, version: int | None = None) -> DeltaTable | None:
        """The topic's table at its latest version (or `version`); None before its first
        write."""
        uri = self.table_uri(topic)
        if version is not None:
            return DeltaTable(uri, version=version, storage_options=self.options)
        dt = self._tables.get(topic)
        try:
            if dt is None:
                dt = self._tables[topic] = DeltaTable(uri, storage_options=self.options)
            else:
                dt.update_incremental()
        except TableNotFoundError:
            return None
        return dt

    def version(self, topic: str) -> int | None:
        dt = self.table(topic)
        return None if dt is None else dt.version()

    def files(self, topic: str, since: datetime | None = None,
              version: int | None = None) -> list[str]:
        """The table's data files (paths its `filesystem` reads), optionally only those
        landed from `since` on."""
        dt = self.table(topic, version)
        if dt is None:
            return []
        where = None if since is None else [(PARTITION, ">=", since.strftime("%Y-%m-%d"))]
        return sorted(_path(u) for u in dt.file_uris(file_pruning_predicate=where))

    def write(self, topic: str, frame: pd.DataFrame, tag: str = "") -> None:
        """Append a typed frame (model columns plus Kafka source columns) as one atomic
        commit; `tag` names the writer in the commit's metadata."""
        schema = arrow_schema(EVENT_MODELS[topic])
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        table = table.append_column(PARTITION, pa.array([day] * len(table), pa.string()))
        for attempt in range(WRITE_ATTEMPTS):
            try:
                write_deltalake(self.table_uri(topic), table, mode="append",
                                partition_by=[PARTITION], schema_mode="merge",
                                storage_options=self.options,
                                commit_properties=CommitProperties(
                                    custom_metadata={"writer": tag or "reco"},
                                    max_commit_retries=COMMIT_RETRIES),
                                post_commithook_properties=HOOKS)
                return
            except CommitFailedError as exc:  # not committed: safe to write again
                # two writers creating the table, or changing its schema, at once: the
                # loser's commit is refused whole and it writes again on what won
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.info("lake commit refused, writing again topic=%s attempt=%d error=%s",
                         topic, attempt + 1, exc)
                time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))

    def read(self, topic: str, columns: list[str] | None = None,
             cache: Path | None = None) -> pd.DataFrame:
        """All rows of a topic as one frame (empty, with the right columns, if none)."""
        return self.read_table(topic, columns, cache).to_pandas()

    def read_table(self, topic: str, columns: list[str] | None = None,
                   cache: Path | None = None, version: int | None = None) -> pa.Table:
        """All rows of a topic (at `version`, default the latest) as an Arrow table in the
        event contract's schema: a column the table gained later reads as null in older
        rows, and a column the contract no longer has is not returned.

        With `cache` (a local folder), the rows read before are kept there in one
        consolidated file per topic and column set, which names the data files it holds in
        its own metadata (one atomic file: it never holds rows without naming their
        source); a read then opens that file and only the files landed since. A reader that
        runs every minute thus reads one file and a minute's worth, not every commit ever
        landed; after a compaction it starts again."""
        files = self.files(topic, version=version)
        schema = arrow_schema(EVENT_MODELS[topic])
        names = columns or schema.names
        if cache is None:
            return self._read_files(files, schema, names)
        key = hashlib.sha256(json.dumps([self.root, names]).encode()).hexdigest()[:12]
        path = Path(cache) / f"{topic}-{key}.parquet"
        empty = schema.empty_table().select(names)
        held: list[str] = []
        table = empty
        if path.exists():
            try:
                table = pq.read_table(path)
                held = json.loads(table.schema.metadata[b"reco.lake_files"])
                table = table.replace_schema_metadata(None).cast(
                    pa.schema([schema.field(n) for n in names]))
            except (OSError, KeyError, ValueError, pa.ArrowInvalid) as exc:
                log.warning("lake cache unreadable, rebuilt path=%s error=%s", path, exc)
                held, table = [], empty
            if not set(held) <= set(files):  # files gone (compacted, a new lake): again
                held, table = [], empty
        known = set(held)
        new = [f for f in files if f not in known]
        if not new:
            return table
        table = pa.concat_tables([table, self._read_files(new, schema, names)])
        held += new
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
        pq.write_table(table.replace_schema_metadata({"reco.lake_files": json.dumps(held)}),
                       tmp, compression="zstd")
        os.replace(tmp, path)
        return table

    def _read_files(self, files: list[str], schema: pa.Schema, names: list[str]) -> pa.Table:
        if not files:
            return schema.empty_table().select(names)
        # the contract's schema: files written before a field existed read it as null
        return ds.dataset(files, schema=schema, format="parquet",
                          filesystem=self.fs).to_table(columns=names)

    def event_ids(self, topic: str, days: int, skip: set[str] | None = None,
                  ) -> tuple[set[str], set[str]]:
        """Event ids landed in the last `days` landing days, from files not in `skip`: the
        ingest job's dedupe memory. Returns (ids, files read)."""
        since = datetime.now(UTC) - timedelta(days=days)
        files = [f for f in self.files(topic, since=since) if not skip or f not in skip]
        if not files:
            return set(), set()
        table = ds.dataset(files, format="parquet", filesystem=self.fs).to_table(
            columns=["event_id"])
        return set(table.column("event_id").to_pylist()), set(files)

    def files_written_since(self, topic: str, since: datetime) -> tuple[list[str], int]:
        """The table's data files written from `since` on (by their add actions'
        modification time, the writer's clock), paths as `files` gives them, and the
        table version they are of (-1: no table yet)."""
        dt = self.table(topic)
        if dt is None:
            return [], -1
        actions = pa.table(dt.get_add_actions(flatten=True))
        cutoff = int(since.timestamp() * 1000)
        recent = {p.rsplit("/", 1)[-1] for p, t in zip(
            actions.column("path").to_pylist(), actions.column("modification_time").to_pylist(),
            strict=True) if t >= cutoff}
        return sorted(f for f in (_path(u) for u in dt.file_uris())
                      if f.rsplit("/", 1)[-1] in recent), dt.version()

    def added_since(self, topic: str, version: int) -> tuple[list[str], int]:
        """The data files the table's commits after `version` added, and its version now:
        read from those commits' log entries alone (Delta's `_delta_log/<version>.json`),
        whatever the table's size."""
        dt = self.table(topic)
        if dt is None:
            return [], -1
        now = dt.version()
        base = _path(self.table_uri(topic))
        files: list[str] = []
        for v in range(version + 1, now + 1):
            with self.fs.open_input_stream(f"{base}/_delta_log/{v:020d}.json") as fh:
                lines = fh.read().decode().splitlines()
            for line in lines:
                add = json.loads(line).get("add") if line.strip() else None
                if add is not None:
                    files.append(f"{base}/{unquote(add['path'])}")
        return files, now

    def stats(self) -> dict[str, dict[str, object]]:
        """Rows, files, table version and newest event time per topic (from the table's
        log: its per-file row counts and column statistics, no data file read)."""
        out: dict[str, dict[str, object]] = {}
        for topic in EVENT_MODELS:
            dt = self.table(topic)
            if dt is None:
                out[topic] = {"rows": 0, "files": 0, "version": None, "newest_ts": None}
                continue
            actions = pa.table(dt.get_add_actions(flatten=True))
            newest = None
            if actions.num_rows and "max.ts" in actions.column_names:
                newest = pc.max(actions.column("max.ts")).as_py()
            out[topic] = {"rows": _rows(actions), "files": actions.num_rows,
                          "version": dt.version(), "newest_ts": newest}
        return out

    def count(self, topic: str) -> int:
        dt = self.table(topic)
        return 0 if dt is None else _rows(pa.table(dt.get_add_actions(flatten=True)))

    # -- upkeep ----------------------------------------------------------------------------

    def compact(self, topic: str) -> dict[str, Any]:
        """Rewrite the small files of each landing date into large ones (one commit; older
        versions still read until `vacuum` removes their files)."""
        dt = self.table(topic)
        if dt is None:
            return {"numFilesAdded": 0, "numFilesRemoved": 0}
        return dict(dt.optimize.compact(commit_properties=CommitProperties(
            max_commit_retries=COMMIT_RETRIES), post_commithook_properties=HOOKS))

    def vacuum(self, topic: str, older_than: timedelta, keep_versions: list[int] | None = None,
               dry_run: bool = False) -> list[str]:
        """Delete files no version newer than `older_than` needs, except those of
        `keep_versions` (the versions registered models were trained on); with a cut of an
        hour or more, also files older than it that no commit names (a refused commit's, a
        crashed writer's: a write in progress is younger); returns them."""
        dt = self.table(topic)
        if dt is None:
            return []
        hours = math.ceil(older_than.total_seconds() / 3600)
        return dt.vacuum(retention_hours=hours, dry_run=dry_run,
                         enforce_retention_duration=False, full=hours >= 1,
                         keep_versions=keep_versions or None, post_commithook_properties=HOOKS)


def _rows(actions: pa.Table) -> int:
    """Rows of the data files a table's add actions list (from the log's statistics)."""
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def _path(uri: str) -> str:
    """A file URI as the lake's pyarrow filesystem names it (no scheme)."""
    return uri.removeprefix("s3://").removeprefix("file://")


class LandedIds:
    """Which of a producer's logged events the lake holds: the (topic, event_id) asked for
    that rows in table files written since a time carry (matched in Arrow: only the matches
    become Python objects, whatever the files hold), or dead letters among them (a
    write the ingest refused is accounted for too: its record names the source topic and
    keeps the raw event). Once a topic was scanned by write time, later calls read only the
    files its new commits added (an event appended after a call cannot have landed before
    it); `rescan` (events adopted from another log, which may have landed long ago), an
    earlier time than scanned, or a long gap, scan by write time again. `slack` covers the
    clocks of writers on other nodes."""

    RESCAN_COMMITS = 500  # more new commits than this: one scan of the table's file list

    def __init__(self, lake: Lake, slack: float = 600.0) -> None:
        self.lake, self.slack = lake, slack
        self._version: dict[str, int] = {}  # table version read up to, per topic
        self._from: dict[str, float] = {}  # write time the reads cover from, per topic

    def __call__(self, wanted: dict[str, set[str]], since: float, rescan: bool = False
                 ) -> set[tuple[str, str]]:
        start = since - self.slack
        if rescan:
            self._version.clear()
        out: set[tuple[str, str]] = set()
        for topic in sorted(wanted):
            ids = pa.array(sorted(wanted[topic]), pa.string())
            for table in self._new(topic, start, ["event_id"]):
                hits = table.filter(pc.is_in(table.column("event_id"), value_set=ids))
                out.update((topic, i) for i in hits.column("event_id").to_pylist())
        for table in self._new("events.dlq", start, ["source_topic", "raw"]):
            mine = table.filter(pc.is_in(table.column("source_topic"),
                                         value_set=pa.array(sorted(wanted), pa.string())))
            for source, raw in zip(mine.column("source_topic").to_pylist(),
                                   mine.column("raw").to_pylist(), strict=True):
                event_id = _raw_event_id(raw)
                if event_id is not None and event_id in wanted[source]:
                    out.add((source, event_id))
        return out

    def _new(self, topic: str, start: float, columns: list[str]) -> list[pa.Table]:
        """The given columns of the topic's files not read yet (as one table, or none)."""
        seen = self._version.get(topic)
        latest = self.lake.version(topic)
        if seen is None or start < self._from[topic] or (
                latest is not None and latest - seen > self.RESCAN_COMMITS):
            files, version = self.lake.files_written_since(topic, datetime.fromtimestamp(
                start, UTC))
            self._from[topic] = start
        else:
            files, version = self.lake.added_since(topic, seen)
        try:
            tables = [ds.dataset(files, format="parquet", filesystem=self.lake.fs).to_table(
                columns=columns)] if files else []
        except OSError:  # a file gone meanwhile (compacted and vacuumed): scan again next time
            self._version.pop(topic, None)
            raise
        self._version[topic] = version  # only once read
        return tables


def _raw_event_id(raw: str | None) -> str | None:
    """The `event_id` of a dead letter's raw JSON event, if it has one."""
    try:
        value = json.loads(raw or "")
    except ValueError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None
