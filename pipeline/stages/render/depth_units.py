"""
What depth values mean: relative inverse depth, or metres. One place says it for every output (video tags, 16-bit
scale, the frame folders' depth.json) and for the stages whose right behaviour depends on it (colour, smoothing).

Takes: the `max_depth` a `DepthBatch` carries (None from a relative model; metres from a metric one).
Gives: `DepthUnits`: `metric`, a one-line `meaning`, the 16-bit scale a metric output uses (`metric_scale`: whole
millimetres where the range fits, else 2 or 4 mm steps), and `display(depth)`: what the colour map is laid over,
so that near is bright for both kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DepthUnits"]

UINT16_MAX = 65535
# Metric depth is never shown closer than this (1 cm): the colour map lays out 1 / metres, which must stay finite
NEAREST_SHOWN_M = 0.01


@dataclass(frozen=True)
class DepthUnits:
    max_depth: float | None = None  # None: relative inverse depth; otherwise metres, in (0, max_depth]

    @property
    def metric(self) -> bool:
        return self.max_depth is not None

    @property
    def meaning(self) -> str:
        if self.metric:
            return f"metric depth in metres (larger is farther), at most {self.max_depth:g}"
        return "relative inverse depth (larger is nearer; no unit: scale and shift unknown)"

    @property
    def metric_scale(self) -> float:
        """uint16 = round(metres * scale): 1000 (millimetres) when max_depth fits in 65.535 m, else the largest of
        500, 250, ... (2 mm, 4 mm steps) that holds max_depth (80 m outdoor models: 2 mm). Fixed by the model, so every
        file of every run has the same scale, and nothing saturates."""
        scale = 1000.0
        while self.max_depth * scale > UINT16_MAX:
            scale /= 2
        return scale

    def display(self, depth: np.ndarray) -> np.ndarray:
        """The values the colour map spreads over, larger nearer: relative depth as it is, metres inverted
        (1 / metres, as relative depth is; near objects get the colour range's detail, as they do today)."""
        if not self.metric:
            return depth
        return np.reciprocal(np.maximum(depth, NEAREST_SHOWN_M, dtype=np.float32))
