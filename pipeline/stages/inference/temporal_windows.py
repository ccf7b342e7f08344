"""
Video Depth Anything's window mode, streamed: the original's `infer_video_depth` (32-frame windows, 10 frames of
overlap, keyframes carried into the next window, each window aligned to the last by scale and shift, the overlap
interpolated), fed one frame at a time and giving each frame's depth as soon as no later window can change it.

Takes: prepared frames (3 x h x w float, ImageNet-normalised, h and w multiples of 14) in order with `push`, then
`finish()` at the end of the stream; `run_window`, the network on one window (T x 3 x h x w -> T x h x w depth).
Gives: depth maps at `output_hw` (float32, bilinear with aligned corners, as the original resizes them), one per
frame, in order: about 24 frames behind the input while the stream runs, the rest from `finish()`.

Memory is bounded by a window (32 frames in, 8 + 2 depth maps kept), never by the video's length, where the
original holds every frame and every depth map. The numbers are the original's: the alignment's least squares in
float32, negative depth clipped after scaling, the same padding of the last window with copies of the last frame.
Checked against the original in tests/test_video_depth_anything.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["INFER_LEN", "OVERLAP", "WindowedDepth", "scale_and_shift"]

INFER_LEN = 32  # frames a window
OVERLAP = 10  # frames a window takes from the last one: its keyframes
KEYFRAMES = (0, 12, 24, 25, 26, 27, 28, 29, 30, 31)  # positions of the last window that open the next one
INTERP_LEN = 8  # the overlap's frames blended from the last window's depth into the new window's
STEP = INFER_LEN - OVERLAP  # new frames a window
ALIGN_LEN = OVERLAP - INTERP_LEN  # keyframes the scale and shift are fitted on (positions 0 and 12)


def scale_and_shift(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least squares a, b with a * prediction + b ~ target, in float32 as the original computes it (1, 0 when the
    system is singular)."""
    prediction, target = prediction.astype(np.float32), target.astype(np.float32)
    mask = np.ones_like(prediction)
    a_00, a_01, a_11 = np.sum(mask * prediction * prediction), np.sum(mask * prediction), np.sum(mask)
    b_0, b_1 = np.sum(mask * prediction * target), np.sum(mask * target)
    determinant = a_00 * a_11 - a_01 * a_01
    if determinant == 0:
        return 1, 0
    return (a_11 * b_0 - a_01 * b_1) / determinant, (-a_01 * b_0 + a_00 * b_1) / determinant


class WindowedDepth:
    def __init__(self, run_window: Callable[[torch.Tensor], torch.Tensor], output_hw: tuple[int, int],
                 metric: bool = False):
        """`metric`: depth in metres, which the windows share already: no scale and shift fitted (as the original)."""
        self.run_window, self.output_hw, self.metric = run_window, output_hw, metric
        self.frames_in = 0
        self._waiting: list[torch.Tensor] = []  # frames of the next window not yet run
        self._keyframes: list[torch.Tensor] | None = None  # the last window's inputs at KEYFRAMES
        self._tail: list[np.ndarray] = []  # depth of the last window's frames that the next window blends into
        self._reference: list[np.ndarray] = []  # aligned depth at the keyframes the next window is fitted to
        self._last: torch.Tensor | None = None
        self._emitted = 0

    def push(self, frame_3hw: torch.Tensor) -> list[np.ndarray]:
        """One frame in; the depth of the frames no later window can change (in order, possibly none)."""
        self.frames_in += 1
        self._last = frame_3hw
        self._waiting.append(frame_3hw)
        if len(self._waiting) == (INFER_LEN if self._keyframes is None else STEP):
            return self._run(self._waiting)
        return []

    def finish(self) -> list[np.ndarray]:
        """The end of the stream: the last windows, padded with the last frame as the original pads; every frame
        left."""
        if self.frames_in == 0:
            return []
        out = []
        # A window starts at every multiple of STEP below the frame count (its new frames OVERLAP after its start);
        # the ones not run yet are run, padded
        started = 0 if self._keyframes is None else self.frames_in - len(self._waiting) - OVERLAP
        while started < self.frames_in:
            needed = INFER_LEN if self._keyframes is None else STEP
            out += self._run(self._waiting + [self._last] * (needed - len(self._waiting)))
            started += STEP
        rest = self._tail[: max(0, self.frames_in - self._emitted)]
        self._tail = []
        self._emitted += len(rest)
        return out + rest

    def _run(self, new_frames: list[torch.Tensor]) -> list[np.ndarray]:
        first = self._keyframes is None
        window = new_frames if first else self._keyframes + new_frames
        self._waiting = []
        self._keyframes = [window[position] for position in KEYFRAMES]
        depth = self.run_window(torch.stack(window)).float()
        depth = F.interpolate(depth.unsqueeze(1), size=self.output_hw, mode="bilinear", align_corners=True)
        depth = [plane[0].cpu().numpy() for plane in depth]
        if first:
            final, self._tail = depth[: INFER_LEN - INTERP_LEN], depth[INFER_LEN - INTERP_LEN:]
            self._reference = [depth[position] for position in KEYFRAMES[:ALIGN_LEN]]
        else:
            if self.metric:
                scale, shift = 1.0, 0.0
            else:
                scale, shift = scale_and_shift(np.concatenate(depth[:ALIGN_LEN]), np.concatenate(self._reference))

            def aligned(plane):
                plane = plane * scale + shift
                plane[plane < 0] = 0
                return plane

            blended = [previous * (1 - weight) + aligned(new) * weight for previous, new, weight in
                       zip(self._tail, depth[ALIGN_LEN:OVERLAP], _blend_weights(INTERP_LEN))]
            fresh = [aligned(plane) for plane in depth[OVERLAP:]]
            final, self._tail = blended + fresh[: STEP - INTERP_LEN], fresh[STEP - INTERP_LEN:]
            self._reference = self._reference[:1] + [aligned(depth[position]) for position in KEYFRAMES[1:ALIGN_LEN]]
        final = final[: max(0, self.frames_in - self._emitted)]
        self._emitted += len(final)
        return final


def _blend_weights(count: int) -> list[float]:
    """The new window's weight at each blended frame: 0, 1/(n-1), ..., 1, computed as the original does."""
    step = 1.0 / (count - 1)
    return [0.0] + [index * step for index in range(1, count - 1)] + [1.0]
