"""The window every snapshot component shares: masks, flattened items, arms, exposure."""

from __future__ import annotations

import math

import numpy as np

from tests.unit.analytics_cases import reco_log, watches, window


def test_window_masks_items_and_arms():
    reco = reco_log([(90, 1, "A", [1, 2]),  # before the window
                     (30, 1, "B", [3]),  # user 1's latest in the window: B
                     (50, 1, "A", [4, 5, 6]),
                     (10, 2, "A", [9])])  # item 9 is not in the catalog: added to it
    win = window(reco, watches([(5, 1, 3), (70, 2, 1)]))
    assert win.in_win.tolist() == [False, True, True, True]
    assert win.lengths.tolist() == [2, 1, 3, 1]
    assert win.row.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert win.positions.tolist() == [0, 1, 0, 0, 1, 2, 0]
    assert win.catalog.tolist() == [1, 2, 3, 4, 5, 6, 9]
    assert win.catalog[win.item_idx].tolist() == reco.items.tolist()
    assert win.variants == ["A", "B"]
    assert win.arm.to_dict() == {1: "B", 2: "A"}
    assert len(win.watch_in) == 1 and len(win.watch_upto) == 2
    assert win.mask(reco, "A").tolist() == [False, False, True, True]
    assert win.mask(reco, "all").tolist() == win.in_win.tolist()


def test_exposure_counts_slots_and_discounts_by_rank():
    reco = reco_log([(10, 1, "A", [1, 2]), (20, 2, "A", [2, 1]), (30, 3, "B", [3])])
    win = window(reco)
    exp = win.exposure(win.mask(reco, "A"))
    assert exp.counts.tolist() == [2, 2, 0, 0, 0, 0]
    # item 1 at ranks 1 and 2, item 2 at ranks 2 and 1: 1 + 1/log2(3) each
    assert np.allclose(exp.weighted[:2], 1 + 1 / math.log2(3)) and exp.weighted[2:].sum() == 0


def test_an_empty_log_gives_an_empty_window():
    from backend.analytics.window import served
    from tests.unit.analytics_cases import ratings

    reco = reco_log([])
    win = window(reco)
    assert len(win.in_win) == 0 and win.variants == [] and win.arm.empty
    assert win.exposure(win.in_win).counts.tolist() == [0.0] * 6
    assert served(reco, win, 3).exposure("all").counts.tolist() == [0.0] * 6
    frame = ratings([(5.0, 1, 2, 5), (5.0, 1, 3, 5), (5.0, 2, 2, 5)])
    assert win.unprompted(reco, frame).tolist() == [True] * 3


def test_traffic_minutes_count_the_minutes_with_a_response():
    # minutes before the end of a 60-minute window: 30 and 29.9 share the window's minute 30,
    # 90 is before it; three distinct minutes remain (rates are taken over them)
    reco = reco_log([(90, 1, "A", [1]), (30, 1, "A", [1]), (29.9, 2, "B", [2]),
                     (10, 3, "A", [3]), (0.5, 4, "A", [4])])
    assert window(reco).traffic_minutes(reco) == 3
    quiet = reco_log([(90, 1, "A", [1])])
    assert window(quiet).traffic_minutes(quiet) == 0


def test_unprompted_is_the_set_definition_on_random_logs(monkeypatch):
    """`unprompted` against the plain set of (user, item) pairs recommended before the
    window's end: random logs with repeated pairs, raters never served, responses after the
    end, ids beyond the catalog and one heavy rater (many clashing cells), the probes in
    several chunks."""
    from backend.analytics import window as window_module
    from tests.unit.analytics_cases import ratings

    monkeypatch.setattr(window_module, "PROBE_CHUNK", 97)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        big = 10**12 if seed == 4 else 0  # ids beyond int32: the wide probes
        rows = [(float(rng.uniform(-30, 120)), int(rng.integers(1, 40)) + big, "A",
                 [int(i) + big for i in rng.integers(1, 60, rng.integers(0, 6))])
                for _ in range(300)]
        rows.append((5.0, 7 + big, "A", [i + big for i in range(1, 200)]))  # a heavy rater
        reco = reco_log(rows)
        frame = ratings([(5.0, int(rng.integers(1, 45)) + big, int(rng.integers(1, 70)) + big,
                          5) for _ in range(400)]
                        + [(5.0, 7 + big, int(i) + big, 5) for i in rng.integers(1, 400, 150)])
        win = window(reco)
        before = reco.ts < win.end
        shown = {(int(reco.user[r]), int(i)) for r in range(len(reco)) if before[r]
                 for i in reco.items[reco.offsets[r]:reco.offsets[r + 1]]}
        want = [(int(u), int(i)) not in shown
                for u, i in zip(frame["user_id"], frame["item_id"], strict=True)]
        assert win.unprompted(reco, frame).tolist() == want
        assert win.unprompted(reco, frame.iloc[:0]).tolist() == []


def test_positions_by_table_and_by_search_agree():
    from backend.analytics.window import positions

    rng = np.random.default_rng(1)
    catalog = np.unique(rng.integers(0, 500, 200))
    items = rng.integers(-5, 600, 1000)
    for cat in (catalog, catalog + 10**12):  # a table; ids too large for one: a search
        idx, known = positions(cat, items + (cat[0] - catalog[0]))
        want = np.isin(items, catalog)
        assert known.tolist() == want.tolist()
        assert (cat[idx[known]] == (items + (cat[0] - catalog[0]))[known]).all()


def test_arm_of_users_is_the_latest_response_by_a_sort():
    """Per user the variant of their latest response in the mask, the later in the log of
    two at one time: the reference sorts the window by time."""
    from backend.analytics.window import arm_of_users, rank_weights

    rng = np.random.default_rng(4)
    rows = [(float(rng.integers(0, 20)), int(rng.integers(1, 30)), str(rng.choice(["A", "B"])),
             [1]) for _ in range(500)]  # minutes on a grid: many ties
    reco = reco_log(rows)
    mask = rng.random(len(reco)) < 0.7
    idx = np.flatnonzero(mask)
    order = idx[np.argsort(reco.ts[idx], kind="stable")][::-1]
    users, first = np.unique(reco.user[order], return_index=True)
    want = {int(u): reco.names[reco.code[order[f]]] for u, f in zip(users, first, strict=True)}
    assert arm_of_users(reco, mask).to_dict() == want
    assert arm_of_users(reco, np.zeros(len(reco), bool)).empty
    ranks = rng.integers(0, 50, 1000)
    np.testing.assert_allclose(rank_weights(ranks), 1.0 / np.log2(ranks + 2.0), rtol=1e-15)


def test_flattened_is_repeat_and_arange():
    from backend.analytics.window import flattened

    rng = np.random.default_rng(2)
    for lengths in (rng.integers(0, 4, 200), np.zeros(5, int), np.array([3]), np.array([0, 2]),
                    np.zeros(0, int)):
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        row, pos = flattened(offsets)
        want_row = np.repeat(np.arange(len(lengths)), lengths)
        assert row.tolist() == want_row.tolist()
        assert pos.tolist() == (np.arange(int(offsets[-1])) - offsets[:-1][want_row]).tolist()


def test_served_counts_and_exposure_are_the_masked_ones(monkeypatch):
    """`served`: per (window, arm) counts as masking the log would give, and the last
    window's exposure as `LogWindow.exposure` of the arm's mask; both ways of counting
    (per rank, and with weights when the cells would not fit)."""
    from backend.analytics import window as window_module

    rng = np.random.default_rng(6)
    # lists of one length are counted per rank column whatever the limit
    for regular, limit in ((False, 1 << 26), (False, 1), (True, 1 << 26)):
        rows = [(float(rng.uniform(-10, 200)), int(rng.integers(1, 20)),
                 str(rng.choice(["A", "B", "C"])) if r < 250 else "C",
                 [int(i) for i in rng.integers(1, 9, 4 if regular else rng.integers(0, 7))])
                for r in range(300)]
        reco = reco_log(rows)
        win = window(reco, minutes=30)
        first = win.end - 6 * win.length
        monkeypatch.setattr(window_module, "RANK_BINS", limit)
        out = window_module.served(reco, win, 6)
        assert out.arms == win.variants
        for w in range(6):
            lo, hi = first + w * win.length, first + (w + 1) * win.length
            when = (reco.ts >= lo) & (reco.ts < hi)
            for a, v in enumerate([*win.variants, "all"]):
                mask = when if v == "all" else when & reco.arm(v)
                want = np.bincount(win.item_idx[mask[win.row]], minlength=len(win.catalog))
                assert out.counts[w, a].tolist() == want.tolist()
        for v in [*win.variants, "all"]:
            ref = win.exposure(win.mask(reco, v))
            got = out.exposure(v)
            assert got.counts.tolist() == ref.counts.tolist()
            np.testing.assert_allclose(got.weighted, ref.weighted, rtol=1e-12)
