"""
Model speed on this machine: ms per frame for vits in float32 and bfloat16 (with bf16's error against float32), and
the ratio to Hugging Face transformers' implementation with the same weights, threads and inputs, in one run.

    .venv/bin/python benchmarks/model_speed.py [--variant vits] [--threads 2] [--repeats 3] [--compile]

Goals: float32 ratio ours/transformers <= 1.0; bf16 >= 1.8x faster than our float32 with error <= 2e-2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import hf_to_official  # noqa: E402
from model.checkpoint import official_to_ours  # noqa: E402
from model.config import make_config  # noqa: E402
from model.depth_anything import DepthAnything  # noqa: E402
from model.predictor import PRECISIONS  # noqa: E402
from tests.reference import random_reference, reference_depth  # noqa: E402


def time_interleaved(runs: dict, images: torch.Tensor, repeats: int) -> dict[str, tuple[float, torch.Tensor]]:
    """Median seconds per contender; contenders take turns so that machine noise hits them alike."""
    outputs = {name: run(images) for name, run in runs.items()}  # warm-up: fills caches, compiles
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run(images)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outputs[name]) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="vits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on bf16 (20-40 s compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference = random_reference(args.variant, seed=0)  # transformers, original position rule
    official_state, _ = hf_to_official(reference.state_dict())
    ours = DepthAnything(make_config(args.variant)).eval()
    ours.load_state_dict(official_to_ours(official_state)[0])

    def run_ours(precision, net=ours):
        def run(images):
            with torch.inference_mode(), torch.autocast("cpu", PRECISIONS[precision], enabled=precision != "float32"):
                return net(images).float()

        return run

    print(f"variant {args.variant}, torch {torch.__version__}, {args.threads} threads, batch 1, median of {args.repeats}")
    header = f"{'input':>9} | {'ours fp32':>10} | {'transformers fp32':>17} | {'ratio':>5} | {'ours bf16':>10} | {'speed-up':>8} | {'bf16 rel err':>12}"
    print(header + ("  | compiled bf16 | speed-up" if args.compile else ""))
    print("-" * len(header))
    for size in [(518, 518), (518, 924)]:
        images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        runs = {
            "fp32": run_ours("float32"),
            "transformers": lambda x: reference_depth(reference, x),
            "bf16": run_ours("bfloat16"),
        }
        if args.compile:
            runs["compiled"] = run_ours("bfloat16", torch.compile(ours, dynamic=False))
        results = time_interleaved(runs, images, args.repeats)
        (fp32_s, fp32_out), (hf_s, _), (bf16_s, bf16_out) = results["fp32"], results["transformers"], results["bf16"]
        error = ((bf16_out - fp32_out).norm() / fp32_out.norm()).item()
        line = (
            f"{size[0]}x{size[1]:<5} | {fp32_s * 1e3:8.0f}ms | {hf_s * 1e3:15.0f}ms | {fp32_s / hf_s:5.2f} | "
            f"{bf16_s * 1e3:8.0f}ms | {fp32_s / bf16_s:7.2f}x | {error:12.2e}"
        )
        if args.compile:
            compiled_s = results["compiled"][0]
            line += f"  | {compiled_s * 1e3:11.0f}ms | {fp32_s / compiled_s:7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
