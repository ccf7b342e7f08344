"""
The device check: one command for a machine with an NVIDIA GPU, about 5-7 minutes on an H200.

    python benchmarks/gpu_check.py --out DIR [--sections abcde] [--frames 240]

Sections, each isolated (one that fails is reported with its error and the others still run); results as JSON in
DIR/gpu_check.json (written after every section) and as a table on stdout, with a pass/fail where a threshold applies:
  a. float16 and bfloat16 against float32 (TF32 off), vits / vitb / vitl at 518 x 924, weights cast once:
     relative L2 <= 2e-2;
  b. the model actor's CUDA path (DepthWorker: pinned slots, copy / compute / download streams, events) against the
     plain predictor on the same frames: I420 and RGB, batches of 8, 3 and 1, four threads at once: the same
     output (relative L2 <= 1e-3);
  c. GPU milliseconds per frame from CUDA events (input preparation included), vits / vitb / vitl, batch 1 / 8 / 16,
     float32 / float16 / bfloat16, torch.compile off, and on for --compile-variants at batch 8;
  d. the Ray pipeline file to file (720p, default settings, vits) with 1, 2, 4 and 8 concurrent streams: fps in all,
     the GPU's busy fraction from CUDA events in the model actor (nvidia-smi's beside it), CPU ms per frame per actor;
  e. live mode on a 720p file played in real time: latency p50 / p95.
Random weights, seeded: the figures measure arithmetic and plumbing, not depth quality. Sections d and e need av and
Ray (on the GPU machine: `source .devicepack/unpack.sh` first). `--help` needs neither, nor a GPU; without a CUDA
GPU the check says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
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
PRECISION_LIMIT = 2e-2
SAME_OUTPUT_LIMIT = 1e-3


def relative_l2(got, expected) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


# ---------------------------------------------------------------------------------------------------------------------
# a. precision


def precision_agreement(variants: list[str], device: str = "cuda", precisions=("float16", "bfloat16"),
                        frame_hw=FRAME_HW, input_size: int = 518) -> list[dict]:
    import torch

    from model import DepthPredictor, PredictorOptions
    from model.random_weights import random_model

    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, *frame_hw, 3), dtype=torch.uint8, generator=generator).to(device)
    rows = []
    for variant in variants:
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        reference = DepthPredictor(random_model(variant, seed=0).to(device), PredictorOptions(input_size=input_size))
        try:  # a true float32 reference: the predictor turns TF32 on for float32, and it is turned off here
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            expected = reference(frames, at_frame_size=False)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        del reference
        for precision in precisions:
            predictor = DepthPredictor(random_model(variant, seed=0).to(device),
                                       PredictorOptions(input_size=input_size, precision=precision, cast_weights=True))
            error = relative_l2(predictor(frames, at_frame_size=False), expected)
            rows.append({"variant": variant, "precision": precision, "relative_l2": error,
                         "limit": PRECISION_LIMIT, "pass": error <= PRECISION_LIMIT})
            del predictor
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# b. the model actor's CUDA path against the plain predictor


def worker_agreement(device: str = "cuda", precision: str = "float16", frame_hw=FRAME_HW,
                     input_size: int = 518, threads: int = 4) -> list[dict]:
    import cv2
    import numpy as np
    import torch

    from model import DepthPredictor, PredictorOptions
    from model.random_weights import random_model
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.infer import DepthWorker
    from pipeline.stages.pixels import YUV420P, i420_to_rgb

    options = PredictorOptions(input_size=input_size, precision=precision, cast_weights=device == "cuda" or None)
    predictor = DepthPredictor(random_model("vits", seed=0).to(device), options)
    worker = DepthWorker(predictor, concurrency=threads, batch_size=8)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, *frame_hw, 3), dtype=np.uint8)
    i420 = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420) for frame in rgb])
    rows = []
    for layout, pixels in (("rgb24", rgb), (YUV420P, i420)):
        for batch_size in (8, 3, 1):
            # `threads` calls at once, on batches from different offsets into the frames
            batches = [FrameBatch(0, list(range(batch_size)), Fraction(1, 30),
                                  pixels[offset: offset + batch_size], layout)
                       for offset in ((3 * k) % (9 - batch_size) for k in range(threads))]
            expected = []
            for batch in batches:  # the plain predictor, one call at a time, on the default stream
                frames = torch.from_numpy(batch.pixels).to(device)
                frames = i420_to_rgb(frames) if layout == YUV420P else frames
                with torch.inference_mode():
                    expected.append(predictor(frames, at_frame_size=False).to(torch.float16).float().cpu())
            got: list = [None] * len(batches)

            def call(index: int) -> None:
                got[index] = torch.from_numpy(np.asarray(worker.infer(batches[index], "float16").depth)).float()

            pool = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            error = max(relative_l2(g, e) for g, e in zip(got, expected))
            rows.append({"layout": layout, "batch": batch_size, "calls_at_once": len(batches),
                         "relative_l2": error, "limit": SAME_OUTPUT_LIMIT, "pass": error <= SAME_OUTPUT_LIMIT})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# c. GPU time per frame


def model_speed(variants: list[str], batches: list[int], compile_variants: list[str], seconds: float = 1.5) -> list[dict]:
    import torch

    from model import DepthPredictor, PredictorOptions
    from model.random_weights import random_model

    rows = []
    cases = [(v, p, b, False) for v in variants for p in ("float32", "float16", "bfloat16") for b in batches]
    cases += [(v, "float16", 8, True) for v in compile_variants]
    for variant, precision, batch, compiled in cases:
        try:
            predictor = DepthPredictor(random_model(variant, seed=0).cuda(),
                                       PredictorOptions(precision=precision, compile=compiled))
            frames = torch.randint(0, 256, (batch, *FRAME_HW, 3), dtype=torch.uint8, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):  # warm-up (and, compiled, the compilation)
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
            rows.append({"variant": variant, "precision": precision, "batch": batch, "compile": compiled,
                         "gpu_ms_per_frame": round(ms, 3), "fps": round(1e3 / ms, 1),
                         "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)})
            del predictor, frames
        except Exception as error:  # noqa: BLE001 - one case (out of memory, a compile failure) is not the section
            rows.append({"variant": variant, "precision": precision, "batch": batch, "compile": compiled,
                         "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        torch.cuda.empty_cache()
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


def pipeline_speed(frames: int, stream_counts=(1, 2, 4, 8)) -> list[dict]:
    import ray

    from benchmarks.pipeline_ceiling import run_streams
    from pipeline.graph import DepthGraph
    from pipeline.runtime import start_ray, stop_ray
    from pipeline.jobs.file import process_video
    from pipeline.sample_video import make_sample_clip
    from pipeline.settings import load_settings

    start_ray()
    folder = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    clip = make_sample_clip(folder / "clip.mp4", width=FRAME_HW[1], height=FRAME_HW[0], frames=frames, rate=30)
    graph = DepthGraph(load_settings(None, {"model.random_weights": "vits"}))
    rows = []
    try:
        process_video(graph, str(clip), str(folder / "warm_up.mp4"))
        for streams in stream_counts:
            before = ray.get([actor.usage.remote() for actor in graph.model_actors])
            with BusySampler() as busy:
                seconds, summaries, driver_cpu_s = run_streams(graph, [clip] * streams, folder)
            after = ray.get([actor.usage.remote() for actor in graph.model_actors])
            total = sum(s["frames_out"] for s in summaries)
            gpu_ms = sum(a["gpu_busy_ms"] - b["gpu_busy_ms"] for a, b in zip(after, before))
            model_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before))
            per_actor = {stage: round(sum(s["cpu_ms_per_frame"].get(stage, 0) * s["frames_out"] for s in summaries)
                                      / total, 2) for stage in ("decode", "sink")}
            rows.append({"streams": streams, "fps": round(total / seconds, 1), "frames": total,
                         "gpu_busy_events": round(gpu_ms / 1e3 / seconds / len(graph.model_actors), 3),
                         "gpu_busy_nvidia_smi": busy.fraction,
                         "cpu_ms_per_frame": {**per_actor, "model actor": round(model_cpu * 1e3 / total, 2),
                                              "driver": round(driver_cpu_s * 1e3 / total, 2)},
                         "batch": summaries[0]["batch_size"], "device": summaries[0]["model"].get("device")})
    finally:
        graph.shutdown()
        stop_ray()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# e. live latency


def live_latency(frames: int) -> list[dict]:
    from pipeline.sample_video import make_sample_clip

    folder = Path(tempfile.mkdtemp(prefix="gpu_check_live_"))
    clip = make_sample_clip(folder / "clip.mp4", width=FRAME_HW[1], height=FRAME_HW[0], frames=frames, rate=30)
    process = subprocess.run([sys.executable, str(PROJECT / "run_pipeline.py"), str(clip), "--realtime", "--record",
                              str(folder / "live.mp4"), "--random-weights", "vits"], capture_output=True, text=True,
                             cwd=PROJECT, timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"live run exit {process.returncode}: {process.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(process.stdout)
    return [{"frames_in": summary["frames_in"], "frames_out": summary["frames_out"], "dropped": summary["dropped"],
             **{f"latency_{k}_ms": v for k, v in summary["latency_ms"].items()}}]


# ---------------------------------------------------------------------------------------------------------------------


def run_sections(sections: dict[str, tuple[str, Callable[[], list[dict]]]], out: Path) -> dict:
    """Each section in turn, isolated: its rows, or its error (one line; the traceback in the JSON). The JSON file is
    rewritten after every section, so a run cut short keeps what it measured."""
    results: dict = {"sections": {}}
    out.mkdir(parents=True, exist_ok=True)
    for key, (title, run) in sections.items():
        started = time.perf_counter()
        try:
            rows = run()
            failed = [row for row in rows if row.get("pass") is False or "error" in row]
            entry = {"title": title, "status": "fail" if failed else "ok", "rows": rows}
        except Exception as error:  # noqa: BLE001 - a failing section is reported, the others still run
            entry = {"title": title, "status": "error",
                     "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error) else ''}",
                     "traceback": traceback.format_exc()}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["sections"][key] = entry
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(table(key, entry), flush=True)
    return results


def table(key: str, entry: dict) -> str:
    lines = [f"\n{key}. {entry['title']}: {entry['status'].upper()} ({entry['seconds']} s)"]
    if entry["status"] == "error":
        lines.append(f"   {entry['error']}")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_results", help="folder for gpu_check.json")
    parser.add_argument("--sections", default="abcde", help="which sections to run (default all: abcde)")
    parser.add_argument("--frames", type=int, default=240, help="720p frames per pipeline stream and for live mode")
    parser.add_argument("--variants", default="vits,vitb,vitl")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--compile-variants", default="vits", help="variants also timed with torch.compile (batch 8)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}); nothing to measure", file=sys.stderr)
        return 1
    sys.path.insert(0, str(PROJECT))
    variants = args.variants.split(",")
    compile_variants = [v for v in args.compile_variants.split(",") if v]
    every = {
        "a": ("float16 / bfloat16 against float32, 518 x 924", lambda: precision_agreement(variants)),
        "b": ("model actor's CUDA path against the plain predictor, 4 threads", worker_agreement),
        "c": ("GPU ms per frame (CUDA events, input preparation included)",
              lambda: model_speed(variants, [int(b) for b in args.batches.split(",")], compile_variants)),
        "d": ("Ray pipeline, file to file, 720p, default settings", lambda: pipeline_speed(args.frames)),
        "e": ("live mode, a 720p file in real time", lambda: live_latency(args.frames)),
    }
    name = torch.cuda.get_device_name(0)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    results = run_sections({key: every[key] for key in args.sections if key in every}, Path(args.out))
    results.update(device=name, torch=torch.__version__, cuda=torch.version.cuda, date=time.strftime("%Y-%m-%d"))
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0 if all(s["status"] == "ok" for s in results["sections"].values()) else 3


if __name__ == "__main__":
    sys.exit(main())
