"""
Live mode with one camera: its loop (stages/live/camera_runner.py) in this process, the model actors through the graph.

Takes: what the command asked (`LiveRequest`: the source URL or a file to play in real time, where to publish and/or
record, the settings), checked by `LiveJob.from_request` before Ray starts; then a `DepthGraph`.
Gives: the depth stream, published as frames come; the summary (frames_in, frames_out, dropped, reconnects,
latency_ms p50 / p95 / max, ...) when stopped (`stop()`, Ctrl-C, SIGTERM) or when a realtime file ends.

The camera's loop runs in the driver's process: one camera needs no extra hop. Many cameras in one job, each on a
worker of its own and batched together on the model actors, are jobs/cameras.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.cluster.metrics import RayMetrics
from pipeline.errors import PipelineError
from pipeline.formats import DEPTH_FORMATS, depth_format
from pipeline.jobs.outputs import InputFiles, check_output
from pipeline.settings import PipelineSettings, live_camera_options
from pipeline.stages.live.camera_runner import LiveCamera, LiveTargets
from pipeline.stages.sinks.rtsp_publisher import check_publish_url
from pipeline.stages.sources.live_stream import LiveSource
from pipeline.storage import is_remote
from pipeline.urls import is_publish_url


def live_depth_format_problem(name: str, publish: bool = False) -> str | None:
    """Why live mode cannot write a depth format (None when it can): it publishes and records videos."""
    row = depth_format(name)
    if not row.record:
        published = ", ".join(r.name for r in DEPTH_FORMATS.values() if r.publish)
        recorded = ", ".join(r.name for r in DEPTH_FORMATS.values() if r.record and not r.publish)
        return (f"depth_format {name} writes folders of frames, for files; live mode publishes and records videos "
                f"({published}; {recorded} for a recording)")
    if publish and not row.publish:
        return f"depth_format {name} cannot be published over RTSP (8-bit H.264); record it to a file instead"
    return None


@dataclass(frozen=True)
class LiveRequest:
    """One camera's run as the command line gave it (flags the live mode refuses are named in `file_flags`)."""

    source: str | None
    output: str | None  # an rtsp:// URL to publish to, or the recording
    record: str | None
    realtime: bool = False  # a file played at its own rate
    no_overwrite: bool = False
    file_flags: tuple[str, ...] = ()  # flags given that are for files only (--segments, --resume)


class LiveJob:
    def __init__(self, settings: PipelineSettings, source: LiveSource, targets: LiveTargets, log=None,
                 publish_must_connect: bool = False):
        """`publish_must_connect`: a destination that refuses the first session ends the run (exit 2)."""
        self.targets = targets
        self.camera = LiveCamera(live_camera_options(settings), source, targets, log=log,
                                 metrics=RayMetrics() if settings.live.metrics else None,
                                 publish_must_connect=publish_must_connect)
        self.source = source

    @classmethod
    def from_request(cls, settings: PipelineSettings, request: LiveRequest) -> LiveJob:
        """Every check that needs no Ray, each a one-line PipelineError naming the flag, file or URL; the source is
        opened once (a source that cannot be opened at start is an error, not a retry loop)."""
        if request.source is None:
            raise PipelineError("live mode needs an input: a camera URL, or a file with --realtime")
        for flag in request.file_flags:
            raise PipelineError(f"{flag} is for files; a live stream is one stream, run as it comes")
        if settings.model.vda_mode == "window":
            raise PipelineError("--vda-mode window is for files: a live camera runs a video model in its streaming "
                                "mode (one frame at a time)")
        publish = request.output if is_publish_url(request.output or "") else None
        problem = live_depth_format_problem(settings.output.depth_format, publish=bool(publish))
        if problem:
            raise PipelineError(f"--depth-format: {problem}")
        if request.output and not publish and request.record:
            raise PipelineError(f"-o {request.output} and --record {request.record}: live mode records to one file; "
                                f"give it once (-o takes an rtsp:// URL to publish to, or the recording)")
        record = request.record or (request.output if request.output and not publish else None)
        if record and is_remote(record):
            raise PipelineError(f"{record}: a live recording is a local file (written fragment by fragment, playable "
                                f"up to a crash; an object cannot be appended to): record locally, then copy it")
        if record:
            check_output(record, settings.output.depth_format, InputFiles([request.source]), request.no_overwrite,
                         "recording")
        if not publish and not record:
            raise PipelineError(f"{request.source}: live mode needs somewhere to send depth: -o rtsp://SERVER/PATH "
                                f"and/or --record FILE")
        live = settings.live
        source = LiveSource(request.source, realtime=request.realtime, transport=live.transport,
                            read_timeout_s=live.read_timeout_s, backoff_s=(0.5, live.backoff_max_s))
        source.open().close()
        if publish:
            # (no probe connection: a one-shot receiver would take it as its publisher; the first session is the check)
            check_publish_url(publish)
        return cls(settings, source, LiveTargets(publish, record), publish_must_connect=True)

    def stop(self) -> None:
        self.camera.stop()

    def run(self, graph, decoder=None) -> dict:
        """Until stopped (or a realtime file ends); `decoder`: the source's first connection (opened here if None,
        after the graph has loaded the models, so start-up is not counted as latency)."""
        model = graph.model_info
        summary = self.camera.run(graph.submit, decoder if decoder is not None else self.source.open(), model=model)
        return {**summary, "model": model}  # (what ran, as the file and many-camera jobs say)


__all__ = ["LiveJob", "LiveRequest", "LiveTargets", "live_depth_format_problem"]
