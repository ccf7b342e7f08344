"""
The device check: one command for a machine with an NVIDIA GPU, at most about 7 minutes (`--budget-s`).

    source .devicepack/unpack.sh || exit 1; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"
    python benchmarks/gpu_check.py --rehearse --out DIR      # on a CPU: the GPU-only sections skipped, d and e small

Sections, in the order that decides most first (b, a, d, e, c), each isolated (one that fails is reported with its
error and the others still run); results as JSON in DIR/gpu_check.json (written after every section: a run cut
short keeps what it measured) and as a table on stdout, with a pass/fail where a threshold applies:
  b. the model actor's CUDA path (DepthWorker: two pinned slots shared by four threads, each thread's calls back to
     back so a slot is reused at once, copy / compute / download streams, events) against the plain predictor on the
     same frames: I420 and RGB, batches of 8, 3 and 1 from different offsets, and multi-part calls (1080p I420 with
     720p RGB in one pass): relative L2 <= 1e-3;
  a. float16 and bfloat16 against float32 (TF32 off), vits / vitb / vitl at 518 x 924, on natural frames (the sample
     clip's pictures): under autocast, the predictor's way (a float32 residual stream and norms, as the original
     runs Video Depth Anything): relative L2 <= 1e-2 (float16) and <= 2.5e-2 (bfloat16), every value finite; the
     weights cast once beside it, for what that way would give (no threshold);
  d. the Ray pipeline file to file (720p, default settings, vits) with 1, 2, 4 and 8 concurrent streams, each count
     warmed first (stream actors started, cuDNN tuned) so the rate is the running pipeline's: fps in all, the GPU's
     busy fraction from CUDA events in the model actor (nvidia-smi's beside it), CPU ms per frame per actor; pass:
     every frame out, on a CUDA device, and no fewer fps with more streams (stopped at once if Ray sees no GPU);
  e. live mode on a 720p file played in real time: latency p50 / p95; pass: every frame out or counted as dropped,
     p95 <= 150 ms;
  c. GPU milliseconds per frame from CUDA events (input preparation included), vits / vitb / vitl, batch 1 / 8 / 16,
     float32 / float16 / bfloat16 (autocast), torch.compile off, and on for --compile-variants at batch 8, and float16
     with the weights cast once at batch 8 (what autocast's per-call casts cost); pass: float16 at most 0.8x
     float32's time at batch 8, compiled at most 1.05x eager;
  f. Video Depth Anything Small at 518 x 924: float16 under autocast (as the original runs it) against float32 (TF32
     off) on a 32-frame window of natural frames, relative L2 <= 2e-2, and the weights cast once beside it (no
     threshold); frames per second of its window mode (a window's time over its 22 new frames) and of its streaming
     mode (once the cache is full), float16; the model actor's streaming path for 4 live cameras
     (pinned upload, one encoder pass, each camera's cache): batched against one camera at a time in float32,
     relative L2 <= 1e-4, and both's frames per second in float16;
  g. the runtimes at 518 x 924, vits, batch 1: torch float16 (autocast) against ONNX Runtime's CUDA provider (the
     float32 file, exported here) and its TensorRT provider (float16 engines): GPU ms a frame and relative L2
     against torch float32; skipped, said in one line, without onnxruntime-gpu (TensorRT's row without TensorRT).
Each variant's random weights are built once. Random weights, seeded: the figures measure arithmetic and plumbing,
not depth quality. Sections d and e need av and Ray (on the GPU machine: `source .devicepack/unpack.sh` first).
`--help` needs neither, nor a GPU; without a CUDA GPU the check says so in one line and exits 1 (`--rehearse` runs
what a CPU can instead: d and e small, on the CPU, their GPU thresholds not applied).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SIZE_HW = (518, 924)  # the model input of a 16:9 frame
FRAME_HW = (720, 1280)
PRECISION_LIMITS = {"float16": 1e-2, "bfloat16": 2.5e-2}  # fp16 measured <= 6e-3 on a stand-in, bf16 0.9-1.2e-2
SAME_OUTPUT_LIMIT = 1e-3
LIVE_P95_LIMIT_MS = 150.0
HALF_SPEED_LIMIT = 0.8  # float16's GPU time over float32's, batch 8: reduced precision must pay for itself
COMPILE_SPEED_LIMIT = 1.05  # compiled over eager
DEFAULT_BUDGET_S = 420.0


@functools.lru_cache(maxsize=None)
def cpu_model(variant: str):
    """A variant's seeded random weights, built once on the CPU (vitl takes seconds); callers get copies."""
    from model.random_weights import random_model

    return random_model(variant, seed=0)


def model_on(variant: str, device: str):
    return copy.deepcopy(cpu_model(variant)).to(device)


def natural_frames(count: int, frame_hw) -> "np.ndarray":
    """`count` pictures of the sample clip (a gradient floor, a disc, a bar, texture): count x H x W x 3 uint8. Natural
    frames' statistics, not noise's: the activations a real video makes, for the precision checks."""
    import numpy as np

    from pipeline.sample_video import sample_frame

    return np.stack([sample_frame(index * 9, frame_hw[1], frame_hw[0]) for index in range(count)])


def relative_l2(got, expected) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


VIDEO_PRECISION_LIMIT = 2e-2  # float16 against float32 over a window (the motion modules' softmax and 32 frames)
STREAM_BATCH_LIMIT = 1e-4  # cameras batched against one at a time, both float32 (as the CPU tests hold them)


# ---------------------------------------------------------------------------------------------------------------------
# f. Video Depth Anything


def video_model_check(device: str = "cuda", size_hw=SIZE_HW, precision: str = "float16",
                      limit: float | None = VIDEO_PRECISION_LIMIT, stream_frames: int = 16,
                      cameras: int = 4) -> list[dict]:
    """Its precision over one window, its two modes' frames per second, at one size and precision; and the model
    actor's streaming path for several cameras (`camera_streams_check`)."""
    import torch

    from model.predictor import PRECISIONS, cast_weights_once
    from model.random_weights import random_video_model
    from pipeline.stages.inference.temporal_stream import CACHED_FRAMES, StreamingDepth
    from pipeline.stages.inference.temporal_windows import INFER_LEN, OVERLAP, WindowedDepth

    from model.transforms import prepare_frames

    pictures = torch.from_numpy(natural_frames(CACHED_FRAMES + stream_frames, size_hw))
    frames = prepare_frames(pictures, tuple(size_hw))  # (ImageNet-normalised, at the network's size already)
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type
    with torch.inference_mode():
        net = random_video_model("vits").to(device)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            expected = net(frames[:INFER_LEN].to(device).unsqueeze(0))
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        with torch.autocast(device_type, dtype=dtype):  # (the predictor's way, and the original's)
            autocast_depth = net(frames[:INFER_LEN].to(device).unsqueeze(0))
        error = relative_l2(autocast_depth, expected)
        finite = bool(torch.isfinite(autocast_depth).all())
        rows = [{"check": f"{precision} (autocast) against float32, one window", "relative_l2": error,
                 "finite": finite, "limit": limit, "pass": None if limit is None else finite and error <= limit}]
        cast = cast_weights_once(random_video_model("vits").to(device), dtype)
        cast_depth = cast(frames[:INFER_LEN].to(device, dtype).unsqueeze(0))
        rows.append({"check": f"{precision} (weights cast once) against float32, one window",
                     "relative_l2": relative_l2(cast_depth, expected),
                     "finite": bool(torch.isfinite(cast_depth).all()), "pass": None})
        del cast, cast_depth

        def autocast():
            return torch.autocast(device_type, dtype=dtype)

        def synchronize():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def window_depth(window):
            with autocast():
                return net(window.unsqueeze(0))[0]

        windows = WindowedDepth(window_depth, tuple(size_hw))
        steady = INFER_LEN - OVERLAP
        for frame in frames[:INFER_LEN]:
            windows.push(frame.to(device))
        synchronize()
        started = time.perf_counter()
        for frame in frames[INFER_LEN:INFER_LEN + steady]:
            windows.push(frame.to(device))
        synchronize()
        rows.append({"check": "window mode", "fps": steady / (time.perf_counter() - started), "pass": None})
        stream = StreamingDepth(net.encode, net.decode, tuple(size_hw))
        with autocast():
            for frame in frames[:CACHED_FRAMES]:
                stream.push(frame.to(device))
            synchronize()
            started = time.perf_counter()
            for frame in frames[CACHED_FRAMES:]:
                stream.push(frame.to(device))
            synchronize()
        rows.append({"check": "streaming mode", "fps": stream_frames / (time.perf_counter() - started),
                     "pass": None})
    rows += camera_streams_check(device, size_hw, precision, cameras, stream_frames)
    return rows


def camera_streams_check(device: str, size_hw, precision: str, cameras: int, frames: int) -> list[dict]:
    """The model actor's streaming path for live cameras (DepthWorker.infer_streams_together: the pinned upload,
    one encoder pass for every camera's frame, the decoder through each camera's cache, one download): `cameras`
    cameras' frames batched against the same frames a camera at a time, in float32 with TF32 off (only the
    batching differs), and the frames per second of each in `precision`."""
    import numpy as np
    import torch

    from model import DepthPredictor, PredictorOptions
    from model.random_weights import random_video_model
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker, OneClip

    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (cameras, frames, *size_hw, 3), dtype=np.uint8)

    def run(worker: DepthWorker, together: bool, prefix: str) -> tuple[np.ndarray, float]:
        depth, started = [], time.perf_counter()
        for index in range(frames):
            if index == frames // 2:  # the second half timed: the caches filled
                started = time.perf_counter()
            items = [(f"{prefix}{camera}", FrameBatch(index, [index], Fraction(1, 30),
                                                      pictures[camera, index:index + 1]))
                     for camera in range(cameras)]
            results = worker.infer_streams_together(items, "float32") if together else [
                worker.infer_stream(stream, one, "float32") for stream, one in items]
            depth.append(np.stack([result.depth for result in results]))
        return np.stack(depth), (frames - frames // 2) * cameras / (time.perf_counter() - started)

    def worker_in(chosen: str) -> DepthWorker:
        options = PredictorOptions(input_size=min(size_hw), precision=chosen)
        return DepthWorker(DepthPredictor(OneClip(random_video_model("vits").to(device)), options))

    exact = worker_in("float32")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        alone, _ = run(exact, False, "alone")
        batched, _ = run(exact, True, "together")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    error = relative_l2(torch.from_numpy(batched), torch.from_numpy(alone))
    fast = worker_in(precision)
    _, alone_fps = run(fast, False, "alone")
    _, batched_fps = run(fast, True, "together")
    return [{"check": f"{cameras} cameras batched against one at a time, float32 (the worker's streaming path)",
             "relative_l2": error, "limit": STREAM_BATCH_LIMIT, "pass": error <= STREAM_BATCH_LIMIT},
            {"check": f"{cameras} cameras, {precision}: frames per second batched, one at a time", "fps": batched_fps,
             "fps_alone": alone_fps, "ratio": batched_fps / alone_fps, "pass": None}]


# ---------------------------------------------------------------------------------------------------------------------
# a. precision


def precision_agreement(variants: list[str], device: str = "cuda", precisions=("float16", "bfloat16"),
                        frame_hw=FRAME_HW, input_size: int = 518) -> list[dict]:
    import torch

    from model import DepthPredictor, PredictorOptions

    frames = torch.from_numpy(natural_frames(2, frame_hw)).to(device)
    rows = []
    for variant in variants:
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        reference = DepthPredictor(model_on(variant, device), PredictorOptions(input_size=input_size))
        try:  # a true float32 reference: the predictor turns TF32 on for float32, and it is turned off here
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            expected = reference(frames, at_frame_size=False)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del reference
        for precision in precisions:
            for cast in (False, True):  # autocast (the predictor's way), then the weights cast once beside it
                predictor = DepthPredictor(model_on(variant, device), PredictorOptions(
                    input_size=input_size, precision=precision, cast_weights=cast))
                depth = predictor(frames, at_frame_size=False)
                error, finite = relative_l2(depth, expected), bool(torch.isfinite(depth).all())
                limit = PRECISION_LIMITS[precision]
                rows.append({"variant": variant, "precision": precision,
                             "weights": "cast once" if cast else "autocast", "relative_l2": error, "finite": finite,
                             **({} if cast else {"limit": limit}), "pass": None if cast else finite and error <= limit})
                del predictor
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# b. the model actor's CUDA path against the plain predictor


def worker_agreement(device: str = "cuda", precision: str = "float16", frame_hw=FRAME_HW,
                     input_size: int = 518, threads: int = 4, rounds: int = 3) -> list[dict]:
    """`threads` threads at once on a worker with two pinned slots a shape, each making `rounds` calls back to back
    (a slot given back is taken again at once), against the plain predictor one call at a time on the default
    stream: single-part calls (a layout, a batch size, each thread its own offset into the frames) and multi-part
    calls (`frame_hw` I420 with frames half as large again in RGB: one pass, two slots)."""
    import cv2
    import numpy as np
    import torch

    from model import DepthPredictor, PredictorOptions
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker
    from pipeline.stages.pixels import YUV420P, i420_to_rgb

    options = PredictorOptions(input_size=input_size, precision=precision, cast_weights=device == "cuda" or None)
    predictor = DepthPredictor(model_on("vits", device), options)
    worker = DepthWorker(predictor, concurrency=2, batch_size=8)
    rng = np.random.default_rng(0)
    large_hw = (frame_hw[0] * 3 // 2, frame_hw[1] * 3 // 2)  # (1080p beside 720p: one network input size)
    frames = {hw: rng.integers(0, 256, (16, *hw, 3), dtype=np.uint8) for hw in (frame_hw, large_hw)}
    i420 = {hw: np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420) for frame in rgb]) for hw, rgb in frames.items()}

    def batch(hw, layout, size, offset) -> FrameBatch:
        pixels = (i420 if layout == YUV420P else frames)[hw][offset: offset + size]
        return FrameBatch(0, list(range(size)), Fraction(1, 30), pixels, layout)

    def expected(one: FrameBatch):
        on_device = torch.from_numpy(one.pixels).to(device)
        on_device = i420_to_rgb(on_device) if one.layout == YUV420P else on_device
        with torch.inference_mode():
            return predictor(on_device, at_frame_size=False).to(torch.float16).float().cpu()

    def at_once(calls: list[Callable[[], list]]) -> list:
        """The calls on `threads` threads at once (a barrier lines them up); each thread's results."""
        barrier, got = threading.Barrier(len(calls)), [None] * len(calls)

        def run(index):
            barrier.wait()
            got[index] = calls[index]()

        pool = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return got

    rows = []
    for layout in ("rgb24", YUV420P):
        for size in (8, 3, 1):
            batches = [batch(frame_hw, layout, size, offset=(2 * k) % (17 - size)) for k in range(threads)]
            got = at_once([lambda b=b: [worker.infer(b, "float16").depth for _ in range(rounds)] for b in batches])
            error = max(relative_l2(torch.from_numpy(np.asarray(d)).float(), expected(b))
                        for b, results in zip(batches, got) for d in results)
            rows.append({"call": f"{layout} x{size}", "threads": threads, "calls": threads * rounds,
                         "relative_l2": error, "limit": SAME_OUTPUT_LIMIT, "pass": error <= SAME_OUTPUT_LIMIT})
    # Multi-part: a 720p I420 camera and a 1080p RGB one in one pass; half the threads give them in the other order
    pairs = [[batch(frame_hw, YUV420P, 2, k), batch(large_hw, "rgb24", 1, 8 + k)] for k in range(threads)]
    pairs = [pair if k % 2 == 0 else pair[::-1] for k, pair in enumerate(pairs)]
    got = at_once([lambda pair=pair: [worker.infer_together(pair, "float16") for _ in range(rounds)]
                   for pair in pairs])
    error = max(relative_l2(torch.from_numpy(np.asarray(d.depth)).float(), expected(b))
                for pair, results in zip(pairs, got) for together in results for b, d in zip(pair, together))
    rows.append({"call": "multi-part I420 + RGB, two sizes", "threads": threads, "calls": threads * rounds,
                 "relative_l2": error, "limit": SAME_OUTPUT_LIMIT, "pass": error <= SAME_OUTPUT_LIMIT})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# c. GPU time per frame


def model_speed(variants: list[str], batches: list[int], compile_variants: list[str], seconds: float = 1.5,
                deadline: float = float("inf")) -> list[dict]:
    """GPU time per frame for each case until `deadline` (time.monotonic()); then the rest are left out, said so."""
    import torch

    from model import DepthPredictor, PredictorOptions

    rows = []
    cases = [(v, p, b, False, False) for v in variants for p in ("float32", "float16", "bfloat16") for b in batches]
    cases += [(v, "float16", 8, False, True) for v in variants]  # the weights cast once: autocast's cost
    cases += [(v, "float16", 8, True, False) for v in compile_variants]
    for variant, precision, batch, compiled, cast in cases:
        case = {"variant": variant, "precision": precision, "batch": batch, "compile": compiled,
                **({"weights": "cast once"} if cast else {})}
        if time.monotonic() > deadline:
            rows.append({**case, "skipped": "out of time"})
            continue
        try:
            predictor = DepthPredictor(model_on(variant, "cuda"),
                                       PredictorOptions(precision=precision, compile=compiled, cast_weights=cast))
            frames = torch.randint(0, 256, (batch, *FRAME_HW, 3), dtype=torch.uint8, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):  # warm-up: cuDNN's autotuning for this shape (and, compiled, the compilation)
                predictor(frames, at_frame_size=False)
            torch.cuda.synchronize()
            started, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            runs, wall = 0, time.perf_counter()
            started.record()
            while time.perf_counter() - wall < seconds:
                predictor(frames, at_frame_size=False)  # input preparation included: uint8 frames in
                runs += 1
            ended.record()
            ended.synchronize()
            ms = started.elapsed_time(ended) / (runs * batch)
            rows.append({**case, "gpu_ms_per_frame": round(ms, 3), "fps": round(1e3 / ms, 1),
                         "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)})
            del predictor, frames
        except Exception as error:  # noqa: BLE001 - one case (out of memory, a compile failure) is not the section
            rows.append({**case, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        torch.cuda.empty_cache()
    return speed_thresholds(rows)


def runtime_check(variant: str = "vits", size_hw=SIZE_HW, batch: int = 1, seconds: float = 1.5) -> list[dict] | str:
    """Section g: torch float16 (autocast) against ONNX Runtime's CUDA provider (the float32 file) and its TensorRT
    provider (float16 engines) at 518 x 924: GPU ms a frame (CUDA events around the predictor's call, input
    preparation included) and relative L2 against torch float32 (TF32 off). A string (the section skipped, said in
    one line) when this machine's onnxruntime has no CUDA provider."""
    import torch

    from model import DepthPredictor, PredictorOptions
    from model.onnx_network import OnnxNetwork, runtime_problem

    problem = runtime_problem("onnxruntime", "cuda")
    if problem:
        return problem
    try:
        import onnx  # noqa: F401 - the export's
        import onnxscript  # noqa: F401
    except ImportError as error:
        return f"the export needs {error.name} (pip install onnx onnxscript)"
    from model.onnx_export import export_onnx

    path = Path(tempfile.mkdtemp(prefix="gpu_check_onnx_")) / f"{variant}.onnx"
    export_onnx(cpu_model(variant), path)
    frames = torch.from_numpy(natural_frames(batch, FRAME_HW)).cuda()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    reference = DepthPredictor(model_on(variant, "cuda"), PredictorOptions(input_size=min(size_hw)))
    expected = reference(frames, at_frame_size=False)
    contenders = {"torch float16 (autocast)": lambda: DepthPredictor(model_on(variant, "cuda"), PredictorOptions(
        input_size=min(size_hw), precision="float16"))}
    contenders["onnxruntime CUDA, float32"] = lambda: DepthPredictor(OnnxNetwork(path, "cuda", "onnxruntime"),
                                                                      PredictorOptions(input_size=min(size_hw)))
    trt_problem = runtime_problem("tensorrt", "cuda")
    if not trt_problem:
        contenders["onnxruntime TensorRT, float16"] = lambda: DepthPredictor(
            OnnxNetwork(path, "cuda", "tensorrt"), PredictorOptions(input_size=min(size_hw)))
    rows = []
    for name, build in contenders.items():
        try:
            predictor = build()
            for _ in range(3):  # warm-up: cuDNN's tuning, ONNX Runtime's arena, TensorRT's engine build
                got = predictor(frames, at_frame_size=False)
            torch.cuda.synchronize()
            started, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            runs, wall = 0, time.perf_counter()
            started.record()
            while time.perf_counter() - wall < seconds:
                predictor(frames, at_frame_size=False)
                runs += 1
            ended.record()
            ended.synchronize()
            ms = started.elapsed_time(ended) / (runs * batch)
            rows.append({"runtime": name, "gpu_ms_per_frame": round(ms, 3), "fps": round(1e3 / ms, 1),
                         "relative_l2": relative_l2(got, expected), "finite": bool(torch.isfinite(got).all())})
        except Exception as error:  # noqa: BLE001 - one runtime failing is a row, not the section
            rows.append({"runtime": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
    if trt_problem:
        rows.append({"runtime": "onnxruntime TensorRT, float16", "skipped": trt_problem})
    return rows


def speed_thresholds(rows: list[dict]) -> list[dict]:
    """`pass` on the rows a threshold compares, against the variant's batch-8 row it is compared with: float16
    against float32, compiled against eager float16."""
    timed = {(r["variant"], r["precision"], r["batch"], r["compile"]): r["gpu_ms_per_frame"]
             for r in rows if "gpu_ms_per_frame" in r and "weights" not in r}
    for row in rows:
        key = (row["variant"], row["precision"], row["batch"], row["compile"])
        if "weights" in row and "gpu_ms_per_frame" in row and timed.get(key):  # cast once against autocast: said
            row["ratio_to_autocast"] = round(row["gpu_ms_per_frame"] / timed[key], 3)
            continue
        if key not in timed or row["batch"] != 8:
            continue
        if row["compile"]:
            base, limit = timed.get((row["variant"], "float16", 8, False)), COMPILE_SPEED_LIMIT
        elif row["precision"] == "float16":
            base, limit = timed.get((row["variant"], "float32", 8, False)), HALF_SPEED_LIMIT
        else:
            continue
        if base:
            row.update(ratio=round(timed[key] / base, 3), limit=limit, **{"pass": timed[key] / base <= limit})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# d. the Ray pipeline


class BusySampler:
    """nvidia-smi's utilisation every 100 ms while running; `fraction` is the mean of the samples."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                return
            if out:
                self.samples.append(float(out.splitlines()[0]) / 100)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 3) if self.samples else None


def pipeline_speed(frames: int, stream_counts=(1, 2, 4, 8), frame_hw=FRAME_HW, overrides: dict | None = None,
                   require_gpu: bool = True) -> list[dict]:
    import ray

    from benchmarks.pipeline_ceiling import run_streams
    from pipeline.cluster.graph import DepthGraph
    from pipeline.cluster.runtime import start_ray, stop_ray
    from pipeline.jobs.file import process_video
    from pipeline.sample_video import make_sample_clip
    from pipeline.settings import load_settings

    start_ray()
    graph = None
    try:
        if require_gpu and ray.cluster_resources().get("GPU", 0) < 1:
            # (the plan would run on the CPU, and this section alone would overrun the command's time)
            raise RuntimeError(f"Ray sees no GPU (resources: {ray.cluster_resources()}); the pipeline would run on "
                               f"the CPU: stopped")
        folder = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        clip = make_sample_clip(folder / "clip.mp4", width=frame_hw[1], height=frame_hw[0], frames=frames, rate=30)
        warm = make_sample_clip(folder / "warm.mp4", width=frame_hw[1], height=frame_hw[0], frames=24, rate=30)
        graph = DepthGraph(load_settings(None, {"model.random_weights": "vits", **(overrides or {})}))
        if require_gpu and not graph.plan.use_gpu:
            raise RuntimeError(f"the plan runs on the CPU ({'; '.join(graph.plan.notes) or 'no GPU in use'}): stopped")
        process_video(graph, str(warm), str(folder / "warm_up.mp4"))
        rows = []
        for streams in stream_counts:
            # This many streams' actors started (and kept), cuDNN tuned: the timed run is the running pipeline's
            run_streams(graph, [warm] * streams, folder)
            before = ray.get([actor.usage.remote() for actor in graph.model_actors])
            with BusySampler() as busy:
                seconds, summaries, driver_cpu_s = run_streams(graph, [clip] * streams, folder)
            after = ray.get([actor.usage.remote() for actor in graph.model_actors])
            total = sum(s["frames_out"] for s in summaries)
            gpu_ms = sum(a["gpu_busy_ms"] - b["gpu_busy_ms"] for a, b in zip(after, before))
            model_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before))
            per_actor = {stage: round(sum(s["cpu_ms_per_frame"].get(stage, 0) * s["frames_out"] for s in summaries)
                                      / total, 2) for stage in ("decode", "sink")}
            device = summaries[0]["model"].get("device")
            fps = round(total / seconds, 1)
            checks = total == streams * frames and (not require_gpu or str(device).startswith("cuda"))
            if rows and require_gpu:  # more streams must not make the whole slower (a lock or a queue serialising
                checks = checks and fps >= 0.9 * rows[0]["fps"]  # them would; on 2 CPU cores, they share the cores)
            rows.append({"streams": streams, "fps": fps, "frames": total,
                         "gpu_busy_events": round(gpu_ms / 1e3 / seconds / len(graph.model_actors), 3),
                         "gpu_busy_nvidia_smi": busy.fraction,
                         "cpu_ms_per_frame": {**per_actor, "model actor": round(model_cpu * 1e3 / total, 2),
                                              "driver": round(driver_cpu_s * 1e3 / total, 2)},
                         "batch": summaries[0]["batch_size"], "device": device, "pass": checks})
    finally:
        if graph is not None:
            graph.shutdown()
        stop_ray()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# e. live latency


def live_latency(frames: int, frame_hw=FRAME_HW, flags: tuple[str, ...] = (), p95_limit_ms: float | None =
                 LIVE_P95_LIMIT_MS) -> list[dict]:
    from pipeline.sample_video import make_sample_clip

    folder = Path(tempfile.mkdtemp(prefix="gpu_check_live_"))
    clip = make_sample_clip(folder / "clip.mp4", width=frame_hw[1], height=frame_hw[0], frames=frames, rate=30)
    process = subprocess.run([sys.executable, str(PROJECT / "run_pipeline.py"), str(clip), "--realtime", "--record",
                              str(folder / "live.mp4"), "--random-weights", "vits", *flags], capture_output=True,
                             text=True, cwd=PROJECT, timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"live run exit {process.returncode}: {process.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(process.stdout)
    every_frame = summary["frames_out"] + summary["dropped"] == summary["frames_in"] == frames
    p95 = summary["latency_ms"]["p95"]
    row = {"frames_in": summary["frames_in"], "frames_out": summary["frames_out"], "dropped": summary["dropped"],
           **{f"latency_{k}_ms": v for k, v in summary["latency_ms"].items()}}
    if p95_limit_ms is not None:
        row["limit_p95_ms"] = p95_limit_ms
    row["pass"] = every_frame and (p95_limit_ms is None or p95 <= p95_limit_ms)
    return [row]


# ---------------------------------------------------------------------------------------------------------------------


def run_sections(sections: dict[str, tuple[str, Callable[[], list[dict]] | str]], out: Path,
                 deadline: float = float("inf")) -> dict:
    """Each section in turn, isolated: its rows, or its error (one line; the traceback in the JSON); a section given
    as a string instead of a function is skipped for that reason, and so is every section once `deadline`
    (time.monotonic()) has passed. The JSON file is rewritten after every section, so a run cut short keeps what it
    measured."""
    results: dict = {"sections": {}}
    out.mkdir(parents=True, exist_ok=True)
    for key, (title, run) in sections.items():
        started = time.perf_counter()
        if isinstance(run, str) or time.monotonic() > deadline:
            entry = {"title": title, "status": "skipped", "reason": run if isinstance(run, str) else "out of time"}
        else:
            try:
                rows = run()
                if isinstance(rows, str):  # the section found this machine without what it measures: said why
                    entry = {"title": title, "status": "skipped", "reason": rows}
                else:
                    failed = [row for row in rows if row.get("pass") is False or "error" in row]
                    entry = {"title": title, "status": "fail" if failed else "ok", "rows": rows}
            except Exception as error:  # noqa: BLE001 - a failing section is reported, the others still run
                text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                entry = {"title": title, "status": "error", "error": f"{type(error).__name__}: {text}",
                         "traceback": traceback.format_exc()}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["sections"][key] = entry
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(table(key, entry), flush=True)
    return results


def table(key: str, entry: dict) -> str:
    lines = [f"\n{key}. {entry['title']}: {entry['status'].upper()} ({entry['seconds']} s)"]
    if entry["status"] in ("error", "skipped"):
        lines.append(f"   {entry.get('error') or entry.get('reason')}")
        return "\n".join(lines)
    rows = entry["rows"]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    text = [[_cell(row.get(name)) for name in columns] for row in rows]
    widths = [max(len(name), *(len(r[i]) for r in text)) for i, name in enumerate(columns)]
    lines.append("   " + "  ".join(name.ljust(w) for name, w in zip(columns, widths)))
    lines += ["   " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in text]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


ORDER = "badecfg"  # what decides most first: the CUDA path's correctness, precision, the pipeline, live, speed;
# then the video model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_results",
                        help="folder for gpu_check.json (default: $OUT, where a device run's files come back from)")
    parser.add_argument("--sections", default=ORDER, help=f"which sections to run, in this order ({ORDER})")
    parser.add_argument("--frames", type=int, default=600, help="720p frames per pipeline stream and for live mode")
    parser.add_argument("--variants", default="vits,vitb,vitl")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--compile-variants", default="vits", help="variants also timed with torch.compile (batch 8)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="sections (and section c's cases) not begun by then are skipped, said so")
    parser.add_argument("--rehearse", action="store_true",
                        help="on a machine without a GPU: skip the GPU-only sections (a, b, c) and run d and e small "
                             "on the CPU, their GPU thresholds not applied: the harness and its JSON, end to end")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}); nothing to measure (--rehearse runs what a CPU can)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(PROJECT))
    variants = args.variants.split(",")
    compile_variants = [v for v in args.compile_variants.split(",") if v]
    if args.rehearse:
        small_hw, gpu_only = (96, 160), "rehearsal: needs a CUDA GPU"
        every = {
            "b": ("model actor's CUDA path against the plain predictor", gpu_only),
            "a": ("float16 / bfloat16 against float32", gpu_only),
            "d": ("Ray pipeline, file to file, 96 x 160 on the CPU (rehearsal)",
                  lambda: pipeline_speed(args.frames, (1, 2), small_hw, {"model.input_size": 70}, require_gpu=False)),
            "e": ("live mode, a 96 x 160 file in real time on the CPU (rehearsal)",
                  lambda: live_latency(args.frames, small_hw, ("--input-size", "70"), p95_limit_ms=None)),
            "c": ("GPU ms per frame", gpu_only),
            "f": ("Video Depth Anything, 70 x 126 on the CPU, bfloat16 (rehearsal)",
                  lambda: video_model_check("cpu", (70, 126), "bfloat16", limit=None, stream_frames=12)),
            "g": ("runtimes: torch against ONNX Runtime CUDA and TensorRT", gpu_only),
        }
    else:
        every = {
            "b": ("model actor's CUDA path against the plain predictor, 4 threads, 2 slots", worker_agreement),
            "a": ("float16 / bfloat16 against float32, 518 x 924", lambda: precision_agreement(variants)),
            "d": ("Ray pipeline, file to file, 720p, default settings", lambda: pipeline_speed(args.frames)),
            "e": ("live mode, a 720p file in real time", lambda: live_latency(args.frames)),
            "c": ("GPU ms per frame (CUDA events, input preparation included)",
                  lambda: model_speed(variants, [int(b) for b in args.batches.split(",")], compile_variants,
                                      deadline=deadline)),
            "f": ("Video Depth Anything Small, 518 x 924: float16 against float32, frames per second",
                  video_model_check),
            "g": ("runtimes at 518 x 924, vits: torch float16 against ONNX Runtime CUDA and TensorRT", runtime_check),
        }
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (rehearsal)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    results = run_sections({key: every[key] for key in args.sections if key in every}, Path(args.out), deadline)
    results.update(device=name, torch=torch.__version__, cuda=torch.version.cuda, date=time.strftime("%Y-%m-%d"))
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0 if all(s["status"] in ("ok", "skipped" if args.rehearse else "ok")
                    for s in results["sections"].values()) else 3


if __name__ == "__main__":
    sys.exit(main())
