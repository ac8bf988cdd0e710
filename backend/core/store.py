"""The shared store: state that more than one node reads or writes (the registry, analytics
snapshots and probes, the quarantine, experiments and their audit, run history), by key, in
a local folder (the embedded default, `var/`) or an S3 bucket (`RECO_STORE__URI=s3://...`).

One API over both (obstore, the Python face of Rust's `object_store`). `put` replaces an
object atomically; `put_new` creates it only if absent (`If-None-Match: *` on S3, a
no-replace link locally), the one primitive the append-only `RecordLog` commits with. Keys
are `/`-separated and relative to the store's root, so the local layout under `var/` is the
key layout.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import obstore as obs
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import LocalStore, S3Store
from pydantic import BaseModel, Field, SecretStr

from backend.core.errors import ConfigError, RecoError

log = logging.getLogger(__name__)
KEY = re.compile(r"^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$")


class StoreSettings(BaseModel):
    """Where shared state lives (docs/storage.md): `var/` by default, or an S3
    bucket. With an `s3://` URI and no `endpoint`, the embedded SeaweedFS (`reco store start`,
    started by `reco up`) on `embedded_host:embedded_port`, with the credentials it generated
    in `var/keys/store.json` (0600)."""

    uri: str | None = Field(None, pattern=r"^(file:///|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])"
                            r"[A-Za-z0-9._=/%()~+-]*$", description=(
        "file:///path (default: the var folder) or s3://bucket/prefix"))
    endpoint: str | None = Field(None, pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$", description=(
        "the S3 endpoint (http://host:port); unset: the embedded SeaweedFS"))
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: SecretStr | None = None
    credentials_file: Path | None = Field(None, description=(
        "a 0600 JSON file with access_key and secret_key (default for the embedded server: "
        "var/keys/store.json)"))
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(8333, ge=1, le=65535, description="the embedded S3 port")
    timeout_s: float = Field(10.0, gt=0, le=300)

    @property
    def is_s3(self) -> bool:
        return bool(self.uri and self.uri.startswith("s3://"))

    @property
    def embedded(self) -> bool:
        """The URI points at the embedded SeaweedFS: `reco up` starts and stops it."""
        return self.is_s3 and self.endpoint is None

    @property
    def local_root(self) -> Path:
        """The folder of a `file://` URI (percent-escapes decoded: a space is `%20` there)."""
        assert self.uri is not None and not self.is_s3
        return Path(url2pathname(urlparse(self.uri).path))

    @property
    def endpoint_url(self) -> str:
        return (self.endpoint or f"http://{self.embedded_host}:{self.embedded_port}").rstrip("/")

    @property
    def bucket(self) -> str:
        assert self.is_s3 and self.uri is not None
        return self.uri.removeprefix("s3://").partition("/")[0]

    def delta_options(self) -> dict[str, str]:
        """delta-rs storage options for tables in this bucket (the lake)."""
        access, secret = self.credentials()
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": self.region,
                "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ALLOW_HTTP": str(self.endpoint_url.startswith("http://")).lower()}

    def arrow_filesystem(self) -> Any:
        """A pyarrow filesystem on this bucket (paths are `bucket/key`): for pyarrow and
        Ray Data reads of the lake's files."""
        import pyarrow.fs as pafs

        access, secret = self.credentials()
        return pafs.S3FileSystem(access_key=access, secret_key=secret, region=self.region,
                                 endpoint_override=self.endpoint_url,
                                 scheme=self.endpoint_url.split("://")[0],
                                 connect_timeout=self.timeout_s, request_timeout=self.timeout_s)

    def credentials(self) -> tuple[str, str]:
        """The access key and secret: from settings (env), or else the 0600 credentials file."""
        if self.access_key and self.secret_key is not None:
            return self.access_key, self.secret_key.get_secret_value()
        path = self.credentials_file
        if path is None or not path.exists():
            raise ConfigError(f"store {self.uri}: no credentials (set RECO_STORE__ACCESS_KEY "
                              f"and RECO_STORE__SECRET_KEY, or start the embedded server)")
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: credentials file readable by others (chmod 600 it)")
        doc = json.loads(path.read_text())
        return str(doc["access_key"]), str(doc["secret_key"])



class StoreError(RecoError):
    """The store cannot be reached or refused an operation."""

    status_code = 503


class Conflict(RecoError):
    """Another writer committed first; re-read and try again."""

    status_code = 409


class Store:
    """Objects by key under one root (see the module docstring)."""

    def __init__(self, backend: LocalStore | S3Store, uri: str,
                 root: Path | None = None) -> None:
        self._backend = backend
        self.uri = uri
        self.root = root  # the folder of a local store (None on S3)
        self._logs: dict[str, RecordLog] = {}

    @classmethod
    def local(cls, root: Path) -> Store:
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(LocalStore(root, mkdir=True), root.as_uri(), root)

    @classmethod
    def open(cls, cfg: StoreSettings) -> Store:
        """The store `cfg` names (its `uri` is set by `Settings`); one client per process and
        store (clients are thread-safe and keep their connections)."""
        assert cfg.uri is not None
        key = (cfg.uri, cfg.endpoint_url, cfg.credentials() if cfg.is_s3 else None)
        if (found := _OPEN.get(key)) is None:
            found = _OPEN[key] = cls._connect(cfg)
        return found

    @classmethod
    def _connect(cls, cfg: StoreSettings) -> Store:
        assert cfg.uri is not None
        if cfg.uri.startswith("file://"):
            return cls.local(cfg.local_root)
        bucket, _, prefix = cfg.uri.removeprefix("s3://").partition("/")
        access, secret = cfg.credentials()
        backend = S3Store(
            bucket, prefix=prefix.strip("/") or None,
            config={"endpoint": cfg.endpoint_url, "region": cfg.region,
                    "access_key_id": access, "secret_access_key": secret,
                    "virtual_hosted_style_request": False},
            client_options={"allow_http": cfg.endpoint_url.startswith("http://"),
                            "timeout": f"{cfg.timeout_s}s",
                            "connect_timeout": f"{cfg.timeout_s}s"},
            retry_config={"max_retries": 3,
                          "retry_timeout": timedelta(seconds=cfg.timeout_s * 2)})
        return cls(backend, cfg.uri)

    def log(self, prefix: str) -> RecordLog:
        """The record log under `prefix`, one per store and prefix in a process, so that
        every reader in it shares what was read already."""
        if (found := self._logs.get(prefix)) is None:
            found = self._logs[prefix] = RecordLog(self, prefix)
        return found

    def put_model(self, key: str, model: Any) -> None:
        """A pydantic model as JSON (NaN kept as Python's json writes it)."""
        self.put(key, json.dumps(model.model_dump(mode="python"), indent=1,
                                 default=str).encode())

    @property
    def is_local(self) -> bool:
        return isinstance(self._backend, LocalStore)

    # -- objects ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        try:
            return bytes(obs.get(self._backend, _key(key)).bytes())
        except (NotFoundError, FileNotFoundError):
            return None
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot read {key}: {exc}") from None

    def get_json(self, key: str) -> Any:
        data = self.get(key)
        return None if data is None else json.loads(data)

    def put(self, key: str, data: bytes) -> None:
        """Write or replace atomically: readers see the old object or the whole new one."""
        self._put(key, data, "overwrite")

    def put_json(self, key: str, obj: Any) -> None:
        self.put(key, json.dumps(obj, indent=1, default=str).encode())

    def put_new(self, key: str, data: bytes) -> bool:
        """Create only if absent; False if the key exists (another writer was first)."""
        try:
            self._put(key, data, "create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def _put(self, key: str, data: bytes, mode: str) -> None:
        try:
            obs.put(self._backend, _key(key), data, mode=mode)  # type: ignore[arg-type]
        except (AlreadyExistsError, PreconditionError):
            raise
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot write {key}: {exc}") from None

    def delete(self, key: str) -> None:
        """Remove the object (a missing one is no error)."""
        try:
            obs.delete(self._backend, _key(key))
        except (NotFoundError, FileNotFoundError):
            pass
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot delete {key}: {exc}") from None

    def keys(self, prefix: str, after: str | None = None) -> list[str]:
        """Every key under `prefix/` (recursively), sorted; with `after`, only later ones."""
        try:
            stream = obs.list(self._backend, _key(prefix) + "/", offset=after)
            return sorted(m["path"] for batch in stream for m in batch)
        except (NotFoundError, FileNotFoundError):
            return []
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot list {prefix}: {exc}") from None

    def stamps(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix/` with a stamp that changes when its object is rewritten:
        the object's entity tag (local files: inode, time and size), else size and time."""
        try:
            stream = obs.list(self._backend, _key(prefix) + "/")
            return {m["path"]: m.get("e_tag") or f"{m['size']}@{m['last_modified']}"
                    for batch in stream for m in batch}
        except (NotFoundError, FileNotFoundError):
            return {}
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot list {prefix}: {exc}") from None

    def children(self, prefix: str) -> list[str]:
        """The names one level below `prefix/` (objects and folders), sorted."""
        try:
            out = obs.list_with_delimiter(self._backend, _key(prefix) + "/")
        except (NotFoundError, FileNotFoundError):
            return []
        except (OSError, RuntimeError, obs.exceptions.BaseError) as exc:
            raise StoreError(f"store {self.uri}: cannot list {prefix}: {exc}") from None
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in out["common_prefixes"]]
        names += [m["path"].rsplit("/", 1)[-1] for m in out["objects"]]
        return sorted(set(names))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several objects at once (S3 round trips overlap)."""
        if len(keys) < 4 or self.is_local:
            return [self.get(k) for k in keys]
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(self.get, keys))


_OPEN: dict[tuple[object, ...], Store] = {}


def _seq(key: str) -> int:
    """The sequence number of a record's key (`<prefix>/000000000042.json`)."""
    return int(key.rsplit("/", 1)[-1].split(".")[0])


def _backoff(attempt: int) -> None:
    """A short random wait after losing a race, so that racing writers spread out."""
    time.sleep(random.uniform(0, 0.005 * (attempt + 1)))


def _key(key: str) -> str:
    if not KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"not a store key: {key!r}")
    return key


class RecordLog:
    """An append-only log of JSON records under `<prefix>/`, one object per record named by
    its sequence number. A record is committed by creating the next number with `put_new`,
    so concurrent writers on any node never overwrite one another; `append(..., after=n)`
    commits only if `n` is still the last record (the optimistic check-then-append that
    experiments and the quarantine make). A reader keeps what it has read, since records never
    change, and lists only keys after the last one it holds."""

    WIDTH = 12

    def __init__(self, store: Store, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self._held: list[tuple[int, Any]] = []
        self._lock = threading.Lock()  # one log object may serve several threads

    def _name(self, seq: int) -> str:
        return f"{self.prefix}/{seq:0{self.WIDTH}d}.json"

    def read(self) -> list[Any]:
        """Every record, oldest first."""
        return [rec for _, rec in self.entries()]

    def entries(self) -> list[tuple[int, Any]]:
        with self._lock:
            after = self._name(self._held[-1][0]) if self._held else None
            keys = [k for k in self.store.keys(self.prefix, after=after) if k.endswith(".json")]
            if keys:
                for key, data in zip(keys, self.store.get_many(keys), strict=True):
                    if data is None:  # listed, then gone (pruned meanwhile): read again
                        break  # next time, from here on; never skip past a record
                    self._held.append((_seq(key), json.loads(data)))
            return list(self._held)

    @property
    def last(self) -> int:
        """The last sequence number committed (0 for an empty log)."""
        entries = self.entries()
        return entries[-1][0] if entries else 0

    def append(self, record: Any, after: int | None = None, attempts: int = 50) -> int:
        """Commit `record`; returns its sequence number. With `after`, only as record
        `after + 1` (Conflict if another writer took it); without, at the next free one."""
        data = json.dumps(record, default=str).encode()
        seq = (after if after is not None else self.last) + 1
        for _ in range(attempts):
            if self.store.put_new(self._name(seq), data):
                return seq
            if after is not None:
                raise Conflict(f"{self.prefix}: record {seq} was committed by another writer")
            seq = self.last + 1
        raise StoreError(f"{self.prefix}: no free record after {attempts} attempts")

    def commit(self, decide: Callable[[list[Any]], Any | None], attempts: int = 50) -> Any:
        """Read, decide, and append what `decide` returns (None: nothing) only if no record
        was committed meanwhile; after a race, read and decide again. `decide` may raise to
        refuse; it sees every record, oldest first."""
        for attempt in range(attempts):
            entries = self.entries()
            record = decide([rec for _, rec in entries])
            if record is None:
                return None
            try:
                self.append(record, after=entries[-1][0] if entries else 0)
                return record
            except Conflict:
                _backoff(attempt)
        raise StoreError(f"{self.prefix}: still racing other writers after {attempts} tries")

    def prune(self, keep: int) -> int:
        """Delete all but the last `keep` (at least one, so numbering goes on) records, for
        logs whose readers need only recent ones; returns how many went."""
        if keep < 1:
            raise ValueError("keep at least the last record: numbering continues from it")
        entries = self.entries()
        gone = entries[:-keep]
        for seq, _ in gone:
            self.store.delete(self._name(seq))
        with self._lock:
            self._held = [e for e in self._held if e[0] > (gone[-1][0] if gone else 0)]
        return len(gone)


class Document:
    """One JSON document that writers on any node edit: each version is a record of a
    `RecordLog`, the newest is the document, and an edit commits the next version only if
    it is still the newest (else it re-reads and edits again). Old versions are pruned."""

    def __init__(self, store: Store, prefix: str, keep: int = 20) -> None:
        self.log, self.keep = RecordLog(store, prefix), keep

    def read(self) -> Any | None:
        keys = [k for k in self.log.store.keys(self.log.prefix) if k.endswith(".json")]
        for key in reversed(keys):  # the newest, unless pruned between list and get
            if (data := self.log.store.get(key)) is not None:
                return json.loads(data)
        return None

    def edit(self, change: Callable[[Any | None], Any], attempts: int = 50) -> Any:
        """Commit `change(current)` as the next version and return it; if `change` returns
        None, nothing is committed."""
        for attempt in range(attempts):
            keys = [k for k in self.log.store.keys(self.log.prefix) if k.endswith(".json")]
            last = _seq(keys[-1]) if keys else 0
            data = self.log.store.get(keys[-1]) if keys else None
            if keys and data is None:
                continue  # pruned under us: look again
            new = change(None if data is None else json.loads(data))
            if new is None:
                return None
            try:
                self.log.append(new, after=last)
            except Conflict:
                _backoff(attempt)
                continue
            for key in keys[:max(0, len(keys) + 1 - self.keep)]:  # keep the newest `keep`
                self.log.store.delete(key)
            return new
        raise StoreError(f"{self.log.prefix}: still racing other writers after {attempts} tries")
