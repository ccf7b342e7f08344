"""
Depth -> pictures: a normalisation range that follows the video smoothly, OpenCV colormaps, gray, and 16-bit.

Takes: H x W float32 relative inverse depth, one frame at a time in order.
Gives: H x W x 3 uint8 RGB (colormap), H x W uint8 (gray, near is white) or H x W uint16 (lossless, with a scale).

Per-frame min/max normalisation (what the original run_video.py does) makes the picture flicker even when the depth
does not: every frame's extremes differ. Here the range is a pair of robust percentiles, tracked over time with an
exponential average, so the mapping drifts slowly and an outlier pixel cannot reset it.
"""

from __future__ import annotations

import cv2
import numpy as np

GRAY = "gray"


def colormap_id(name: str) -> int | None:
    """OpenCV colormap constant for a name ('inferno', 'turbo', ...); None for 'gray'."""
    if name == GRAY:
        return None
    constant = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if constant is None:
        known = sorted(k.removeprefix("COLORMAP_").lower() for k in dir(cv2) if k.startswith("COLORMAP_"))
        raise ValueError(f"unknown colormap {name!r}; expected 'gray' or one of {', '.join(known)}")
    return constant


class RangeTracker:
    """Robust [low, high] of the depth, smoothed over time: percentiles of a subsample, then an EMA."""

    def __init__(self, low_percentile: float = 1.0, high_percentile: float = 99.0, momentum: float = 0.9):
        self.percentiles = (low_percentile, high_percentile)
        self.momentum = momentum
        self.range: tuple[float, float] | None = None

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        step = max(1, int(np.sqrt(depth.size / 20_000)))  # about 20k samples whatever the resolution
        low, high = np.percentile(depth[::step, ::step], self.percentiles)
        if self.range is None:
            self.range = (float(low), float(high))
        else:
            keep = self.momentum
            self.range = (keep * self.range[0] + (1 - keep) * low, keep * self.range[1] + (1 - keep) * high)
        return self.range

    def reset(self) -> None:
        self.range = None


class DepthColorizer:
    """Tracked range -> uint8 -> colormap (RGB) or gray (near = white, since larger inverse depth is nearer)."""

    def __init__(self, colormap: str = "inferno", tracker: RangeTracker | None = None):
        self.colormap = colormap_id(colormap)
        self.tracker = tracker or RangeTracker()

    def __call__(self, depth: np.ndarray) -> np.ndarray:
        low, high = self.tracker.update(depth)
        scale = 255.0 / max(high - low, 1e-6)
        # convertScaleAbs rounds and saturates at 255 but takes |x|: clamp at `low` first so nothing goes negative
        levels = cv2.convertScaleAbs(np.maximum(depth, low), alpha=scale, beta=-low * scale)
        if self.colormap is None:
            return levels
        return cv2.cvtColor(cv2.applyColorMap(levels, self.colormap), cv2.COLOR_BGR2RGB)


class DepthQuantizer:
    """Depth -> uint16 with one scale for the whole video (value = round(depth * scale)), recorded in the file.

    The scale must be fixed before the first frame is written; without one given it is set from the first frame
    with 4x headroom above its largest value. Pixels beyond the range saturate and are counted.
    """

    HEADROOM = 4.0

    def __init__(self, scale: float | None = None):
        self.scale = scale
        self.saturated_pixels = 0

    def __call__(self, depth: np.ndarray) -> np.ndarray:
        if self.scale is None:
            self.scale = 65535.0 / max(float(depth.max()) * self.HEADROOM, 1e-6)
        scaled = np.rint(depth * self.scale)
        self.saturated_pixels += int(np.count_nonzero(scaled > 65535))
        return np.clip(scaled, 0, 65535).astype(np.uint16)
