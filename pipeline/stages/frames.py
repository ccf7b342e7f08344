"""
What flows between the stages: batches of frames and of depth maps, each frame with its index and exact timestamp.

A `FrameBatch` carries B decoded frames as one uint8 array, upright after any rotation metadata: I420 (YUV 4:2:0,
half the bytes, converted to RGB on the model's device) or packed RGB; a `DepthBatch` the matching depth (relative
inverse depth, or metres), B x h x w at the model's resolution (a video model's: at the frame size, below). Timestamps
stay in the source's units (`pts` in `time_base`), so variable frame rates and 29.97 fps survive exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.stages.pixels import RGB24, YUV420P

__all__ = ["DepthBatch", "FrameBatch", "VideoInfo", "batched"]


@dataclass(frozen=True)
class VideoInfo:
    """What the encoder needs to reproduce the source's timing and the sink's frame size."""

    source: str
    width: int  # upright (display) size, after rotation metadata is applied
    height: int
    rate: Fraction  # average frame rate, exact (30000/1001 for 29.97)
    time_base: Fraction
    rotation: int  # degrees counter-clockwise, as stored in the display matrix
    expected_frames: int | None  # from the container, when it says; None when unknown
    has_audio: bool
    codec: str


@dataclass
class FrameBatch:
    """B consecutive frames, `pts[i]` in `time_base` units, indices from `first_index`. `pixels` is uint8 in `layout`
    (see `pixels.py`): "rgb24", B x H x W x 3, or "yuv420p" (I420), B x (H * 3 / 2) x W, half the bytes."""

    first_index: int
    pts: list[int]
    time_base: Fraction
    pixels: np.ndarray
    layout: str = "rgb24"

    def __post_init__(self):
        """Checked where made, so a wrong batch fails at its maker, with its shapes, not deep inside the model (the
        message is made only then: batches are made for every few frames)."""
        problem = self._problem()
        if problem:
            raise ValueError(f"FrameBatch from frame {self.first_index}: pixels {getattr(self.pixels, 'shape', None)} "
                             f"{getattr(self.pixels, 'dtype', '')}, {len(self.pts)} timestamps, layout "
                             f"{self.layout!r}: {problem}")

    def _problem(self) -> str | None:
        if self.layout not in (RGB24, YUV420P):
            return f"the layout must be {RGB24!r} or {YUV420P!r}"
        if not isinstance(self.pixels, np.ndarray) or self.pixels.dtype != np.uint8:
            return "the pixels must be a uint8 numpy array"
        shape = self.pixels.shape
        if self.layout == RGB24 and (self.pixels.ndim != 4 or shape[3] != 3):
            return "rgb24 pixels are B x H x W x 3"
        if self.layout == YUV420P and (self.pixels.ndim != 3 or shape[1] % 3 or shape[2] % 2):
            return "I420 pixels are B x (H * 3 / 2) x W, H and W even"
        return timing_problem(self.first_index, self.pts, len(self.pixels))

    def __len__(self) -> int:
        return len(self.pts)


@dataclass
class DepthBatch:
    """Depth for a FrameBatch: `depth` B x h x w (float16 or float32) at the model's resolution, which keeps the
    frame's aspect ratio; same indices and timestamps. `DepthSink` resizes it to the frame size. A video model's
    depth comes at the frame size already: Video Depth Anything resizes with aligned corners (the sink's resize
    has half-pixel centres, as Depth-Anything's own), done on the model's device to stay faithful. `max_depth`: None
    for relative inverse depth (larger is nearer), or the metric model's range: metres, in (0, max_depth].
    `history`: a video model's streaming mode: how many of the stream's frames its cache had seen before this batch
    (fewer than `first_index`: the cache was lost with its model actor and started again here)."""

    first_index: int
    pts: list[int]
    time_base: Fraction
    depth: np.ndarray
    max_depth: float | None = None
    history: int | None = None

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise ValueError(f"DepthBatch from frame {self.first_index}: depth {getattr(self.depth, 'shape', None)} "
                             f"{getattr(self.depth, 'dtype', '')}, {len(self.pts)} timestamps: {problem}")

    def _problem(self) -> str | None:
        if not isinstance(self.depth, np.ndarray) or self.depth.ndim != 3 or \
                self.depth.dtype not in (np.float16, np.float32):
            return "depth is a float16 or float32 numpy array, B x h x w"
        if self.max_depth is not None and not self.max_depth > 0:
            return f"max_depth {self.max_depth} is not a positive range in metres"
        return timing_problem(self.first_index, self.pts, len(self.depth))

    def __len__(self) -> int:
        return len(self.pts)


def timing_problem(first_index: int, pts: list[int], count: int) -> str | None:
    """A batch's frames: at least one, one timestamp each, timestamps increasing (the order frames are shown in)."""
    if first_index < 0:
        return "a frame index is never negative"
    if count == 0 or count != len(pts):
        return "one timestamp for each of at least one frame"
    if any(later <= earlier for earlier, later in zip(pts, pts[1:])):
        return f"timestamps must increase ({pts[:8]}{' ...' if len(pts) > 8 else ''})"
    return None


def batched(timed_frames: Iterable[tuple[int, object]], fill: Callable[[object, np.ndarray], None],
            frame_shape: tuple[int, ...], time_base: Fraction, layout: str, batch_size: int,
            max_wait_s: float | None = None) -> Iterator[FrameBatch]:
    """(pts, frame) pairs -> FrameBatches of `batch_size` consecutive frames (a live source also closes one after
    `max_wait_s`). Each batch's uint8 array is allocated once and `fill(frame, out)` writes each frame into its place:
    a decoder copies its frames once, into the batch."""
    index, pts_list, pixels, started = 0, [], None, 0.0
    for pts, frame in timed_frames:
        if not pts_list:
            started = time.monotonic()
            pixels = np.empty((batch_size, *frame_shape), np.uint8)
        fill(frame, pixels[len(pts_list)])
        pts_list.append(pts)
        waited_out = max_wait_s is not None and time.monotonic() - started >= max_wait_s
        if len(pts_list) >= batch_size or waited_out:
            yield FrameBatch(index, pts_list, time_base, pixels[: len(pts_list)], layout)
            index += len(pts_list)
            pts_list = []
    if pts_list:
        yield FrameBatch(index, pts_list, time_base, pixels[: len(pts_list)], layout)
