"""
The Ray actors: thin wrappers around the plain stages, one job each.

    StreamActor (VideoDecoder) --FrameBatch--> ModelActor x N (DepthWorker) --DepthBatch--> SinkActor (DepthSink)
    CameraActor (LiveCamera) --frames of many cameras, batched together--> ModelActor

Takes (construction): arguments only, stored; work, and its errors, happen in method calls, so errors arrive intact
as the calls' errors rather than as dead actors.
Gives: a decode actor reads one stream at a time (`open`, `next_batch`, `stats`), a sink writes one at a time
(`open`, `write`, `close` / `abort`): both are kept for the next stream (stream_pool.py); a model actor serves every
stream of a job (`infer`), with its probe (`ready`), its `load` and its control calls (`usage`, `batching`) each on
a thread of their own.
"""

from __future__ import annotations

import functools
import os
import resource
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import ray
import torch

from model import PredictorOptions

HEALTH_CHECK_S = 5.0  # how often a stream looks at the model actors' health (and when a write takes this long)

from .stages.cross_batcher import CrossStreamBatcher
from .stages.decode import open_source
from .stages.frames import FrameBatch, PipelineError, VideoInfo, one_line
from .stages.infer import DepthWorker, ModelSource
from .stages.sink import DepthSink, RenderOptions
from .stages.smoothing import make_smoother


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unwrap_ray_error(error: Exception) -> Exception:
    """The user's exception inside a Ray task error (for a one-line message), or the error itself; through every
    level (a sink's error reaches the driver through the stream actor that waited on it)."""
    while isinstance(getattr(error, "cause", None), Exception):
        error = error.cause
    return error


def answers(refs: list, timeout_s: float) -> list:
    """The results of the calls that answer within `timeout_s` (an actor restarting, or lost with its node, would
    hold the caller up, or forever where it has no room to restart); failed calls are left out."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    results = []
    for ref in ready:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError:
            pass
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Actors: construction stores arguments only; work (and errors) happen in method calls, so errors arrive intact


def with_node(error: Exception) -> Exception:
    """An error of the input or output, naming the node it happened on when the cluster has more than one (another
    machine may not see a path the driver sees)."""
    if sum(node["Alive"] for node in ray.nodes()) < 2:
        return error
    node = f"{socket.gethostname()}, {ray.util.get_node_ip_address()}"
    return PipelineError(f"{one_line(error)} (on node {node})")


def naming_the_node(method):
    """For a stream actor's methods: errors of the input or output name the node (see `with_node`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PipelineError, OSError) as error:
            raise with_node(error) from None

    return wrapper


def one_thread_each() -> None:
    """A stream actor's OpenCV and torch work runs on its own thread: streams (segments, videos) are the parallelism,
    and thread pools on small per-frame operations cost more CPU in hand-offs than they save in time."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@dataclass(frozen=True)
class StreamJob:
    """What a stream actor needs to run one stream: where to read, how to batch, what to ask of the model actors."""

    source: str
    batch_size: int
    layout: str  # frame layout between actors: auto | rgb24
    pts_range: tuple[int, int | None] | None  # decode only [start, end): a segment with its warm-up
    depth_dtype: str  # float16, or float32 for the 16-bit output
    max_in_flight: int  # batches decoded and not yet written, at most
    restart_timeout_s: float  # a model actor down this long is dropped (model_pool.py)
    sink_args: tuple = ()  # SinkActor.open's arguments: the stream opens its sink, so that open precedes its writes
    progress_every_s: float = 0.5  # how often the stream tells the driver how far it is
    fps: float | str | None = None  # an image sequence's frame rate (videos have their own timestamps)


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
    (stream_pool.py)."""

    def __init__(self):
        one_thread_each()

    @ray.method(num_returns="streaming")
    def run(self, job: StreamJob, sink, model_actors: list, actor_nodes: dict[str, str]):
        """`actor_nodes`: the node of each model actor, by actor id, where known: a batch sent to one on another
        node crosses the network with its frames, and its depth comes back across it (both counted)."""
        here = ray.get_runtime_context().get_node_id()
        from .model_pool import ModelPool  # (the pool's health checks, on this side: a lost model actor is dropped)

        cpu_at_start = cpu_seconds()
        pool = ModelPool(model_actors, job.restart_timeout_s, log=False)
        sink.open.remote(*job.sink_args)  # (Ray keeps one caller's calls to an actor in order)
        try:
            # One thread: streams are the parallelism (frame threads cost 10-15% more CPU a frame)
            decoder = open_source(job.source, job.fps, threads=1, pts_range=job.pts_range, layout=job.layout)
        except (PipelineError, OSError) as error:
            raise with_node(error) from None
        in_flight: deque = deque()
        frames_across = 0  # bytes of frames sent to a model actor on another node
        progress = {"first_written_at": None, "frames_after_first": 0}
        unreported, reported_at = 0, time.monotonic()
        try:
            for batch in decoder.batches(job.batch_size):
                batch_ref = ray.put(batch)  # one copy in the store, read by the model actor and the sink
                actor = pool.next()
                depth_ref = actor.infer.remote(batch_ref, job.depth_dtype)
                remote = actor_nodes.get(actor._actor_id.hex()) != here
                frames_across += batch.pixels.nbytes if remote else 0
                in_flight.append((sink.write.remote(depth_ref, batch_ref, remote), len(batch)))
                while len(in_flight) >= job.max_in_flight:
                    unreported += self._wait_oldest(in_flight, pool, progress)
                if unreported and time.monotonic() - reported_at >= job.progress_every_s:
                    yield PROGRESS, unreported
                    unreported, reported_at = 0, time.monotonic()
            while in_flight:
                unreported += self._wait_oldest(in_flight, pool, progress)
        finally:
            decoder.close()
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
            "frame_bytes_across_nodes": frames_across,
        }
        yield RESULT, {"decode": decode_stats, "sink": sink_stats, "progress": progress, "finished": time.time()}

    @staticmethod
    def _wait_oldest(in_flight: deque, pool, progress: dict) -> int:
        write_ref, count = in_flight.popleft()
        while not ray.wait([write_ref], timeout=HEALTH_CHECK_S)[0]:
            pool.check()  # a model actor that cannot come back is dropped: the write waiting on it fails
        pool.check(every_s=HEALTH_CHECK_S)
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


# A model actor whose process dies is started again by Ray (it loads the model on its first call), and the calls
# that were in flight are sent to it again: a lost worker costs a reload, not the job
MODEL_ACTOR_RESTARTS = 3


# Control calls (ready, load, usage) have a thread of their own: they answer while batches are being inferred,
# instead of queueing behind every batch in flight (a placement check or a summary waited for the whole queue)
# Live cameras' calls (`infer_frames`) wait in a group of their own, one thread each, while their frames are batched
# together (stages/cross_batcher.py): up to LIVE_CALLS_AT_ONCE cameras per model actor
LIVE_CALLS_AT_ONCE = 128


@ray.remote(max_restarts=MODEL_ACTOR_RESTARTS, max_task_retries=MODEL_ACTOR_RESTARTS,
            concurrency_groups={"probe": 1, "load": 1, "control": 1, "live": LIVE_CALLS_AT_ONCE})
class ModelActor:
    def __init__(self, source: ModelSource, options: PredictorOptions, device: str, threads: int, batch_size: int,
                 network_batch: int):
        self._args = (source, options, device, threads, batch_size, network_batch)
        self._worker: DepthWorker | None = None
        self._loading = threading.Lock()  # two calls at once on a GPU: one loads, the other waits
        self._batchers: dict[tuple, CrossStreamBatcher] = {}

    @ray.method(concurrency_group="probe")
    def ready(self) -> bool:
        """Answers as soon as the actor is placed and its process runs, however long the model takes to load (a Hub
        download on a worker node): a thread of its own, never queued behind `load`. (SinkActor.ready likewise.)"""
        return True

    @ray.method(concurrency_group="load")
    def load(self) -> dict:
        worker = self._loaded()
        config = worker.predictor.net.config
        return {"variant": config.variant, "version": config.version,
                "depth": "metric" if getattr(config, "max_depth", None) else "relative",
                **({"max_depth_m": config.max_depth} if getattr(config, "max_depth", None) else {}),
                "device": str(worker.device), "torch_threads": torch.get_num_threads()}

    def _loaded(self) -> DepthWorker:
        with self._loading:
            if self._worker is None:
                source, options, device, threads, batch_size, network_batch = self._args
                self._worker = DepthWorker.create(source, options, device, threads, batch_size, network_batch)
                self._cpu_after_load = cpu_seconds()
        return self._worker

    def infer(self, batch: FrameBatch, depth_dtype: str):
        return self._loaded().infer(batch, depth_dtype)

    @ray.method(concurrency_group="live")
    def infer_frames(self, stream: str, batch: FrameBatch, depth_dtype: str, batch_size: int, wait_s: float):
        """One camera's waiting frames, batched with other cameras' (see CrossStreamBatcher): its DepthBatch."""
        key = (depth_dtype, batch_size, wait_s)
        with self._loading:
            batcher = self._batchers.get(key)
        if batcher is None:
            worker = self._loaded()
            with self._loading:
                batcher = self._batchers.get(key)
                if batcher is None:
                    # Two batches in the network at once on a GPU (copies beside compute), one on a CPU
                    batcher = self._batchers[key] = CrossStreamBatcher(
                        lambda batches: worker.infer_together(batches, depth_dtype), batch_size, wait_s,
                        group_of=worker.input_size_for, workers=2 if worker.device.type == "cuda" else 1)
        return batcher.submit(stream, batch).result()

    @ray.method(concurrency_group="control")
    def batching(self) -> list[dict]:
        """Network batches of live cameras' frames so far, each batcher's totals (`batch_means` combines them)."""
        with self._loading:
            batchers = list(self._batchers.values())
        return [batcher.stats() for batcher in batchers]

    @ray.method(concurrency_group="control")
    def usage(self) -> dict:
        """Peak memory; CPU seconds and frames since the model was loaded (all streams together)."""
        worker = self._loaded()
        return {"peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_seconds() - self._cpu_after_load,
                "predict_cpu_s": worker.predict_cpu_s, "frames": worker.frames_processed,
                "gpu_busy_ms": worker.gpu_busy_ms}


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
             model: dict | None = None) -> None:
        """`model`: what the model actors loaded (graph.model_info), for the outputs that describe it."""
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


# A camera's process: one camera's whole loop (reading, smoothing, rendering, encoding, publishing) beside the other
# cameras', so N cameras use N cores and one camera's stall never holds another's frames. No CPU declared (as stream
# actors; the camera pool bounds them). A process that dies is started again by Ray (its __init__ again); the pool
# then sees it idle and starts it again (`run`): the camera reconnects and publishes again by itself
CAMERA_ACTOR_RESTARTS = 3


@ray.remote(num_cpus=0, max_restarts=CAMERA_ACTOR_RESTARTS)
class CameraActor:
    """Runs one camera (stages/live_camera.py) from `run` until `stop`; its frames go to the job's model actors with
    `infer_frames`, batched there with the other cameras' frames.

    The model actors are given to `run`, not to the constructor: Ray restarts an actor from its constructor's
    arguments, and handles of other actors there may not survive (ray-project/ray#53727)."""

    def __init__(self, name: str, source: str, realtime: bool, targets, settings, batch_size: int):
        from .settings import live_camera_options
        from .stages.live_camera import LiveCamera
        from .stages.live_source import LiveSource

        one_thread_each()
        live = settings.live
        self._name, self._settings, self._batch_size = name, settings, batch_size
        self._camera = LiveCamera(live_camera_options(settings),
                                  LiveSource(source, realtime=realtime, transport=live.transport,
                                             read_timeout_s=live.read_timeout_s, backoff_s=(0.5, live.backoff_max_s)),
                                  targets, name=name)
        self._summary: dict | None = None
        self._thread: threading.Thread | None = None

    def run(self, model_actors: list) -> None:
        """Start the camera's loop (once) on these model actors: the first is the camera's own (its frames batch
        there with the same other cameras' each time), the others its fallback while that one is down."""
        if self._thread is not None:
            return
        from .model_pool import ModelPool

        pool = ModelPool(model_actors, self._settings.ray.restart_timeout_s, log=False)
        name, batch_size, wait_s = self._name, self._batch_size, self._settings.live.batch_wait_ms / 1e3

        def submit(batch: FrameBatch, depth_dtype: str):
            actor = pool.healthy()[0]  # the camera's own model actor while it is sound; the next one else
            reference = actor.infer_frames.remote(name, batch, depth_dtype, batch_size, wait_s)

            def result():
                try:
                    return ray.get(reference)
                except ray.exceptions.RayError as error:
                    pool.suspect(actor._actor_id.hex())
                    raise unwrap_ray_error(error) from None

            return result

        self._cpu_at_start = cpu_seconds()  # (the process's start-up, imports mostly, is not the camera's work)
        self._thread = threading.Thread(target=self._run, args=(submit,), daemon=True, name=f"camera-{name}")
        self._thread.start()

    def _run(self, submit) -> None:
        try:
            self._summary = self._camera.run(submit)
        except BaseException:  # noqa: BLE001 - recorded by the camera (its state: failed), reported by stats
            pass

    def stats(self) -> dict:
        return {**self._camera.stats(), "running": self._thread is not None, "peak_rss_mb": peak_rss_mb(),
                "pid": os.getpid()}

    def stop(self, timeout_s: float = 10.0) -> dict:
        """Stop reading, write what is in flight, close the outputs (RTSP TEARDOWN, the recording finished): the
        camera's summary."""
        self._camera.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._summary is None:
            return {**self._camera.stats(), "error": self._camera.error or "did not stop in time"}
        # The camera's process is its own: its CPU is the camera's (reading, smoothing, rendering, encoding)
        cpu_s = cpu_seconds() - self._cpu_at_start
        frames = self._summary["frames_out"]
        return {**self._summary, "peak_rss_mb": peak_rss_mb(), "cpu_s": round(cpu_s, 3),
                "cpu_ms_per_frame": round(cpu_s / frames * 1e3, 2) if frames else None}

    def ready(self) -> bool:
        return True
