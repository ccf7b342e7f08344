"""
DepthGraph: the model actors a job shares, its streams' own actors, and `run_stream`, which sends one stream (a
video, or a segment of one) through decode -> model -> sink. The jobs (jobs/: a file, a batch of files, a camera)
decide which streams to run and ask the graph for what they need (`infer`, `cluster_cpus`), never Ray itself.

    StreamActor (VideoDecoder, drives the stream) --FrameBatch--> ModelActor (DepthWorker) --DepthBatch--> SinkActor

A stream runs on its own actor, on a worker node: it decodes, sends each batch to a model actor and on to its sink,
and keeps at most `max_in_flight` batches between decode and write, so memory does not grow with video length. The
driver makes a handful of Ray calls per stream (take a pair of actors, start the stream, hear its progress about
twice a second and its result), not three per batch: one driver process is not the cluster's limit.
Where: `stream_placement.py` picks a node with a model actor for each stream (in proportion to the model actors,
within each node's CPUs and memory); the stream and its sink are started there and use the model actors there, so
frames and depth stay in that node's object store (what crosses nodes is counted). Model actors are created once per
`DepthGraph` and serve every stream; a stream's pair of actors is kept for the next stream on its node
(`stream_actor_cache.py`). Ray start-up is in runtime.py, each actor in a file of its own (stream_actor.py,
model_actor.py, sink_actor.py, camera_actor.py), the resource plan in plan.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from model import CheckpointError, PredictorOptions
from model.hub import DEFAULT_MODEL, ResolvedCheckpoint, resolve_checkpoint
from pipeline.cluster.model_actor import ModelActor
from pipeline.cluster.model_router import ModelRouter, actor_state
from pipeline.cluster.plan import max_streams_for, plan_actors
from pipeline.cluster.ray_calls import HEALTH_CHECK_S, answers, unwrap_ray_error
from pipeline.cluster.runtime import cuda_problem_on_gpu_nodes, started_local_ray, wait_for_gpus
from pipeline.cluster.sink_actor import SinkActor
from pipeline.cluster.stream_actor import PROGRESS, RESULT, StreamActor, StreamJob
from pipeline.cluster.stream_actor_cache import StreamActorCache
from pipeline.cluster.stream_placement import StreamPlacement
from pipeline.errors import PipelineError, one_line
from pipeline.formats import keeps_values
from pipeline.settings import PipelineSettings
from pipeline.stages.frames import DepthBatch, FrameBatch, VideoInfo
from pipeline.stages.inference.depth_worker import ModelSource, choose_runtime, cuda_problem
from pipeline.stages.inference.temporal_windows import WindowSpan
from pipeline.stages.render.smoothing import smoother_for
from pipeline.stages.sinks.depth_sink import RenderOptions
from pipeline.stages.sinks.output_files import remove_partial, temporary_path
from pipeline.storage import abort_uploads, is_remote

__all__ = ["DepthGraph", "StreamResult"]

LIVE_STREAM = "live"  # the one camera of a one-camera live job, as its model actor knows it
RETRY_PAUSE_S = 1.0  # before a stream's second attempt; twice that before its third
STARTING_TIMEOUTS = 5  # placement timeouts an actor that has its resources may take to start (a machine busy elsewhere)
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
             ray.exceptions.OwnerDiedError, ray.exceptions.NodeDiedError,
             ray.exceptions.ActorUnschedulableError)  # (stream actors bound to a node that died meanwhile)


def wait_until_dead(actor, timeout_s: float) -> None:
    """Wait (at most `timeout_s`) until a killed actor's process is gone, so that nothing it does comes after."""
    deadline = time.monotonic() + timeout_s
    while actor_state(actor._actor_id.hex()) not in ("DEAD", None) and time.monotonic() < deadline:
        time.sleep(0.05)


class DepthGraph:
    """Model actors (created once), the streams' own actors (kept warm between streams), and `run_stream`, which sends
    one stream (a video, or a segment of one) through decode -> infer -> sink. What a user runs is a job on top of it
    (`jobs/file.py`: a video, whole or in segments; `jobs/batch.py`: many; `jobs/live.py`: a camera).

    The model actors start loading at construction; the first stream starts its own actors meanwhile and waits for
    the models only when its first batch is ready for them (start-up overlaps start-up).
    """

    def __init__(self, settings: PipelineSettings, builder=None, resolved: ResolvedCheckpoint | None = None,
                 live: bool = False):
        """`resolved`: the checkpoint when the caller has resolved it already (a name or repo id may mean a
        download); `builder`: benchmarks only, a picklable callable that builds a stand-in network (see ModelSource);
        `live`: cameras' job (a video model runs in its streaming mode: what an exported network is made for).
        """
        self.settings = settings
        model = settings.model
        resources = (wait_for_gpus(settings.ray.wait_for_gpus, settings.ray.gpu_wait_s) if settings.ray.wait_for_gpus
                     else ray.cluster_resources())
        # Whether torch can use the GPUs Ray sees: a local cluster's workers run this torch; a cluster's GPU nodes
        # are asked (an image with a CPU-only torch then runs on the CPU with a note, instead of failing actors)
        problem = (cuda_problem() if started_local_ray() else
                   cuda_problem_on_gpu_nodes() if resources.get("GPU", 0) >= 1 and model.device != "cpu" else None)
        self.plan = plan_actors(settings, resources, problem)
        for note in self.plan.notes:
            print(f"warning: {note}", file=sys.stderr, flush=True)
        options = PredictorOptions(model.input_size, model.even_grid, model.precision, model.compile)
        if resolved is None and builder is None and not model.random_weights:
            resolved = resolve_checkpoint(model.checkpoint or model.name or DEFAULT_MODEL)
        self.checkpoint = resolved
        checkpoint = resolved.path if resolved else None
        source = ModelSource(checkpoint, model.random_weights, model.version,
                             max_depth=model.max_depth, builder=builder,
                             hub_reference=resolved.spec if resolved and resolved.repo_id else None,
                             runtime=choose_runtime(model.runtime, checkpoint), onnx_cache=model.onnx_cache,
                             vda_mode="stream" if live or model.vda_mode == "stream" else "window")
        # Inside an actor Ray makes only its assigned GPU visible, as cuda:0: "cuda:1" would not exist there
        device = "cuda" if self.plan.use_gpu else "cpu"
        actors = [
            # Spread: each node with a model actor can keep its streams' frames to itself (stream_placement.py)
            ModelActor.options(**self.plan.model_options, scheduling_strategy="SPREAD").remote(
                source, options, device, self.plan.torch_threads, self.plan.batch_size, self.plan.network_batch)
            for _ in range(self.plan.model_actors)
        ]
        self._loading = [actor.load.remote() for actor in actors]
        self.router = ModelRouter(actors, settings.ray.restart_timeout_s)  # shared by every view (with_settings)
        self.streams = StreamActorCache(self._start_stream_actors)  # likewise
        self.stream_slots = threading.BoundedSemaphore(self.plan.max_streams)  # likewise: one bound for the job
        self.placement = StreamPlacement(lambda: {n: len(a) for n, a in self.router.by_node().items()},
                                         self._node_limits)  # likewise: and one per node
        self._model_info: dict | None = None
        self._models_placed = threading.Event()  # shared by every view (with_settings), set once
        self.batch_size = self.plan.batch_size
        self._cameras = None  # the live cameras' supervisor (camera_supervisor.py), made when a job asks for it

    def _start_stream_actors(self, node: str | None) -> tuple:
        """A new stream actor and sink actor, both on `node` (the stream's, chosen by `placement`), or spread over
        the nodes when none is known (their actors declare no CPU: Ray would otherwise pile them onto one node).
        Hard affinity (soft affinity put 0-CPU actors elsewhere, measured on Ray 2.60): a node that died meanwhile
        makes them unschedulable, an error the stream's retry takes care of."""
        strategy = NodeAffinitySchedulingStrategy(node, soft=False) if node else "SPREAD"
        return (StreamActor.options(scheduling_strategy=strategy).remote(),
                SinkActor.options(**self.plan.sink_options, scheduling_strategy=strategy).remote())

    def _node_limits(self) -> dict[str, int]:
        """Streams each alive node may hold at once: its CPUs the model actors leave, and its memory."""
        model_actors = {n: len(a) for n, a in self.router.by_node().items()}
        return {node["NodeID"]: max_streams_for(node["Resources"].get("CPU", 0) - model_actors.get(node["NodeID"], 0),
                                                node["Resources"].get("memory", 0))
                for node in ray.nodes() if node["Alive"]}

    def infer(self, batch: FrameBatch, depth_dtype: str = "float16"):
        """Depth for one batch from the next model actor, waited for (the 16-bit scale's first frame): a
        `DepthBatch`."""
        return self.submit(batch, depth_dtype)()

    def submit(self, batch: FrameBatch, depth_dtype: str = "float16") -> Callable[[], DepthBatch]:
        """Send one batch to the next model actor (a live camera's frames); gives a function that waits for its
        `DepthBatch`, its errors as one-line exceptions."""
        model = self.model_info  # the models' errors first, as one line
        if model.get("temporal"):  # a video model's streaming mode: one actor keeps the stream's cache
            reference = self.router.healthy()[0].infer_frames.remote(LIVE_STREAM, batch, depth_dtype, 1, 0.0)
        else:
            reference = self.router.next().infer.remote(batch, depth_dtype)

        def result():
            try:
                return ray.get(reference)
            except ray.exceptions.RayError as error:
                raise unwrap_ray_error(error) from None

        return result

    @property
    def cluster_cpus(self) -> float:
        """CPUs in the cluster now (nodes come and go)."""
        return ray.cluster_resources().get("CPU", 1)

    @property
    def model_actors(self) -> list:
        """the model actors in the router now (fewer once one is lost for good)."""
        return self.router.actors

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
        """Wait until Ray has placed the actors (their processes answer); a one-line error once `placement_timeout_s`
        has passed with an actor the cluster has no room for. An actor the cluster has room for is placed and its
        process is starting: on a machine busy with other work that took over a minute (torch's import at a third of
        a core), so it is waited for, up to `STARTING_TIMEOUTS` times the timeout, and not called unplaceable."""
        timeout_s = self.settings.ray.placement_timeout_s
        gpus, cpus = options.get("num_gpus", 0), options.get("num_cpus", 1)
        waiting = [a.ready.remote() for a in actors]
        for _ in range(STARTING_TIMEOUTS):
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=timeout_s)
            free = ray.available_resources()
            if not waiting or free.get("CPU", 0) < cpus or free.get("GPU", 0) < gpus:
                break  # (all up, or one has no room: the resources a placed actor holds are not free)
        if waiting:
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
                self.router.suspect(getattr(error, "actor_id", None))
                self.streams.clear()
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
                self.router.check()
            except (PipelineError, CheckpointError) as error:
                raise type(error)(f"{where}{error}" if where else str(error)) from None
        raise AssertionError("unreachable")

    def run_stream(self, source: str, output: str, info: VideoInfo, render: RenderOptions,
                   pts_range: tuple[int, int | None] | None = None, write_from_pts: int | None = None,
                   on_progress: Callable[[int], None] | None = None, prefix_range: tuple[int | None, int] | None = None,
                   window_span: WindowSpan | None = None) -> "StreamResult":
        """decode -> shared model actors -> sink for one stream (a video, or a segment of one), bounded in flight.

        `pts_range`: decode only [start, end) (a segment with its warm-up); `write_from_pts`: frames before it only
        warm the smoother and the colour range up (see DepthSink). A video model's segment: `prefix_range`, the
        video's opening frames decoded first, and in window mode `window_span`, its windows (StreamJob). Waits for
        one of the job's stream slots first (`plan.max_streams`: videos and segments together)."""
        with self.stream_slots:
            if not self._models_placed.is_set():
                # Where the model actors run decides where streams run: on a cluster, know it before the first
                # stream (on one machine every stream is beside them anyway, and the actors start meanwhile).
                # Asked once: later streams find the model actors' nodes known
                if sum(node["Alive"] for node in ray.nodes()) > 1:
                    self._wait_placed(self.model_actors, "model actors", self.plan.model_options)
                self._models_placed.set()
            node = self.placement.acquire()
            try:
                return self._run_stream(source, output, info, render, pts_range, write_from_pts, on_progress, node,
                                        prefix_range, window_span)
            finally:
                self.placement.release(node)

    def _run_stream(self, source: str, output: str, info: VideoInfo, render: RenderOptions,
                    pts_range: tuple[int, int | None] | None, write_from_pts: int | None,
                    on_progress: Callable[[int], None] | None, node: str | None,
                    prefix_range: tuple[int | None, int] | None, window_span: WindowSpan | None) -> "StreamResult":
        settings = self.settings
        # The sink's temporary file has a name the driver knows: if the sink's process or node dies, the driver
        # removes what it left (on a filesystem every node sees, which outputs need anyway)
        tag = uuid.uuid4().hex[:12]
        stream, sink = pair = self.streams.take(node)  # warm from an earlier stream there, or new
        try:
            if self.plan.sink_options:  # a GPU share: a cluster whose GPUs are taken would hold it forever
                self._wait_placed([sink], "sink actors (smoothing on the GPU)", {**self.plan.sink_options,
                                                                                 "num_cpus": 0})
            model = self.model_info  # the models were loading while this stream's actors started
            # A video model: its window mode (files' default), or its streaming mode through one actor's cache
            streaming = bool(model.get("temporal")) and settings.model.vda_mode == "stream"
            job = StreamJob(source, self.batch_size, settings.batching.frame_layout, pts_range,
                            # float16 depth is finer than any 8-bit picture; outputs of the values keep float32
                            "float32" if keeps_values(render.depth_format) or model.get("temporal") else "float16",
                            settings.batching.max_in_flight, settings.ray.restart_timeout_s,
                            sink_args=(output, info, render, smoother_for(settings.smoothing.name, model),
                                       dict(settings.smoothing.params),
                                       self.plan.smoother_device, write_from_pts, tag, model,
                                       dict(settings.storage.options)),
                            fps=settings.input.fps, windows=bool(model.get("temporal")) and not streaming,
                            metric=model.get("depth") == "metric", stream_key=uuid.uuid4().hex if streaming else None,
                            prefix_range=prefix_range, window_span=window_span,
                            storage_options=dict(settings.storage.options))
            # The stream runs on its own actor, beside its sink: this thread only hears how far it is, and the end
            result = None
            # The model actors on the stream's node, when it has any: its frames and depth then stay on that node
            by_node = self.router.by_node()
            actor_nodes = {actor._actor_id.hex(): n for n, actors in by_node.items() for actor in actors}
            model_actors = by_node.get(node) or self.router.healthy()
            items = stream.run.remote(job, sink, model_actors, actor_nodes)
            while True:
                ready, _ = ray.wait([items], timeout=HEALTH_CHECK_S)
                # The job's look at the model actors (the stream's own drops one it waits on in vain; this one
                # says so, and keeps it from later streams)
                self.router.check(every_s=HEALTH_CHECK_S)
                if not ready:
                    continue
                try:
                    kind, value = ray.get(next(items))
                except StopIteration:
                    break
                if kind == PROGRESS and on_progress:
                    on_progress(value)
                elif kind == RESULT:
                    result = value
        except BaseException as error:
            try:
                # Bounded: the abort queues behind the sink's pending writes, which may wait on a model actor that
                # is restarting (or never will); then the sink is killed below and its file removed here
                ray.get(sink.abort.remote(), timeout=ANSWER_S)
            except (ray.exceptions.RayError, TimeoutError):
                pass
            self.streams.discard(pair)  # a failed stream's actors are not reused: they may be gone, or mid-write
            # The sink died, or is killed, with its output open: removed once it is gone (a sink killed while busy
            # wrote on into a folder removed before, leaving it behind)
            wait_until_dead(sink, ANSWER_S)
            if is_remote(output):  # (its spool went with its process; an upload it had begun is aborted)
                with contextlib.suppress(PipelineError):
                    abort_uploads(output)
            else:
                remove_partial(temporary_path(Path(output), tag))
            if isinstance(error, ray.exceptions.RayError) and not isinstance(error, RETRIABLE):
                raise unwrap_ray_error(error) from None
            raise
        self.streams.give_back(pair, result["decode"]["node_id"])
        return StreamResult(result["decode"], result["sink"], result["progress"], result["finished"])

    def camera_supervisor(self):
        """The job's live cameras, each on an actor of its own, using these model actors (made on first use)."""
        if self._cameras is None:
            from pipeline.cluster.camera_supervisor import CameraSupervisor

            self._cameras = CameraSupervisor(self.router, self.settings, self.batch_size,
                                             model_info=lambda: self.model_info)
        return self._cameras

    def model_actors_peak_rss(self) -> list[float]:
        """Peak memory of the model actors that answer within a few seconds (one restarting, or lost with its node,
        would hold the summary up, or forever where it has no room to restart)."""
        return [usage["peak_rss_mb"] for usage in answers([actor.usage.remote() for actor in self.model_actors],
                                                            ANSWER_S)]

    def shutdown(self) -> None:
        if self._cameras is not None:
            self._cameras.close()
        self.streams.clear()
        for actor in self.model_actors:
            ray.kill(actor)
