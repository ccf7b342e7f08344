"""
A Ray Data datasource of video frames read with PyAV, each frame with its exact timestamp.

Takes: `FrameRange`s, a read task each: a video (or image sequence, local or in object storage), whole or a stretch of
it between two keyframes; `jobs/video_frames.py` makes them from what the batch command takes (`read_video_frames`).
Gives: a row a frame, in each video's order within a task: "path" (the video as found), "frame_index" (from 0 in
the video), "pts" and "time_base" (the source's own timestamp, exact: 1001/30000 stays 1001/30000), "time_s" (the
same in seconds), "frame" (H x W x 3 uint8 RGB, upright after rotation metadata).

Unlike `ray.data.read_videos` (decord; a task per file, frames timed by the average rate), the timestamps here are the
container's, as the pipeline's own jobs keep them, variable frame rates included; and the pixels are the ones the
pipeline's model actor sees (I420 converted by the same code), so `DepthEstimator(column="frame")` gives the CLI's
depth for each frame. An image sequence's frames are timed at `fps` (its images have no timestamps).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

try:
    from ray.data import Datasource
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import ReadTask
except ImportError as error:  # (pyarrow missing: Ray Data's own dependency, not Ray's)
    raise ImportError(f"Ray Data cannot be imported ({error}): pip install 'video-depth[data]'") from error

from pipeline.stages.pixels import to_rgb
from pipeline.stages.sources.video_decoder import open_source

__all__ = ["FrameRange", "VideoFramesDatasource", "frames_dataset"]

logger = logging.getLogger(__name__)

# Frames a block: a block of about this many bytes of frames (Ray Data's blocks are best kept well under 128 MiB)
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class FrameRange:
    """One read task's frames: `source`'s frames with start <= pts < end (None: from the start / to the end), the
    first of them the video's frame `first_index`; `frames` as the packet index counts them (None: not indexed)."""

    source: str
    start: int | None = None
    end: int | None = None
    first_index: int = 0
    frames: int | None = None


class VideoFramesDatasource(Datasource):
    """`ray.data.read_datasource(VideoFramesDatasource(ranges))`: see the module docstring. `fps`: an image
    sequence's frame rate (its images have no timestamps)."""

    def __init__(self, ranges: list[FrameRange], fps: float | str = 30):
        super().__init__()
        self.ranges, self.fps = list(ranges), fps

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # (known only once each video is opened: its frame size times its frames)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        """One task per range (`parallelism` is Ray's wish; the ranges were chosen when they were made)."""
        tasks = []
        for frame_range in self.ranges:
            metadata = BlockMetadata(num_rows=frame_range.frames, size_bytes=None, input_files=[frame_range.source],
                                     exec_stats=None)
            read = functools.partial(read_frames, frame_range, self.fps)  # (this range alone travels with its task)
            try:
                tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
            except TypeError:  # (Ray before 2.45 has no per-task row limit)
                tasks.append(ReadTask(read, metadata))
        return tasks


def read_frames(frame_range: FrameRange, fps: float | str = 30):
    """A read task: the range's frames as blocks of rows (see the module docstring)."""
    decoder = open_source(frame_range.source, fps=fps,
                          **({"pts_range": (frame_range.start, frame_range.end)}
                             if frame_range.start is not None or frame_range.end is not None else {}))
    try:
        time_base = decoder.info.time_base
        frame_bytes = decoder.info.width * decoder.info.height * 3
        rows_per_block = max(1, BLOCK_BYTES // frame_bytes)
        rows: list[tuple[int, np.ndarray]] = []
        index = frame_range.first_index
        for pts, pixels in decoder.frames():
            rows.append((pts, to_rgb(pixels, decoder.layout)))  # (the model actor's own conversion of I420)
            if len(rows) == rows_per_block:
                yield BlockAccessor.batch_to_block(_block(frame_range.source, index, rows, time_base))
                index += len(rows)
                rows = []
        if rows:
            yield BlockAccessor.batch_to_block(_block(frame_range.source, index, rows, time_base))
        unreadable = decoder.unreadable_frames
        if unreadable:
            logger.warning("%s: %d frames the container announced could not be decoded", frame_range.source,
                           unreadable)
    finally:
        decoder.close()


def _block(source: str, first_index: int, rows: list[tuple[int, np.ndarray]], time_base: Fraction) -> dict:
    pts = np.array([p for p, _ in rows], dtype=np.int64)
    return {
        "path": np.array([source] * len(rows), dtype=object),
        "frame_index": np.arange(first_index, first_index + len(rows), dtype=np.int64),
        "pts": pts,
        "time_base": np.array([str(time_base)] * len(rows), dtype=object),
        "time_s": np.array([float(p * time_base) for p in pts.tolist()], dtype=np.float64),
        "frame": np.stack([pixels for _, pixels in rows]),
    }


def frames_dataset(ranges: list[FrameRange], fps: float | str = 30, **read_args):
    """A Ray dataset of the ranges' frames; `read_args` are `ray.data.read_datasource`'s (concurrency, num_cpus,
    ray_remote_args, ...)."""
    import ray.data

    return ray.data.read_datasource(VideoFramesDatasource(ranges, fps), **read_args)
