"""
The camera actors of a many-camera live job: started, looked at, stopped (the Ray side of jobs/cameras.py).

Takes: the job's model actors and settings (from `DepthGraph.camera_supervisor()`), and cameras
(`jobs.cameras.Camera`) to start and names to stop.
Gives: `stats()`, every camera's figures as last heard (a thread asks the actors twice a second, so that an HTTP
request never waits on Ray, nor on a camera that does not answer); `stop(name)` / `stop_all(names)`, each camera's
summary, its outputs closed; `batching()`, how the model actors batched the cameras' frames; `preview(name)`, a
camera's last depth picture as JPEG.

Each camera runs on an actor of its own (actors.CameraActor), on a node with a model actor (the one with the fewest
cameras), so that its frames and depth stay on that node. A camera whose process died is restarted by Ray
(`CAMERA_ACTOR_RESTARTS`) and run again from here (`restarts` counts it); until it answers again its state reads
`restarting`; one that cannot come back reads `lost`.
"""

from __future__ import annotations

import threading

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.cluster.camera_actor import CameraActor
from pipeline.cluster.model_router import actor_state
from pipeline.cluster.ray_calls import answers, unwrap_ray_error
from pipeline.stages.inference.cross_stream_batcher import batch_means

__all__ = ["CameraSupervisor"]

POLL_S = 0.5  # how often the cameras' figures are asked for
STOP_S = 15.0  # what a camera gets to close its outputs when stopped
PREVIEW_WAIT_S = 2.0  # a preview picture not given in this long is skipped


class CameraSupervisor:
    def __init__(self, models, settings, batch_size: int, model_info=lambda: {}):
        """`model_info()`: what the model actors loaded (a video model's cameras send one batch at a time)."""
        self.models = models
        self.model_info = model_info
        self.settings = settings
        self.batch_size = batch_size
        self._actors: dict[str, object] = {}
        self._stats: dict[str, dict] = {}
        self._preferred: dict[str, str] = {}  # camera -> the model actor (id) it sends to first
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="camera-stats")
        self._poller.start()

    def start(self, camera) -> None:
        """Start a camera's actor (it connects by itself, with backoff)."""
        node = self._node_for_camera()
        strategy = NodeAffinitySchedulingStrategy(node, soft=False) if node else "DEFAULT"
        actor = CameraActor.options(scheduling_strategy=strategy).remote(
            camera.name, camera.input, camera.realtime, camera.targets, camera.settings, self.batch_size)
        with self._lock:
            self._actors[camera.name] = actor
            self._stats[camera.name] = {"state": "starting", "node": node, "restarts": 0}
        actor.run.remote(self._model_actors_for(camera.name), self.model_info())

    def stats(self) -> dict[str, dict]:
        with self._lock:
            return {name: dict(figures) for name, figures in self._stats.items()}

    def preview(self, name: str, newer_than: int = 0) -> tuple[int, bytes] | None:
        """The camera's last depth picture as JPEG and its number, if newer than `newer_than` (None: none yet, none
        newer, or the camera did not answer in PREVIEW_WAIT_S). KeyError: no such camera."""
        with self._lock:
            actor = self._actors.get(name)
        if actor is None:
            raise KeyError(name)
        try:
            return ray.get(actor.preview.remote(newer_than), timeout=PREVIEW_WAIT_S)
        except (ray.exceptions.RayError, TimeoutError):
            return None  # restarting, or busy: the viewer gets the next one

    def stop(self, name: str) -> dict:
        return self.stop_all([name])[name]

    def stop_all(self, names: list[str]) -> dict[str, dict]:
        """Stop these cameras at once (each closes its own outputs, in parallel): their summaries."""
        with self._lock:
            actors = {name: self._actors.pop(name) for name in names if name in self._actors}
            last = {name: self._stats.pop(name, {}) for name in names}
            for name in names:
                self._preferred.pop(name, None)
        refs = {name: actor.stop.remote(STOP_S) for name, actor in actors.items()}
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=STOP_S + 5)
        summaries = {}
        for name, ref in refs.items():
            try:
                summaries[name] = ray.get(ref, timeout=0)
            except (ray.exceptions.RayError, TimeoutError) as error:
                # Its process is gone (or hung): what it said last is all there is
                figures = {key: value for key, value in last.get(name, {}).items() if key != "state"}
                summaries[name] = {**figures, "error": f"stopped without a summary: {unwrap_ray_error(error)}"}
            ray.kill(actors[name], no_restart=True)
        return summaries

    def batching(self) -> dict:
        """Network batches of the cameras' frames on every model actor: count, mean_frames, mean_cameras."""
        per_actor = answers([actor.batching.remote() for actor in self.models.actors], timeout_s=5)
        return batch_means([totals for batchers in per_actor for totals in batchers])

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            names = list(self._actors)
        if names:
            self.stop_all(names)

    # .................................................................................................................

    def _model_actors_for(self, name: str) -> list:
        """The model actors for a camera, the one it sends to first: the one with the fewest cameras. A camera keeps
        to one model actor (the others are its fallback), so each model actor batches a steady set of cameras; sent
        round robin, every camera's frame would wait on each actor for cameras whose frames went to another."""
        actors = self.models.healthy()
        with self._lock:
            self._preferred.pop(name, None)
            load = {actor._actor_id.hex(): 0 for actor in actors}
            for chosen in self._preferred.values():
                if chosen in load:
                    load[chosen] += 1
            first = min(range(len(actors)), key=lambda i: (load[actors[i]._actor_id.hex()], i))
            self._preferred[name] = actors[first]._actor_id.hex()
        return actors[first:] + actors[:first]

    def _node_for_camera(self) -> str | None:
        """The node with a model actor that has the fewest cameras (None on one machine: wherever Ray likes)."""
        by_node = self.models.by_node()
        if len(by_node) < 2:
            return None
        with self._lock:
            counts = {node: 0 for node in by_node}
            for figures in self._stats.values():
                if figures.get("node") in counts:
                    counts[figures["node"]] += 1
        return min(counts, key=lambda node: (counts[node] / len(by_node[node]), node))

    def _poll(self) -> None:
        while not self._closed.wait(POLL_S):
            with self._lock:
                actors = dict(self._actors)
            refs = {name: actor.stats.remote() for name, actor in actors.items()}
            ray.wait(list(refs.values()), num_returns=len(refs), timeout=2 * POLL_S)
            for name, ref in refs.items():
                try:
                    figures = ray.get(ref, timeout=0)
                except ray.exceptions.GetTimeoutError:
                    continue  # busy or restarting: the last figures stand a little longer
                except ray.exceptions.RayActorError as error:
                    state = actor_state(actors[name]._actor_id.hex())
                    figures = {"state": "lost" if state == "DEAD" else "restarting",
                               "error": str(error).strip().splitlines()[0]}
                except ray.exceptions.RayError as error:
                    figures = {"state": "failed", "error": str(error).splitlines()[0]}
                restarted = figures.get("running") is False  # Ray started its process again: run it again
                if restarted:
                    actors[name].run.remote(self._model_actors_for(name), self.model_info())
                with self._lock:
                    if name in self._stats:
                        kept = {key: self._stats[name][key] for key in ("node", "restarts")}
                        kept["restarts"] += restarted
                        figures.pop("running", None)
                        self._stats[name] = {**self._stats[name], **figures, **kept}
