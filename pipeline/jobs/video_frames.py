"""
Video frames for Ray Data: the batch command's inputs as a dataset of frames, each with its exact timestamp.

Takes: what `run_pipeline.py batch` takes (video files, folders searched for videos and image sequences, globs,
manifests; the same in object storage: inputs.py), `parts_per_video` (read tasks a video: 1 reads it whole; more split
it at keyframes, found by demuxing it here, on the driver, so that several tasks read one long video at once), and an
image sequence's `fps`.
Gives: `read_video_frames`, a Ray dataset with a row a frame: "path", "frame_index", "pts", "time_base", "time_s",
"frame" (H x W x 3 uint8 RGB; cluster/video_frames.py, the datasource that reads them); `frame_ranges`, its read tasks.

    from pipeline.cluster.ray_data import DepthEstimator
    from pipeline.jobs.video_frames import read_video_frames

    frames = read_video_frames("s3://bucket/videos/", parts_per_video=4)
    depth = frames.map_batches(DepthEstimator, fn_constructor_kwargs={"column": "frame"}, batch_size=8, ...)
"""

from __future__ import annotations

from pipeline.cluster.video_frames import FrameRange, frames_dataset
from pipeline.errors import PipelineError
from pipeline.jobs.inputs import find_inputs
from pipeline.jobs.segments import packet_index, plan_segments

__all__ = ["frame_ranges", "read_video_frames"]


def frame_ranges(inputs: str | list[str], parts_per_video: int = 1) -> list[FrameRange]:
    """Every input's frames as read tasks: a task a video, or up to `parts_per_video` split at keyframes. A missing
    or unreadable input is a one-line PipelineError naming it, before any task runs."""
    if parts_per_video < 1:
        raise PipelineError(f"parts_per_video must be 1 or more, not {parts_per_video}")
    specs = [inputs] if isinstance(inputs, str) else [str(spec) for spec in inputs]
    items = find_inputs(specs)
    if not items:
        raise PipelineError(f"no videos or image sequences in {', '.join(specs)}")
    return [part for item in items for part in _parts(str(item.source), parts_per_video)]


def _parts(source: str, count: int) -> list[FrameRange]:
    if count == 1:
        return [FrameRange(source)]
    ranges, first = [], 0
    for segment in plan_segments(packet_index(source), count):  # (demuxed, not decoded)
        ranges.append(FrameRange(source, segment.start if segment.index else None, segment.end, first,
                                 segment.frames))
        first += segment.frames
    return ranges or [FrameRange(source)]


def read_video_frames(inputs: str | list[str], parts_per_video: int = 1, fps: float | str = 30, **read_args):
    """The inputs' frames as a Ray dataset (see the module docstring); `read_args` are `ray.data.read_datasource`'s
    (concurrency, num_cpus, ray_remote_args, ...)."""
    return frames_dataset(frame_ranges(inputs, parts_per_video), fps, **read_args)
