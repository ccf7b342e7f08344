"""
DepthGraph: the model actors a job shares, its streams' own actors, and `run_stream`, which sends one stream (a
video, or a segment of one) through decode -> model -> sink. The jobs (jobs/: a file, a batch of files, a camera)
decide which streams to run and ask the graph for what they need (`infer`, `cluster_cpus`), never Ray itself.

    DecodeActor (VideoDecoder) --FrameBatch--> ModelActor x N (DepthWorker) --DepthBatch--> SinkActor (DepthSink)

The driver only moves object references: pixels go from the decoder's object-store entry straight to a model
actor and the sink. At most `max_in_flight` batches are between decode and write at any time (the driver waits on
the oldest write before sending more), so memory does not grow with video length. Model actors are created once
per `DepthGraph` and can serve many videos; their batches are returned out of order and the sink restores order.
A stream's decode and sink actors are kept for the next stream when it succeeds (`stream_pool.py`): a new pair costs a
second or two of process start-up, which every video of a batch job and every segment would otherwise pay.
Ray start-up is in runtime.py, the actors in actors.py, the resource plan in plan.py.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray

from model import CheckpointError, PredictorOptions
from model.hub import DEFAULT_MODEL, ResolvedCheckpoint, resolve_checkpoint

from .actors import DecodeActor, ModelActor, SinkActor, unwrap_ray_error
from .model_pool import ModelPool
from .plan import plan_actors
from .runtime import started_local_ray
from .settings import PipelineSettings
from .stages.encode import temporary_path
from .stages.frames import FrameBatch, PipelineError, VideoInfo, one_line
from .stages.infer import ModelSource, cuda_problem
from .stages.sink import RenderOptions
from .stream_pool import StreamActorPool

HEALTH_CHECK_S = 5.0  # how often the driver looks at the model actors' health (and when a write takes this long)
RETRY_PAUSE_S = 1.0  # before a stream's second attempt; twice that before its third
ANSWER_S = 5.0  # what an actor gets to answer a small call (a failed stream's sink abort, usage) before it is let go


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
        self.plan = plan_actors(settings, ray.cluster_resources(), cuda_problem() if started_local_ray() else None)
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

    def infer(self, batch: FrameBatch, depth_dtype: str = "float16"):
        """Depth for one batch from the next model actor, waited for (a live camera's frames, the 16-bit scale's
        first frame): a `DepthBatch`."""
        _ = self.model_info  # the models' errors first, as one line
        try:
            return ray.get(self.pool.next().infer.remote(batch, depth_dtype))
        except ray.exceptions.RayError as error:
            raise unwrap_ray_error(error) from None

    @property
    def cluster_cpus(self) -> float:
        """CPUs in the cluster now (nodes come and go)."""
        return ray.cluster_resources().get("CPU", 1)

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
