"""
The stream actor: one stream's own process. It decodes the stream (VideoDecoder or an image sequence) and drives every
batch through a model actor to the stream's sink actor, on the worker node.

Takes: a StreamJob (where to read, how to batch), the stream's sink actor, the job's model actors.
Gives: a stream of (PROGRESS, frames written) and last (RESULT, the stream's figures); then serves the next stream
(stream_actor_cache.py). Construction stores nothing but settings: errors arrive as the calls' errors.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

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
from pipeline.stages.inference.temporal_windows import Window, WindowAligner, WindowPlanner, window_batch
from pipeline.stages.sources.video_decoder import open_source

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
        router = ModelRouter(model_actors, job.restart_timeout_s, log=False)
        sink.open.remote(*job.sink_args)  # (Ray keeps one caller's calls to an actor in order)
        try:
            # One thread: streams are the parallelism (frame threads cost 10-15% more CPU a frame)
            decoder = open_source(job.source, job.fps, threads=1, pts_range=job.pts_range, layout=job.layout)
        except (PipelineError, OSError) as error:
            raise with_node(error) from None
        in_flight: deque = deque()
        progress = {"first_written_at": None, "frames_after_first": 0}
        unreported, reported_at = 0, time.monotonic()
        counted = {"frame_bytes_across": 0}

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

        writes = (self._window_writes(decoder, job, infer) if job.windows else
                  ((*infer(batch), len(batch)) for batch in decoder.batches(job.batch_size)))
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
            decoder.close()
            if own_actor is not None:
                own_actor.end_stream.remote(job.stream_key)
        if unreported:
            yield PROGRESS, unreported
        sink_stats = ray.get(sink.close.remote())
        decode_stats = {
            "frames_in": decoder.frames_decoded,
            "unreadable_frames": decoder.unreadable_frames,
            "corrupt_packets": decoder.corrupt_packets,
            "repaired_timestamps": decoder.repaired_timestamps,
            "resized_frames": decoder.resized_frames,
            "peak_rss_mb": peak_rss_mb(),
            "cpu_s": cpu_seconds() - cpu_at_start,  # decoding and driving the stream
            "node": f"{ray.util.get_node_ip_address()}/{here[:8]}",  # address, and id (local clusters share one)
            "node_id": here,
            "frame_bytes_across_nodes": counted["frame_bytes_across"],  # frames sent to another node's model
        }
        yield RESULT, {"decode": decode_stats, "sink": sink_stats, "progress": progress, "finished": time.time()}

    @staticmethod
    def _window_writes(decoder, job: StreamJob, infer):
        """A video model's window mode: the stream's frames to the model actors as overlapping windows (several in
        flight), each window's depth aligned to the last here, in order (WindowAligner, the original's numbers), and
        handed to the sink as the frames' own batches: (depth, frames, across nodes, frames) as `run` writes them."""
        info = decoder.info
        planner, aligner = WindowPlanner(), WindowAligner((info.height, info.width), job.metric)
        awaiting: deque = deque()  # (index, pts, pixels) of the frames whose depth is not final yet
        sent: deque = deque()  # the windows' depth references, oldest first
        max_depth = None

        def send(window: Window):
            sent.append(infer(window_batch(window, info.time_base, layout))[0])

        def finished(maps):
            """The frames whose depth is final (those of padding frames dropped), in batches of the job's size."""
            taken = [awaiting.popleft() for _ in range(min(len(maps), len(awaiting)))]
            for start in range(0, len(taken), job.batch_size):
                part = taken[start:start + job.batch_size]
                depth = DepthBatch(part[0][0], [f[1] for f in part], info.time_base,
                                   np.stack(maps[start:start + len(part)]), max_depth)
                frames = FrameBatch(part[0][0], [f[1] for f in part], info.time_base,
                                    np.stack([f[2] for f in part]), layout)
                yield ray.put(depth), ray.put(frames), False, len(part)

        def align_oldest():
            nonlocal max_depth
            window_depth = ray.get(sent.popleft())
            max_depth = window_depth.max_depth
            return aligner.add(window_depth.depth)

        layout = None
        for batch in decoder.batches(job.batch_size):
            layout = batch.layout
            for offset in range(len(batch)):
                frame = (batch.first_index + offset, batch.pts[offset], batch.pixels[offset])
                awaiting.append(frame)
                for window in planner.push(frame):
                    send(window)
                while len(sent) > job.max_in_flight:
                    yield from finished(align_oldest())
        for window in planner.finish():
            send(window)
        while sent:
            yield from finished(align_oldest())
        yield from finished(aligner.finish())

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

