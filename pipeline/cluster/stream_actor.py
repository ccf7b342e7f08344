"""
The stream actor: one stream's own process. It decodes the stream (VideoDecoder or an image sequence) and drives every
batch through a model actor to the stream's sink actor, on the worker node.

Takes: a StreamJob (where to read, how to batch), the stream's sink actor, the job's model actors.
Gives: a stream of (PROGRESS, frames written) and last (RESULT, the stream's figures); then serves the next stream
(stream_actor_cache.py). Construction stores nothing but settings: errors arrive as the calls' errors.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray

from pipeline.cluster.model_router import ModelRouter
from pipeline.cluster.ray_calls import (
    HEALTH_CHECK_S,
    cpu_seconds,
    one_thread_each,
    peak_rss_mb,
    unwrap_ray_error,
    with_node,
)
from pipeline.errors import PipelineError
from pipeline.stages.frames import DepthBatch, FrameBatch
from pipeline.stages.inference.temporal_windows import (
    INFER_LEN,
    SpanWindows,
    Window,
    WindowSpan,
    first_window_reference,
    window_batch,
)
from pipeline.stages.sources.video_decoder import open_source
from pipeline.storage import configure as configure_storage

__all__ = ["StreamActor", "StreamJob"]


@dataclass(frozen=True)
class StreamJob:
    """What a stream actor needs to run one stream: where to read, how to batch, what to ask of the model actors."""

    source: str
    batch_size: int
    layout: str  # frame layout between actors: auto | rgb24
    pts_range: tuple[int, int | None] | None  # decode only [start, end): a segment with its warm-up
    depth_dtype: str  # float16, or float32 for the 16-bit output
    max_in_flight: int  # batches decoded and not yet written, at most
    restart_timeout_s: float  # a model actor down this long is dropped (model_router.py)
    sink_args: tuple = ()  # SinkActor.open's arguments: the stream opens its sink, so that open precedes its writes
    progress_every_s: float = 0.5  # how often the stream tells the driver how far it is
    fps: float | str | None = None  # an image sequence's frame rate (videos have their own timestamps)
    windows: bool = False  # a video model in window mode: frames go to the model actors as overlapping windows
    metric: bool = False  # its depth in metres: windows are not fitted to each other by scale and shift
    stream_key: str | None = None  # a video model in streaming mode: every batch to one model actor, under this key
    # A segment of a video model: the video's opening frames it decodes first ([start, end) of pts: window 0, or
    # frame 0), and in window mode the windows it runs (the frames of pts_range are then those of its windows)
    prefix_range: tuple[int | None, int] | None = None
    window_span: WindowSpan | None = None
    storage_options: dict = field(default_factory=dict)  # the job's storage.options, for s3:// and gs:// sources


PROGRESS, RESULT = "progress", "result"


# Stream and sink actors declare no CPU: they are light next to a model actor, and streams must never wait behind the
# model actors for a core (on a 2-core machine the model actor takes one). How many are open at once is bounded by
# the graph instead (plan.max_streams: videos and segments of a job together).
@ray.remote(num_cpus=0)
class StreamActor:
    """A stream's own process: decodes it and drives every batch through a model actor to the stream's sink, on the
    worker node, so the job's driver makes a handful of Ray calls per stream instead of three per batch.

    `run` yields (PROGRESS, frames written since the last report) every `progress_every_s`, then (RESULT, the
    stream's figures). At most `max_in_flight` batches are between decode and write: the oldest write is waited for
    before another batch is decoded, so memory is flat for any length. The actor then serves the next stream
    (stream_actor_cache.py)."""

    def __init__(self):
        one_thread_each()

    @ray.method(num_returns="streaming")
    def run(self, job: StreamJob, sink, model_actors: list, actor_nodes: dict[str, str]):
        """`actor_nodes`: the node of each model actor, by actor id, where known: a batch sent to one on another
        node crosses the network with its frames, and its depth comes back across it (both counted)."""
        here = ray.get_runtime_context().get_node_id()

        cpu_at_start = cpu_seconds()
        configure_storage(job.storage_options)  # (this node reads an object source itself, with its own credentials)
        router = ModelRouter(model_actors, job.restart_timeout_s, log=False)
        sink.open.remote(*job.sink_args)  # (Ray keeps one caller's calls to an actor in order)
        decoders = []
        try:
            # One thread: streams are the parallelism (frame threads cost 10-15% more CPU a frame)
            for pts_range in ([job.prefix_range] if job.prefix_range else []) + [job.pts_range]:
                decoders.append(open_source(job.source, job.fps, threads=1, pts_range=pts_range, layout=job.layout))
        except (PipelineError, OSError) as error:
            for decoder in decoders:
                decoder.close()
            raise with_node(error) from None
        prefix, decoder = decoders if len(decoders) == 2 else (None, decoders[0])
        counted = {"frame_bytes_across": 0, "lead_in_frames": 0}
        in_flight: deque = deque()
        progress = {"first_written_at": None, "frames_after_first": 0}
        unreported, reported_at = 0, time.monotonic()

        # A video model's streaming mode keeps the stream's cache on one model actor
        own_actor = router.healthy()[0] if job.stream_key else None

        def infer(batch: FrameBatch):
            """The batch to a model actor: (its depth's reference, the batch's, whether they cross nodes)."""
            batch_ref = ray.put(batch)  # one copy in the store, read by the model actor and the sink
            actor = own_actor or router.next()
            remote = actor_nodes.get(actor._actor_id.hex()) != here
            counted["frame_bytes_across"] += batch.pixels.nbytes if remote else 0
            if own_actor is not None:
                return actor.infer_stream.remote(job.stream_key, batch_ref, job.depth_dtype), batch_ref, remote
            return actor.infer.remote(batch_ref, job.depth_dtype), batch_ref, remote

        if job.windows:
            writes = self._window_writes(decoder, prefix, job, infer, counted)
        else:  # (a streaming-mode segment's frame 0 first: through the cache, then to the sink as warm-up)
            batches = _numbered_in_order(itertools.chain(*(each.batches(job.batch_size) for each in decoders)))
            writes = ((*infer(batch), len(batch)) for batch in batches)
        try:
            for depth_ref, batch_ref, remote, count in writes:
                in_flight.append((sink.write.remote(depth_ref, batch_ref, remote), count))
                while len(in_flight) >= job.max_in_flight:
                    unreported += self._wait_oldest(in_flight, router, progress)
                if unreported and time.monotonic() - reported_at >= job.progress_every_s:
                    yield PROGRESS, unreported
                    unreported, reported_at = 0, time.monotonic()
            while in_flight:
                unreported += self._wait_oldest(in_flight, router, progress)
        finally:
            for each in decoders:
                each.close()
            if own_actor is not None:
                own_actor.end_stream.remote(job.stream_key)
        if unreported:
            yield PROGRESS, unreported
        sink_stats = ray.get(sink.close.remote())
        decode_stats = {
            **{name: sum(getattr(each, attribute) for each in decoders) for name, attribute in (
                ("frames_in", "frames_decoded"), ("unreadable_frames", "unreadable_frames"),
                ("corrupt_packets", "corrupt_packets"), ("repaired_timestamps", "repaired_timestamps"),
                ("resized_frames", "resized_frames"))},
            # decoded for a video model's windows only, never written nor sent to the sink (see SpanWindows)
            "lead_in_frames": counted["lead_in_frames"],
            "peak_rss_mb": peak_rss_mb(),
            "cpu_s": cpu_seconds() - cpu_at_start,  # decoding and driving the stream
            "node": f"{ray.util.get_node_ip_address()}/{here[:8]}",  # address, and id (local clusters share one)
            "node_id": here,
            "frame_bytes_across_nodes": counted["frame_bytes_across"],  # frames sent to another node's model
        }
        yield RESULT, {"decode": decode_stats, "sink": sink_stats, "progress": progress, "finished": time.time()}

    @staticmethod
    def _window_writes(decoder, prefix, job: StreamJob, infer, counted: dict):
        """A video model's window mode: the stream's frames to the model actors as overlapping windows (several in
        flight), each window's depth aligned to the last here, in order (SpanWindows, the original's numbers), and
        handed to the sink as the frames' own batches: (depth, frames, across nodes, frames) as `run` writes them.
        A segment (`job.window_span`) first runs window 0 again from `prefix`, for the depth its windows are fitted
        to."""
        info = decoder.info
        layout = job.layout
        sent: deque = deque()  # the windows' depth references, oldest first
        max_depth = None

        def frames_of(source):
            nonlocal layout
            for batch in source.batches(job.batch_size):
                layout = batch.layout
                yield from ((batch.first_index + offset, batch.pts[offset], batch.pixels[offset])
                            for offset in range(len(batch)))

        span, first_reference, first_frame = job.window_span or WindowSpan(0, 0), None, None
        if span.first > 0:
            opening = list(frames_of(prefix))
            counted["lead_in_frames"] += len(opening)
            if len(opening) < INFER_LEN:
                raise PipelineError(f"{job.source}: {len(opening)} frames where a segment needs the video's first "
                                    f"{INFER_LEN}")
            window_depth = ray.get(infer(window_batch(Window(opening, 0), info.time_base, layout))[0])
            first_reference = first_window_reference(window_depth.depth, (info.height, info.width))
            first_frame = opening[0]
        part = SpanWindows(span, (info.height, info.width), job.metric, first_reference, first_frame)

        def send(window: Window):
            sent.append(infer(window_batch(window, info.time_base, layout))[0])

        to_sink = 0  # frames handed to the sink: the next one's index there (lead-in frames never go)

        def finished(pairs):
            """The frames whose depth is final, in batches of the job's size."""
            nonlocal to_sink
            for start in range(0, len(pairs), job.batch_size):
                part_pairs = pairs[start:start + job.batch_size]
                frames = [frame for frame, _ in part_pairs]
                depth = DepthBatch(to_sink, [f[1] for f in frames], info.time_base,
                                   np.stack([plane for _, plane in part_pairs]), max_depth)
                batch = FrameBatch(to_sink, [f[1] for f in frames], info.time_base,
                                   np.stack([f[2] for f in frames]), layout)
                to_sink += len(frames)
                yield ray.put(depth), ray.put(batch), False, len(frames)

        def align_oldest():
            nonlocal max_depth
            window_depth = ray.get(sent.popleft())
            max_depth = window_depth.max_depth
            return part.add(window_depth.depth)

        for frame in frames_of(decoder):
            for window in part.push(frame):
                send(window)
            while len(sent) > job.max_in_flight:
                yield from finished(align_oldest())
        for window in part.finish():
            send(window)
        while sent:
            yield from finished(align_oldest())
        yield from finished(part.close())
        counted["lead_in_frames"] += part.lead_in_frames + part.lookahead_frames

    @staticmethod
    def _wait_oldest(in_flight: deque, router, progress: dict) -> int:
        write_ref, count = in_flight.popleft()
        while not ray.wait([write_ref], timeout=HEALTH_CHECK_S)[0]:
            router.check()  # a model actor that cannot come back is dropped: the write waiting on it fails
        router.check(every_s=HEALTH_CHECK_S)
        try:
            ray.get(write_ref)
        except ray.exceptions.RayTaskError as error:  # the sink's own error (a full disk): as itself, one line
            cause = unwrap_ray_error(error)
            if isinstance(cause, (PipelineError, OSError, ValueError, RuntimeError)) and \
                    not isinstance(cause, ray.exceptions.RayError):
                raise cause from None
            raise
        # Steady-state rate: from the first written batch on, so actor start-up and warm-up are not counted
        if progress["first_written_at"] is None:
            progress["first_written_at"] = time.time()
        else:
            progress["frames_after_first"] += count
        return count

    def ready(self) -> bool:
        return True


def _numbered_in_order(batches):
    """Batches of several decoders, one after another, renumbered as one stream (the sink writes by index)."""
    index = 0
    for batch in batches:
        yield batch if batch.first_index == index else dataclasses.replace(batch, first_index=index)
        index += len(batch)
