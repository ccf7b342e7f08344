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

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.stages.frames import FrameBatch

__all__ = ["INFER_LEN", "OVERLAP", "STEP", "SpanWindows", "Window", "WindowAligner", "WindowPlanner", "WindowSpan",
           "WindowedDepth", "first_final", "first_window_reference", "position_in_video", "scale_and_shift",
           "window_batch", "window_start"]

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


@dataclass(frozen=True)
class WindowSpan:
    """The windows one part of a video runs (a segment), by window number: window k's new frames are the video's
    frames from `window_start(k)` (0, 32, 54, ...), and it makes final the depth of frames [first_final(k),
    first_final(k + 1)) (0, 24, 46, ...: the last 8 of each window wait for the next one's blend).

    A part that starts at window `first > 0` cannot have what a whole run carries into it: its keyframes are frames
    it decodes again (the video's frame 0 and frames of window `first - 1`), and its first window is fitted to window
    0's depth of frame 0 alone (the `first_reference`: window 0 is run again), where a whole run fits it to the
    chain of every window before. Each later window is fitted half to that reference and half to the window before,
    so the difference from a whole run shrinks window by window: the windows before `written_from` are run only for
    that (a warm-up, not written). `end` (None: the video's end): the part stops after window `end - 1` and leaves
    the depth of the frames after it to the next part."""

    first: int  # the first window run
    written_from: int  # the first window whose final depth is written
    end: int | None = None

    @property
    def decode_from(self) -> int:
        """The first frame the part decodes (besides window 0's): window `first - 1`'s first keyframe after frame 0
        (0 when the part starts the video)."""
        return 0 if self.first == 0 else position_in_video(self.first - 1, KEYFRAMES[1])

    @property
    def decode_end(self) -> int | None:
        """The frame after the last one the part decodes: window `end - 1`'s last frame, plus one."""
        return None if self.end is None else position_in_video(self.end - 1, INFER_LEN - 1) + 1

    @property
    def write_from(self) -> int:
        return first_final(self.written_from)

    @property
    def write_end(self) -> int | None:
        return None if self.end is None else first_final(self.end)

    def role(self, frame: int) -> str:
        """What the part does with the video's frame `frame` (>= decode_from): "new" (a window's new frame, pushed
        to the planner), "keyframe" (opens the first window only), or "skip" (decoded on the way to the keyframes)."""
        if self.first == 0 or frame >= window_start(self.first):
            return "new"
        return "keyframe" if frame in self.keyframe_positions() else "skip"

    def keyframe_positions(self) -> list[int]:
        """The frames that open window `first` (KEYFRAMES of window `first - 1`, frame 0 first), for first > 0."""
        return [0] + [position_in_video(self.first - 1, position) for position in KEYFRAMES[1:]]


def window_start(window: int) -> int:
    """The video's frame of window `window`'s first new frame (its position 0 for window 0, else OVERLAP)."""
    return 0 if window == 0 else INFER_LEN + (window - 1) * STEP


def position_in_video(window: int, position: int) -> int:
    """The video's frame at `position` of window `window` (a new frame: position >= OVERLAP, or window 0)."""
    return position if window == 0 else window_start(window) + position - OVERLAP


def first_final(window: int) -> int:
    """The first frame whose depth window `window` makes final (0, 24, 46, ...)."""
    return 0 if window == 0 else INFER_LEN - INTERP_LEN + (window - 1) * STEP


class WindowPlanner:
    def __init__(self, keyframes: list | None = None):
        """`keyframes`: the 10 frames that open the first window (a part that starts at a later window,
        `WindowSpan.keyframe_positions`); the frames pushed are then the windows' new frames from there on."""
        self.frames_in = 0
        self._waiting: list = []  # new frames of the next window
        self._keyframes: list | None = keyframes  # the last window's frames at KEYFRAMES
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
    def __init__(self, output_hw: tuple[int, int], metric: bool = False, first_reference: np.ndarray | None = None):
        """`metric`: depth in metres, which the windows share already: no scale and shift fitted (as the original).
        `first_reference`: window 0's depth of frame 0 at `output_hw` (`first_window_reference`), for a part of a
        video that starts at a later window (WindowSpan): its first window is fitted to that alone and gives its new
        frames' depth unblended (the 14 before its tail)."""
        self.output_hw, self.metric = output_hw, metric
        self._first = first_reference is None
        self._tail: list[np.ndarray] | None = None if first_reference is not None else []
        self._reference: list[np.ndarray] = [] if first_reference is None else [first_reference]

    def resized(self, depth_thw) -> list[np.ndarray]:
        """A window's depth at the output size, as the original resizes it: T planes, float32."""
        depth = torch.as_tensor(depth_thw).float()
        depth = F.interpolate(depth.unsqueeze(1), size=self.output_hw, mode="bilinear", align_corners=True)
        return [plane[0].cpu().numpy() for plane in depth]

    def add(self, depth_thw) -> list[np.ndarray]:
        """The next window's depth (T x h x w, a tensor or an array, any float type): the depth maps it finalises,
        in frame order (the first window's first 24, then 22 a window; a part's first window 14)."""
        depth = self.resized(depth_thw)
        if self._first:
            self._first = False
            final, self._tail = depth[: INFER_LEN - INTERP_LEN], depth[INFER_LEN - INTERP_LEN:]
            self._reference = [depth[position] for position in KEYFRAMES[:ALIGN_LEN]]
            return final
        if self.metric:
            scale, shift = 1.0, 0.0
        elif self._tail is None:  # a part's first window: fitted to window 0's depth of frame 0 alone
            scale, shift = scale_and_shift(depth[0], self._reference[0])
        else:
            scale, shift = scale_and_shift(np.concatenate(depth[:ALIGN_LEN]), np.concatenate(self._reference))

        def aligned(plane):
            plane = plane * scale + shift
            plane[plane < 0] = 0
            return plane

        blended = [previous * (1 - weight) + aligned(new) * weight for previous, new, weight in
                   zip(self._tail or [], depth[ALIGN_LEN:OVERLAP], _blend_weights(INTERP_LEN))]
        fresh = [aligned(plane) for plane in depth[OVERLAP:]]
        self._tail = fresh[STEP - INTERP_LEN:]
        self._reference = self._reference[:1] + [aligned(depth[position]) for position in KEYFRAMES[1:ALIGN_LEN]]
        return blended + fresh[: STEP - INTERP_LEN]

    def finish(self) -> list[np.ndarray]:
        """The last window's frames no window came after (the caller keeps those of its frames that are real)."""
        tail, self._tail = self._tail or [], []
        return tail


def first_window_reference(depth_thw, output_hw: tuple[int, int]) -> np.ndarray:
    """Window 0's depth of frame 0 at the output size: what every window of a whole run is fitted to in part, and a
    part's first window alone (WindowAligner's `first_reference`)."""
    return WindowAligner(output_hw).resized(torch.as_tensor(depth_thw)[:1])[0]


class SpanWindows:
    """A WindowSpan of a video in window mode, without the network (which may run elsewhere, several windows in
    flight): the video's frames in, in order from `span.decode_from` (any objects); the windows to run out; each
    window's depth in, in the order the windows came out; each frame paired with its final depth out.

    A part that starts at a later window (span.first > 0) takes window 0's depth of frame 0 (`first_reference`) and
    frame 0 itself (`first_frame`). Frames decoded only for their keyframes get no depth (`lead_in_frames`), nor do
    the frames a part decodes for its last window that are the next part's (`lookahead_frames`)."""

    def __init__(self, span: WindowSpan, output_hw: tuple[int, int], metric: bool = False,
                 first_reference: np.ndarray | None = None, first_frame=None):
        if span.first > 0 and (first_reference is None or first_frame is None):
            raise ValueError("a part that starts after window 0 needs window 0's depth of frame 0, and frame 0")
        self.span = span
        self._position = span.decode_from  # the video's frame the next push is
        self._keyframes = [first_frame] if span.first > 0 else None
        self.planner = WindowPlanner() if span.first == 0 else None
        self.aligner = WindowAligner(output_hw, metric, first_reference if span.first > 0 else None)
        self._awaiting: deque = deque()  # frames pushed whose depth is not final yet
        self.lead_in_frames = 0
        self.lookahead_frames = 0

    @property
    def at_video_end(self) -> bool:
        """Whether the frames pushed run to the video's end (the last windows padded, every frame's depth given)."""
        return self.span.end is None or self._position < self.span.decode_end

    def push(self, frame) -> list[Window]:
        """The video's next frame; the window it completes, if any."""
        role = self.span.role(self._position)
        self._position += 1
        if role != "new":
            self.lead_in_frames += 1
            if role == "keyframe":
                self._keyframes.append(frame)
            return []
        if self.planner is None:
            self.planner = WindowPlanner(self._keyframes)
        self._awaiting.append(frame)
        return self.planner.push(frame)

    def finish(self) -> list[Window]:
        """No more frames: at the video's end the windows left, padded with copies of its last frame; none for a
        part that ends earlier (its last window is complete)."""
        return self.planner.finish() if self.planner is not None and self.at_video_end else []

    def add(self, depth_thw) -> list[tuple]:
        """The next window's depth (T x h x w): (frame, final depth H x W float32) for each frame it makes final."""
        return self._paired(self.aligner.add(depth_thw))

    def close(self) -> list[tuple]:
        """After the last window's depth: at the video's end, the frames no window came after; else none (the
        frames after the part's last final one are the next part's)."""
        pairs = self._paired(self.aligner.finish()) if self.at_video_end else []
        self.lookahead_frames += len(self._awaiting)
        self._awaiting.clear()
        return pairs

    def _paired(self, planes: list[np.ndarray]) -> list[tuple]:
        """Frames with their depth (depth maps of padding frames come last, and are dropped)."""
        return [(self._awaiting.popleft(), plane) for plane in planes[:len(self._awaiting)]]


class WindowedDepth:
    """Planner, network and aligner in one place: prepared frames (3 x h x w) in, depth maps out in frame order;
    the whole video, or one part of it (`span`, with window 0's depth of frame 0 and frame 0 for a part that starts
    later: see WindowSpan)."""

    def __init__(self, run_window: Callable[[torch.Tensor], torch.Tensor], output_hw: tuple[int, int],
                 metric: bool = False, span: WindowSpan | None = None, first_reference: np.ndarray | None = None,
                 first_frame: torch.Tensor | None = None):
        self.run_window = run_window
        self.part = SpanWindows(span or WindowSpan(0, 0), output_hw, metric, first_reference, first_frame)

    def push(self, frame_3hw: torch.Tensor) -> list[np.ndarray]:
        """One frame in; the depth of the frames no later window can change (in order, possibly none)."""
        return self._run(self.part.push(frame_3hw))

    def finish(self) -> list[np.ndarray]:
        """The end of the frames: every frame's depth that is left."""
        return self._run(self.part.finish()) + [plane for _, plane in self.part.close()]

    def _run(self, windows: list[Window]) -> list[np.ndarray]:
        return [plane for window in windows
                for _, plane in self.part.add(self.run_window(torch.stack(window.frames)))]


def _blend_weights(count: int) -> list[float]:
    """The new window's weight at each blended frame: 0, 1/(n-1), ..., 1, computed as the original does."""
    step = 1.0 / (count - 1)
    return [0.0] + [index * step for index in range(1, count - 1)] + [1.0]
