"""
Temporal quality of the smoothers on a synthetic video with known inverse depth (benchmarks/temporal_data.py):
static flicker, temporal-gradient error, AbsRel after one scale/shift fit per shot, ghosting on just-uncovered
pixels, lag after a sudden depth step, the frames where cuts were detected, and the smoother's cost per frame
against a model frame at the same size. Writes a plot of one pixel's depth over time.

    .venv/bin/python benchmarks/temporal_quality.py [--plot docs/temporal_quality.png]
    .venv/bin/python benchmarks/temporal_quality.py --models    # Depth Anything against Video Depth Anything

Goals for the default: static flicker <= 1/6 of none; lag <= 1 frame; ghosting <= 1.1x none; AbsRel no
worse than none; every cut detected on its frame and no false ones; cost <= 5% of a model frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.temporal_data import evaluate, make_sequence, to_truth_units  # noqa: E402
from pipeline.stages.render.smoothing import make_smoother  # noqa: E402


def run_smoother(name: str, sequence) -> tuple[np.ndarray, list[int] | None]:
    smoother = make_smoother(name)
    outputs = np.stack([smoother.update(d, rgb) for d, rgb in zip(sequence.observed, sequence.rgb)])
    return outputs, getattr(smoother, "cuts", None)


def cost_ms(sequence, hw=(518, 924), frames: int = 20) -> tuple[float, float]:
    """Default smoother vs the vits model (float32, 2 threads), per frame at the same size (the synthetic video,
    upscaled: random data would make every frame look like a cut)."""
    import cv2

    from model.random_weights import random_model

    size = (hw[1], hw[0])
    depth = [cv2.resize(d, size) for d in sequence.observed[:frames]]
    rgb = [cv2.resize(image, size) for image in sequence.rgb[:frames]]
    smoother = make_smoother()
    smoother.update(depth[0], rgb[0])
    started = time.perf_counter()
    for d, image in zip(depth[1:], rgb[1:]):
        smoother.update(d, image)
    smoother_ms = (time.perf_counter() - started) / (frames - 1) * 1e3
    torch.set_num_threads(2)
    net, x = random_model("vits"), torch.randn(1, 3, *hw)
    with torch.inference_mode():
        net(x)
        started = time.perf_counter()
        net(x)
        model_ms = (time.perf_counter() - started) * 1e3
    return smoother_ms, model_ms


def plot(sequence, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row, col = int(0.88 * sequence.truth.shape[1]), int(0.2 * sequence.truth.shape[2])  # in the depth-step box
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=110)
    ax.plot(sequence.truth[:, row, col], "k-", lw=2.5, label="truth")
    for name, (outputs, _) in results.items():
        ax.plot(to_truth_units(outputs, sequence)[:, row, col], lw=1.2, label=name)
    for cut in sequence.cut_frames:
        ax.axvline(cut, color="grey", ls=":", lw=1)
    ax.set_xlabel("frame")
    ax.set_ylabel("inverse depth (one pixel)")
    ax.set_title("raw per-frame depth (none) vs smoothed; step at frame %d, cut at %s"
                 % (sequence.step_frame, sequence.cut_frames))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def run_models(sequence) -> dict[str, np.ndarray]:
    """Depth Anything V2 Small a frame at a time (raw, and through the default smoother) against Video Depth
    Anything Small in its two modes, on the synthetic video's pictures (seeded random weights, input 112x154, depth
    resized back to the video's size). Random weights have learnt nothing: these figures test the measurement and
    the modes' plumbing, not the models; real weights are needed for the comparison that matters."""
    import cv2

    from model.random_weights import random_model, random_video_model
    from pipeline.stages.inference.temporal_stream import StreamingDepth
    from pipeline.stages.inference.temporal_windows import WindowedDepth

    torch.set_num_threads(2)
    height, width = sequence.rgb.shape[1:3]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pictures = np.stack([cv2.resize(rgb, (154, 112), interpolation=cv2.INTER_CUBIC) for rgb in sequence.rgb])
    frames = torch.from_numpy(((pictures / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    image_model, video_model = random_model("vits", version="v2"), random_video_model("vits")
    with torch.inference_mode():
        per_frame = np.stack([image_model(frame.unsqueeze(0))[0].numpy() for frame in frames])
        per_frame = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR) for d in per_frame])
        windows = WindowedDepth(lambda window: video_model(window.unsqueeze(0))[0], (height, width))
        window_mode = np.stack([p for frame in frames for p in windows.push(frame)] + windows.finish())
        stream = StreamingDepth(video_model.encode, video_model.decode, (height, width))
        stream_mode = np.stack([stream.push(frame) for frame in frames])
    smoother = make_smoother()
    smoothed = np.stack([smoother.update(d, rgb) for d, rgb in zip(per_frame, sequence.rgb)])
    return {"DA-S": per_frame, "DA-S+default": smoothed, "VDA-S window": window_mode, "VDA-S stream": stream_mode}


def print_table(metrics: dict[str, dict]) -> None:
    keys = list(next(iter(metrics.values())))
    print(f"{'metric':28s}" + "".join(f"{name:>14s}" for name in metrics))
    for key in keys:
        cells = "".join(f"{str(m[key]) if isinstance(m[key], (list, type(None))) else f'{m[key]:.4g}':>14s}"
                        for m in metrics.values())
        print(f"{key:28s}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", default="docs/temporal_quality.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", action="store_true",
                        help="instead: Depth Anything V2 Small against Video Depth Anything Small (random weights)")
    args = parser.parse_args()
    sequence = make_sequence(seed=args.seed)
    if args.models:
        outputs = run_models(sequence)
        print(f"synthetic video {sequence.truth.shape[2]}x{sequence.truth.shape[1]}, {len(sequence.truth)} frames; "
              f"seeded RANDOM weights: the plumbing is measured, not the models' quality")
        print_table({name: evaluate(out, sequence) for name, out in outputs.items()})
        return
    results = {name: run_smoother(name, sequence) for name in ("none", "ema", "default")}
    metrics = {name: evaluate(out, sequence, cuts) for name, (out, cuts) in results.items()}
    print(f"synthetic video {sequence.truth.shape[2]}x{sequence.truth.shape[1]}, {len(sequence.truth)} frames, "
          f"cut at {sequence.cut_frames}, depth step at {sequence.step_frame}")
    print_table(metrics)
    flicker_ratio = metrics["default"]["static flicker %"] / metrics["none"]["static flicker %"]
    ghost_ratio = metrics["default"]["ghosting error %"] / metrics["none"]["ghosting error %"]
    print(f"default / none: static flicker {flicker_ratio:.3f} (goal <= 0.167), ghosting {ghost_ratio:.3f} "
          f"(goal <= 1.1)")
    smoother_ms, model_ms = cost_ms(sequence)
    print(f"cost at 518x924: smoother {smoother_ms:.1f} ms, vits float32 {model_ms:.0f} ms per frame "
          f"({100 * smoother_ms / model_ms:.1f}%, goal <= 5%)")
    plot(sequence, results, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
