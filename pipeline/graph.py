"""
The Ray wiring: thin actors around the plain stages, and the loop that streams one video through them.

    DecodeActor (VideoDecoder) --FrameBatch--> ModelActor x N (DepthWorker) --DepthBatch--> SinkActor (DepthSink)

The driver only moves object references: pixels go from the decoder's object-store entry straight to a model
actor and the sink. At most `max_in_flight` batches are between decode and write at any time (the driver waits on
the oldest write before sending more), so memory does not grow with video length. Model actors are created once
per `DepthGraph` and can serve many videos; their batches are returned out of order and the sink restores order.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import ray
import torch

from model import PredictorOptions

from .decode import VideoDecoder
from .frames import FrameBatch, VideoInfo
from .infer import DepthWorker, ModelSource
from .settings import PipelineSettings
from .sink import DepthSink, RenderOptions
from .smoothing import make_smoother

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_GPU_SHARE = 0.75
SINK_GPU_SHARE = 0.05  # the smoother's state and arithmetic: a few frames of depth, a few ms per frame


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address) or start a local one; ships this project's packages to the workers."""
    if ray.is_initialized():
        return
    runtime_env = {"py_modules": [str(PROJECT_ROOT / "model"), str(PROJECT_ROOT / "pipeline")]}
    kwargs = dict(runtime_env=runtime_env, logging_level="ERROR", log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def unwrap_ray_error(error: Exception) -> Exception:
    """The user's exception inside a Ray task error (for a one-line message), or the error itself."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error


# ---------------------------------------------------------------------------------------------------------------------
# Actors: construction stores arguments only; work (and errors) happen in method calls, so errors arrive intact


@ray.remote(num_cpus=0)
class DecodeActor:
    def __init__(self, source: str, batch_size: int, max_wait_s: float | None):
        self._decoder = VideoDecoder(source)
        self._batches = self._decoder.batches(batch_size, max_wait_s)

    @ray.method(num_returns=2)
    def next_batch(self) -> tuple[int, FrameBatch | None]:
        batch = next(self._batches, None)
        return (len(batch) if batch is not None else 0), batch

    def stats(self) -> dict:
        self._decoder.close()
        return {
            "frames_in": self._decoder.frames_decoded,
            "unreadable_frames": self._decoder.unreadable_frames,
            "corrupt_packets": self._decoder.corrupt_packets,
            "repaired_timestamps": self._decoder.repaired_timestamps,
            "peak_rss_mb": peak_rss_mb(),
        }


@ray.remote
class ModelActor:
    def __init__(self, source: ModelSource, options: PredictorOptions, device: str, threads: int):
        self._args = (source, options, device, threads)
        self._worker: DepthWorker | None = None

    def load(self) -> dict:
        source, options, device, threads = self._args
        self._worker = DepthWorker.create(source, options, device, threads)
        config = self._worker.predictor.net.config
        return {"variant": config.variant, "version": config.version, "device": str(self._worker.device),
                "torch_threads": torch.get_num_threads()}

    def infer(self, batch: FrameBatch):
        return self._worker.infer(batch)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb()


@ray.remote(num_cpus=0)
class SinkActor:
    def __init__(self, output: str, info: VideoInfo, render: RenderOptions, smoother_name: str, params: dict,
                 smoother_device: str):
        self._sink = DepthSink(output, info, render, make_smoother(smoother_name, device=smoother_device, **params))

    def write(self, depth_batch, frame_batch) -> int:
        return self._sink.write(depth_batch, frame_batch)

    def close(self) -> dict:
        return {**self._sink.close(), "peak_rss_mb": peak_rss_mb()}

    def abort(self) -> None:
        self._sink.abort()


# ---------------------------------------------------------------------------------------------------------------------


class DepthGraph:
    """Model actors (created once) plus a method that streams one video through decode -> infer -> sink."""

    def __init__(self, settings: PipelineSettings):
        self.settings = settings
        model = settings.model
        options = PredictorOptions(model.input_size, model.even_grid, model.precision, model.compile)
        source = ModelSource(model.checkpoint, model.random_weights, model.version)
        use_gpu = model.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        count = settings.ray.model_actors or (int(ray.cluster_resources().get("GPU", 0)) if use_gpu else 1)
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = model.threads or max(1, int(cpus // count)) if not use_gpu else model.threads
        # A model actor takes most of a GPU; the rest is for the sinks that smooth on it (SINK_GPU_SHARE each)
        actor_options = {"num_gpus": MODEL_GPU_SHARE, "max_concurrency": 2, "num_cpus": 1} if use_gpu else {"num_cpus": 1}
        self.model_actors = [
            ModelActor.options(**actor_options).remote(source, options, model.device, threads) for _ in range(count)
        ]
        try:
            self.model_info = ray.get([actor.load.remote() for actor in self.model_actors])[0]
        except ray.exceptions.RayError as error:
            raise unwrap_ray_error(error) from None
        self._next_actor = 0
        self.batch_size = settings.batching.batch_size or (8 if use_gpu else 1)
        smoothing_device = settings.smoothing.device
        self.smoother_device = ("cuda" if use_gpu else "cpu") if smoothing_device == "auto" else smoothing_device
        self._sink_options = {"num_gpus": SINK_GPU_SHARE} if self.smoother_device.startswith("cuda") else {}

    def process(
        self, source: str, output: str, on_progress: Callable[[int], None] | None = None, info: VideoInfo | None = None
    ) -> dict:
        """Stream one video; returns the run's summary. The output exists only if this returns.

        `info` is the source's VideoInfo when the caller has already probed it; otherwise it is probed here, which
        also validates the input with a clean error before any actor starts.
        """
        settings = self.settings
        if info is None:
            probe = VideoDecoder(source)
            info = probe.info
            probe.close()
        batching = settings.batching
        started = time.monotonic()
        decoder = DecodeActor.remote(source, self.batch_size, None)
        sink = SinkActor.options(**self._sink_options).remote(
            output, info, settings.output, settings.smoothing.name, dict(settings.smoothing.params), self.smoother_device
        )
        in_flight: deque = deque()
        self._progress = {"first_written_at": None, "frames_after_first": 0}
        try:
            count_ref, batch_ref = decoder.next_batch.remote()
            while True:
                count = ray.get(count_ref)
                if count == 0:
                    break
                this_batch = batch_ref
                count_ref, batch_ref = decoder.next_batch.remote()  # decode ahead while this batch is inferred
                actor = self.model_actors[self._next_actor % len(self.model_actors)]
                self._next_actor += 1
                depth_ref = actor.infer.remote(this_batch)
                in_flight.append((sink.write.remote(depth_ref, this_batch), count))
                while len(in_flight) >= batching.max_in_flight:
                    self._wait_oldest(in_flight, on_progress)
            while in_flight:
                self._wait_oldest(in_flight, on_progress)
            sink_stats = ray.get(sink.close.remote())
            decode_stats = ray.get(decoder.stats.remote())
            model_rss = ray.get([actor.peak_rss_mb.remote() for actor in self.model_actors])
        except BaseException as error:
            try:
                ray.get(sink.abort.remote())
            except ray.exceptions.RayError:
                pass
            if isinstance(error, ray.exceptions.RayError):
                raise unwrap_ray_error(error) from None
            raise
        finally:
            ray.kill(decoder)
            ray.kill(sink)
        finished = time.monotonic()
        seconds = finished - started
        steady_s = finished - (self._progress["first_written_at"] or finished)
        peak_rss = {"decode": decode_stats.pop("peak_rss_mb"), "model": max(model_rss),
                    "sink": sink_stats.pop("peak_rss_mb")}
        summary = {
            "input": source,
            **decode_stats,
            "frames_out": sink_stats.pop("frames_out"),
            "dropped": 0,
            "seconds": round(seconds, 3),
            "fps": round(decode_stats["frames_in"] / seconds, 3) if seconds > 0 else None,
            "fps_steady": round(self._progress["frames_after_first"] / steady_s, 3) if steady_s > 0 else None,
            **sink_stats,
            "depth_format": settings.output.depth_format,
            "batch_size": self.batch_size,
            "model": self.model_info,
            "peak_rss_mb": peak_rss,
        }
        return summary

    def _wait_oldest(self, in_flight: deque, on_progress) -> None:
        write_ref, count = in_flight.popleft()
        ray.get(write_ref)
        # Steady-state rate: from the first written batch on, so actor start-up and warm-up are not counted
        if self._progress["first_written_at"] is None:
            self._progress["first_written_at"] = time.monotonic()
        else:
            self._progress["frames_after_first"] += count
        if on_progress:
            on_progress(count)

    def shutdown(self) -> None:
        for actor in self.model_actors:
            ray.kill(actor)
