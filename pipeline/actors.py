"""
The Ray actors: thin wrappers around the plain stages, one job each.

    DecodeActor (VideoDecoder) --FrameBatch--> ModelActor x N (DepthWorker) --DepthBatch--> SinkActor (DepthSink)

Takes (construction): arguments only, stored; work, and its errors, happen in method calls, so errors arrive intact
as the calls' errors rather than as dead actors.
Gives: a decode actor reads one stream at a time (`open`, `next_batch`, `stats`), a sink writes one at a time
(`open`, `write`, `close` / `abort`): both are kept for the next stream (stream_pool.py); a model actor serves every
stream of a job (`infer`), with its control calls (`ready`, `load`, `usage`) on a thread of their own.
"""

from __future__ import annotations

import functools
import resource
import socket
import threading

import cv2
import ray
import torch

from model import PredictorOptions

from .stages.decode import VideoDecoder
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
    """The user's exception inside a Ray task error (for a one-line message), or the error itself."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


# ---------------------------------------------------------------------------------------------------------------------
# Actors: construction stores arguments only; work (and errors) happen in method calls, so errors arrive intact


def naming_the_node(method):
    """For a stream actor's methods: an error of the input or output names the node it happened on, when the
    cluster has more than one (another machine may not see a path the driver sees)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PipelineError, OSError) as error:
            if sum(node["Alive"] for node in ray.nodes()) < 2:
                raise
            node = f"{socket.gethostname()}, {ray.util.get_node_ip_address()}"
            raise PipelineError(f"{one_line(error)} (on node {node})") from None

    return wrapper


def one_thread_each() -> None:
    """A stream actor's OpenCV and torch work runs on its own thread: streams (segments, videos) are the parallelism,
    and thread pools on small per-frame operations cost more CPU in hand-offs than they save in time."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# Decode and sink actors declare no CPU: they are light next to a model actor, and streams must never wait behind the
# model actors for a core (on a 2-core machine the model actor takes one). How many are open at once is bounded by
# the driver instead: streams per video (segments) and videos per job (jobs/batch.py).
@ray.remote(num_cpus=0)
class DecodeActor:
    """One stream's decoder at a time: `open` names the stream, `next_batch` reads it, `stats` ends it (the actor is
    then ready for the next stream: see stream_pool.py)."""

    def __init__(self):
        one_thread_each()
        self._decoder = self._batches = self._args = None

    def open(self, source: str, batch_size: int, max_wait_s: float | None,
             pts_range: tuple[int, int | None] | None = None, layout: str = "auto") -> None:
        self._cpu_at_start = cpu_seconds()
        self._args = (source, batch_size, max_wait_s, pts_range, layout)
        self._decoder = self._batches = None

    @naming_the_node  # outside ray.method: functools.wraps carries its num_returns over to the wrapper
    @ray.method(num_returns=2)
    def next_batch(self) -> tuple[int, FrameBatch | None]:
        if self._decoder is None:  # opened on the first call, so that its errors arrive as errors, not a dead actor
            source, batch_size, max_wait_s, pts_range, layout = self._args
            # One thread: streams are the parallelism (frame threads cost 10-15% more CPU a frame)
            self._decoder = VideoDecoder(source, threads=1, pts_range=pts_range, layout=layout)
            self._batches = self._decoder.batches(batch_size, max_wait_s)
        batch = next(self._batches, None)
        return (len(batch) if batch is not None else 0), batch

    def stats(self) -> dict:
        self._decoder.close()
        return {
            "frames_in": self._decoder.frames_decoded,
            "unreadable_frames": self._decoder.unreadable_frames,
            "corrupt_packets": self._decoder.corrupt_packets,
            "repaired_timestamps": self._decoder.repaired_timestamps,
            "resized_frames": self._decoder.resized_frames,
            "peak_rss_mb": peak_rss_mb(),
            "cpu_s": cpu_seconds() - self._cpu_at_start,
        }


# A model actor whose process dies is started again by Ray (it loads the model on its first call), and the calls
# that were in flight are sent to it again: a lost worker costs a reload, not the job
MODEL_ACTOR_RESTARTS = 3


# Control calls (ready, load, usage) have a thread of their own: they answer while batches are being inferred,
# instead of queueing behind every batch in flight (a placement check or a summary waited for the whole queue)
@ray.remote(max_restarts=MODEL_ACTOR_RESTARTS, max_task_retries=MODEL_ACTOR_RESTARTS,
            concurrency_groups={"control": 1})
class ModelActor:
    def __init__(self, source: ModelSource, options: PredictorOptions, device: str, threads: int, batch_size: int,
                 network_batch: int):
        self._args = (source, options, device, threads, batch_size, network_batch)
        self._worker: DepthWorker | None = None
        self._loading = threading.Lock()  # two calls at once on a GPU: one loads, the other waits

    @ray.method(concurrency_group="control")
    def ready(self) -> bool:
        """Answers as soon as the actor is placed and its process runs (before the model is loaded)."""
        return True  # (SinkActor.ready likewise)

    @ray.method(concurrency_group="control")
    def load(self) -> dict:
        worker = self._loaded()
        config = worker.predictor.net.config
        return {"variant": config.variant, "version": config.version, "device": str(worker.device),
                "torch_threads": torch.get_num_threads()}

    def _loaded(self) -> DepthWorker:
        with self._loading:
            if self._worker is None:
                source, options, device, threads, batch_size, network_batch = self._args
                self._worker = DepthWorker.create(source, options, device, threads, batch_size, network_batch)
                self._cpu_after_load = cpu_seconds()
        return self._worker

    def infer(self, batch: FrameBatch, depth_dtype: str):
        return self._loaded().infer(batch, depth_dtype)

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

    def open(self, output: str, info: VideoInfo, render: RenderOptions, smoother_name: str, params: dict,
             smoother_device: str, write_from_pts: int | None = None, temporary_tag: str | None = None) -> None:
        self._cpu_at_start = cpu_seconds()
        self._args = (output, info, render, smoother_name, params, smoother_device, write_from_pts, temporary_tag)
        self._sink = None

    def _opened(self) -> DepthSink:
        """The stream's sink, made on its first write, so that its errors arrive as the write's errors."""
        if self._sink is None:
            output, info, render, smoother_name, params, smoother_device, write_from_pts, tag = self._args
            self._sink = DepthSink(output, info, render,
                                   make_smoother(smoother_name, device=smoother_device, **params), write_from_pts, tag)
        return self._sink

    @naming_the_node
    def write(self, depth_batch, frame_batch) -> int:
        return self._opened().write(depth_batch, frame_batch)

    @naming_the_node
    def close(self) -> dict:
        stats = self._opened().close()
        self._sink = None
        return {**stats, "peak_rss_mb": peak_rss_mb(), "cpu_s": cpu_seconds() - self._cpu_at_start}

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def ready(self) -> bool:
        return True
