"""
One command for a machine with an NVIDIA GPU: precision agreement, model speed, pipeline speed, memory, busy time.

    .venv/bin/python benchmarks/gpu_check.py [--frames 240] [--skip-pipeline]

Prints, in one run (random weights, seeded; the numbers measure arithmetic, not depth quality):
  1. float16 and bfloat16 against float32 on the GPU (relative L2 error, vits at 518 x 924, weights cast once);
  2. model fps for vits / vitb / vitl at 518 x 924, batch 1 / 8 / 16, float32 (TF32) and float16, with peak GPU
     memory, frames already on the GPU (the network alone);
  3. pipeline fps file to file (720p clips, vits float16, default settings) with 1 and 4 concurrent streams on one
     model actor, and the fraction of time the GPU was busy meanwhile (nvidia-smi, sampled every 100 ms).
On a machine without a CUDA GPU it says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_ceiling import run_streams  # noqa: E402
from model import DepthPredictor, PredictorOptions  # noqa: E402
from model.random_weights import random_model  # noqa: E402
from model.transforms import prepare_frames  # noqa: E402

SIZE_HW = (518, 924)  # the model input of a 16:9 frame


def agreement() -> None:
    frames = torch.randint(0, 256, (4, 720, 1280, 3), dtype=torch.uint8, device="cuda")
    reference = DepthPredictor(random_model("vits", seed=0).cuda(), PredictorOptions(precision="float32"))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true float32 reference
    expected = reference(frames, at_frame_size=False)
    for precision in ("float16", "bfloat16"):
        predictor = DepthPredictor(random_model("vits", seed=0).cuda(), PredictorOptions(precision=precision))
        got = predictor(frames, at_frame_size=False)
        error = ((got - expected).norm() / expected.norm()).item()
        print(f"  {precision:9s} vs float32: relative L2 error {error:.2e}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def model_speed(variants: list[str], batches: list[int]) -> None:
    print(f"  {'variant':8s} {'precision':9s} {'batch':>5s} {'fps':>8s} {'ms/frame':>9s} {'peak GPU MB':>12s}")
    for variant in variants:
        for precision in ("float32", "float16"):
            net = random_model(variant, seed=0).cuda()
            predictor = DepthPredictor(net, PredictorOptions(precision=precision))
            dtype = torch.float16 if precision == "float16" else torch.float32
            for batch in batches:
                image = prepare_frames(torch.randint(0, 256, (batch, *SIZE_HW, 3), dtype=torch.uint8,
                                                     device="cuda"), SIZE_HW).to(dtype)
                torch.cuda.reset_peak_memory_stats()
                with torch.inference_mode():
                    for _ in range(3):
                        net(image)
                    torch.cuda.synchronize()
                    runs, started = 0, time.perf_counter()
                    while time.perf_counter() - started < 2.0:
                        net(image)
                        runs += 1
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                fps = runs * batch / seconds
                peak = torch.cuda.max_memory_allocated() / 2**20
                print(f"  {variant:8s} {precision:9s} {batch:5d} {fps:8.1f} {1e3 / fps:9.2f} {peak:12.0f}")
            del predictor, net
            torch.cuda.empty_cache()


class BusySampler:
    """GPU utilisation from nvidia-smi every 100 ms while running; `fraction` is the mean of the samples."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True).stdout.strip()
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
        return sum(self.samples) / len(self.samples) if self.samples else None


def pipeline_speed(frames: int) -> None:
    from pipeline.graph import DepthGraph, start_ray, stop_ray
    from pipeline.jobs.file import process_video
    from pipeline.sample_video import make_sample_clip
    from pipeline.settings import load_settings

    start_ray()
    folder = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    clips = [make_sample_clip(folder / f"clip{i}.mp4", width=1280, height=720, frames=frames, rate=30)
             for i in range(4)]
    graph = DepthGraph(load_settings("configs/default.yaml", {"model.random_weights": "vits"}))
    try:
        process_video(graph, str(clips[0]), str(folder / "warm_up.mp4"))
        for streams in (1, 4):
            with BusySampler() as busy:
                seconds, summaries, _ = run_streams(graph, clips[:streams], folder)
            total = sum(s["frames_out"] for s in summaries)
            busy_text = f"{busy.fraction:.0%}" if busy.fraction is not None else "n/a (no nvidia-smi)"
            print(f"  {streams} stream(s): {total / seconds:7.1f} fps in all, GPU busy {busy_text}, "
                  f"batch {summaries[0]['batch_size']}, model {summaries[0]['model']}")
    finally:
        graph.shutdown()
        stop_ray()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=240, help="720p frames per pipeline stream")
    parser.add_argument("--variants", default="vits,vitb,vitl")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        hint = " (an NVIDIA driver is present: this torch is a CPU-only build)" if shutil.which("nvidia-smi") else ""
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__}{hint}; nothing to measure", file=sys.stderr)
        return 1
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("1. reduced precision against float32 (vits, 518 x 924, batch 4):")
    agreement()
    print("2. model alone, frames on the GPU:")
    model_speed(args.variants.split(","), [int(b) for b in args.batches.split(",")])
    if not args.skip_pipeline:
        print("3. pipeline, file to file, 720p:")
        pipeline_speed(args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
