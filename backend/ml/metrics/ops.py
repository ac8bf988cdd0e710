"""Operational measures: latency percentiles, uptime from health probes, error rates from
scraped counters, and drift (PSI)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def latency_percentiles(latency_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 by linear interpolation between order statistics (numpy's default,
    Hyndman & Fan type 7); None without data."""
    x = np.asarray(latency_ms, dtype=float)
    if len(x) == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def uptime(ok: Sequence[bool]) -> float | None:
    """Share of periodic health probes that found the service up (None without probes)."""
    return float(np.mean(np.asarray(ok, dtype=bool))) if len(ok) else None


def counter_error_rate(samples: Sequence[tuple[float, float]]) -> float | None:
    """Errors per request over consecutive scrapes of cumulative (requests, errors)
    counters: each counter's increase summed scrape to scrape, a counter that went down
    counting from zero (a reset by a restart), as Prometheus' `increase()` does, without
    its extrapolation. None when no request was counted."""
    requests = errors = 0.0
    for (r0, e0), (r1, e1) in zip(samples, samples[1:], strict=False):
        requests += r1 - r0 if r1 >= r0 else r1
        errors += e1 - e0 if e1 >= e0 else e1
    return float(errors / requests) if requests > 0 else None


def psi(expected: Sequence[float], actual: Sequence[float], eps: float = 1e-4) -> float:
    """Population Stability Index between two distributions over the same bins:
    sum_b (a_b - e_b) ln(a_b / e_b) of the bin shares, empty bins floored at `eps`
    (Yurdakul 2018; < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(((a - e) * np.log(a / e)).sum())


def psi_supported(bins: int, n_expected: float, n_actual: float, stable: float = 0.1,
                  level: float = 0.95) -> bool:
    """Whether samples of these sizes can tell a shift from noise: with no shift,
    PSI ~ (1/n + 1/m) chi2(bins - 1) asymptotically (the PSI is Jeffreys' divergence;
    Yurdakul 2018), so the PSI is supported when that noise's `level` quantile is
    below the `stable` band's edge and a reading past it is not sampling alone."""
    if n_expected <= 0 or n_actual <= 0:
        return False
    noise = float(stats.chi2.ppf(level, bins - 1)) * (1 / n_expected + 1 / n_actual)
    return noise < stable


def popularity_bins(train_counts: Sequence[float], current_counts: Sequence[float],
                    bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Interaction mass per item-popularity decile, deciles fixed by the training window:
    the input of the item-popularity PSI (is traffic moving between head and tail?)."""
    train = np.asarray(train_counts, dtype=float)
    cur = np.asarray(current_counts, dtype=float)
    order = np.argsort(-train, kind="stable")
    group = np.empty(len(train), dtype=int)
    group[order] = np.arange(len(train)) * bins // max(len(train), 1)
    return (np.bincount(group, weights=train, minlength=bins),
            np.bincount(group, weights=cur, minlength=bins))
