"""The inputs every snapshot component shares: the reco log in columnar form and one window
of it, with the flattened-item arrays computed once.

The reco log stays as flat item ids plus list offsets (Arrow's layout), so a window of a
million responses is counted with `bincount`s, not Python loops.

Attribution choices (documented in docs/architecture.md):
- a user belongs to the variant of their latest recommendation in the window (assignment is
  sticky, so this is their arm);
- the "training window" for drift is everything before the current window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from backend.ml.indexing import dense_index

NO_TIMES = np.zeros(0, "datetime64[us]")


@dataclass
class RecoLog:
    """The `events.reco` log in columnar form: one entry per response, items flattened."""

    ts: np.ndarray  # datetime64[us] (UTC), per response
    user: np.ndarray  # int64, per response
    code: np.ndarray  # int32 variant code per response, into `names`
    names: list[str]  # variant names
    latency: np.ndarray  # float, per response
    offsets: np.ndarray  # int64, len = responses + 1
    items: np.ndarray  # int64, flattened
    experiment: np.ndarray | None = None  # int32 code into `experiments` (-1: none)
    experiments: tuple[str, ...] = ()
    epoch: np.ndarray | None = None  # int64 allocation epoch per response (-1: none)

    @classmethod
    def from_table(cls, table: pa.Table) -> RecoLog:
        """From the lake's events.reco columns; `experiment` and `epoch` are optional (a log
        from before experiments were recorded has neither)."""
        items = table.column("items").combine_chunks() if table.num_rows else \
            pa.array([], pa.list_(pa.int64()))
        code, names = _encode(table.column("variant"))
        exp_code, exp_names = (_encode(table.column("experiment"))
                               if "experiment" in table.column_names else (None, []))
        epoch = (np.asarray(table.column("epoch").fill_null(-1).to_numpy(), dtype=np.int64)
                 if "epoch" in table.column_names else None)
        return cls(
            ts=utc_naive(table.column("ts")),
            user=table.column("user_id").to_numpy().astype(np.int64, copy=False),
            code=code, names=names,
            latency=table.column("latency_ms").to_numpy().astype(np.float64, copy=False),
            offsets=(items.offsets.to_numpy().astype(np.int64, copy=False) if len(items)
                     else np.zeros(1, np.int64)),
            items=items.values.to_numpy().astype(np.int64, copy=False) if len(items) else
            np.zeros(0, np.int64),
            experiment=exp_code, experiments=tuple(exp_names), epoch=epoch,
        )

    def __len__(self) -> int:
        return len(self.user)

    def arm(self, name: str) -> np.ndarray:
        """Mask of the responses served by variant `name`."""
        return self.code == (self.names.index(name) if name in self.names else -1)

    def outside_experiments(self) -> np.ndarray:
        """Mask of the responses served under no experiment (the default split)."""
        if self.experiment is None:
            return np.ones(len(self), bool)
        return self.experiment < 0

    def served_under(self, experiment: str, epoch: int | None = None) -> np.ndarray:
        """Mask of the responses served under `experiment` (in allocation `epoch`)."""
        if self.experiment is None or experiment not in self.experiments:
            return np.zeros(len(self), bool)
        mask = self.experiment == self.experiments.index(experiment)
        if epoch is not None and self.epoch is not None:
            mask &= self.epoch == epoch
        return mask


@dataclass(frozen=True)
class ArmExposure:
    """Per catalog position: how often an arm recommended the item, and the position-weighted
    exposure 1 / log2(rank + 1) of those slots (fairness and tail both read it)."""

    counts: np.ndarray
    weighted: np.ndarray


@dataclass(frozen=True)
class LogWindow:
    """The window [start, end) of the log and the lake events, computed once per snapshot.

    Times are naive datetime64[us] in UTC (numpy has no time zones)."""

    start: np.datetime64
    end: np.datetime64
    length: np.timedelta64
    in_win: np.ndarray  # per response: inside the window
    lengths: np.ndarray  # per response: its number of items
    offsets: np.ndarray  # the log's list offsets (flattened items of response r: [o_r, o_r+1))
    catalog: np.ndarray  # sorted item ids: the catalog plus any recommended id
    released: np.ndarray  # per catalog position: its release time (NaT: there from the start)
    item_idx: np.ndarray  # per flattened item: position in `catalog`
    variants: list[str]  # sorted variants with a response in the window
    arm: pd.Series  # user_id -> variant of their latest recommendation in the window
    watch: pd.DataFrame  # every watch, with `watch_ts`
    rating: pd.DataFrame  # every rating, with `rating_ts`
    watch_ts: np.ndarray
    rating_ts: np.ndarray

    @classmethod
    def of(cls, reco: RecoLog, watch: pd.DataFrame, rating: pd.DataFrame,
           items: pd.DataFrame, minutes: float, end: pd.Timestamp) -> LogWindow:
        length = np.timedelta64(int(minutes * 60e6), "us")
        t_end = naive(end)
        t_start = t_end - length
        lengths = np.diff(reco.offsets)
        catalog, item_idx = dense_index(reco.items, items["item_id"].to_numpy(dtype=np.int64),
                                        dtype=np.int32 if len(reco.items) < 2**31 else np.int64)
        in_win = (reco.ts >= t_start) & (reco.ts < t_end)
        codes = np.unique(reco.code[in_win])
        return cls(
            start=t_start, end=t_end, length=length, in_win=in_win, lengths=lengths,
            offsets=reco.offsets,
            catalog=catalog, released=release_times(catalog, items), item_idx=item_idx,
            variants=sorted(reco.names[c] for c in codes),
            arm=arm_of_users(reco, in_win), watch=watch, rating=rating,
            watch_ts=naive_series(watch["ts"]) if len(watch) else NO_TIMES,
            rating_ts=naive_series(rating["ts"]) if len(rating) else NO_TIMES)

    def span(self, reco: RecoLog, start: np.datetime64, end: np.datetime64,
             mask: np.ndarray) -> LogWindow:
        """This window's arrays over another stretch of time and set of responses (an
        experiment's epoch: `mask` its responses)."""
        in_win = mask & (reco.ts >= start) & (reco.ts < end)
        return replace(self, start=start, end=end, length=end - start, in_win=in_win,
                       variants=sorted(reco.names[c] for c in np.unique(reco.code[in_win])),
                       arm=arm_of_users(reco, in_win))

    @cached_property
    def _flattened(self) -> tuple[np.ndarray, np.ndarray]:
        return flattened(self.offsets)

    @property
    def row(self) -> np.ndarray:
        """Per flattened item: its response (laid out on first use: a log's length)."""
        return self._flattened[0]

    @property
    def positions(self) -> np.ndarray:
        """Per flattened item: its 0-based rank in its list."""
        return self._flattened[1]

    def existing(self, end: np.datetime64) -> np.ndarray:
        """Mask of the catalog positions released before `end` (the catalog as it was)."""
        return np.isnat(self.released) | (self.released < end)

    def traffic_minutes(self, reco: RecoLog) -> int:
        """Minutes of the window (counted from its start) with at least one response: the
        span a rate is taken over, so a quiet hour does not dilute the last minutes' rate."""
        since = reco.ts[self.in_win] - self.start
        return int(np.unique(since // np.timedelta64(1, "m")).size)

    def during(self, ts: np.ndarray) -> np.ndarray:
        """Mask of the times inside the window."""
        return (ts >= self.start) & (ts < self.end)

    @cached_property
    def watch_in(self) -> pd.DataFrame:
        return self.watch[self.during(self.watch_ts)]

    @cached_property
    def rating_in(self) -> pd.DataFrame:
        return self.rating[self.during(self.rating_ts)]

    @cached_property
    def rating_before(self) -> pd.DataFrame:
        """Every rating before the window (its past)."""
        return self.rating[self.rating_ts < self.start]

    def unprompted(self, reco: RecoLog, frame: pd.DataFrame) -> np.ndarray:
        """Per row of `frame` (user_id, item_id): the item had not been recommended to the
        user by the window's end."""
        users = frame["user_id"].to_numpy(np.int64)
        raters, pair_user = dense_index(users)
        position, known = positions(raters, reco.user)
        position[~known | (reco.ts >= self.end)] = len(raters)  # per response: its rater
        narrow = len(self.catalog) and 0 <= self.catalog[0] and self.catalog[-1] < 2**31 \
            and 8 * len(frame) + 2 * (len(raters) + 1) < 2**31  # int32 probes: half the bytes
        kind = np.int32 if narrow else np.int64
        position = position.astype(kind)
        step = max(1, PROBE_CHUNK // max(int(self.lengths.max(initial=1)), 1))
        chunks = ((np.repeat(position[lo:lo + step], self.lengths[lo:lo + step]),
                   reco.items[self.offsets[lo]:self.offsets[min(lo + step, len(reco))]]
                   .astype(kind))
                  for lo in range(0, len(reco), step))
        return ~pairs_seen(pair_user, frame["item_id"].to_numpy(np.int64), len(raters),
                           chunks)

    @cached_property
    def watch_upto(self) -> pd.DataFrame:
        """Every watch before the window's end (the window and its past)."""
        return self.watch[self.watch_ts < self.end]

    @cached_property
    def rating_upto(self) -> pd.DataFrame:
        return self.rating[self.rating_ts < self.end]

    def mask(self, reco: RecoLog, variant: str) -> np.ndarray:
        """Responses in the window served by `variant` ("all": every variant)."""
        return self.in_win if variant == "all" else self.in_win & reco.arm(variant)

    def exposure(self, mask: np.ndarray) -> ArmExposure:
        """Recommendation counts and position-weighted exposure of the responses in `mask`."""
        sel = mask[self.row]
        idx = self.item_idx[sel]
        return ArmExposure(
            counts=np.bincount(idx, minlength=len(self.catalog)).astype(float),
            weighted=np.bincount(idx, weights=rank_weights(self.positions[sel]),
                                 minlength=len(self.catalog)))


@dataclass(frozen=True)
class Served:
    """What each arm recommended in each of the last `windows` windows of the snapshot's
    length (the last one is the snapshot's window): `counts[w, a, i]` times catalog item i
    in window w by arm a (`arms`, then every response), `weighted[a, i]` its
    position-weighted exposure in the last window. All of it from counts of the flattened
    items (`served`)."""

    arms: list[str]
    counts: np.ndarray  # (windows, arms + 1, catalog), int64
    weighted: np.ndarray  # (arms + 1, catalog)

    def exposure(self, arm: str) -> ArmExposure:
        """The last window's `ArmExposure` of `arm` ("all": every response)."""
        a = len(self.arms) if arm == "all" else self.arms.index(arm)
        return ArmExposure(counts=self.counts[-1, a].astype(float), weighted=self.weighted[a])


RANK_BINS = 1 << 26  # (window, arm, rank, item) cells counted at once; beyond, weights


def served(reco: RecoLog, win: LogWindow, windows: int) -> Served:
    """Counts per (window, arm, item) and the last window's position-weighted exposure, the
    latter as each rank's count times its weight where the counts are kept per rank."""
    arms = list(win.variants)
    n_cat, n_arms = len(win.catalog), len(arms)
    first = win.end - windows * win.length
    valid = (reco.ts >= first) & (reco.ts < win.end)
    slot = np.full(len(reco.names) + 1, n_arms, np.int64)  # another variant (or none)
    slot[[reco.names.index(v) for v in arms]] = np.arange(n_arms)
    cells = windows * (n_arms + 1)
    cell = np.full(len(reco), cells, np.int64)  # outside every window: one more cell
    cell[valid] = (reco.ts[valid] - first) // win.length * (n_arms + 1) + slot[reco.code[valid]]
    ranks = int(win.lengths.max()) if len(reco) else 0
    weight = rank_weights(np.arange(ranks))
    if len(reco) and (win.lengths == ranks).all():  # lists of one length: a column per rank
        per_arm, weighted = _served_by_column(cell, win.item_idx.reshape(len(reco), ranks),
                                              weight, cells, n_arms + 1, n_cat)
    else:
        per_arm, weighted = _served_by_item(cell, win, ranks, weight, cells, n_arms + 1, n_cat)
    counts = np.empty((windows, n_arms + 1, n_cat), np.int64)
    counts[:, :n_arms] = per_arm[:, :n_arms]
    counts[:, n_arms] = per_arm.sum(axis=1)  # every response: the arms and the others
    weighted_all = np.empty((n_arms + 1, n_cat))
    weighted_all[:n_arms] = weighted[:n_arms]
    weighted_all[n_arms] = weighted.sum(axis=0)
    return Served(arms=arms, counts=counts, weighted=weighted_all)


def _served_by_column(cell: np.ndarray, grid: np.ndarray, weight: np.ndarray, cells: int,
                      slots: int, n_cat: int) -> tuple[np.ndarray, np.ndarray]:
    """`served`'s counts per (window, slot, item) and last-window weighted exposure when
    every list has one length: `grid` (responses, ranks) holds the catalog positions, and
    each rank's column is counted on its own (its table a rank's share of the bins)."""
    bins = (cells + 1) * n_cat
    at = (cell * n_cat).astype(np.int32 if bins < 2**31 else np.int64)
    total = np.zeros(bins, np.int64)
    weighted = np.zeros(slots * n_cat)
    last = slice((cells - slots) * n_cat, cells * n_cat)
    for r in range(grid.shape[1]):
        count = np.bincount(at + grid[:, r], minlength=bins)
        total += count
        weighted += weight[r] * count[last]
    return total[:cells * n_cat].reshape(-1, slots, n_cat), weighted.reshape(slots, n_cat)


def _served_by_item(cell: np.ndarray, win: LogWindow, ranks: int, weight: np.ndarray,
                    cells: int, slots: int, n_cat: int) -> tuple[np.ndarray, np.ndarray]:
    """The same from the flattened items of lists of any length: per (cell, rank, item)
    when that fits, else with the weights as bincount weights."""
    n_arms = slots - 1
    windows = cells // slots
    by_rank = (cells + 1) * ranks * n_cat <= RANK_BINS
    width = ranks * n_cat if by_rank else n_cat
    size = (cells + 1) * width
    base = (cell * (ranks if by_rank else 1)).astype(np.int32 if size < 2**31 else np.int64)
    key = base[win.row]
    if by_rank:
        key += win.positions
    key *= n_cat
    key += win.item_idx
    if by_rank:
        flat = np.bincount(key, minlength=size)[:cells * width].reshape(
            windows, n_arms + 1, ranks, n_cat)
        per_arm = flat.sum(axis=2)
        weighted = np.einsum("p,api->ai", weight, flat[-1].astype(float))
    else:
        per_arm = np.bincount(key, minlength=size)[:cells * width].reshape(
            windows, n_arms + 1, n_cat)
        last = cell[win.row] >= cells - (n_arms + 1)
        last &= cell[win.row] < cells
        weighted = np.bincount(key[last] - (cells - n_arms - 1) * n_cat,
                               weights=weight[win.positions[last]],
                               minlength=(n_arms + 1) * n_cat).reshape(n_arms + 1, n_cat)
    return per_arm, weighted


def rank_weights(positions: np.ndarray) -> np.ndarray:
    """1 / log2(rank + 1) per 0-based list position (the DCG discount), from a table of the
    positions there are rather than a logarithm per slot."""
    if not len(positions):
        return np.zeros(0)
    table = 1.0 / np.log2(np.arange(int(positions.max()) + 1) + 2.0)
    return table[positions]


def flattened(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per flattened item of lists laid out by `offsets`: its list and its 0-based position
    in it. Each is one running sum of steps written at the lists' starts (one array of the
    log's length, not three)."""
    total = int(offsets[-1])
    dtype = np.int32 if max(total, len(offsets)) < 2**31 else np.int64
    row, pos = np.zeros(total, dtype), np.ones(total, dtype)
    lengths = np.diff(offsets)
    full = np.flatnonzero(lengths)
    if not len(full):
        return row, pos[:0]
    starts = offsets[full]
    row[0], pos[0] = full[0], 0
    row[starts[1:]] = np.diff(full)
    pos[starts[1:]] = 1 - lengths[full[:-1]]
    return np.cumsum(row, dtype=dtype, out=row), np.cumsum(pos, dtype=dtype, out=pos)


PROBE_CHUNK = 1 << 20  # flattened items probed at most at once (temporaries stay in cache)


def pairs_seen(user: np.ndarray, item: np.ndarray, users: int,
               probes: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per pair (`user`: a position in 0..users-1, `item`: an id), whether it occurs among
    the `probes` (chunks of (user position, item id), any integer type; position `users`:
    no such user).

    What `isin` of int64 pair keys answers, without a hash table of every probe (a hundred
    million at 10M responses, each lookup a cache miss). Each user gets a bit signature of
    its items, small enough to stay in cache, which lets through the few probes that may
    be a pair; those are looked up in a table of cells (about 4 per pair, the item picks
    its user's cell). A cell two distinct items picked holds one of them; the other pairs
    and the probes that land on such a cell without a match are settled by `isin`."""
    out = np.zeros(len(user), bool)
    if not len(user):
        return out
    per_user = len(user) / max(users, 1)
    slots = 1 << max(3, int(np.ceil(np.log2(4 * per_user))))
    sig_bytes = 1 << max(1, int(np.ceil(np.log2(2 * per_user))))  # about 16 bits a pair
    sig_mask = 8 * sig_bytes - 1
    signature = np.zeros((users + 1) * sig_bytes, np.uint8)  # the last user: no one
    h = item & sig_mask
    np.bitwise_or.at(signature, user * sig_bytes + (h >> 3), (1 << (h & 7)).astype(np.uint8))
    cell = user * slots + (item & (slots - 1))
    table = np.full(users * slots, -1, np.int64)
    table[cell] = item
    stored = table[cell] == item
    clash = np.zeros(len(table), bool)
    clash[cell[~stored]] = True
    hit = np.zeros(len(table), bool)
    rest: list[tuple[np.ndarray, np.ndarray]] = []
    for probe_user, probe_item in probes:
        h = probe_item & sig_mask  # in the probes' own (narrow) integer type
        at = probe_user * sig_bytes
        at += h >> 3
        bit = signature[at] >> (h & 7)
        maybe = np.flatnonzero(bit & 1)
        maybe_user = probe_user[maybe].astype(np.int64)
        maybe_item = probe_item[maybe].astype(np.int64)
        probe = maybe_user * slots + (maybe_item & (slots - 1))
        match = table[probe] == maybe_item
        hit[probe[match]] = True
        left = np.flatnonzero(~match & clash[probe])
        rest.append((maybe_user[left], maybe_item[left]))
    out[stored] = hit[cell[stored]]
    if (~stored).any():
        empty = np.zeros(0, np.int64)
        others = pd.MultiIndex.from_arrays([np.concatenate([empty, *(u for u, _ in rest)]),
                                            np.concatenate([empty, *(i for _, i in rest)])])
        out[~stored] = pd.MultiIndex.from_arrays([user[~stored], item[~stored]]).isin(others)
    return out


def _encode(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(column).combine_chunks()
    if len(enc) == 0:
        return np.zeros(0, np.int32), []
    return (enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32),
            [str(x) for x in enc.dictionary.to_pylist()])  # -1: null


def utc_naive(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """UTC timestamps as naive datetime64[us] (numpy has no time zones)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(arr.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False))


def naive(ts: pd.Timestamp) -> np.datetime64:
    """One timestamp as naive UTC datetime64."""
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_datetime64()


def naive_series(ts: pd.Series) -> np.ndarray:
    """A column of timestamps as naive UTC datetime64[us]."""
    s = pd.to_datetime(ts, utc=True)
    return s.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def release_times(catalog: np.ndarray, items: pd.DataFrame) -> np.ndarray:
    """Per position of the sorted `catalog`: the `released_at` of `items` (NaT for items
    without one, such as MovieLens's, and for ids the items frame does not hold)."""
    out = np.full(len(catalog), np.datetime64("NaT"), "datetime64[us]")
    if "released_at" not in items.columns or not len(items):
        return out
    known = items[items["released_at"].notna()]
    if len(known):
        idx, hit = positions(catalog, known["item_id"].to_numpy(np.int64))
        out[idx[hit]] = naive_series(known["released_at"])[hit]
    return out


def positions(catalog: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in the sorted `catalog`, whether the catalog holds the id) per item; the
    position of an id it does not hold is meaningless. Small non-negative ids (MovieLens,
    the simulator) are looked up in a table, not searched."""
    if len(catalog) and catalog[0] >= 0 and catalog[-1] < 4 * (len(catalog) + len(items)):
        table = np.full(int(catalog[-1]) + 2, -1, np.int64)  # the last cell: out of range
        table[catalog] = np.arange(len(catalog))
        idx = table[np.clip(items, -1, len(table) - 1)]
        known = idx >= 0
        return idx, known
    idx = np.searchsorted(catalog, items)
    known = idx < len(catalog)
    known[known] = catalog[idx[known]] == items[known]
    return idx, known


def arm_of_users(reco: RecoLog, mask: np.ndarray) -> pd.Series:
    """Each user's variant (index user_id) = that of their latest recommendation in `mask`
    (of two at the same time, the later in the log). Per-user maxima, not a sort of the
    window by time."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return pd.Series(dtype=object)
    users, pos = dense_index(reco.user[idx])
    ts = reco.ts[idx].astype(np.int64)
    newest = np.full(len(users), np.iinfo(np.int64).min)
    np.maximum.at(newest, pos, ts)
    last = ts == newest[pos]
    pick = np.full(len(users), -1, np.int64)
    np.maximum.at(pick, pos[last], idx[last])
    names = np.asarray(reco.names, dtype=object)
    return pd.Series(names[reco.code[pick]], index=users)
