"""Simulator decisions, without HTTP: seeded, skewed, affinity- and position-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from backend.core.errors import BadRequest
from backend.core.settings import SimSettings
from backend.ml.simulation import SimulatorLogic
from jobs.simulate import loopback_url

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def world(seed: int = 0):
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": np.arange(1, 101), "age": 30, "gender": "F"})
    rows = []
    for u in range(1, 101):
        n = 5 if u > 10 else 60  # ten heavy users
        for i in rng.choice(np.arange(1, 81), size=n, replace=False):
            # items 1..20 are good for everyone, 61..80 bad
            base = 4.5 if i <= 20 else (1.5 if i > 60 else 3.0)
            rows.append((u, int(i), int(np.clip(round(base + rng.normal(0, .5)), 1, 5))))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    items = pd.DataFrame({"item_id": np.arange(1, 81), "genres": [["Drama"]] * 80,
                          "year": 1999})
    return ratings, items, users


def logic(**kw) -> SimulatorLogic:
    return SimulatorLogic(*world(), SimSettings(rank=4, **kw))


def test_seeded_runs_are_identical():
    a, b = logic(seed=3), logic(seed=3)
    assert [a.next_user() for _ in range(50)] == [b.next_user() for _ in range(50)]
    ra = a.react(5, list(range(1, 11)), NOW)
    rb = b.react(5, list(range(1, 11)), NOW)
    assert ra == rb


def test_activity_is_skewed_and_bots_are_more_active():
    sim = logic(bot_share=0.05, bot_activity=6)
    assert len(sim.bots) == 5 and all(sim.is_bot(b) for b in sim.bots)
    visits = pd.Series([sim.next_user() for _ in range(20000)]).value_counts()
    heavy = visits.reindex(range(1, 11)).mean()
    light = visits.reindex(range(11, 101)).mean()
    assert heavy > 5 * light
    assert visits.reindex(sim.bots).mean() > 3 * light


def test_watches_follow_affinity_and_position():
    sim = logic(seed=1)
    good, bad = list(range(1, 11)), list(range(71, 81))
    w_good = sum(len(sim.react(u, good, NOW).watches) for u in range(11, 101))
    sim.watched.clear()
    w_bad = sum(len(sim.react(u, bad, NOW).watches) for u in range(11, 101))
    assert w_good > 2 * w_bad
    sim.watched.clear()
    first = last = 0
    for u in range(11, 101):
        for w in sim.react(u, good, NOW).watches:
            first += w["item_id"] == good[0]
            last += w["item_id"] == good[-1]
    assert first > last
    r = sim.react(11, list(range(1, 21)), NOW)
    assert all(1 <= x["rating"] <= 5 for x in r.ratings)
    assert {x["item_id"] for x in r.ratings} <= {x["item_id"] for x in r.watches}
    again = sim.react(11, [w["item_id"] for w in r.watches], NOW)
    assert not again.watches  # nobody watches the same film twice


def test_bots_push_targets_with_fillers_and_truth_is_recorded():
    sim = logic(bot_share=0.03, bot_targets=2, bot_fillers=5)
    bot = int(sim.bots[0])
    first = sim.bot_ratings(bot, NOW)
    pushed = [r for r in first if r["item_id"] in set(sim.targets.tolist())]
    assert len(pushed) == 2 and all(r["rating"] == 5 for r in pushed)
    assert len(first) <= 7
    second = sim.bot_ratings(bot, NOW)
    assert not {r["item_id"] for r in second} & {r["item_id"] for r in first}
    truth = sim.ground_truth()
    assert truth["bots"] == sim.bots.tolist() and truth["targets"] == sim.targets.tolist()


def test_released_items_are_new_and_get_affinity():
    sim = logic()
    a, b = sim.release_item(NOW), sim.release_item(NOW)
    assert a["item_id"] == 81 and b["item_id"] == 82 and a["genres"] == ["Drama"]
    assert np.isfinite(sim.prefs.affinity(3, 81))
    assert sim.ground_truth()["released"] == [81, 82]
    assert np.isfinite(sim.prefs.affinity(3, 99999))  # an id it never saw


def test_only_loopback():
    assert loopback_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert loopback_url("http://localhost:1") == "http://localhost:1"
    for bad in ("http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:80"):
        with pytest.raises(BadRequest):
            loopback_url(bad)
