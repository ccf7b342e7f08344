"""
The file job: one video through a `DepthGraph`, whole or in keyframe segments joined at the end; its summary.

Takes: a graph (model actors and the stream wiring), a source (file, URL or image sequence), an output path (a file,
or a folder for the exr / png16 frame folders), and how to split it
(`segments`: 1, a count, or "auto"; `resume`: reuse the segments a killed run finished).
Gives: the output, which exists only if `process_video` returns, and the run's summary (frames in and out, fps,
CPU per frame of each stage, peak memory, the segments).

Policy only: what runs as how many streams, what is retried, what is fixed for the whole file before any frame
(the 16-bit scale), what is counted. The pixels are the stages' business and the actors the graph's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster.graph import DepthGraph, StreamResult
from pipeline.errors import PipelineError
from pipeline.formats import is_sequence_format, sixteen_bit
from pipeline.jobs.outputs import InputFiles, check_output, depth_output_name
from pipeline.jobs.segments import (
    SEGMENT_SUFFIX,
    Segment,
    segment_store,
    auto_segment_count,
    check_segmentable,
    fingerprint,
    join_segments,
    packet_index,
    plan_segments,
    plan_stream_segments,
    plan_window_segments,
)
from pipeline.jobs.thread_fan_out import run_in_threads
from pipeline.stages.frames import VideoInfo
from pipeline.stages.inference.temporal_windows import STEP
from pipeline.stages.render.colorize import DepthQuantizer
from pipeline.stages.render.depth_units import DepthUnits
from pipeline.stages.sinks.depth_sink import RenderOptions, output_metadata
from pipeline.stages.sinks.image_sequence_writer import join_sequence_folders
from pipeline.stages.sources.image_sequence import is_image_sequence
from pipeline.stages.sources.video_decoder import open_source
from pipeline.storage import is_remote
from pipeline.urls import is_url

__all__ = ["FileRequest", "FileRun", "check_file_run", "file_warnings", "process_video"]


@dataclass(frozen=True)
class FileRequest:
    """One video's run as the command line gave it."""

    source: str  # a path, a URL or an image sequence
    output: str | None = None  # None: beside the input, NAME_depth with the format's ending
    fps: float | None = None  # an image sequence's frame rate (a video keeps its own timestamps)
    record: str | None = None  # a recording is live mode's: refused here, naming it
    no_overwrite: bool = False


@dataclass(frozen=True)
class FileRun:
    """A checked run: the source as given, the output it may write, the source's timing."""

    source: str
    output: Path | str  # (an object's URL as text)
    info: VideoInfo


def check_file_run(settings, request: FileRequest) -> FileRun:
    """Every check that needs no Ray, each a one-line PipelineError naming the flag, file or URL; the source is
    opened once (its errors before Ray starts)."""
    source = request.source
    if request.fps is not None and not is_image_sequence(source):
        raise PipelineError(f"--fps {request.fps}: the frame rate is for image sequences; {source} keeps its own "
                            f"timestamps")
    if request.record:
        raise PipelineError(f"--record {request.record}: a recording is for live mode (a camera URL, --realtime or "
                            f"--live); a file run writes its output with -o")
    depth_format = settings.output.depth_format
    if request.output:
        output = request.output if is_remote(request.output) else Path(request.output)
    elif is_url(source):
        raise PipelineError(f"{source}: an input URL needs an output name: pass -o OUTPUT")
    else:
        output = depth_output_name(source, depth_format)
    output = check_output(output, depth_format, InputFiles([source]), request.no_overwrite)
    probe = open_source(source, settings.input.fps)
    info = probe.info
    probe.close()
    return FileRun(source, output, info)


def file_warnings(summary: dict, run: FileRun) -> list[str]:
    """What the user should know of a finished run that is not an error: frames that could not be read, a size
    that changed mid-stream, timestamps repaired."""
    lines, source, info = [], run.source, run.info
    if summary.get("unreadable_frames"):
        where = ", ".join(f"segment {s['index']} ({s['time']}): {s['unreadable_frames']}"
                          for s in summary.get("segments", []) if s["unreadable_frames"])
        lines.append(f"{source}: {summary['unreadable_frames']} frames could not be read (damaged or truncated "
                     f"file{'; ' + where if where else ''}); depth was written for the {summary['frames_in']} "
                     f"decodable frames")
    if summary.get("resized_frames"):
        lines.append(f"{source}: the frame size changed mid-stream; {summary['resized_frames']} frames were scaled "
                     f"to the first frame's size, {info.width}x{info.height}")
    if summary.get("segments_asked"):
        lines.append(f"{source}: --segments {summary['segments_asked']}: the clip's length and keyframes allow "
                     f"{summary['segments_run']}; it ran as {summary['segments_run']}")
    if summary.get("repaired_timestamps"):
        lines.append(f"{source}: {summary['repaired_timestamps']} frames repeated or went back on the previous "
                     f"frame's timestamp; each was moved one tick past it")
    return lines


def process_video(
    graph: DepthGraph, source: str, output: str, on_progress: Callable[[int], None] | None = None,
    info: VideoInfo | None = None, segments: int | str = 1, resume: bool = False,
) -> dict:
    """Stream one video; returns the run's summary. The output exists only if this returns.

    `info` is the source's VideoInfo when the caller has already probed it; otherwise it is probed here, which
    also validates the input with a clean error before any actor starts. `segments` (a count, or "auto") splits
    the video at keyframes into streams that run at once on the shared model actors and are joined by stream
    copy; `resume` reuses the segments a killed run finished (see `segments.py`).
    """
    if info is None:
        probe = open_source(source, graph.settings.input.fps)
        info = probe.info
        probe.close()
    started = time.monotonic()
    render = _render_options(graph, source)
    plan = _segment_plan(graph, source, output, info, segments)
    # Fewer segments than asked (a clip too short, or too few keyframes, to split so): said, never silent
    fewer = ({"segments_asked": int(segments), "segments_run": max(len(plan), 1)}
             if str(segments).isdigit() and max(len(plan), 1) < int(segments) else {})
    if len(plan) <= 1:
        result = graph.retrying(source, "", lambda: graph.run_stream(source, output, info, render,
                                                                     on_progress=on_progress))
        summary = summarize(graph, source, [result], time.monotonic() - started)
        return {**summary, "output": result.sink["output"], **fewer}
    output = output if is_remote(output) else Path(output)
    return {**_process_segments(graph, source, output, info, render, plan, resume, on_progress, started), **fewer}

# .................................................................................................................

def _render_options(graph: DepthGraph, source: str) -> RenderOptions:
    """The output settings, with the 16-bit scale fixed before any frame is written (see `_depth_scale`)."""
    render = graph.settings.output
    if sixteen_bit(render.depth_format) and render.depth_scale is None:
        render = dataclasses.replace(render, depth_scale=_depth_scale(graph, source))
    return render

def _depth_scale(graph: DepthGraph, source: str) -> float:
    """The 16-bit scale: for metres, the model's fixed millimetre scale; for relative depth, from the first frame
    alone (one value for the whole file however it is split, and the same for a whole run and a segmented one, so
    that they agree bit for bit)."""
    units = DepthUnits(graph.model_info.get("max_depth_m"))
    if units.metric:
        return units.metric_scale
    decoder = open_source(source, graph.settings.input.fps)
    first = next(decoder.batches(1))
    decoder.close()
    return DepthQuantizer.scale_for(graph.infer(first, "float32").depth[0])

def _segment_plan(graph: DepthGraph, source: str, output: str, info: VideoInfo,
                  segments: int | str) -> list[Segment]:
    if segments == 1 or (is_remote(output) and is_sequence_format(graph.settings.output.depth_format)):
        return []  # (a frame folder in object storage is written by one stream: objects cannot be renamed)
    if segments == "auto":
        duration = (info.expected_frames / float(info.rate)) if info.expected_frames and info.rate else None
        spare = graph.cluster_cpus - graph.plan.model_actors
        count = auto_segment_count(spare, duration, graph.settings.segments.min_seconds)
        if count == 1:
            return []
    else:
        count = int(segments)
    index = packet_index(source)
    check_segmentable(index, source)
    warmup_frames = round(graph.settings.segments.warmup_seconds * float(info.rate or 30))
    if not graph.model_info.get("temporal"):
        return plan_segments(index, count, warmup_frames)
    # A video model: every window is tied to window 0 and every cache to frame 0 (decoded again by each segment),
    # and to the windows or frames before it, whose hold shrinks with distance: the same warm-up, in windows
    if graph.settings.model.vda_mode == "stream":
        return plan_stream_segments(index, count, warmup_frames)
    return plan_window_segments(index, count, max(1, math.ceil(warmup_frames / STEP)))

def _process_segments(graph: DepthGraph, source: str, output: Path | str, info: VideoInfo, render: RenderOptions,
                      plan: list[Segment], resume: bool, on_progress, started: float) -> dict:
    fingerprint_settings = {"output": dataclasses.asdict(dataclasses.replace(render, no_overwrite=False)), "model": dataclasses.asdict(graph.settings.model),
                            "smoothing": dataclasses.asdict(graph.settings.smoothing),
                            "input": dataclasses.asdict(graph.settings.input)}  # (an image sequence's rate)
    frame_folders = is_sequence_format(render.depth_format)
    store = segment_store(output, fingerprint(source, plan, fingerprint_settings),
                          suffix="" if frame_folders else SEGMENT_SUFFIX)
    store.open(resume)
    segment_render = dataclasses.replace(render, copy_audio=False, no_overwrite=False)  # (work a retry may redo)
    todo = [segment for segment in plan if segment.index not in store.done]
    reused = [segment for segment in plan if segment.index in store.done]
    if on_progress:
        on_progress(sum(store.done[s.index]["frames"] for s in reused))
    results: dict[int, StreamResult] = {}
    failures: list[BaseException] = []

    def run(segment: Segment) -> None:
        try:
            result = results[segment.index] = _run_segment(graph, source, store, segment, info, segment_render,
                                                                on_progress)
            written = result.sink["frames_out"]
            # Frames the index promised that could not be decoded (damaged packets), or missing at the end
            missing = (segment.frames - written if result.decode["corrupt_packets"] else 0) + \
                result.decode["unreadable_frames"]
            store.finish(segment, written, max(missing, 0))
        except BaseException as error:  # noqa: BLE001 - handed to the driver thread below
            failures.append(error)

    # Segments in flight at once: one per CPU of the cluster (each holds a decode and a sink actor); each
    # thread drives one segment's stream at a time, and all streams share the model actors
    parallel = int(graph.cluster_cpus)
    try:
        run_in_threads(todo, run, parallel, stop=lambda: bool(failures))
        if failures:
            raise failures[0]
        files = [store.path_of(segment) for segment in plan]
        if frame_folders:
            path, _ = join_sequence_folders(files, output)
        else:
            units = DepthUnits(graph.model_info.get("max_depth_m"))
            path = join_segments(files, output, render.depth_format, info, render.copy_audio,
                                 output_metadata(render.depth_scale if render.depth_format == "gray16" else None,
                                                 units), render.no_overwrite)
    except Exception:  # an error: nothing is left behind
        store.remove()
        raise
    except BaseException:  # Ctrl-C, SIGTERM: finished segments stay for --resume
        store.release()
        raise
    store.remove()
    summary = summarize(graph, source, [results[i] for i in sorted(results)], time.monotonic() - started)
    written = sum(store.done[s.index]["frames"] for s in plan)
    return {**summary, "output": str(path), "frames_in": written, "frames_out": written,
            "unreadable_frames": sum(store.done[s.index]["missing"] for s in plan),
            "segments": [{"index": s.index, "time": s.time_range(info.time_base),
                          "frames": store.done[s.index]["frames"], "unreadable_frames": store.done[s.index]["missing"],
                          "reused": s in reused} for s in plan]}

def _run_segment(graph: DepthGraph, source: str, store: SegmentStore, segment: Segment, info: VideoInfo,
                 render: RenderOptions, on_progress) -> StreamResult:
    where = f"segment {segment.index} ({segment.time_range(info.time_base)}): "
    return graph.retrying(source, where, lambda: graph.run_stream(
        source, str(store.path_of(segment)), info, render, pts_range=segment.decode_range,
        write_from_pts=segment.start, on_progress=on_progress,
        prefix_range=(None, segment.prefix_end) if segment.prefix_end is not None else None,
        window_span=segment.windows))


def summarize(graph: DepthGraph, source: str, results: list[StreamResult], seconds: float) -> dict:
    """Totals over the streams of one video (one, or its segments)."""
    model_rss = graph.model_actors_peak_rss()
    decode_stats = [r.decode for r in results]
    sink_stats = [r.sink for r in results]
    frames_in = sum(d["frames_in"] - d.get("lead_in_frames", 0) for d in decode_stats) - \
        sum(k["warmup_frames"] for k in sink_stats)
    frames_out = sum(k["frames_out"] for k in sink_stats)
    steady_frames = sum(r.progress["frames_after_first"] for r in results)
    first_written = [r.progress["first_written_at"] for r in results if r.progress["first_written_at"]]
    steady_s = (max(r.finished for r in results) - min(first_written)) if first_written else 0
    cpu_s: dict[str, float] = {}
    for decode, sink in zip(decode_stats, sink_stats):
        for stage, value in (("decode", decode["cpu_s"]), ("sink", sink["cpu_s"]),
                             *((f"sink: {k}", v) for k, v in sink["stage_cpu_s"].items())):
            cpu_s[stage] = cpu_s.get(stage, 0.0) + value
    summary = {
        "input": source,
        "frames_in": frames_in,
        "unreadable_frames": sum(d["unreadable_frames"] for d in decode_stats) if len(results) == 1 else 0,
        "corrupt_packets": sum(d["corrupt_packets"] for d in decode_stats),
        "repaired_timestamps": sum(d["repaired_timestamps"] for d in decode_stats),
        "resized_frames": sum(d["resized_frames"] for d in decode_stats),
        "frames_out": frames_out,
        "dropped": 0,
        "retried_streams": sum(r.attempts - 1 for r in results),  # lost to a dead worker or node, run again
        "seconds": round(seconds, 3),
        "fps": round(frames_out / seconds, 3) if seconds > 0 else None,
        "fps_steady": round(steady_frames / steady_s, 3) if steady_s > 0 else None,
        "depth_format": graph.settings.output.depth_format,
        "batch_size": graph.batch_size,
        "model": graph.model_info,
        "peak_rss_mb": {"decode": max((d["peak_rss_mb"] for d in decode_stats), default=None),
                        "model": max(model_rss, default=None),
                        "sink": max((k["peak_rss_mb"] for k in sink_stats), default=None)},
        # CPU of the streams' own actors, per frame (the model actors' is in their usage(): they are shared)
        "cpu_ms_per_frame": {stage: round(value * 1e3 / max(frames_out, 1), 2) for stage, value in cpu_s.items()},
        # Where its streams ran, and what crossed the network: frames to a model actor on another node, depth back
        "nodes": sorted({d["node"] for d in decode_stats}),
        "bytes_across_nodes": sum(d["frame_bytes_across_nodes"] for d in decode_stats)
        + sum(k["depth_bytes_across_nodes"] for k in sink_stats),
    }
    if graph.model_info.get("temporal"):
        # A video model's streaming cache lost with its model actor, started again at these times (seconds); the
        # window mode keeps its state in the stream's own actor, and a lost model actor's windows run again as sent
        summary["rebuilt_caches_at_s"] = [seconds for k in sink_stats for seconds in k["cache_rebuilt_at_s"]]
    if sixteen_bit(graph.settings.output.depth_format) and sink_stats:
        summary.update(depth_scale=sink_stats[0]["depth_scale"],
                       saturated_pixels=sum(k["saturated_pixels"] for k in sink_stats))
    return summary
