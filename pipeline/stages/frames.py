"""
What flows between the stages: batches of frames and of depth maps, each frame with its index and exact timestamp.

A `FrameBatch` carries B decoded frames as one uint8 array, upright after any rotation metadata: I420 (YUV 4:2:0,
half the bytes, converted to RGB on the model's device) or packed RGB; a `DepthBatch` the matching depth (relative
inverse depth, or metres), B x h x w at the model's resolution. Timestamps stay in the source's units (`pts` in `time_base`), so
variable frame rates and 29.97 fps survive exactly.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


class PipelineError(RuntimeError):
    """A problem with the user's input, output or settings; the message is one line that names the file or URL."""


def write_failed(output, error: BaseException) -> PipelineError:
    """A failed write of `output` as one line: a full disk said so, naming the disk (the mount point) whatever the
    writer reported (EXR's RuntimeError, OpenCV's False, FFmpeg's error), else the writer's own reason."""
    folder = os.path.dirname(os.path.abspath(str(output)))
    while folder != os.path.dirname(folder) and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    mount = folder
    while mount != os.path.dirname(mount) and not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    try:
        full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        full = False
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error) or full:
        return PipelineError(f"{output}: cannot write the output: the disk is full (no space left on {mount})")
    reason = getattr(error, "strerror", None) or one_line(error)
    return PipelineError(f"{output}: cannot write the output ({reason})")


def one_line(error: BaseException) -> str:
    """An error's message as one line (its first), for messages that must stay one line."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


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

    def __len__(self) -> int:
        return len(self.pts)


@dataclass
class DepthBatch:
    """Depth for a FrameBatch: `depth` B x h x w (float16 or float32) at the model's resolution, which keeps the
    frame's aspect ratio; same indices and timestamps. `DepthSink` resizes it to the frame size. `max_depth`: None
    for relative inverse depth (larger is nearer), or the metric model's range: metres, in (0, max_depth]."""

    first_index: int
    pts: list[int]
    time_base: Fraction
    depth: np.ndarray
    max_depth: float | None = None

    def __len__(self) -> int:
        return len(self.pts)


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
