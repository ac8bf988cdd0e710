"""The event lake: Parquet files under `<root>/<topic>/date=YYYY-MM-DD/`.

`date=` is the landing date (UTC, processing time), so one micro-batch is one file and a replay
never scatters history over many folders; filter on `ts` for event time. A file appears only
complete: it is written to a dot-named temp file (which readers skip), fsynced, renamed into
place and the folder fsynced. Readers: pandas (`read`), pyarrow, or Ray Data
(`ray.data.read_parquet(lake.topic_dir(topic))`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from backend.data.events import EVENT_MODELS, arrow_schema

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lake:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def topic_dir(self, topic: str) -> Path:
        if topic not in EVENT_MODELS:
            raise ValueError(f"unknown topic {topic!r}")
        return self.root / topic

    def files(self, topic: str, since: datetime | None = None) -> list[Path]:
        """Complete files of a topic, oldest landing date first; optionally only from `since`."""
        base = self.topic_dir(topic)
        if not base.exists():
            return []
        out = []
        for day in sorted(base.glob("date=*")):
            if since is not None and day.name[5:] < since.strftime("%Y-%m-%d"):
                continue
            out += sorted(p for p in day.glob("*.parquet") if not p.name.startswith("."))
        return out

    def write(self, topic: str, frame: pd.DataFrame, tag: str = "") -> Path:
        """Durably append a typed frame (model columns plus Kafka source columns) as one file."""
        schema = arrow_schema(EVENT_MODELS[topic])
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        now = datetime.now(UTC)
        day = self.topic_dir(topic) / f"date={now:%Y-%m-%d}"
        day.mkdir(parents=True, exist_ok=True)
        name = f"part-{now:%H%M%S%f}-{tag}{uuid.uuid4().hex[:8]}.parquet"
        tmp = day / f".tmp-{name}"
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, day / name)
        _fsync_dir(day)
        return day / name

    def read(self, topic: str, columns: list[str] | None = None,
             cache: Path | None = None) -> pd.DataFrame:
        """All rows of a topic as one frame (empty, with the right columns, if none)."""
        return self.read_table(topic, columns, cache).to_pandas()

    def read_table(self, topic: str, columns: list[str] | None = None,
                   cache: Path | None = None) -> pa.Table:
        """All rows of a topic as an Arrow table (list columns stay columnar).

        With `cache` (a folder), the rows read before are kept there in one consolidated
        file per topic and column set, which names the lake files it holds in its own
        metadata (one atomic file: it never holds rows without naming their source); a read
        then opens that file and only the lake files landed since. A reader that runs every
        minute thus reads one file and a minute's worth, not every micro-batch ever landed."""
        files = self.files(topic)
        schema = arrow_schema(EVENT_MODELS[topic])
        names = columns or schema.names
        if cache is None:
            return self._read_files(files, schema, names)
        key = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12]
        path = Path(cache) / f"{topic}-{key}.parquet"
        rel = {str(f.relative_to(self.root)): f for f in files}
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
            if not set(held) <= rel.keys():  # files gone (a new lake): start again
                held, table = [], empty
        known = set(held)
        new = [f for r, f in rel.items() if r not in known]
        if not new:
            return table
        table = pa.concat_tables([table, self._read_files(new, schema, names)])
        held += [str(f.relative_to(self.root)) for f in new]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
        pq.write_table(table.replace_schema_metadata({"reco.lake_files": json.dumps(held)}),
                       tmp, compression="zstd")
        os.replace(tmp, path)
        return table

    @staticmethod
    def _read_files(files: list[Path], schema: pa.Schema, names: list[str]) -> pa.Table:
        if not files:
            return schema.empty_table().select(names)
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table(
            columns=names)

    def event_ids(self, topic: str, days: int, skip: set[Path] | None = None,
                  ) -> tuple[set[str], set[Path]]:
        """Event ids landed in the last `days` landing days, from files not in `skip`: the
        ingest job's dedupe memory. Returns (ids, files read)."""
        since = datetime.now(UTC) - timedelta(days=days)
        files = [f for f in self.files(topic, since=since) if not skip or f not in skip]
        if not files:
            return set(), set()
        table = ds.dataset([str(f) for f in files], format="parquet").to_table(
            columns=["event_id"]
        )
        return set(table.column("event_id").to_pylist()), set(files)

    def stats(self) -> dict[str, dict[str, object]]:
        """Rows, files and newest event time per topic (row counts from Parquet footers)."""
        out: dict[str, dict[str, object]] = {}
        for topic in EVENT_MODELS:
            files = self.files(topic)
            rows = _rows(files)
            newest = None
            if files:
                ts = ds.dataset([str(f) for f in files], format="parquet").to_table(
                    columns=["ts"]
                ).column("ts")
                newest = pa.compute.max(ts).as_py() if len(ts) else None
            out[topic] = {"rows": rows, "files": len(files), "newest_ts": newest}
        return out

    def count(self, topic: str) -> int:
        return _rows(self.files(topic))


def _rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
