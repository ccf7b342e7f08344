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

from pipeline.stages.pixels import i420_planes, resized
from pipeline.stages.render.statistics import quantiles

__all__ = ["DepthColorizer", "DepthQuantizer", "GRAY", "RangeTracker", "colormap_id", "colormap_names"]

GRAY = "gray"


def colormap_names() -> list[str]:
    """'gray' and every OpenCV colormap, by the names the settings take."""
    return [GRAY] + sorted(k.removeprefix("COLORMAP_").lower() for k in dir(cv2) if k.startswith("COLORMAP_"))


def colormap_id(name: str) -> int | None:
    """OpenCV colormap constant for a name ('inferno', 'turbo', ...); None for 'gray'."""
    if name == GRAY:
        return None
    constant = getattr(cv2, f"COLORMAP_{name.upper()}", None) if isinstance(name, str) else None
    if constant is None:
        raise ValueError(f"unknown colormap {name!r}; expected one of {', '.join(colormap_names())}")
    return constant


def _yuv_tables(colormap: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256-entry Y, U, V tables for a colormap (or gray), through FFmpeg's RGB -> YUV (BT.601, limited range)."""
    import av

    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.repeat(ramp[..., None], 3, axis=2) if colormap is None else cv2.cvtColor(
        cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)
    planes = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p").to_ndarray()
    return tuple(np.ascontiguousarray(plane.reshape(256)) for plane in planes.reshape(3, 16, 16))


class RangeTracker:
    """Robust [low, high] of the depth, smoothed over time: percentiles of a subsample, then an EMA."""

    def __init__(self, low_percentile: float = 1.0, high_percentile: float = 99.0, momentum: float = 0.9):
        self.percentiles = (low_percentile, high_percentile)
        self.momentum = momentum
        self.range: tuple[float, float] | None = None

    def update(self, depth: np.ndarray) -> tuple[float, float]:
        step = max(1, int(np.sqrt(depth.size / 20_000)))  # about 20k samples whatever the resolution
        low, high = quantiles(depth[::step, ::step].ravel(), tuple(p / 100 for p in self.percentiles))
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
        self._yuv_tables = None

    def levels(self, depth: np.ndarray) -> np.ndarray:
        """H x W uint8 on the tracked range (this advances the tracker: call once per frame)."""
        low, high = self.tracker.update(depth)
        scale = 255.0 / max(high - low, 1e-6)
        # One pass: (depth - low) * scale, rounded and saturated to 0-255 (below `low` is 0)
        return cv2.addWeighted(depth, scale, depth, 0.0, -low * scale, dtype=cv2.CV_8U)

    def __call__(self, depth: np.ndarray, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """H x W x 3 uint8 RGB, or H x W uint8 for gray; at `size_hw` when given (resized after the colour lookup,
        bilinear: depth at the model's resolution is coloured there, at a fraction of the frame's pixels)."""
        levels = self.levels(depth)
        image = levels if self.colormap is None else cv2.cvtColor(cv2.applyColorMap(levels, self.colormap),
                                                                 cv2.COLOR_BGR2RGB)
        return resized(image, size_hw)

    def yuv420(self, depth: np.ndarray, size_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The colormapped frame straight in I420 layout, (3H/2) x W uint8, for even H and W (those of `size_hw`
        when given, else the depth's). See `yuv420_into`."""
        height, width = size_hw or depth.shape
        packed = np.empty((height * 3 // 2, width), np.uint8)
        self.yuv420_into(depth, i420_planes(packed, height))
        return packed

    def yuv420_into(self, depth: np.ndarray, planes: list[np.ndarray]) -> None:
        """The colormapped frame written into Y (H x W), U and V (H/2 x W/2) uint8 planes: views with any row stride,
        such as an encoder's frame (`encode.blank_i420`).

        Looks the colour up in Y, U and V tables instead of making RGB and converting it (the encoder would): about
        a fifth of the work. The tables come from the colormap through FFmpeg's own RGB -> YUV conversion, so colours
        match the RGB path. Depth smaller than the frame is looked up at its own size and each plane resized
        (bilinear) to its own size: chroma averaged over each 2x2 block, as the encoder's own conversion would.
        """
        if self._yuv_tables is None:
            self._yuv_tables = _yuv_tables(self.colormap)
        levels = self.levels(depth)
        for table, plane in zip(self._yuv_tables, planes):
            looked_up = cv2.LUT(levels, table)
            if looked_up.shape == plane.shape:
                plane[...] = looked_up
            else:
                cv2.resize(looked_up, plane.shape[::-1], dst=plane, interpolation=cv2.INTER_LINEAR)


class DepthQuantizer:
    """Depth -> uint16 with one scale for the whole video (value = round(depth * scale)), recorded in the file.

    The scale must be fixed before the first frame is written; without one given it is set from the first frame
    with 4x headroom above its largest value. Pixels beyond the range (or below zero, which smoothing's shift can
    produce) saturate and are counted.
    """

    HEADROOM = 4.0

    def __init__(self, scale: float | None = None):
        self.scale = scale
        self.saturated_pixels = 0

    @classmethod
    def scale_for(cls, depth: np.ndarray) -> float:
        """The scale a first frame of this depth sets."""
        return 65535.0 / max(float(depth.max()) * cls.HEADROOM, 1e-6)

    def __call__(self, depth: np.ndarray) -> np.ndarray:
        if self.scale is None:
            self.scale = self.scale_for(depth)
        scaled = np.rint(depth * self.scale)
        self.saturated_pixels += int(np.count_nonzero((scaled > 65535) | (scaled < 0)))
        return np.clip(scaled, 0, 65535).astype(np.uint16)
