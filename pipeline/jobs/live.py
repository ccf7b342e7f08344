"""
Live mode with one camera: its loop (stages/live/camera_runner.py) in this process, the model actors through the graph.

Takes: a live source (`LiveSource`: a URL, or a file played at its own rate), where to publish (an rtsp:// URL) and/or
a file to record to, the job's settings; then a `DepthGraph` and the source's first connection.
Gives: the depth stream, published as frames come; the summary (frames_in, frames_out, dropped, reconnects,
latency_ms p50 / p95 / max, ...) when stopped (`stop()`, Ctrl-C, SIGTERM) or when a realtime file ends.

The camera's loop runs in the driver's process: one camera needs no extra hop. Many cameras in one job, each on a
worker of its own and batched together on the model actors, are jobs/cameras.py.
"""

from __future__ import annotations

from pipeline.cluster.metrics import RayMetrics
from pipeline.settings import PipelineSettings, live_camera_options
from pipeline.stages.live.camera_runner import LiveCamera, LiveTargets
from pipeline.stages.sources.live_stream import LiveSource


class LiveJob:
    def __init__(self, settings: PipelineSettings, source: LiveSource, targets: LiveTargets, log=None,
                 publish_must_connect: bool = False):
        """`publish_must_connect`: a destination that refuses the first session ends the run (exit 2)."""
        self.camera = LiveCamera(live_camera_options(settings), source, targets, log=log,
                                 metrics=RayMetrics() if settings.live.metrics else None,
                                 publish_must_connect=publish_must_connect)

    def stop(self) -> None:
        self.camera.stop()

    def run(self, graph, decoder) -> dict:
        """Until stopped (or a realtime file ends); `decoder` is the source's first connection."""
        return self.camera.run(graph.submit, decoder)


__all__ = ["LiveJob", "LiveTargets"]
