"""Kafka -> Ray ingest job -> lake, on the real embedded broker and a real Ray cluster."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from kafka import KafkaProducer

from backend.data.kafka import EventProducer, ensure_topics

pytestmark = pytest.mark.integration
TS = "2024-03-01T12:00:00Z"


def valid_events(n: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"events.rating": [], "events.watch": [], "events.reco": []}
    for i in range(n):
        user = i % 50 + 1
        base = {"event_id": str(uuid.uuid4()), "ts": TS, "user_id": user}
        kind = i % 3
        if kind == 0:
            out["events.rating"].append(base | {"item_id": i % 97 + 1, "rating": i % 5 + 1})
        elif kind == 1:
            out["events.watch"].append(base | {"item_id": i % 97 + 1, "minutes": 30.0,
                                               "fraction": 0.4})
        else:
            out["events.reco"].append(base | {"request_id": str(uuid.uuid4()), "variant": "A",
                                              "model_version": "v1", "items": [1, 2, 3],
                                              "latency_ms": 2.5})
    return out


INVALID = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b"null",
    json.dumps({"user_id": 1}).encode(),  # missing fields
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": 1, "item_id": 2,
                "rating": 11}).encode(),  # out of range
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": -5, "item_id": 2,
                "rating": 3}).encode(),  # negative id
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": 10**12, "item_id": 2,
                "rating": 3}).encode(),  # absurd id
    json.dumps({"event_id": str(uuid.uuid4()), "ts": "2999-01-01T00:00:00Z", "user_id": 1,
                "item_id": 2, "rating": 3}).encode(),  # future
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": 1, "item_id": 2,
                "rating": "5"}).encode(),  # wrong type
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": 1, "item_id": 2,
                "rating": 5, "admin": True}).encode(),  # unknown field
    json.dumps({"event_id": str(uuid.uuid4()), "ts": TS, "user_id": 1, "item_id": 2,
                "rating": 5, "pad": "x" * 40000}).encode(),  # oversized
]


def topic_values(platform) -> list[bytes]:
    """Every message value on the three event topics, oldest first per partition (read
    without a group until a poll comes back empty: no end offsets on this broker)."""
    from kafka import TopicPartition

    from backend.data.kafka import consumer

    c = consumer(platform.settings.kafka, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(t, p) for t in ("events.rating", "events.watch", "events.reco")
             for p in range(platform.settings.kafka.partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    values: list[bytes] = []
    empty = 0
    while empty < 3:
        batch = c.poll(timeout_ms=1000)
        empty = 0 if batch else empty + 1
        values += [r.value for recs in batch.values() for r in recs]
    c.close()
    return values


def lake_ids(platform, topic: str) -> list[str]:
    return platform.lake.read(topic, columns=["event_id"])["event_id"].tolist()


def test_mixed_stream_lands_distinct_valid_and_dead_letters_the_rest(platform, tmp_path):
    events = valid_events(300)
    producer = KafkaProducer(**platform.settings.kafka.client_config(), acks="all")
    rng = random.Random(7)
    sent = 0
    for topic, records in events.items():
        for rec in records:
            producer.send(topic, json.dumps(rec).encode(), key=str(rec["user_id"]).encode())
            sent += 1
        for rec in rng.sample(records, 20):  # deliberate duplicates (same event_id)
            producer.send(topic, json.dumps(rec).encode(), key=str(rec["user_id"]).encode())
    for i, raw in enumerate(INVALID * 3):
        topic = ("events.rating", "events.watch", "events.reco")[i % 3]
        producer.send(topic, raw, key=b"1")
    producer.flush()
    producer.close()
    m_invalid = len(INVALID) * 3

    # course-format producers: two good lines and one unparseable line
    lines = tmp_path / "lines.log"
    lines.write_text("2024-03-01T12:00:00,7,GET /rate/33=4\n"
                     "2024-03-01T12:00:05,7,GET /data/m/33/12.mpg\n"
                     "2024-03-01T12:00:09,7,GET /rate/33=oops\n")
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "produce", str(lines))
    assert out.returncode == 0 and "produced=2 refused=1" in out.stdout, out.stderr

    platform.ingest_once()

    for topic, records in events.items():
        got = lake_ids(platform, topic)
        want = {r["event_id"] for r in records}
        if topic in ("events.rating", "events.watch"):
            assert len(got) == len(want) + 1  # plus the course line
            assert want < set(got)
        else:
            assert set(got) == want
        assert len(got) == len(set(got)), f"duplicates in {topic}"
    dlq = platform.lake.read("events.dlq")
    assert len(dlq) == m_invalid + 1
    assert set(dlq["source_topic"]) == {"events.rating", "events.watch", "events.reco",
                                        "course-lines"}
    assert dlq["error"].str.len().gt(0).all()
    assert dlq["error"].str.contains("oversized").sum() == 3
    assert dlq["error"].str.contains("malformed JSON").sum() == 6

    # the lake's table files are readable by Ray Data as well as pandas
    script = ("import json, ray, sys; ray.init(); "
              "print(ray.data.read_parquet(json.loads(sys.argv[1])).count())")
    out = platform.run(sys.executable, "-c", script,
                       json.dumps(platform.lake.files("events.reco")))
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == len(events["events.reco"])

    # the job's counts reach Prometheus through Ray's metrics agent
    url = f"http://127.0.0.1:{platform.head.cfg.metrics_export_port}/metrics"

    def invalid_count() -> float:
        text = httpx.get(url, timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ray_reco_ingest_invalid_total{"))

    platform.wait_for(lambda: invalid_count() >= m_invalid, 60, "ingest metrics")

    # operators see the reasons and can replay them: the raw messages go back to their source
    # topics, where the ingest job would validate them again (checked on the topics: back to
    # back drains of one group have their own test below)
    listing = platform.run(sys.executable, "-m", "backend.ops.cli", "dlq", "list")
    assert listing.returncode == 0 and f"{m_invalid + 1}  total" in listing.stdout
    assert "malformed JSON" in listing.stdout
    before = topic_values(platform)
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "dlq", "replay", "--contains",
                       "malformed JSON", "--yes")
    assert out.returncode == 0 and "replayed 6 dead letters" in out.stdout, out.stderr
    replayed = Counter(topic_values(platform)) - Counter(before)
    # the DLQ keeps raw payloads as text: bytes that are not UTF-8 come back replaced
    assert replayed == {INVALID[0]: 3,
                        INVALID[1].decode("utf-8", errors="replace").encode(): 3}


def test_crash_between_lake_write_and_commit_loses_and_duplicates_nothing(platform, tmp_path):
    events = valid_events(600)
    producer = EventProducer(platform.settings.kafka, tmp_path / "spool")
    for topic, records in events.items():
        for rec in records:
            producer.send(topic, rec)
    producer.close()
    assert producer.depth == 0

    marker_dir = tmp_path / "failpoints"
    # a longer idle window than the fixture's 6 s: the member Ray restarts after the crash
    # reloads its dedupe memory from the lake before it polls again (a full run once ended
    # the drain with 18 events of one topic not yet landed; the message below says more)
    out = platform.ingest_once(RECO_FAILPOINTS="ingest.after_write=1",
                               RECO_FAILPOINT_DIR=str(marker_dir), RECO_INGEST__MAX_BATCH="50",
                               RECO_INGEST__IDLE_SECONDS="12")
    assert (marker_dir / "ingest.after_write.fired").exists(), "the crash did not happen"
    for topic, records in events.items():
        got = lake_ids(platform, topic)
        missing = {r["event_id"] for r in records} - set(got)
        assert sorted(got) == sorted(r["event_id"] for r in records), (
            topic, len(missing), out.stderr[-6000:])
    stats = json.loads(out.stderr.split("ingest finished stats=")[1].splitlines()[0])
    assert sum(sum(s["deduplicated"].values()) for s in stats) > 0  # the replay was deduped


def test_broker_outage_spools_and_replays_everything(platform, tmp_path):
    platform.start_ingest()
    producer = EventProducer(platform.settings.kafka, tmp_path / "spool", flush_interval=0.5)
    first = valid_events(150)
    for topic, records in first.items():
        for rec in records:
            producer.send(topic, rec)
    producer.flush()
    # the memory broker loses what is not yet in the lake when it stops: let the lake catch up
    platform.wait_for(lambda: all(platform.lake.count(t) == 50 for t in first), 120,
                      "first batch in the lake")

    platform.broker.stop()  # memory broker: everything it held is gone
    second = valid_events(150)
    for topic, records in second.items():
        for rec in records:
            producer.send(topic, rec)
    platform.wait_for(lambda: producer.depth == 150, 60, "sends to reach the spool")
    assert producer.degraded

    platform.broker.start()
    ensure_topics(platform.settings.kafka)
    platform.wait_for(lambda: producer.depth == 0, 90, "spool replay")
    try:
        platform.wait_for(lambda: all(platform.lake.count(t) >= 100 for t in first), 120,
                          "lake catch-up")
    except AssertionError:
        log = (platform.settings.var_dir / "ingest.log").read_text()[-6000:]
        counts = {t: platform.lake.count(t) for t in first}
        raise AssertionError(f"lake {counts}; ingest log tail:\n{log}") from None
    producer.close()
    for topic in first:
        want = {r["event_id"] for r in first[topic] + second[topic]}
        got = lake_ids(platform, topic)
        assert sorted(got) == sorted(want)


def test_events_carry_utc_times_in_lake(platform):
    producer = EventProducer(platform.settings.kafka, platform.settings.wal_dir)
    producer.send("events.rating", {"event_id": str(uuid.uuid4()),
                                    "ts": datetime.now(UTC).isoformat(), "user_id": 3,
                                    "item_id": 4, "rating": 2})
    producer.close()
    platform.ingest_once()
    frame = platform.lake.read("events.rating")
    assert len(frame) == 1 and str(frame["ts"].dt.tz) == "UTC"


def _ingest_actor_pids(platform) -> list[int]:
    """Ingest actors on this test's Ray head only (its session: `ray start` runs as a session
    leader), not those of another suite on the same machine."""
    import os

    from backend.ops.procs import cmdlines

    sid = platform.head.pgid()
    pids = []
    for pid, cmd in cmdlines():
        try:
            if cmd.startswith("ray::IngestActor") and os.getsid(pid) == sid:
                pids.append(pid)
        except OSError:  # gone meanwhile
            pass
    return pids


@pytest.mark.slow
def test_repeated_kill_9_of_ingest_actors_and_job_loses_and_duplicates_nothing(platform,
                                                                                tmp_path):
    """While a stream flows: kill -9 an ingest actor at random moments, and once the whole
    job (driver and its actors); restart the job. The lake ends equal to what was produced."""
    import os
    import signal
    import threading
    import time

    rng = random.Random(11)
    events = valid_events(3000)
    producer = EventProducer(platform.settings.kafka, tmp_path / "spool")
    ordered = [(t, r) for t, recs in events.items() for r in recs]
    rng.shuffle(ordered)

    def produce() -> None:
        for i, (topic, rec) in enumerate(ordered):
            producer.send(topic, rec)
            if i % 100 == 99:
                time.sleep(1)  # about 100 events/s for 30 s
        producer.flush()

    job = platform.start_ingest(RECO_INGEST__MAX_BATCH="40")
    sender = threading.Thread(target=produce)
    sender.start()
    kills = 0
    while sender.is_alive():
        time.sleep(rng.uniform(3, 7))
        pids = _ingest_actor_pids(platform)
        if kills == 3:  # the whole job once: driver and actors
            os.killpg(job.pid, signal.SIGKILL)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            job.wait()
            job = platform.start_ingest(RECO_INGEST__MAX_BATCH="40")
        elif pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
        kills += 1
    sender.join()
    producer.close()
    assert kills >= 4 and producer.depth == 0
    want = {t: sorted(r["event_id"] for r in recs) for t, recs in events.items()}
    platform.wait_for(lambda: all(platform.lake.count(t) >= len(want[t]) for t in want), 300,
                      "the lake to catch up after the kills")
    time.sleep(10)  # anything duplicated would land now
    for topic, ids in want.items():
        assert sorted(lake_ids(platform, topic)) == ids, topic


def test_back_to_back_drains_of_one_group_each_finish_with_what_was_sent(platform):
    """`ingest --once` right after another of the same consumer group, three times, new
    events produced before each: every drain ends, and the lake holds each event once."""
    import time

    producer = EventProducer(platform.settings.kafka, platform.settings.wal_dir)
    sent: list[str] = []
    took = []
    for _ in range(3):
        for topic, records in valid_events(30).items():
            for rec in records:
                producer.send(topic, rec)
                sent.append(rec["event_id"])
        producer.flush()
        t0 = time.monotonic()
        try:
            out = platform.run(sys.executable, "-m", "jobs.ingest", "--once", timeout=120)
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
            waited = [line for line in (stderr or "").splitlines() if "waiting for" in line]
            raise AssertionError(f"drain {len(took) + 1} did not end: {waited[-3:]}") from None
        assert out.returncode == 0, out.stderr[-3000:]
        took.append(round(time.monotonic() - t0, 1))
    producer.close()
    landed = [i for t in ("events.rating", "events.watch", "events.reco")
              for i in lake_ids(platform, t)]
    assert sorted(landed) == sorted(sent), (len(landed), len(sent), took)


def test_course_lines_on_an_external_topic_land_by_slug_and_id(platform, movielens_wheel):
    """A few thousand course-format lines on an external topic (`reco ingest --course-topic`):
    rate, watch and recommendation-request lines, movies by slug and by id, land as the
    events they name; unknown slugs and other lines reach the DLQ with their reason."""
    import re
    import shutil

    from backend.data.movielens import WHEEL_NAME, load

    cache = platform.settings.data_cache
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(movielens_wheel, cache / WHEEL_NAME)
    items = load(cache).items
    # slugs written here from plain titles (no article moved, no alternate title), plus the
    # two the course's own examples name
    plain = items[~items["title"].str.contains(r"[,()]") & items["year"].notna()
                  & items["title"].map(str.isascii)]  # accents: the unit tests
    plain = plain[~plain.duplicated(["title", "year"], keep=False)]
    slugs = {int(r.item_id): "+".join(re.findall(r"[a-z0-9]+", r.title.lower()))
             + f"+{int(r.year)}" for r in plain.itertuples()}
    by_title = items.set_index("title")["item_id"]
    slugs[int(by_title["Shawshank Redemption, The"])] = "the+shawshank+redemption+1994"
    slugs[int(by_title["Usual Suspects, The"])] = "the+usual+suspects+1995"
    rng = random.Random(11)
    ids = sorted(slugs)
    lines: list[str] = []
    want: dict[str, Counter] = {"events.rating": Counter(), "events.watch": Counter(),
                                "events.course_request": Counter()}
    for i in range(3000):
        ts = f"2024-03-01T{10 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        user, item = rng.randint(1, 900), rng.choice(ids)
        movie = slugs[item] if i % 2 else str(item)
        if i % 3 == 0:
            rating = rng.randint(1, 5)
            lines.append(f"{ts},{user},GET /rate/{movie}={rating}")
            want["events.rating"][(user, item, rating)] += 1
        elif i % 3 == 1:
            minute = rng.randint(0, 120)
            lines.append(f"{ts},{user},GET /data/m/{movie}/{minute}.mpg")
            want["events.watch"][(user, item, float(minute))] += 1
        else:
            result = rng.sample(ids, 10)
            names = ", ".join(slugs[r] if rng.random() < 0.5 else str(r) for r in result)
            lines.append(f"{ts},{user},recommendation request team7.example:8082, status 200, "
                         f"result: {names}, {rng.randint(5, 900)} ms")
            want["events.course_request"][(user, tuple(result))] += 1
    unknown = [f"2024-03-02T00:00:{i:02d},5,GET /rate/no+such+film+{1950 + i}=3"
               for i in range(40)]
    other = [f"2024-03-02T00:01:{i:02d},5,GET /recommend/5" for i in range(10)]
    lines += unknown + other
    rng.shuffle(lines)

    ensure_topics(platform.settings.kafka, ["course.stream"])
    producer = KafkaProducer(**platform.settings.kafka.client_config(), acks="all")
    for line in lines:
        producer.send("course.stream", line.encode(), key=line.split(",")[1].encode())
    producer.flush()
    producer.close()
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "ingest", "--once",
                       "--course-topic", "course.stream", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    lake = platform.lake
    rating = lake.read("events.rating")
    assert Counter(zip(rating["user_id"], rating["item_id"], rating["rating"],
                       strict=True)) == want["events.rating"]
    watch = lake.read("events.watch")
    assert Counter(zip(watch["user_id"], watch["item_id"], watch["minutes"],
                       strict=True)) == want["events.watch"]
    request = lake.read("events.course_request")
    assert Counter(zip(request["user_id"], request["items"].map(tuple),
                       strict=True)) == want["events.course_request"]
    assert set(request["server"]) == {"team7.example:8082"} and request["status"].eq(200).all()
    dlq = lake.read("events.dlq")
    assert (dlq["source_topic"] == "course.stream").all() and len(dlq) == 50
    assert sorted(dlq[dlq["error"].str.startswith("unknown movie")]["raw"]) == sorted(unknown)
    assert sorted(dlq[dlq["error"].str.startswith("not a course-format")]["raw"]) == \
        sorted(other)

    # `reco topics` reads what the drain left: every record counted, all committed
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "topics", "describe",
                       "course.stream", "--count")
    assert out.returncode == 0, out.stderr[-2000:]
    head, *rows = out.stdout.strip().splitlines()
    assert head == f"course.stream partitions={platform.settings.kafka.partitions} " \
                   f"records={len(lines)}"
    for row in rows:
        fields = dict(f.split("=", 1) for f in row.split()[1:])
        assert fields["committed"] == fields["records"], row
    out = platform.run(sys.executable, "-m", "backend.ops.cli", "topics", "tail",
                       "course.stream", "--from-beginning", "-n", "5")
    shown = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(shown) == 5, out.stderr[-2000:]
    assert all(s.split(" ", 3)[3] in set(lines) for s in shown)
