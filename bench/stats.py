"""Percentiles and the median-of-runs rule every figure follows."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def summarize_runs(runs: list[dict], keys: Iterable[str]) -> dict:
    """{key: median over runs} for each key, plus the runs themselves."""
    return {**{key: round(median(run[key] for run in runs), 3) for key in keys}, "runs": runs}


def spread(values: Iterable[float]) -> dict:
    """min / median / max of a non-empty sample: how far apart the runs of one figure were."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("spread of no values")
    return {"min": round(ordered[0], 3), "median": round(median(ordered), 3), "max": round(ordered[-1], 3)}
