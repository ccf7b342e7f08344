"""
Video Depth Anything's window mode, streamed: the original's `infer_video_depth` (32-frame windows, 10 frames of
overlap, keyframes carried into the next window, each window aligned to the last by scale and shift, the overlap
interpolated), fed one frame at a time and giving each frame's depth as soon as no later window can change it.

Two halves, so that the network can run elsewhere (a model actor) and several windows be in flight:
- `WindowPlanner`: frames in (any objects, in order) -> `Window`s: the frames the network sees, the first `context`
  of them keyframes of earlier windows, the last `padding` copies of the last frame (at the end of a stream, as the
  original pads it).
- `WindowAligner`: each window's depth (T x h x w, in window order) -> the depth of the frames no later window can
  change, at `output_hw` (float32, bilinear with aligned corners, as the original resizes), in frame order.
`WindowedDepth` joins them around a network callable (T x 3 x h x w -> T x h x w depth).

Memory is bounded by a window (32 frames in, 8 + 2 depth maps kept), never by the video's length, where the original
holds every frame and every depth map. The numbers are the original's: the alignment's least squares in float32,
negative depth clipped after scaling. Checked against the original in tests/test_video_depth_anything.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.stages.frames import FrameBatch

__all__ = ["INFER_LEN", "OVERLAP", "Window", "WindowAligner", "WindowPlanner", "WindowedDepth", "scale_and_shift",
           "window_batch"]

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


@dataclass
class Window:
    """The frames one pass of the network sees: `frames[:context]` are keyframes of earlier windows, then the new
    frames, the last `padding` of them copies of the stream's last frame (never written)."""

    frames: list
    context: int
    padding: int = 0

    @property
    def new_frames(self) -> list:
        return self.frames[self.context: len(self.frames) - self.padding]


class WindowPlanner:
    def __init__(self):
        self.frames_in = 0
        self._waiting: list = []  # new frames of the next window
        self._keyframes: list | None = None  # the last window's frames at KEYFRAMES
        self._last = None

    def push(self, frame) -> list[Window]:
        """One frame in; the window it completes, if any."""
        self.frames_in += 1
        self._last = frame
        self._waiting.append(frame)
        if len(self._waiting) == (INFER_LEN if self._keyframes is None else STEP):
            return [self._window(0)]
        return []

    def finish(self) -> list[Window]:
        """The stream's end: the windows left (a window starts at every multiple of STEP below the frame count),
        padded with copies of the last frame."""
        if self.frames_in == 0:
            return []
        windows = []
        started = 0 if self._keyframes is None else self.frames_in - len(self._waiting) - OVERLAP
        while started < self.frames_in:
            needed = INFER_LEN if self._keyframes is None else STEP
            windows.append(self._window(needed - len(self._waiting)))
            started += STEP
        return windows

    def _window(self, padding: int) -> Window:
        context = 0 if self._keyframes is None else OVERLAP
        frames = (self._keyframes or []) + self._waiting + [self._last] * padding
        self._waiting = []
        self._keyframes = [frames[position] for position in KEYFRAMES]
        return Window(frames, context, padding)


def window_batch(window: Window, time_base, layout: str) -> FrameBatch:
    """A window of (index, pts, pixels) frames as one FrameBatch for the network. Its keyframes are earlier frames
    and its padding copies of the last one, whose timestamps repeat: every timestamp is made to follow the one before
    (those frames are never written; the batch's timestamps only have to increase)."""
    pts = [frame[1] for frame in window.frames]
    for position in range(1, len(pts)):
        pts[position] = max(pts[position], pts[position - 1] + 1)
    return FrameBatch(window.frames[0][0], pts, time_base, np.stack([frame[2] for frame in window.frames]), layout)


class WindowAligner:
    def __init__(self, output_hw: tuple[int, int], metric: bool = False):
        """`metric`: depth in metres, which the windows share already: no scale and shift fitted (as the original)."""
        self.output_hw, self.metric = output_hw, metric
        self._first = True
        self._tail: list[np.ndarray] = []  # depth of the last window's frames that the next window blends into
        self._reference: list[np.ndarray] = []  # aligned depth at the keyframes the next window is fitted to

    def add(self, depth_thw) -> list[np.ndarray]:
        """The next window's depth (T x h x w, a tensor or an array, any float type): the depth maps it finalises,
        in frame order (the first window's first 24, then 22 a window)."""
        depth = torch.as_tensor(depth_thw).float()
        depth = F.interpolate(depth.unsqueeze(1), size=self.output_hw, mode="bilinear", align_corners=True)
        depth = [plane[0].cpu().numpy() for plane in depth]
        if self._first:
            self._first = False
            final, self._tail = depth[: INFER_LEN - INTERP_LEN], depth[INFER_LEN - INTERP_LEN:]
            self._reference = [depth[position] for position in KEYFRAMES[:ALIGN_LEN]]
            return final
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
        self._tail = fresh[STEP - INTERP_LEN:]
        self._reference = self._reference[:1] + [aligned(depth[position]) for position in KEYFRAMES[1:ALIGN_LEN]]
        return blended + fresh[: STEP - INTERP_LEN]

    def finish(self) -> list[np.ndarray]:
        """The last window's frames no window came after (the caller keeps those of its frames that are real)."""
        tail, self._tail = self._tail, []
        return tail


class WindowedDepth:
    """Planner, network and aligner in one place: prepared frames (3 x h x w) in, depth maps out in frame order."""

    def __init__(self, run_window: Callable[[torch.Tensor], torch.Tensor], output_hw: tuple[int, int],
                 metric: bool = False):
        self.run_window = run_window
        self.planner, self.aligner = WindowPlanner(), WindowAligner(output_hw, metric)
        self._emitted = 0

    @property
    def frames_in(self) -> int:
        return self.planner.frames_in

    def push(self, frame_3hw: torch.Tensor) -> list[np.ndarray]:
        """One frame in; the depth of the frames no later window can change (in order, possibly none)."""
        return self._run(self.planner.push(frame_3hw))

    def finish(self) -> list[np.ndarray]:
        """The end of the stream: every frame's depth that is left."""
        return self._run(self.planner.finish()) + self._real(self.aligner.finish())

    def _run(self, windows: list[Window]) -> list[np.ndarray]:
        return [plane for window in windows
                for plane in self._real(self.aligner.add(self.run_window(torch.stack(window.frames))))]

    def _real(self, planes: list[np.ndarray]) -> list[np.ndarray]:
        """Depth maps of real frames only (those of padding frames come last, and are dropped)."""
        planes = planes[: max(0, self.planner.frames_in - self._emitted)]
        self._emitted += len(planes)
        return planes


def _blend_weights(count: int) -> list[float]:
    """The new window's weight at each blended frame: 0, 1/(n-1), ..., 1, computed as the original does."""
    step = 1.0 / (count - 1)
    return [0.0] + [index * step for index in range(1, count - 1)] + [1.0]
