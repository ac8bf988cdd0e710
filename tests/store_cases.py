"""Store checks shared by the unit tests (local folder) and the integration tests (SeaweedFS):
the same assertions on both backends."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from backend.core.store import Conflict, RecordLog, Store, StoreSettings


def check_objects(store: Store) -> None:
    assert store.get("t/a.json") is None
    store.put("t/a.json", b"1")
    store.put("t/a.json", b"2")
    assert store.get("t/a.json") == b"2"
    assert store.put_new("t/b/c.json", b"first") is True
    assert store.put_new("t/b/c.json", b"second") is False
    assert store.get("t/b/c.json") == b"first"
    assert store.keys("t") == ["t/a.json", "t/b/c.json"]
    assert store.keys("t", after="t/a.json") == ["t/b/c.json"]
    assert store.children("t") == ["a.json", "b"]
    assert store.keys("none") == [] and store.children("none") == []
    stamps = store.stamps("t")
    assert sorted(stamps) == ["t/a.json", "t/b/c.json"] and store.stamps("t") == stamps
    store.put("t/a.json", b"3")  # rewritten, the same size
    again = store.stamps("t")
    assert again["t/a.json"] != stamps["t/a.json"]
    assert again["t/b/c.json"] == stamps["t/b/c.json"] and store.stamps("none") == {}
    store.delete("t/a.json")
    store.delete("t/a.json")  # gone already: no error
    assert store.keys("t") == ["t/b/c.json"]
    for bad in ("../x", "/abs", "a//b", "a/./b", "a b"):
        with pytest.raises(ValueError):
            store.get(bad)


def check_record_log(store: Store) -> None:
    log = RecordLog(store, "log/x")
    assert log.read() == [] and log.last == 0
    assert log.append({"n": 1}) == 1 and log.append({"n": 2}) == 2
    other = RecordLog(store, "log/x")  # a second reader, as on another node
    assert other.read() == [{"n": 1}, {"n": 2}]
    with pytest.raises(Conflict):
        other.append({"n": "late"}, after=1)
    assert other.append({"n": 3}, after=2) == 3
    assert log.read() == [{"n": 1}, {"n": 2}, {"n": 3}]
    with pytest.raises(ValueError):
        log.prune(keep=0)  # numbering goes on from the last record: it stays
    assert log.prune(keep=1) == 2
    assert RecordLog(store, "log/x").read() == [{"n": 3}]
    assert log.append({"n": 4}) == 4


def _writer(cfg: dict, writer: int, n: int, q) -> None:
    store = Store.open(StoreSettings.model_validate(cfg))
    log = RecordLog(store, "race")
    q.put([log.append({"writer": writer, "i": i}) for i in range(n)])


def check_concurrent_appends(cfg: StoreSettings, writers: int = 4, n: int = 40) -> None:
    """Writers in separate processes append at once: every record lands under its own number,
    none overwritten, none lost."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(cfg.model_dump(mode="json") | {
        "secret_key": cfg.secret_key.get_secret_value() if cfg.secret_key else None},
        w, n, q)) for w in range(writers)]
    for p in procs:
        p.start()
    seqs = [s for _ in procs for s in q.get(timeout=300)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(seqs) == list(range(1, writers * n + 1))
    records = RecordLog(Store.open(cfg), "race").read()
    assert sorted((r["writer"], r["i"]) for r in records) == [
        (w, i) for w in range(writers) for i in range(n)]
