"""
Infer: batches of frames -> batches of depth, on the model's device.

Takes: `FrameBatch` (uint8 in host memory: I420, B x H*3/2 x W, converted to RGB on the model's device; or RGB,
B x H x W x 3).
Gives: `DepthBatch` (B x h x w depth at the model's resolution: relative inverse depth, or metres from a metric model,
float16 or float32, host memory); the sink smooths it there and resizes it to the frame size once, for rendering. A
video model's depth (`infer_stream`, the window mode's windows) comes at the frame size: Video Depth Anything resizes
with aligned corners, which the sink's resize does not reproduce to float32 rounding.

On a GPU, each call stages its frames (as they came: I420 is half the bytes of RGB) in a reusable pinned host buffer
and issues a non-blocking copy on a dedicated copy stream; the compute stream waits only on that copy's event. The
Ray actor around this class allows two calls at once, so the copy of batch N+1 runs while batch N computes. Results
come back through pinned buffers too (from torch's caching host allocator, returned as views), copied on a third
stream outside the compute lock. On the CPU the same `infer` runs without any of that.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from model import CheckpointError, DepthPredictor, PredictorOptions, check_checkpoint, load_model
from model.hub import resolve_checkpoint
from model.onnx_export import file_digest
from model.onnx_network import OnnxNetwork, is_onnx_file
from model.random_weights import random_model
from pipeline.errors import PipelineError
from pipeline.stages.frames import DepthBatch, FrameBatch
from pipeline.stages.inference.onnx_cache import exported_file
from pipeline.stages.inference.temporal_stream import StreamingDepth, push_together
from pipeline.stages.pixels import YUV420P, frame_height, i420_to_rgb

__all__ = ["DepthWorker", "ModelSource", "choose_runtime", "PinnedSlots", "StreamRefused", "cuda_problem", "free_memory_bytes", "pass_sizes"]

DEPTH_DTYPES = {"float16": torch.float16, "float32": torch.float32}

# Frames arrive as read-only views of Ray's shared object store; they are only ever read, never written
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a checkpoint path, or explicitly requested random weights of a variant."""

    checkpoint: str | None = None  # a local path (resolved by the driver)
    random_weights: str | None = None  # a variant name; output is then not meaningful depth
    version: str | None = None
    max_depth: float | None = None  # metres, for an official-layout metric file whose name does not say its range
    seed: int = 0
    # repo@commit when the checkpoint came from the Hub: a worker on a machine where `checkpoint` does not exist (no
    # shared filesystem) resolves it in its own Hub cache, downloading there if it has network
    hub_reference: str | None = None
    # Benchmarks only: a picklable callable that builds a stand-in network (with a `.config`), e.g. an instant one
    builder: Callable[[], torch.nn.Module] | None = None
    # What runs the network (resolved: torch, onnxruntime or tensorrt), and where exported files are cached
    runtime: str = "torch"
    onnx_cache: str | None = None
    # A video model's mode, which an exported file is made for: window (files) or stream (cameras, --vda-mode stream)
    vda_mode: str = "window"

    def load(self, device: torch.device):
        """The network on `device`: a torch module, or an ONNX Runtime session behind one (`OnnxNetwork`), from an
        .onnx checkpoint or from this machine's export cache (exported there first if it has no copy)."""
        if self.runtime == "torch":
            return self.load_torch(device)
        if self.builder is not None:
            raise PipelineError("a stand-in network (a benchmark's builder) runs on torch only")
        if self.checkpoint and is_onnx_file(self.checkpoint):
            path = Path(self.checkpoint)
            if not path.exists():
                raise CheckpointError(f"model actor on {socket.gethostname()}: {path}: ONNX file not found (an "
                                      f"exported file is read from each node's disk: copy it there, or pass the "
                                      f"checkpoint and let each node export it)")
        elif self.checkpoint:
            local = self._local_checkpoint()
            digest = file_digest(local)
            # (a per-frame model's file serves both modes: only a video model's key says which it was made for)
            mode = self.vda_mode if check_checkpoint(local, self.version, self.max_depth).temporal else "image"
            path = exported_file(f"sha256 {digest}|{self.version}|{self.max_depth}|{mode}",
                                 lambda: self.load_torch("cpu"), self.onnx_cache, source_digest=digest, mode=mode)
        else:
            recipe = f"random {self.random_weights}|{self.version}|{self.max_depth}|seed {self.seed}"
            path = exported_file(recipe, lambda: self.load_torch("cpu"), self.onnx_cache)
        return OnnxNetwork(path, device, self.runtime, threads=torch.get_num_threads())

    def load_torch(self, device: torch.device):
        if self.builder is not None:
            return self.builder().to(device)
        if self.checkpoint:
            return load_model(self._local_checkpoint(), device=device, version=self.version,
                              max_depth=self.max_depth)
        if self.random_weights:
            return random_model(self.random_weights, seed=self.seed, version=self.version or "v1",
                                max_depth=self.max_depth).to(device)
        raise PipelineError("no model: pass --checkpoint PATH (or --random-weights VARIANT for a plumbing test)")

    def _local_checkpoint(self) -> str:
        """The checkpoint on this node: its path, or this node's Hub cache's copy when the path is the driver's."""
        if Path(self.checkpoint).exists() or not self.hub_reference:
            return self.checkpoint
        try:
            return resolve_checkpoint(self.hub_reference).path
        except CheckpointError as error:
            raise CheckpointError(f"model actor on {socket.gethostname()}: {error}") from None


def choose_runtime(requested: str, checkpoint: str | None) -> str:
    """`model.runtime` made definite: auto is onnxruntime for an exported (.onnx) checkpoint, torch otherwise."""
    if requested != "auto":
        return requested
    return "onnxruntime" if checkpoint and is_onnx_file(checkpoint) else "torch"


MAX_STREAMS = 64  # a video model's live streams whose caches a worker keeps at once (least recently used let go)
# A video model's stream caches may take this share of the device's memory free when the first stream starts (the
# rest is the network's activations and the frames in flight); a stream that would not fit is refused, one line
STREAM_CACHE_SHARE = 0.5


class StreamRefused(PipelineError):
    """A video model's stream that the model actor's memory cannot hold beside the others (its cache would not fit)."""


class OneClip(torch.nn.Module):
    """A video model (VideoDepthAnything) seen as an image model whose batch is one clip: N x 3 x h x w frames in
    order -> N x h x w depth, each frame's depth made looking at the others (a window of the window mode)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, frames_n3hw: torch.Tensor) -> torch.Tensor:
        return self.net(frames_n3hw.unsqueeze(0))[0]


def cuda_problem() -> str | None:
    """Why this torch cannot use a GPU (None when it can): what a plan that sees GPUs in Ray says before running on
    the CPU instead."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return ("this torch is a CPU-only build (install a CUDA build: pip install torch --index-url "
                "https://download.pytorch.org/whl/cu126, or the CUDA version the driver supports)")
    return (f"this torch (built for CUDA {torch.version.cuda}) cannot use it: a driver older than that CUDA, or no "
            f"device visible to this process")


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
    return torch.device(requested)


def _pinned_empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class PinnedSlots:
    """A few reusable pinned host buffers per frame shape, handed out one per call in flight.

    Each slot holds `batch_size` frames; a shorter batch (every video's last) gets a view of a slot's first frames,
    not a buffer of its own: page-locking new memory (cudaHostAlloc) stalls every stream while it runs. A call with
    parts of several shapes (cameras of two sizes in one pass) takes its slots all at once, or waits holding none: two
    calls each holding one shape's slot and waiting for the other's would wait for ever. Shapes are kept least
    recently used first; past `max_shapes` the least recently used shape with no slot out is let go (a stream of a
    size not seen for a while), never one in use.
    """

    def __init__(self, slots: int, batch_size: int, max_shapes: int = 8, allocate=_pinned_empty):
        self._slots, self._batch_size, self._max_shapes = slots, batch_size, max_shapes
        self._allocate = allocate  # (shape, dtype) -> a page-locked tensor; a seam for the tests
        # (frame shape, dtype) -> (frames a slot, its free slots); dict order: least recently used first
        self._pools: dict[tuple, tuple[int, list[torch.Tensor]]] = {}
        self._changed = threading.Condition()

    def take(self, shape: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the slot, a view of it of `shape`); give the slot back when the copy from it is complete."""
        return self.take_all([(shape, dtype)])[0]

    def take_all(self, parts: list[tuple[tuple, torch.dtype]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A (slot, view) for each (shape, dtype), taken together: waits until every one is free, holding none."""
        with self._changed:
            while True:
                pools = [self._pool_for(shape, dtype) for shape, dtype in parts]
                wanted: dict[int, int] = {}
                for (shape, _), (capacity, free) in zip(parts, pools):
                    if shape[0] <= capacity:
                        wanted[id(free)] = wanted.get(id(free), 0) + 1
                # (more parts of one shape than slots: the extra ones get buffers of their own, below)
                if all(len(free) >= min(wanted.get(id(free), 0), self._slots) for _, free in pools):
                    break
                self._changed.wait()
            taken = []
            for (shape, dtype), (capacity, free) in zip(parts, pools):
                # A batch larger than the slots (the batch size was not known): a buffer of its own, not kept
                slot = free.pop() if shape[0] <= capacity and free else self._allocate(shape, dtype)
                taken.append((slot, slot[: shape[0]]))
            return taken

    def give_back(self, slot: torch.Tensor) -> None:
        self.give_back_all([slot])

    def give_back_all(self, slots: list[torch.Tensor]) -> None:
        with self._changed:
            for slot in slots:
                pool = self._pools.get((tuple(slot.shape[1:]), slot.dtype))
                if pool is not None and len(slot) == pool[0]:
                    pool[1].append(slot)
            self._changed.notify_all()

    def _pool_for(self, shape: tuple, dtype: torch.dtype) -> tuple[int, list[torch.Tensor]]:
        """The pool of a frame shape, made if new, marked most recently used (the condition's lock held)."""
        key = (tuple(shape[1:]), dtype)
        pool = self._pools.pop(key, None)
        if pool is None:
            if len(self._pools) >= self._max_shapes:  # streams of many sizes: let the least recently used go
                idle = [k for k, (_, free) in self._pools.items() if len(free) == self._slots]
                if idle:
                    self._pools.pop(idle[0])
            capacity = max(self._batch_size, shape[0])
            pool = (capacity, [self._allocate((capacity, *key[0]), dtype) for _ in range(self._slots)])
        self._pools[key] = pool  # (re)inserted last: the most recently used
        return pool


def free_memory_bytes(device: torch.device) -> int:
    """The device's free memory now: a GPU's (CUDA's own count), or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def pass_sizes(largest: int) -> tuple[int, ...]:
    """The batch sizes a compiled network is run at: powers of two below `largest`, and `largest` (8: 1, 2, 4, 8)."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return (*sizes, max(1, largest))


class DepthWorker:
    """Runs the predictor on FrameBatches; thread-safe for `concurrency` overlapping calls on a GPU."""

    def __init__(self, predictor: DepthPredictor, concurrency: int = 2, batch_size: int = 0, network_batch: int = 0,
                 stream_budget_bytes: int | None = None):
        """`network_batch`: frames per pass through the network (0: the whole batch at once).
        `stream_budget_bytes`: what a video model's stream caches may hold in all (None: `STREAM_CACHE_SHARE` of the
        device's memory free when the first stream starts)."""
        self.predictor = predictor
        self.stream_budget_bytes = stream_budget_bytes
        self.network_batch = network_batch
        # torch.compile specialises on the batch size, and cuDNN's autotuning on every input shape: a pass of any
        # other size is padded up (the last image repeated, its depth dropped), so it never compiles again inside the
        # compute lock, stalling every stream. A file's short last batch: to the full batch (one size in all); a live
        # pass of 1 to 8 cameras' frames: to the next of a few sizes (powers of two up to the batch)
        largest = network_batch or batch_size
        # (a video model's clip is as long as its window: never padded with frames it would look at)
        padded = predictor.options.compile and not getattr(predictor.net.config, "temporal", False)
        self.file_pass_sizes = (largest,) if padded and largest else ()
        self.pass_sizes = pass_sizes(largest) if padded else ()
        self.device = predictor.device
        # Metric models' range in metres (None: relative depth): every DepthBatch says what its values are
        self.max_depth = getattr(getattr(predictor.net, "config", None), "max_depth", None)
        # (updated by 2-4 threads at once: the cross-camera batchers' and Ray's; `_counted` adds under a lock)
        self.frames_processed = 0
        self.predict_cpu_s = 0.0  # CPU seconds inside the predictor (CPU device only)
        self.gpu_busy_ms = 0.0  # GPU milliseconds of compute, from CUDA events around each batch (GPU only)
        self._counters_lock = threading.Lock()
        self._streams: dict[str, tuple[StreamingDepth, threading.Lock]] = {}  # a video model's live streams
        self._streams_lock = threading.Lock()
        self._use_cuda = self.device.type == "cuda"
        self._compute_lock = threading.Lock()
        if self._use_cuda:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._compute_stream = torch.cuda.Stream(self.device)
            self._download_stream = torch.cuda.Stream(self.device)
            self._pinned = PinnedSlots(concurrency, batch_size)
            # The weights were cast and moved on the default stream; the compute stream must not read them before
            # that is done (nothing else orders the two streams)
            torch.cuda.synchronize(self.device)

    @classmethod
    def create(cls, source: ModelSource, options: PredictorOptions, device: str = "auto", threads: int = 0,
               batch_size: int = 0, network_batch: int = 0):
        if threads:  # the CPU's share of this actor, for the network (torch) and the input's resize (OpenCV)
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
        resolved = resolve_device(device)
        net = source.load(resolved)
        if getattr(getattr(net, "config", None), "temporal", False):  # a video model: a batch is one clip, never split
            net, network_batch = OneClip(net), 0
        return cls(DepthPredictor(net, options), batch_size=batch_size, network_batch=network_batch)

    def infer(self, batch: FrameBatch, depth_dtype: str = "float16") -> DepthBatch:
        """Depth at the model's resolution (B x h x w), in `depth_dtype`: float16 is plenty for 8-bit pictures and
        half the bytes to move; the 16-bit output asks for float32."""
        return self._infer_batch(batch, depth_dtype, self.file_pass_sizes)

    def _infer_batch(self, batch: FrameBatch, depth_dtype: str, sizes: tuple[int, ...]) -> DepthBatch:
        depth = self._infer_parts([(batch.pixels, batch.layout)], DEPTH_DTYPES[depth_dtype], sizes)
        self._counted(frames=len(batch))
        return DepthBatch(batch.first_index, batch.pts, batch.time_base, depth, self.max_depth)

    def infer_together(self, batches: list[FrameBatch], depth_dtype: str = "float16") -> list[DepthBatch]:
        """Several streams' batches through the network as one (live cameras): each batch's frames are prepared at
        their own size, and the network sees them together, so they must share its input size (`input_size_for`:
        frames of one aspect ratio); a DepthBatch for each, as `infer` would give it."""
        if len(batches) == 1:
            return [self._infer_batch(batches[0], depth_dtype, self.pass_sizes)]
        sizes = {self.input_size_for(batch) for batch in batches}
        if len(sizes) > 1:
            raise ValueError(f"batches for one pass through the network must share its input size; got {sorted(sizes)}")
        # Batches of one frame size and layout travel as one part (one pinned slot on a GPU, whatever their number)
        groups: dict[tuple, list[int]] = {}
        for index, batch in enumerate(batches):
            groups.setdefault((batch.pixels.shape[1:], batch.layout), []).append(index)
        order = [index for members in groups.values() for index in members]
        depth = self._infer_parts([(np.concatenate([batches[i].pixels for i in members]) if len(members) > 1
                                    else batches[members[0]].pixels, layout)
                                   for (_, layout), members in groups.items()], DEPTH_DTYPES[depth_dtype],
                                  self.pass_sizes)
        results: list[DepthBatch | None] = [None] * len(batches)
        start = 0
        for index in order:
            batch = batches[index]
            results[index] = DepthBatch(batch.first_index, batch.pts, batch.time_base, depth[start:start + len(batch)],
                                        self.max_depth)
            start += len(batch)
        self._counted(frames=start)
        return results

    def infer_stream(self, stream: str, batch: FrameBatch, depth_dtype: str = "float16") -> DepthBatch:
        """A video model's streaming mode: the batch's frames one at a time through the stream's own cache of
        earlier frames (StreamingDepth), in order; depth at the frames' size. A stream whose frame size changes (a
        camera back at another resolution) starts afresh; the least recently used of more than MAX_STREAMS streams
        is let go (`end_stream` lets one go at once)."""
        return self.infer_streams_together([(stream, batch)], depth_dtype)[0]

    def infer_streams_together(self, items: list[tuple[str, FrameBatch]],
                               depth_dtype: str = "float16") -> list[DepthBatch]:
        """Several streams' batches in a video model's streaming mode at once (live cameras, CrossStreamBatcher):
        every frame through the encoder in one pass, then frame by frame through each stream's own cache, the
        streams' frames decoded together (`push_together`); a DepthBatch for each, as `infer_stream` would give it
        (depth at the frames' size). The batches must share the network's input size (`input_size_for`). On a GPU
        the frames go up through the pinned slots and the depth comes down on its own stream, as for an image
        model (`_infer_cuda`)."""
        states = [self._stream_state(stream, (frame_height(batch.pixels[0], batch.layout), batch.pixels.shape[2]))
                  for stream, batch in items]
        locks = {id(lock): lock for _, lock in states}
        with contextlib.ExitStack() as held:
            for key in sorted(locks):  # (one order everywhere: no two calls wait on each other)
                held.enter_context(locks[key])
            histories, seen = [], {}
            for (streaming, _), (_, batch) in zip(states, items):  # (a stream twice: its batches in order)
                histories.append(seen.get(id(streaming), streaming.frames_in))
                seen[id(streaming)] = histories[-1] + len(batch)
            streams = [streaming for (streaming, _), (_, batch) in zip(states, items) for _ in range(len(batch))]

            def compute(on_device: list[tuple[torch.Tensor, str]]) -> torch.Tensor:
                """The frames on the device -> every frame's depth at its frame size, flattened one after another
                (frames of several sizes leave as one tensor, through one pinned download on a GPU)."""
                with torch.inference_mode():
                    images = torch.cat([self.predictor.prepare(i420_to_rgb(frames) if layout == YUV420P else frames)
                                        for frames, layout in on_device])
                    with self.predictor.autocast():
                        return torch.cat([plane.flatten() for plane in push_together(streams, images)])

            flat = self._infer_parts([(batch.pixels, batch.layout) for _, batch in items], DEPTH_DTYPES[depth_dtype],
                                     compute=compute)
        results, start = [], 0
        for (_, batch), history, streaming in zip(items, histories, [s for s, _ in states]):
            height, width = streaming.output_hw
            planes = flat[start:start + len(batch) * height * width].reshape(len(batch), height, width)
            results.append(DepthBatch(batch.first_index, batch.pts, batch.time_base, planes, self.max_depth, history))
            start += planes.size
        self._counted(frames=sum(len(batch) for _, batch in items))
        return results

    def _stream_state(self, stream: str, frame_hw: tuple[int, int]) -> tuple[StreamingDepth, threading.Lock]:
        """The stream's cache and its lock (a new one for a new stream, or one whose frame size changed), admitted
        against the byte budget (`StreamRefused` when it would not fit); the least recently used beyond MAX_STREAMS
        let go."""
        network = self.predictor.net.net  # (OneClip's video model)
        with self._streams_lock:
            state = self._streams.pop(stream, None)
            if state is None or state[0].output_hw != frame_hw:
                self._admit(stream, frame_hw)
                if isinstance(network, OnnxNetwork):  # an exported streaming step: encoder and decoder in one call
                    if not network.is_video_stream:
                        raise PipelineError(f"{network.path} is Video Depth Anything's window mode; a stream needs "
                                            f"its streaming mode's file (export --vda-mode stream)")
                    streaming = StreamingDepth(None, None, frame_hw, step=network.step)
                else:
                    streaming = StreamingDepth(network.encode, network.decode, frame_hw)
                state = (streaming, threading.Lock())
            self._streams[stream] = state  # (last: the most recently used)
            while len(self._streams) > MAX_STREAMS:
                self._streams.pop(next(iter(self._streams)))
        return state

    def _admit(self, stream: str, frame_hw: tuple[int, int]) -> None:
        """A new stream's cache against the budget (the streams lock held): its bytes estimated from the streams
        held, which scale with the network's input area (the first stream is always taken: it is the measure)."""
        if self.stream_budget_bytes is None:
            self.stream_budget_bytes = int(STREAM_CACHE_SHARE * free_memory_bytes(self.device))
        held = [(streaming.cache_bytes, self._input_area(streaming.output_hw))
                for streaming, _ in self._streams.values() if streaming.cache_bytes]
        if not held:
            return
        per_area = max(cache_bytes / area for cache_bytes, area in held)
        wanted = int(per_area * self._input_area(frame_hw))
        total = sum(cache_bytes for cache_bytes, _ in held)
        if total + wanted > self.stream_budget_bytes:
            raise StreamRefused(
                f"stream {stream!r}: its video model cache ({wanted / 2**30:.2f} GiB at "
                f"{frame_hw[1]}x{frame_hw[0]}) does not fit beside the {len(held)} streams this model actor holds "
                f"({total / 2**30:.2f} GiB of its {self.stream_budget_bytes / 2**30:.2f} GiB for caches): add a model "
                f"actor or a GPU, or lower --input-size")

    def _input_area(self, frame_hw: tuple[int, int]) -> int:
        height, width = self.predictor.input_size_for(frame_hw)
        return height * width

    def end_stream(self, stream: str) -> None:
        """Let a stream's cache go (its camera stopped or was removed)."""
        with self._streams_lock:
            self._streams.pop(stream, None)

    def input_size_for(self, batch: FrameBatch) -> tuple[int, int]:
        """The network's input size (h, w) for a batch's frames."""
        return self.predictor.input_size_for((frame_height(batch.pixels[0], batch.layout), batch.pixels.shape[2]))

    def _infer_parts(self, parts: list[tuple[np.ndarray, str]], dtype: torch.dtype,
                     sizes: tuple[int, ...] = (), compute: Callable | None = None) -> np.ndarray:
        """`sizes`: the pass sizes a pass is padded up to (none: as it comes). `compute`: what runs on the frames
        once on the device ([(frames, layout)] -> a depth tensor; the network's `_predict` unless given), under the
        compute lock, on the compute stream on a GPU, between the pinned upload and the download."""
        compute = compute or (lambda on_device: self._predict(on_device, sizes))
        return (self._infer_cuda if self._use_cuda else self._infer_cpu)(parts, dtype, compute)

    def _predict(self, parts: list[tuple[torch.Tensor, str]], sizes: tuple[int, ...] = ()) -> torch.Tensor:
        """Frames on the model's device, each part in its layout -> float32 depth B x h x w at the model's resolution,
        the parts' frames one after another."""
        images = [self.predictor.prepare(i420_to_rgb(frames) if layout == YUV420P else frames)
                  for frames, layout in parts]
        image_bchw = images[0] if len(images) == 1 else torch.cat(images)
        if not self.network_batch or len(image_bchw) <= self.network_batch:
            return self._forward(image_bchw, sizes)
        return torch.cat([self._forward(part, sizes) for part in image_bchw.split(self.network_batch)])

    def _forward(self, image_bchw: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        """One pass, padded up to the next of `sizes` (the last image repeated; its depth dropped)."""
        frames = len(image_bchw)
        size = next((size for size in sizes if size >= frames), frames)
        if size > frames:
            image_bchw = torch.cat([image_bchw, image_bchw[-1:].expand(size - frames, *image_bchw.shape[1:])])
        return self.predictor.forward(image_bchw)[:frames]

    def _counted(self, frames: int = 0, cpu_s: float = 0.0, gpu_ms: float = 0.0) -> None:
        with self._counters_lock:
            self.frames_processed += frames
            self.predict_cpu_s += cpu_s
            self.gpu_busy_ms += gpu_ms

    def _infer_cpu(self, parts: list[tuple[np.ndarray, str]], dtype: torch.dtype, compute: Callable) -> np.ndarray:
        with self._compute_lock:
            started = time.process_time()
            depth = compute([(torch.from_numpy(pixels), layout) for pixels, layout in parts]).to(dtype)
            # Input preparation, network, the cast to the result's dtype: device work (a GPU does all three)
            self._counted(cpu_s=time.process_time() - started)
        return depth.numpy()

    def _infer_cuda(self, parts: list[tuple[np.ndarray, str]], dtype: torch.dtype, compute: Callable) -> np.ndarray:
        slots, on_device, copied = [], [], None
        try:
            with torch.cuda.stream(self._copy_stream):
                taken = self._pinned.take_all([(pixels.shape, torch.uint8) for pixels, _ in parts])
                slots = [slot for slot, _ in taken]
                for (pixels, layout), (_, staging) in zip(parts, taken):
                    staging.numpy()[...] = pixels  # one host copy into page-locked memory
                    on_device.append((staging.to(self.device, non_blocking=True), layout))
                # Blocking events: a thread that waits on one sleeps instead of spinning a core the sinks need
                copied = torch.cuda.Event(blocking=True)
                copied.record(self._copy_stream)
            with self._compute_lock, torch.cuda.stream(self._compute_stream):
                self._compute_stream.wait_event(copied)
                compute_started = torch.cuda.Event(enable_timing=True)
                compute_started.record(self._compute_stream)
                # The input was allocated on the copy stream: tell the allocator the compute stream uses it too
                for frames_on_device, _ in on_device:
                    frames_on_device.record_stream(self._compute_stream)
                depth_on_device = compute(on_device).to(dtype)
                computed = torch.cuda.Event(enable_timing=True)
                computed.record(self._compute_stream)
            # The copy back runs on its own stream, outside the lock: the next batch's compute need not wait for it
            with torch.cuda.stream(self._download_stream):
                self._download_stream.wait_event(computed)
                depth_on_device.record_stream(self._download_stream)
                # A pinned buffer from torch's caching host allocator, not one of the reused slots: Ray serialises
                # the return value after this returns, so the result leaves as a view of it (no host copy), and the
                # allocator takes the block back once Ray has let go of it
                result = torch.empty(tuple(depth_on_device.shape), dtype=dtype, pin_memory=True)
                result.copy_(depth_on_device, non_blocking=True)
                done = torch.cuda.Event(blocking=True)
                done.record(self._download_stream)
            done.synchronize()
            # The compute stream's span for this batch (calls' computes do not overlap: the lock orders them)
            self._counted(gpu_ms=compute_started.elapsed_time(computed))
            return result.numpy()
        finally:
            # The slots go back only once the copies from them are complete: after an error a copy may still be
            # queued, and the next call would overwrite memory it reads
            if slots:
                self._copy_stream.synchronize() if copied is None else copied.synchronize()
                self._pinned.give_back_all(slots)
