"""
The Ray wiring: thin actors around the plain stages, and `run_stream`, which sends one stream (a video, or a segment
of one) through them. The jobs (jobs/: a file, a batch of files, a camera) decide which streams to run.

    DecodeActor (VideoDecoder) --FrameBatch--> ModelActor x N (DepthWorker) --DepthBatch--> SinkActor (DepthSink)

The driver only moves object references: pixels go from the decoder's object-store entry straight to a model
actor and the sink. At most `max_in_flight` batches are between decode and write at any time (the driver waits on
the oldest write before sending more), so memory does not grow with video length. Model actors are created once
per `DepthGraph` and can serve many videos; their batches are returned out of order and the sink restores order.
A stream's decode and sink actors are kept for the next stream when it succeeds (`stream_pool.py`): a new pair costs a
second or two of process start-up, which every video of a batch job and every segment would otherwise pay.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import re
import resource
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import ray
import torch

from model import CheckpointError, PredictorOptions
from model.hub import DEFAULT_MODEL, ResolvedCheckpoint, resolve_checkpoint

from .model_pool import ModelPool
from .stream_pool import StreamActorPool
from .settings import PipelineSettings
from .stages.decode import VideoDecoder
from .stages.encode import temporary_path
from .stages.frames import FrameBatch, PipelineError, VideoInfo, one_line
from .stages.infer import DepthWorker, ModelSource, cuda_problem
from .stages.sink import DepthSink, RenderOptions
from .stages.smoothing import make_smoother

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HEALTH_CHECK_S = 5.0  # how often the driver looks at the model actors' health (and when a write takes this long)
RETRY_PAUSE_S = 1.0  # before a stream's second attempt; twice that before its third
ANSWER_S = 5.0  # what an actor gets to answer a small call (a failed stream's sink abort, usage) before it is let go
SINKS_GPU_ROOM = 0.1  # of each GPU, kept for sinks that smooth there (smoothing.device: cuda)
# One such sink: a token share (its work is a few ms of arithmetic a frame), so that 100 streams fit on a GPU; with
# 0.02 the sixth stream on a GPU could not be placed, and a batch job or a segmented video opens more than that
SINK_GPU_SHARE = 0.001


_started_local_ray = False  # whether this process started the Ray instance it uses (so may end what it left)


def start_ray(address: str | None = None, num_cpus: int | None = None, connect_timeout_s: float = 5.0) -> None:
    """Connect to a cluster (`address`: "auto", host:port or ray://host:port) or start a private local one.

    Workers of a local cluster inherit this process's environment, so this project is put on their PYTHONPATH
    (no packaging, which cost about a second); workers on other machines get its packages shipped as `py_modules`.
    An address that does not answer is a one-line `PipelineError` within `connect_timeout_s`, not a long retry.
    """
    if ray.is_initialized():
        return
    kwargs = dict(logging_level="ERROR", log_to_driver=True)
    # A stream that failed (a lost worker or node) is run again and its batches in flight abandoned: their errors
    # are handled by the retry, and Ray's "unhandled error" dumps of them (tens of lines each) would only alarm
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # A driver thread still waiting when Ray is shut down (Ctrl-C in a batch job) must not start a new Ray instance
    # by calling into it: Ray's auto-connect would do just that (RAY_ENABLE_AUTO_CONNECT=0, read when ray is imported)
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    ray._private.auto_init_hook.enable_auto_connect = False
    try:
        if address:
            check_reachable(address, connect_timeout_s)
            runtime_env = {"py_modules": [str(PROJECT_ROOT / "model"), str(PROJECT_ROOT / "pipeline")]}
            ray.init(address=address, runtime_env=runtime_env, **kwargs)
        else:
            paths = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            os.environ["PYTHONPATH"] = os.pathsep.join(paths)
            global _started_local_ray
            _started_local_ray = True
            # "local": a private instance, even when another Ray runs on this machine (which ray.init() would join)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        # Ray 2.59+ starts clusters with token authentication: a driver without the token cannot tell that apart
        hint = (" (a cluster with token authentication needs RAY_AUTH_TOKEN set to what `ray get-auth-token` prints "
                "on its head node)" if address else "")
        raise PipelineError(f"cannot start or reach {where}: {str(error).strip().splitlines()[0][:200]}{hint}") \
            from None


def stop_ray() -> None:
    """Shut Ray down; for a local instance, also end whatever it started that outlives the shutdown.

    Ray's dashboard and runtime-env agents, when Ray is stopped within seconds of starting (a Ctrl-C during
    start-up), were left running for a minute or more: every process descended from this one is ended here.
    """
    global _started_local_ray
    descendants = _descendant_pids(os.getpid()) if _started_local_ray else []
    if ray.is_initialized():
        ray.shutdown()
    _started_local_ray = False
    for pid in descendants:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _descendant_pids(root: int) -> list[int]:
    """Every process below `root`, from /proc (Linux); empty where there is no /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) can hold spaces: the parent pid is the 2nd field after its ')'
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.parent.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def check_reachable(address: str, timeout_s: float) -> None:
    """For host:port addresses, a TCP connection to the cluster's GCS port, so a dead address fails fast."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto" and the like: Ray itself says at once when it finds no cluster
    host, port = match[1], int(match[2])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise PipelineError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


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


# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What one stream's decode and sink actors reported, and when it finished."""

    decode: dict
    sink: dict
    progress: dict
    finished: float
    attempts: int = 1  # more than one: a worker or node was lost and the stream was run again


# A worker process or node that died: the stream's work is redone (a segment is retried), not given up
RETRIABLE = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
             ray.exceptions.OwnerDiedError, ray.exceptions.NodeDiedError)


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, on what, with which Ray resources; and where each stream's smoother runs."""

    model_actors: int
    use_gpu: bool
    notes: tuple[str, ...]  # what the user should know about the plan (a GPU torch cannot use): warnings
    model_options: dict
    torch_threads: int
    batch_size: int
    network_batch: int
    smoother_device: str
    sink_options: dict
    max_streams: int  # streams open at once in the job (each a decode and a sink process)


def plan_actors(settings: PipelineSettings, resources: dict[str, float], cuda_problem: str | None = None) -> ActorPlan:
    """Check the settings against the cluster's resources before any actor is made.

    Ray would otherwise leave an actor it can never place pending forever, without a word: every request that the
    whole cluster cannot satisfy is a one-line `PipelineError` here. `cuda_problem`: why torch cannot use the GPUs
    Ray sees (a CPU-only build of torch, a driver older than torch's CUDA), where the driver can tell (a local
    cluster: its workers run this torch); then `--device auto` runs on the CPU with a note that says why, and a
    CUDA device asked for is an error before any actor starts.
    """
    model, ray_settings = settings.model, settings.ray
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    notes = []
    if gpus >= 1 and cuda_problem:
        for name, device in (("--device", model.device), ("smoothing.device", settings.smoothing.device)):
            if device.startswith("cuda"):
                raise PipelineError(f"{name} {device}: Ray sees {gpus:g} GPU but {cuda_problem}")
        notes.append(f"Ray sees {gpus:g} GPU but {cuda_problem}: everything runs on the CPU")
        gpus = 0
    if gpus < 1:
        for name, device in (("--device", model.device), ("smoothing.device", settings.smoothing.device)):
            if device.startswith("cuda"):
                raise PipelineError(f"{name} {device}: the Ray cluster has no GPU (use cpu or auto)")
    use_gpu = model.device != "cpu" and gpus >= 1
    if model.precision == "float16" and not use_gpu:
        raise PipelineError("precision float16 needs a GPU and none is in use; use bfloat16 or float32 on the CPU")
    count = ray_settings.model_actors or (int(gpus) if use_gpu else 1)
    if count > cpus:
        raise PipelineError(f"--model-actors {count}: each model actor takes 1 CPU and the Ray cluster has {cpus:g}")
    smoothing_device = settings.smoothing.device
    # auto: the CPU. Depth arrives at the model's resolution, where the smoother costs a few ms of one core; on the
    # GPU every stream's sink would open its own CUDA context (~0.5 GB, seconds) and hold a share of the GPU
    # Inside an actor Ray shows only the GPU it assigned, as cuda:0: "cuda:1" would be an invalid ordinal there
    smoother_device = "cpu" if smoothing_device == "auto" else smoothing_device.partition(":")[0]
    sinks_on_gpu = smoother_device.startswith("cuda")
    model_options = {"num_cpus": 1}
    if use_gpu:
        # Shares from the count, so that N actors fit on the GPUs there are (2 on one GPU: half each); a tenth of
        # each GPU is left for the sinks when they smooth there (SINK_GPU_SHARE each)
        share = 1 / math.ceil(count / gpus) * (1 - SINKS_GPU_ROOM if sinks_on_gpu else 1)
        model_options = {"num_gpus": round(share, 4), "max_concurrency": 2, "num_cpus": 1}
    threads = model.threads or (0 if use_gpu else max(1, int(cpus // count)))
    batch_size = settings.batching.batch_size or (8 if use_gpu else 4)
    return ActorPlan(
        model_actors=count,
        use_gpu=use_gpu,
        notes=tuple(notes),
        model_options=model_options,
        torch_threads=threads,
        batch_size=batch_size,
        network_batch=settings.batching.network_batch or (batch_size if use_gpu else 1),
        smoother_device=smoother_device,
        sink_options={"num_gpus": SINK_GPU_SHARE} if sinks_on_gpu else {},
        max_streams=ray_settings.max_streams or max_streams_for(cpus - count, resources.get("memory", 0)),
    )


STREAM_MEMORY_BYTES = 1.5e9  # a stream's decode and sink processes at 720p (peak RSS about 0.7 GB each)


def max_streams_for(spare_cpus: float, memory_bytes: float) -> int:
    """Streams a job opens at once: one per CPU the model actors leave (a stream's decode and sink keep about a core
    busy), at least 2, and no more than Ray's memory resource holds. Without it, a batch job opened videos in flight
    x segments streams: about 225 processes pairs on a 16-core node."""
    by_cpu = max(2, int(spare_cpus))
    by_memory = int(memory_bytes // STREAM_MEMORY_BYTES) if memory_bytes else by_cpu
    return max(1, min(by_cpu, by_memory))


class DepthGraph:
    """Model actors (created once), the streams' own actors (kept warm between streams), and `run_stream`, which sends
    one stream (a video, or a segment of one) through decode -> infer -> sink. What a user runs is a job on top of it
    (`jobs/file.py`: a video, whole or in segments; `jobs/batch.py`: many; `jobs/live.py`: a camera).

    The model actors start loading at construction; the first stream starts its own actors meanwhile and waits for
    the models only when its first batch is ready for them (start-up overlaps start-up).
    """

    def __init__(self, settings: PipelineSettings, builder=None, resolved: ResolvedCheckpoint | None = None):
        """`resolved`: the checkpoint when the caller has resolved it already (a name or repo id may mean a
        download); `builder`: benchmarks only, a picklable callable that builds a stand-in network (see ModelSource).
        """
        self.settings = settings
        model = settings.model
        # A local cluster's workers run this torch: whether it can use the GPUs Ray sees is known here
        self.plan = plan_actors(settings, ray.cluster_resources(), cuda_problem() if _started_local_ray else None)
        for note in self.plan.notes:
            print(f"warning: {note}", file=sys.stderr, flush=True)
        options = PredictorOptions(model.input_size, model.even_grid, model.precision, model.compile)
        if resolved is None and builder is None and not model.random_weights:
            resolved = resolve_checkpoint(model.checkpoint or model.name or DEFAULT_MODEL)
        self.checkpoint = resolved
        source = ModelSource(resolved.path if resolved else None, model.random_weights, model.version,
                             builder=builder, hub_reference=resolved.spec if resolved and resolved.repo_id else None)
        # Inside an actor Ray makes only its assigned GPU visible, as cuda:0: "cuda:1" would not exist there
        device = "cuda" if self.plan.use_gpu else "cpu"
        actors = [
            ModelActor.options(**self.plan.model_options).remote(source, options, device, self.plan.torch_threads,
                                                                 self.plan.batch_size, self.plan.network_batch)
            for _ in range(self.plan.model_actors)
        ]
        self._loading = [actor.load.remote() for actor in actors]
        self.pool = ModelPool(actors, settings.ray.restart_timeout_s)  # shared by every view (with_settings)
        self.streams = StreamActorPool(self._start_stream_actors)  # likewise
        self.stream_slots = threading.BoundedSemaphore(self.plan.max_streams)  # likewise: one bound for the job
        self._model_info: dict | None = None
        self.batch_size = self.plan.batch_size

    def _start_stream_actors(self) -> tuple:
        """A new decode actor and sink actor for a stream. Streams are spread over the nodes (their actors declare
        no CPU, see above: Ray would otherwise pile them onto one node)."""
        return (DecodeActor.options(scheduling_strategy="SPREAD").remote(),
                SinkActor.options(**self.plan.sink_options, scheduling_strategy="SPREAD").remote())

    @property
    def model_actors(self) -> list:
        """The model actors in the pool now (fewer once one is lost for good)."""
        return self.pool.actors

    def with_settings(self, settings: PipelineSettings) -> "DepthGraph":
        """The same model actors under another video's settings (output, smoothing, segments: a batch manifest's
        per-video options). A view: nothing is started or copied."""
        for section in ("model", "batching", "ray"):
            if getattr(settings, section) != getattr(self.settings, section):
                raise PipelineError(f"per-video settings cannot change the {section} section (shared actors)")
        view = copy.copy(self)
        view.settings = settings
        return view

    @property
    def model_info(self) -> dict:
        """What the model actors loaded (waits for them); their errors arrive here as one-line exceptions."""
        if self._model_info is None:
            self._model_info = self._wait_for_models()
        return self._model_info

    def _wait_placed(self, actors: list, what: str, options: dict) -> None:
        """Wait until Ray has placed the actors (their processes answer); a one-line error after the timeout."""
        timeout_s = self.settings.ray.placement_timeout_s
        _, waiting = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=timeout_s)
        if waiting:
            free = ray.available_resources()
            gpus, cpus = options.get("num_gpus", 0), options.get("num_cpus", 1)
            asks = f"{gpus:g} GPU and {cpus:g} CPU" if gpus else f"{cpus:g} CPU"
            has = f"{free.get('CPU', 0):g} CPU" + (f" and {free.get('GPU', 0):g} GPU" if gpus else "")
            raise PipelineError(
                f"{len(waiting)} of {len(actors)} {what} could not be placed within {timeout_s:g} s "
                f"(each asks for {asks}; the cluster has {has} free): is it busy with other work?"
            )

    def _wait_for_models(self) -> dict:
        self._wait_placed(self.model_actors, "model actors", self.plan.model_options)
        try:
            info = ray.get(self._loading)[0]
        except ray.exceptions.RayError as error:
            raise unwrap_ray_error(error) from None
        if self.checkpoint is not None:
            return {**self.checkpoint.describe(), **info}
        return {"random_weights": self.settings.model.random_weights, **info}

    def retrying(self, source: str, where: str, run: Callable[[], "StreamResult"]) -> "StreamResult":
        """Run a stream again when a worker or node was lost (`segments.retries` times); errors name `where`.

        A stream's output is written atomically, so a retry starts clean. Errors of the input or settings are not
        retried: they would fail the same way.
        """
        retries = self.settings.segments.retries
        for attempt in range(retries + 1):
            try:
                return dataclasses.replace(run(), attempts=attempt + 1)
            except RETRIABLE as error:
                if attempt == retries:
                    raise PipelineError(f"{source}: {where}failed {retries + 1} times, the last time: "
                                        f"{one_line(error)}") from None
                # A lost node takes Ray a while to notice (heartbeats): until then its actors still read as alive.
                # The model actor that failed is avoided for a while, and the next attempt waits a moment, so that
                # the retries are not spent within a second on an actor that is gone
                self.pool.suspect(getattr(error, "actor_id", None))
                self.streams.clear()
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
                self.pool.check()
            except (PipelineError, CheckpointError) as error:
                raise type(error)(f"{where}{error}" if where else str(error)) from None
        raise AssertionError("unreachable")

    def run_stream(self, source: str, output: str, info: VideoInfo, render: RenderOptions,
                   pts_range: tuple[int, int | None] | None = None, write_from_pts: int | None = None,
                   on_progress: Callable[[int], None] | None = None) -> "StreamResult":
        """decode -> shared model actors -> sink for one stream (a video, or a segment of one), bounded in flight.

        `pts_range`: decode only [start, end) (a segment with its warm-up); `write_from_pts`: frames before it only
        warm the smoother and the colour range up (see DepthSink). Waits for one of the job's stream slots first
        (`plan.max_streams`: videos and segments together)."""
        with self.stream_slots:
            return self._run_stream(source, output, info, render, pts_range, write_from_pts, on_progress)

    def _run_stream(self, source: str, output: str, info: VideoInfo, render: RenderOptions,
                    pts_range: tuple[int, int | None] | None, write_from_pts: int | None,
                    on_progress: Callable[[int], None] | None) -> "StreamResult":
        settings = self.settings
        # The sink's temporary file has a name the driver knows: if the sink's process or node dies, the driver
        # removes what it left (on a filesystem every node sees, which outputs need anyway)
        tag = uuid.uuid4().hex[:12]
        decoder, sink = pair = self.streams.take()  # warm from an earlier stream, or new
        decoder.open.remote(source, self.batch_size, None, pts_range, self.settings.batching.frame_layout)
        sink.open.remote(output, info, render, settings.smoothing.name, dict(settings.smoothing.params),
                         self.plan.smoother_device, write_from_pts, tag)
        in_flight: deque = deque()
        progress = {"first_written_at": None, "frames_after_first": 0, "started": time.monotonic()}
        # float16 depth is finer than any 8-bit picture; the 16-bit output keeps float32
        depth_dtype = "float32" if render.depth_format == "gray16" else "float16"
        try:
            count_ref, batch_ref = decoder.next_batch.remote()
            if self.plan.sink_options:  # a GPU share: a cluster whose GPUs are taken would hold it forever
                self._wait_placed([sink], "sink actors (smoothing on the GPU)", {**self.plan.sink_options,
                                                                                 "num_cpus": 0})
            _ = self.model_info  # the models were loading while this stream's actors started
            while True:
                count = ray.get(count_ref)
                if count == 0:
                    break
                this_batch = batch_ref
                count_ref, batch_ref = decoder.next_batch.remote()  # decode ahead while this batch is inferred
                actor = self.pool.next()
                depth_ref = actor.infer.remote(this_batch, depth_dtype)
                in_flight.append((sink.write.remote(depth_ref, this_batch), count))
                while len(in_flight) >= settings.batching.max_in_flight:
                    self._wait_oldest(in_flight, progress, on_progress)
            while in_flight:
                self._wait_oldest(in_flight, progress, on_progress)
            sink_stats = ray.get(sink.close.remote())
            decode_stats = ray.get(decoder.stats.remote())
        except BaseException as error:
            try:
                # Bounded: the abort queues behind the sink's pending writes, which may wait on a model actor that
                # is restarting (or never will); then the sink is killed below and its file removed here
                ray.get(sink.abort.remote(), timeout=ANSWER_S)
            except (ray.exceptions.RayError, TimeoutError):
                pass
            self.streams.discard(pair)  # a failed stream's actors are not reused: they may be gone, or mid-write
            temporary_path(Path(output), tag).unlink(missing_ok=True)  # the sink died, or is killed, with it open
            if isinstance(error, ray.exceptions.RayError) and not isinstance(error, RETRIABLE):
                raise unwrap_ray_error(error) from None
            raise
        self.streams.give_back(pair)
        return StreamResult(decode_stats, sink_stats, progress, time.monotonic())

    def _wait_oldest(self, in_flight: deque, progress: dict, on_progress) -> None:
        write_ref, count = in_flight.popleft()
        while not ray.wait([write_ref], timeout=HEALTH_CHECK_S)[0]:
            self.pool.check()
        self.pool.check(every_s=HEALTH_CHECK_S)
        ray.get(write_ref)
        # Steady-state rate: from the first written batch on, so actor start-up and warm-up are not counted
        if progress["first_written_at"] is None:
            progress["first_written_at"] = time.monotonic()
        else:
            progress["frames_after_first"] += count
        if on_progress:
            on_progress(count)

    def model_actors_peak_rss(self) -> list[float]:
        """Peak memory of the model actors that answer within a few seconds (one restarting, or lost with its node,
        would hold the summary up, or forever where it has no room to restart)."""
        refs = [actor.usage.remote() for actor in self.model_actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ANSWER_S)
        peaks = []
        for ref in ready:
            try:
                peaks.append(ray.get(ref)["peak_rss_mb"])
            except ray.exceptions.RayError:
                pass
        return peaks

    def shutdown(self) -> None:
        self.streams.clear()
        for actor in self.model_actors:
            ray.kill(actor)
