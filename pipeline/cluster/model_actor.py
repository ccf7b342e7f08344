"""
The model actor: the network on one device, serving every stream and camera of a job.

Takes: batches of frames (FrameBatch: pixels N x H x W x 3 RGB, or I420 planes) from stream actors (`infer`) and
live cameras (`infer_frames`, batched across cameras here).
Gives: DepthBatch (depth N x H x W, float16 or float32, in the frames' order, with their timestamps). Its probe
(`ready`), its `load` and its control calls (`usage`, `batching`) each have a thread of their own.
"""

from __future__ import annotations

import threading

import ray
import torch

from model import PredictorOptions
from pipeline.cluster.ray_calls import cpu_seconds, peak_rss_mb
from pipeline.stages.frames import FrameBatch
from pipeline.stages.inference.cross_stream_batcher import CrossStreamBatcher
from pipeline.stages.inference.depth_worker import DepthWorker, ModelSource

__all__ = ["ModelActor"]

# A model actor whose process dies is started again by Ray (it loads the model on its first call), and the calls
# that were in flight are sent to it again: a lost worker costs a reload, not the job
MODEL_ACTOR_RESTARTS = 3


# Control calls (ready, load, usage) have a thread of their own: they answer while batches are being inferred,
# instead of queueing behind every batch in flight (a placement check or a summary waited for the whole queue)
# Live cameras' calls (`infer_frames`) wait in a group of their own, one thread each, while their frames are batched
# together (stages/inference/cross_stream_batcher.py): up to LIVE_CALLS_AT_ONCE cameras per model actor
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
        return {"variant": config.variant, "version": config.version, "temporal": getattr(config, "temporal", False),
                "depth": "metric" if getattr(config, "max_depth", None) else "relative",
                **({"max_depth_m": config.max_depth} if getattr(config, "max_depth", None) else {}),
                "device": str(worker.device), "torch_threads": torch.get_num_threads(),
                "runtime": self._args[0].runtime}

    def _loaded(self) -> DepthWorker:
        with self._loading:
            if self._worker is None:
                source, options, device, threads, batch_size, network_batch = self._args
                self._worker = DepthWorker.create(source, options, device, threads, batch_size, network_batch)
                self._cpu_after_load = cpu_seconds()
        return self._worker

    def infer(self, batch: FrameBatch, depth_dtype: str):
        return self._loaded().infer(batch, depth_dtype)

    @ray.method(max_task_retries=0)
    def infer_stream(self, stream: str, batch: FrameBatch, depth_dtype: str):
        """A file's frames through a video model's streaming mode (its cache kept under `stream`): in the default
        group, one call at a time, in the order one caller sends them. Never sent again by Ray: after a restart Ray
        sends the calls it retries in any order, and the cache they built is gone anyway; the stream fails instead
        and is run again whole (graph.retrying), so its depth is an undisturbed run's."""
        return self._loaded().infer_stream(stream, batch, depth_dtype)

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
                    # Two batches in the network at once on a GPU (copies beside compute), one on a CPU. A video
                    # model's streaming mode: each camera's frames through its own cache, in order (a camera sends
                    # one batch at a time to this one actor), the cameras' frames batched in each pass
                    temporal = bool(getattr(worker.predictor.net.config, "temporal", False))
                    infer = worker.infer_streams_together if temporal else worker.infer_together
                    batcher = self._batchers[key] = CrossStreamBatcher(
                        lambda batches: infer(batches, depth_dtype), batch_size, wait_s,
                        group_of=worker.input_size_for, workers=2 if worker.device.type == "cuda" and not temporal
                        else 1, keyed=temporal)
        return batcher.submit(stream, batch).result()

    @ray.method(concurrency_group="control")
    def end_stream(self, stream: str) -> None:
        """A camera stopped: a video model lets its cache go (nothing to do for an image model)."""
        if self._worker is not None:
            self._worker.end_stream(stream)

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

