"""
The camera actor: one live camera's whole loop (stages/live/camera_runner.py: reading, smoothing, rendering,
encoding, publishing) in a process of its own, its frames inferred by the job's model actors.

Takes: the camera's name, source URL, targets and settings; `run(model_actors)` starts it, `stop` ends it.
Gives: `stats` while it runs, and from `stop` the camera's summary (frames in and out, drops, latency, CPU).
"""

from __future__ import annotations

import os
import threading

import ray

from pipeline.cluster.model_router import ModelRouter
from pipeline.cluster.ray_calls import cpu_seconds, one_thread_each, peak_rss_mb, unwrap_ray_error
from pipeline.stages.frames import FrameBatch
from pipeline.stages.inference.depth_worker import StreamRefused

__all__ = ["CameraActor"]

# A camera's process: one camera's whole loop (reading, smoothing, rendering, encoding, publishing) beside the other
# cameras', so N cameras use N cores and one camera's stall never holds another's frames. No CPU declared (as stream
# actors; the camera supervisor bounds them). A process that dies is started again by Ray (its __init__ again); the
# supervisor then sees it idle and starts it again (`run`): the camera reconnects and publishes again by itself
CAMERA_ACTOR_RESTARTS = 3


@ray.remote(num_cpus=0, max_restarts=CAMERA_ACTOR_RESTARTS)
class CameraActor:
    """Runs one camera (stages/live/camera_runner.py) from `run` until `stop`; its frames go to the job's model
    actors with `infer_frames`, batched there with the other cameras' frames.

    The model actors are given to `run`, not to the constructor: Ray restarts an actor from its constructor's
    arguments, and handles of other actors there may not survive (ray-project/ray#53727)."""

    def __init__(self, name: str, source: str, realtime: bool, targets, settings, batch_size: int):
        from pipeline.settings import live_camera_options
        from pipeline.stages.live.camera_runner import LiveCamera
        from pipeline.stages.sources.live_stream import LiveSource

        one_thread_each()
        live = settings.live
        self._name, self._settings, self._batch_size = name, settings, batch_size
        self._camera = LiveCamera(live_camera_options(settings),
                                  LiveSource(source, realtime=realtime, transport=live.transport,
                                             read_timeout_s=live.read_timeout_s, backoff_s=(0.5, live.backoff_max_s)),
                                  targets, name=name)
        self._summary: dict | None = None
        self._thread: threading.Thread | None = None
        self._model_actors_used: dict[str, object] = {}  # actor id -> handle: every model actor sent frames

    def run(self, model_actors: list, model: dict | None = None) -> None:
        """Start the camera's loop (once) on these model actors: the first is the camera's own (its frames batch
        there with the same other cameras' each time), the others its fallback while that one is down."""
        if self._thread is not None:
            return

        router = ModelRouter(model_actors, self._settings.ray.restart_timeout_s, log=False)
        name, batch_size, wait_s = self._name, self._batch_size, self._settings.live.batch_wait_ms / 1e3

        used = self._model_actors_used

        def submit(batch: FrameBatch, depth_dtype: str):
            actor = router.healthy()[0]  # the camera's own model actor while it is sound; the next one else
            used.setdefault(actor._actor_id.hex(), actor)  # (each one that held the camera's cache lets it go at stop)
            reference = actor.infer_frames.remote(name, batch, depth_dtype, batch_size, wait_s)

            def result():
                try:
                    return ray.get(reference)
                except ray.exceptions.RayError as error:
                    cause = unwrap_ray_error(error)
                    if not isinstance(cause, StreamRefused):  # (a full model actor is sound: only full)
                        router.suspect(actor._actor_id.hex())
                    raise cause from None

            return result

        self._cpu_at_start = cpu_seconds()  # (the process's start-up, imports mostly, is not the camera's work)
        self._thread = threading.Thread(target=self._run, args=(submit, model), daemon=True, name=f"camera-{name}")
        self._thread.start()

    def _run(self, submit, model) -> None:
        try:
            self._summary = self._camera.run(submit, model=model)
        except BaseException:  # noqa: BLE001 - recorded by the camera (its state: failed), reported by stats
            pass

    def preview(self, newer_than: int = 0) -> tuple[int, bytes] | None:
        """The camera's last depth picture as JPEG, if newer than `newer_than` (LiveCamera.preview): made on this
        call's thread, beside the camera's loop, only when someone watches."""
        return self._camera.preview(newer_than)

    def stats(self) -> dict:
        return {**self._camera.stats(), "running": self._thread is not None, "peak_rss_mb": peak_rss_mb(),
                "pid": os.getpid()}

    def stop(self, timeout_s: float = 10.0) -> dict:
        """Stop reading, write what is in flight, close the outputs (RTSP TEARDOWN, the recording finished): the
        camera's summary."""
        self._camera.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            # A video model's cache of this camera lets go at once on every model actor it went to (after a
            # failover, frames went to another one too), not when its LRU gets to it
            for actor in self._model_actors_used.values():
                actor.end_stream.remote(self._name)
        if self._summary is None:
            return {**self._camera.stats(), "error": self._camera.error or "did not stop in time"}
        # The camera's process is its own: its CPU is the camera's (reading, smoothing, rendering, encoding)
        cpu_s = cpu_seconds() - self._cpu_at_start
        frames = self._summary["frames_out"]
        return {**self._summary, "peak_rss_mb": peak_rss_mb(), "cpu_s": round(cpu_s, 3),
                "cpu_ms_per_frame": round(cpu_s / frames * 1e3, 2) if frames else None}

    def ready(self) -> bool:
        return True
