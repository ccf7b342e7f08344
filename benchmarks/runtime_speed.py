"""
torch against ONNX Runtime, in one run, the contenders in turn (this machine's speed drifts over minutes):

  1. the model alone (frames in memory, one a pass, as the pipeline's CPU network runs): ms a frame for vits and vitb
     at input sizes 266 / 364 / 518 (16:9 frames), and the two runtimes' relative L2 difference;
  2. Video Depth Anything small: the window mode (32-frame windows) and the streaming mode (a frame a step, the
     cache full) in both runtimes, ms a frame;
  3. the pipeline end to end (720p file to depth video, default settings, vits): fps_steady with --runtime torch and
     --runtime onnxruntime, at each input size.

    .venv/bin/python benchmarks/runtime_speed.py [--sizes 266 364 518] [--variants vits vitb] [--rounds 3]
        [--frames 24] [--threads 2] [--skip-video-model] [--skip-pipeline]

Exports go to the export cache (the first run exports each network once: about 30 s for vits, a minute for vitb and
the video model). Goal on this CPU: the pipeline at 364 at least 1.3x faster with onnxruntime.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.model_speed import time_interleaved  # noqa: E402
from model.onnx_network import OnnxNetwork  # noqa: E402
from model.random_weights import random_model, random_video_model  # noqa: E402
from model.transforms import model_input_size  # noqa: E402
from pipeline.stages.inference.depth_worker import ModelSource  # noqa: E402

SEED = 0
FRAME_HW = (720, 1280)


def relative_l2(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).norm() / expected.norm())


def torch_against_onnx(net: torch.nn.Module, onnx_net: OnnxNetwork, inputs: torch.Tensor,
                       rounds: int) -> tuple[float, float, float]:
    """(torch's seconds a call, ONNX Runtime's, their outputs' relative L2), the two timed in turn."""

    def on_torch(x):
        with torch.inference_mode():
            return net(x)

    results = time_interleaved({"torch": on_torch, "onnxruntime": onnx_net}, inputs, rounds)
    (torch_s, expected), (ort_s, ours) = results["torch"], results["onnxruntime"]
    return torch_s, ort_s, relative_l2(ours, expected)


def model_alone(variants: list[str], sizes: list[int], rounds: int) -> None:
    print("1. the model alone, one frame a pass (ms a frame, median of the rounds)")
    print(f"  {'variant':7s} {'input':>9s} | {'torch':>8s} | {'onnxruntime':>11s} | {'ort / torch':>11s} | rel. L2")
    for variant in variants:
        net = random_model(variant, seed=SEED)
        # Loaded as the pipeline's model actors load --random-weights: their export cache entry is this one
        onnx_net = ModelSource(random_weights=variant, seed=SEED, runtime="onnxruntime").load(torch.device("cpu"))
        for size in sizes:
            input_hw = model_input_size(FRAME_HW, size, 14)
            image = torch.randn(1, 3, *input_hw, generator=torch.Generator().manual_seed(1))
            torch_s, ort_s, difference = torch_against_onnx(net, onnx_net, image, rounds)
            print(f"  {variant:7s} {input_hw[0]:4d}x{input_hw[1]:<4d} | {torch_s * 1e3:6.0f}ms | {ort_s * 1e3:9.0f}ms |"
                  f" {ort_s / torch_s:11.2f} | {difference:.1e}", flush=True)


def video_model(size: int, rounds: int) -> None:
    from model.onnx_export import export_onnx
    from pipeline.stages.inference.onnx_cache import default_cache_folder
    from pipeline.stages.inference.temporal_stream import StreamingDepth

    print(f"2. Video Depth Anything small at input {size} (ms a frame)")
    net = random_video_model("vits", seed=SEED)
    paths = {mode: default_cache_folder() / f"benchmark-vda-vits-seed{SEED}-{mode}.onnx" for mode in ("window",
                                                                                                       "stream")}
    for mode, path in paths.items():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(net, path, mode=mode)
    onnx_net = OnnxNetwork(paths["window"])
    input_hw = model_input_size(FRAME_HW, size, 14)
    window = torch.randn(1, 32, 3, *input_hw, generator=torch.Generator().manual_seed(2))
    torch_s, ort_s, difference = torch_against_onnx(net, onnx_net, window, rounds)
    print(f"  window mode (32 frames a pass): torch {torch_s / 32 * 1e3:.0f} ms, onnxruntime {ort_s / 32 * 1e3:.0f} ms"
          f" a frame; ort / torch {ort_s / torch_s:.2f}; rel. L2 {difference:.1e}")
    frames, step = window[0], OnnxNetwork(paths["stream"]).step
    streams = {"torch": StreamingDepth(net.encode, net.decode, input_hw),
               "onnxruntime": StreamingDepth(None, None, input_hw, step=step)}
    times: dict[str, list[float]] = {name: [] for name in streams}
    depth: dict[str, list] = {name: [] for name in streams}
    with torch.inference_mode():
        for index, frame in enumerate(frames[:16]):  # the two in turn, frame by frame; the first 4 a warm-up
            for name, stream in streams.items():
                started = time.perf_counter()
                depth[name].append(stream.push(frame))
                if index >= 4:
                    times[name].append(time.perf_counter() - started)
    torch_s, ort_s = (statistics.median(times[name]) for name in streams)
    difference = relative_l2(torch.from_numpy(np.stack(depth["onnxruntime"])), torch.from_numpy(np.stack(
        depth["torch"])))
    print(f"  streaming mode (a frame a step, the cache filling): torch {torch_s * 1e3:.0f} ms, onnxruntime "
          f"{ort_s * 1e3:.0f} ms a frame; ort / torch {ort_s / torch_s:.2f}; rel. L2 {difference:.1e}", flush=True)


def pipeline_fps(clip: Path, output: Path, size: int, runtime: str) -> dict:
    from pipeline.cluster.graph import DepthGraph
    from pipeline.jobs.file import process_video
    from pipeline.settings import load_settings

    settings = load_settings("default", {"model.random_weights": "vits", "model.input_size": size,
                                         "model.runtime": runtime})
    graph = DepthGraph(settings)
    try:
        return process_video(graph, str(clip), str(output))
    finally:
        graph.shutdown()


def pipeline(sizes: list[int], frames: int, rounds: int) -> None:
    from pipeline.cluster.runtime import start_ray
    from pipeline.sample_video import make_sample_clip

    start_ray(num_cpus=2)
    folder = Path(tempfile.mkdtemp(prefix="runtime_speed_"))
    clip = make_sample_clip(folder / "clip720.mp4", width=FRAME_HW[1], height=FRAME_HW[0], frames=frames)
    print(f"3. the pipeline end to end: {frames} frames of 720p, vits, default settings (fps_steady; median of "
          f"{rounds} rounds, the runtimes in turn)")
    print(f"  {'input':>5s} | {'torch':>7s} | {'onnxruntime':>11s} | ort / torch (each round)")
    for size in sizes:
        fps = {"torch": [], "onnxruntime": []}
        for round_index in range(rounds):
            order = ("torch", "onnxruntime") if round_index % 2 == 0 else ("onnxruntime", "torch")
            for runtime in order:
                summary = pipeline_fps(clip, folder / f"out_{runtime}.mp4", size, runtime)
                assert summary["model"]["runtime"] == runtime
                fps[runtime].append(summary["fps_steady"])
        each = ", ".join(f"{o / t:.2f}" for o, t in zip(fps["onnxruntime"], fps["torch"]))
        ratio = statistics.median(fps["onnxruntime"]) / statistics.median(fps["torch"])
        print(f"  {size:5d} | {statistics.median(fps['torch']):7.3f} | {statistics.median(fps['onnxruntime']):11.3f} | "
              f"{ratio:.2f} ({each})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[266, 364, 518])
    parser.add_argument("--variants", nargs="+", default=["vits", "vitb"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24, help="720p frames a pipeline run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--video-size", type=int, default=266, help="the video model's input size")
    parser.add_argument("--skip-video-model", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, float32, "
          f"{np.__name__} {np.__version__}")
    model_alone(args.variants, args.sizes, args.rounds)
    if not args.skip_video_model:
        video_model(args.video_size, args.rounds)
    if not args.skip_pipeline:
        pipeline(args.sizes, args.frames, args.rounds)


if __name__ == "__main__":
    main()
