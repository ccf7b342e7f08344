"""
Order statistics of a few thousand samples, for the smoother's fit and the colour range, per frame.

Takes: a 1-D float array (a pixel subsample of a depth map).
Gives: quantiles with linear interpolation (NumPy's default definition) and the lower median (torch's median).

`np.quantile` sorts out its interpolation indices with `np.unique` on every call, which cost more than the
partition itself here (about 0.3 ms a call, twice per frame); these helpers partition once at known indices.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lower_median", "quantiles"]


def quantiles(values: np.ndarray, fractions: tuple[float, ...]) -> list[float]:
    """`np.quantile(values, fractions)` (linear interpolation between the closest ranks), one partition."""
    last = len(values) - 1
    positions = [fraction * last for fraction in fractions]
    below = [int(np.floor(position)) for position in positions]
    ranks = sorted({rank for low in below for rank in (low, min(low + 1, last))})
    ordered = np.partition(values, ranks)
    return [float(ordered[low] + (position - low) * (ordered[min(low + 1, last)] - ordered[low]))
            for position, low in zip(positions, below)]


def lower_median(values: np.ndarray) -> float:
    """The lower of the two middle values for an even count (torch's median, which the smoother was tuned with)."""
    middle = (len(values) - 1) // 2
    return float(np.partition(values, middle)[middle])
