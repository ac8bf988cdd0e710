"""Bootstrap history: publish MovieLens-100K ratings (and one derived watch per rating).

Event ids are derived from (user, item, time), so running the bootstrap twice lands nothing
twice. The derived watch is a full viewing (`fraction` 1.0); MovieLens has no runtimes, so
`minutes` is a nominal 100.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid

import pandas as pd

from backend.core.logs import setup_logging
from backend.core.settings import Settings
from backend.data.events import EVENT_NAMESPACE
from backend.data.kafka import EventProducer, ensure_topics
from backend.data.lake import Lake
from backend.data.movielens import load

log = logging.getLogger(__name__)
NOMINAL_MINUTES = 100.0


def history_events(ratings: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Rating and watch records for MovieLens ratings, with deterministic event ids."""
    ts = ratings["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
    users, items, stars = (ratings[c].tolist() for c in ("user_id", "item_id", "rating"))
    rates, watches = [], []
    for u, i, r, t in zip(users, items, stars, ts, strict=True):
        base = f"ml100k/{u}/{i}/{t}"
        rates.append({"event_id": str(uuid.uuid5(EVENT_NAMESPACE, "rating/" + base)), "ts": t,
                      "user_id": u, "item_id": i, "rating": r})
        watches.append({"event_id": str(uuid.uuid5(EVENT_NAMESPACE, "watch/" + base)), "ts": t,
                        "user_id": u, "item_id": i, "minutes": NOMINAL_MINUTES,
                        "fraction": 1.0})
    return rates, watches


def publish(settings: Settings) -> dict[str, set[str]]:
    """Produce the history; returns the event ids per topic."""
    data = load(settings.data_cache)
    rates, watches = history_events(data.ratings)
    ensure_topics(settings.kafka)
    producer = EventProducer(settings.kafka, settings.wal_dir / "bootstrap")
    try:
        for topic, records in (("events.rating", rates), ("events.watch", watches)):
            for rec in records:
                producer.send(topic, rec)
            log.info("bootstrap published topic=%s events=%d", topic, len(records))
        producer.flush(timeout=120)
        while producer.depth:  # broker hiccup mid-publish: let the log drain
            producer.replay()
            time.sleep(1)
    finally:
        producer.close()
    return {"events.rating": {r["event_id"] for r in rates},
            "events.watch": {w["event_id"] for w in watches}}


def wait_landed(lake: Lake, ids: dict[str, set[str]], timeout: float) -> dict[str, int]:
    """Wait until the lake holds every id; returns how many are still missing per topic."""
    deadline = time.monotonic() + timeout
    while True:
        missing = {t: len(want - lake.event_ids(t, days=36500)[0]) for t, want in ids.items()}
        if not any(missing.values()) or time.monotonic() > deadline:
            return missing
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for the lake")
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings()
    ids = publish(settings)
    if args.wait:
        missing = wait_landed(Lake.open(settings), ids, args.wait)
        log.info("bootstrap landed missing=%s", json.dumps(missing))


if __name__ == "__main__":
    main()
