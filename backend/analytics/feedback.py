"""Feedback-loop section: the echo chamber (concentration rising window after window) and
user homogenisation (Chaney et al. 2018), per arm and overall.

Each of the last `echo_windows` windows is measured on what it had:
- concentration on rarefied samples of one size in every window (volume-robust, see
  `backend.ml.metrics.feedback.rarefied_concentration`), of raw counts and of the
  position-weighted exposure, over the items released before the window's end;
- homogenisation over the watches made in the window by the users served in it, so the
  bootstrapped MovieLens history (timestamps of the 1990s) never enters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.analytics.snapshot import Echo, EchoSeries, Trend
from backend.analytics.window import LogWindow, RecoLog, Served, rank_weights, served
from backend.core.settings import AnalyticsSettings
from backend.ml.metrics import feedback as loop_metrics
from backend.ml.metrics.ranking import gini


def compute(cfg: AnalyticsSettings, reco: RecoLog, win: LogWindow,
            counted: Served | None = None) -> Echo:
    """Concentration and homogenisation per window and their trends, per arm and "all".

    Nothing is laid out per window: the counts of every (arm, window, item) come from one
    count over the flattened items, each arm's responses are grouped by window once (a
    stable sort keeps a window's slots in log order, which the seeded samples index), and
    a sample reads only the slots it draws. `counted`: `window.served` over the echo's
    windows, when the caller has it."""
    n_win = cfg.echo_windows
    first = win.end - n_win * win.length
    ends = [first + (w + 1) * win.length for w in range(n_win)]
    valid = (reco.ts >= first) & (reco.ts < win.end)
    widx = np.full(len(reco), -1, dtype=np.int64)
    widx[valid] = (reco.ts[valid] - first) // win.length
    watch = win.watch
    wvalid = (win.watch_ts >= first) & (win.watch_ts < win.end)
    watch_win = np.full(len(watch), -1, dtype=np.int64)
    watch_win[wvalid] = (win.watch_ts[wvalid] - first) // win.length
    watch_user = watch["user_id"].to_numpy(np.int64)
    watch_item = watch["item_id"].to_numpy(np.int64)
    watches = _by_window(np.flatnonzero(wvalid), watch_win, n_win)
    existing = [win.existing(e) for e in ends]
    arms = [(reco.names.index(v), v) for v in win.variants]
    counts = (counted if counted is not None else served(reco, win, n_win)).counts
    weight = rank_weights(np.arange(int(win.lengths.max()) if len(reco) else 0))

    series = {}
    for slot, (code, v) in enumerate([*arms, (-1, "all")]):
        resp = np.flatnonzero(valid if code < 0 else valid & (reco.code == code))
        per_window = _by_window(resp, widx, n_win)
        homog = [_homogenization(cfg, watch_user[watches[w]], watch_item[watches[w]],
                                 reco.user[per_window[w]], w)
                 for w in range(n_win)]
        series[v] = _series(cfg, win, reco.offsets, per_window, counts[:, slot], existing,
                            weight, homog, seed=code + 1)
    last = {v: s.homogenization[-1] for v, s in series.items()}
    return Echo(windows=n_win, variants=series, homogenization=last["all"],
                homogenization_by_variant={v: last[v] for v in win.variants})


def _by_window(rows: np.ndarray, window: np.ndarray, n_win: int) -> list[np.ndarray]:
    """`rows` (ascending) split by their `window` (0..n_win-1), each part ascending."""
    key = window[rows]
    small = np.int8 if n_win < 127 else np.int16
    order = rows[np.argsort(key.astype(small), kind="stable")]  # a radix sort
    bounds = np.searchsorted(window[order], np.arange(n_win + 1))
    return [order[bounds[w]:bounds[w + 1]] for w in range(n_win)]


def _series(cfg: AnalyticsSettings, win: LogWindow, offsets: np.ndarray,
            responses: list[np.ndarray], counts: np.ndarray, existing: list[np.ndarray],
            weight: np.ndarray, homog: list[float | None], seed: int) -> EchoSeries:
    """One arm's series: `responses[w]` are its responses in window w (in log order, their
    items its slots there), `counts[w]` how often it recommended each catalog item."""
    catalogs, remaps, recommended = [], [], []
    for w in range(len(responses)):
        # the catalog as of the window, plus anything it recommended (a clock-skewed release)
        alive = existing[w] | (counts[w] > 0)
        catalogs.append(int(alive.sum()))
        remaps.append(np.cumsum(alive) - 1)
        recommended.append(int(counts[w].sum()))
    sizes = sample_sizes(cfg, recommended, catalogs)
    conc: list[loop_metrics.Concentration | None] = []
    exposure: list[loop_metrics.Concentration | None] = []
    for w, size in enumerate(sizes):
        if size is None:
            conc.append(None)
            exposure.append(None)
            continue
        slots = _Slots(win, offsets, responses[w], remaps[w], weight)
        conc.append(loop_metrics.rarefied_draws(recommended[w], slots.plain, catalogs[w],
                                                size, cfg.echo_repeats, seed * 1000 + w))
        exposure.append(loop_metrics.rarefied_draws(
            recommended[w], slots.weighted, catalogs[w], size, cfg.echo_repeats,
            seed * 1000 + w))
    raw = [gini(counts[w][existing[w] | (counts[w] > 0)].astype(float)) if recommended[w]
           else None for w in range(len(responses))]
    ginis = [c.gini if c else None for c in conc]
    tops = [c.top10_share if c else None for c in conc]
    exposure_ginis = [c.gini if c else None for c in exposure]
    return EchoSeries(
        gini=ginis, top10_share=tops, sample_size=sizes, recommended=recommended,
        catalog=catalogs, gini_sd=[c.gini_sd if c else None for c in conc],
        top10_sd=[c.top10_sd if c else None for c in conc], exposure_gini=exposure_ginis,
        raw_gini=raw,
        homogenization=homog,
        gini_trend=trend(cfg, ginis, cfg.echo_slope_max),
        top10_trend=trend(cfg, tops, cfg.echo_slope_max),
        exposure_gini_trend=trend(cfg, exposure_ginis, cfg.echo_slope_max),
        homogenization_trend=trend(cfg, homog, cfg.homogenization_slope_max))


class _Slots:
    """The slots of one arm's window, `responses`' items in log order, read by index."""

    def __init__(self, win: LogWindow, offsets: np.ndarray, responses: np.ndarray,
                 remap: np.ndarray, weight: np.ndarray) -> None:
        self.win, self.offsets, self.responses = win, offsets, responses
        self.remap, self.weight = remap, weight
        self.ends = np.cumsum(win.lengths[responses])

    def _locate(self, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flattened index, position in its list) of the window's slots `pick`."""
        j = np.searchsorted(self.ends, pick, side="right")
        rank = pick - (self.ends[j] - self.win.lengths[self.responses[j]])
        return self.offsets[self.responses[j]] + rank, rank

    def plain(self, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat, _ = self._locate(pick)
        return self.remap[self.win.item_idx[flat]], np.ones(len(pick))

    def weighted(self, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat, rank = self._locate(pick)
        return self.remap[self.win.item_idx[flat]], self.weight[rank]


def sample_sizes(cfg: AnalyticsSettings, recommended: list[int], catalogs: list[int],
                 ) -> list[int | None]:
    """Per window, how many of its recommended items the rarefied samples draw: the same
    number per catalog item in every window (the sparsest eligible window's, capped so no
    sample exceeds `echo_sample_max`). The sample Gini of a fixed policy depends on draws
    per item, so this holds it still both when traffic falls and when the catalog grows.
    None for a window under `echo_sample_min` recommended items."""
    ok = [(r, c) for r, c in zip(recommended, catalogs, strict=True)
          if r >= cfg.echo_sample_min and c > 0]
    if not ok:
        return [None] * len(recommended)
    rate = min(min(r / c for r, c in ok), cfg.echo_sample_max / max(c for _, c in ok))
    out: list[int | None] = []
    for r, c in zip(recommended, catalogs, strict=True):
        size = max(1, int(rate * c + 1e-9))
        out.append(size if r >= cfg.echo_sample_min and r >= size else None)
    return out


def _homogenization(cfg: AnalyticsSettings, user: np.ndarray, item: np.ndarray,
                    users: np.ndarray, w: int) -> float | None:
    """Mean Jaccard of sampled pairs of the users served in the window, over their watches
    in the window (`user`, `item`: the window's watches; `users`: the window's responses'
    users, repeats and all; None under two such users with a watch)."""
    mask = np.isin(user, users)
    return loop_metrics.homogenization(user[mask], item[mask], cfg.homogenization_pairs,
                                       seed=w)


def trend(cfg: AnalyticsSettings, values: Sequence[float | None], limit: float) -> Trend:
    """The least-squares trend of `values` per window (`loop_metrics.trend`) as a model."""
    t = loop_metrics.trend(values, limit, min_windows=cfg.echo_min_windows)
    return Trend(slope=t.slope, ci_low=t.ci_low, ci_high=t.ci_high, windows=t.windows,
                 detected=t.detected, reason=t.reason)
