"""
The sink actor: one stream's DepthSink at a time (order, smoothing, rendering, writing), kept for the next stream.

Takes: `open` (the output and its settings), then `write(DepthBatch, FrameBatch)` in any order, then `close` or
`abort`. Gives: from `close`, the stream's output figures (frames written, peak memory, CPU seconds).
"""

from __future__ import annotations

import ray

from pipeline.cluster.ray_calls import cpu_seconds, naming_the_node, one_thread_each, peak_rss_mb
from pipeline.stages.frames import VideoInfo
from pipeline.stages.render.smoothing import make_smoother
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions
from pipeline.storage import configure as configure_storage

__all__ = ["SinkActor"]


@ray.remote(num_cpus=0)
class SinkActor:
    """One stream's sink at a time: `open` names the stream's output and settings, `write` takes its batches,
    `close` (or `abort`) ends it; the actor is then ready for the next stream."""

    def __init__(self):
        one_thread_each()
        self._sink = self._args = None
        self._depth_bytes_across = 0

    def open(self, output: str, info: VideoInfo, render: RenderOptions, smoother_name: str, params: dict,
             smoother_device: str, write_from_pts: int | None = None, temporary_tag: str | None = None,
             model: dict | None = None, storage_options: dict | None = None) -> None:
        """`model`: what the model actors loaded (graph.model_info), for the outputs that describe it.
        `storage_options`: the job's, for an s3:// or gs:// output (uploaded from this node, with its credentials)."""
        configure_storage(storage_options)
        self._cpu_at_start = cpu_seconds()
        self._depth_bytes_across = 0
        self._args = (output, info, render, smoother_name, params, smoother_device, write_from_pts, temporary_tag,
                      model)
        self._sink = None

    def _opened(self) -> DepthSink:
        """The stream's sink, made on its first write, so that its errors arrive as the write's errors."""
        if self._args is None:  # aborted: a write still queued from the failed stream must not start a new file
            raise RuntimeError("the sink was aborted")
        if self._sink is None:
            output, info, render, smoother_name, params, smoother_device, write_from_pts, tag, model = self._args
            self._sink = DepthSink(output, info, render,
                                   make_smoother(smoother_name, device=smoother_device, **params), write_from_pts, tag,
                                   model=model)
        return self._sink

    @naming_the_node
    def write(self, depth_batch, frame_batch, from_another_node: bool = False) -> int:
        """`from_another_node`: the depth came from a model actor on another node (its bytes are counted)."""
        if from_another_node:
            self._depth_bytes_across += depth_batch.depth.nbytes
        return self._opened().write(depth_batch, frame_batch)

    @naming_the_node
    def close(self) -> dict:
        stats = self._opened().close()
        self._sink = None
        return {**stats, "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_seconds() - self._cpu_at_start,
                "depth_bytes_across_nodes": self._depth_bytes_across}

    def abort(self) -> None:
        self._args = None
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def ready(self) -> bool:
        return True

