"""
A live temporal-consistency figure: how much a camera's depth changes from frame to frame where its picture does
not, so that an operator can alert on a camera whose depth starts to flicker.

Takes: each frame's depth as published (H x W float, relative or metres, after smoothing) and the frame's luma at
the same size (H x W uint8, and the grey levels one step of it is worth: `pixels.luma_at`).
Gives: `value`: the flicker, in percent of the depth's range, averaged over the last `window` frames that could be
measured (None before the second frame); `faulty_frames`: frames whose depth held a NaN or an infinity (a fault of
the model, e.g. a half-precision overflow: counted and shown, never taken for "not measured"; such a frame is left
out, and the next is measured against the last good one).

Per pair of frames: the static pixels are those whose luma moved by at most `STILL_GREY_LEVELS`; their mean absolute
depth change, divided by the depth's range over both frames (the 99th minus the 1st percentile of the two together:
a flat map that jumps from 3 to 4 flickers by 100 %), in percent. It is
benchmarks/temporal_data.py's static flicker (mean |depth change| over static pixels over the depth's range), with
what is static judged from the picture instead of a known depth, and no fit to a truth, so that it runs on any
camera: a whole frame's scale or shift jumping (the per-frame model's failure) counts, as it should. A pair with
too few still pixels (a cut, the camera moving) is not measured. Cost: a few array operations on at most
`MAX_PIXELS` of the depth's pixels (a regular grid of them beyond that: a 518 x 924 map is read every third pixel
each way), about a millisecond: it runs on every frame a camera publishes.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["FlickerMeter", "STILL_GREY_LEVELS"]

STILL_GREY_LEVELS = 2.0  # a pixel whose luma moved by at most this (0-255) counts as still (camera noise is ~1)
MIN_STILL_FRACTION = 0.1  # fewer still pixels than this: a cut or a moving camera, not measured
MAX_PIXELS = 1 << 16  # a statistic: this many pixels measure it as well as all of them


class FlickerMeter:
    def __init__(self, window: int = 50):
        self._values: deque[float] = deque(maxlen=window)
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self.faulty_frames = 0

    def update(self, depth_hw: np.ndarray, luma_hw: np.ndarray, grey_unit: float = 1.0) -> None:
        if not np.isfinite(depth_hw).all():  # (all of it: one bad pixel anywhere is a fault)
            self.faulty_frames += 1
            return
        step = max(1, math.ceil(math.sqrt(np.size(depth_hw) / MAX_PIXELS)))
        depth = np.asarray(depth_hw[::step, ::step], np.float32)
        luma = np.asarray(luma_hw[::step, ::step], np.float32) * grey_unit
        previous, self._previous = self._previous, (depth, luma)
        if previous is None or previous[0].shape != depth.shape:
            return
        still = np.abs(luma - previous[1]) <= STILL_GREY_LEVELS
        if still.mean() < MIN_STILL_FRACTION:
            return
        low, high = np.percentile(np.stack([depth, previous[0]]), [1, 99])
        if not high > low:
            self._values.append(0.0)  # flat and unchanged: no flicker at all
            return
        self._values.append(float(100 * np.abs(depth - previous[0])[still].mean() / (high - low)))

    @property
    def value(self) -> float | None:
        return round(float(np.mean(self._values)), 4) if self._values else None

    def reset(self) -> None:
        """A new picture size or a reconnection: measured afresh (the faults stay counted)."""
        self._values.clear()
        self._previous = None
