"""
How close a segmented run of Video Depth Anything comes to a whole run, by warm-up: the depth of a segment's frames
against the same frames of one run over the whole video (relative L2 a frame: the worst frame, and the segment's
first frame, where it is worst), in window mode by warm-up windows and in streaming mode by warm-up frames.

A segment of a video model decodes the video's opening frames again (window 0 in window mode, frame 0 in streaming
mode: what every window or cache entry of a whole run is tied to) and runs a warm-up before its own first frame
(pipeline/jobs/segments.py, `segments.warmup_seconds`: 5 s, which at 30 fps is 7 windows or 150 frames). The same
stages the pipeline runs (WindowedDepth over a WindowSpan, StreamingDepth), without Ray; random weights (seeded)
on the synthetic scenes of benchmarks/temporal_data.py at 42 x 56 (two shots and a cut, 300 frames).

    .venv/bin/python benchmarks/vda_segment_seams.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.temporal_data import make_sequence  # noqa: E402
from model.random_weights import random_video_model  # noqa: E402
from pipeline.stages.inference.temporal_stream import StreamingDepth  # noqa: E402
from pipeline.stages.inference.temporal_windows import (  # noqa: E402
    INFER_LEN,
    STEP,
    WindowedDepth,
    WindowSpan,
    first_window_reference,
    window_start,
)

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SEGMENT_WINDOW = 9  # the segment under test starts where window 9 makes depth final (frame 200)


def prepared(rgb: np.ndarray) -> torch.Tensor:
    normalised = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)).astype(np.float32))


def errors(ours: np.ndarray, whole: np.ndarray) -> tuple[float, float]:
    """(the first frame's, the worst frame's) relative L2."""
    difference = np.linalg.norm((ours - whole).reshape(len(ours), -1), axis=1)
    relative = difference / np.linalg.norm(whole.reshape(len(whole), -1), axis=1)
    return float(relative[0]), float(relative.max())


def window_seams(model, frames: torch.Tensor, hw) -> dict[int, tuple[float, float]]:
    run = lambda window: model(window.unsqueeze(0))[0]  # noqa: E731
    whole = WindowedDepth(run, hw)
    reference = np.stack([plane for frame in frames for plane in whole.push(frame)] + whole.finish())
    first_reference = first_window_reference(run(frames[:INFER_LEN]), hw)
    results = {}
    for warmup in range(1, SEGMENT_WINDOW + 1):
        span = WindowSpan(SEGMENT_WINDOW - warmup, SEGMENT_WINDOW)
        part = WindowedDepth(run, hw, span=span, first_reference=first_reference if span.first else None,
                             first_frame=frames[0])
        depth = np.stack([plane for frame in frames[span.decode_from:] for plane in part.push(frame)] + part.finish())
        written = depth[span.write_from - window_start(span.first):]
        results[warmup] = errors(written, reference[span.write_from:])
    return results


def stream_seams(model, frames: torch.Tensor, hw, start: int) -> dict[int, tuple[float, float]]:
    whole = StreamingDepth(model.encode, model.decode, hw)
    reference = np.stack([whole.push(frame) for frame in frames])
    results = {}
    for warmup in (22, 44, 66, 88, 110, 132, 154, start):
        part = StreamingDepth(model.encode, model.decode, hw)
        if warmup < start:
            part.push(frames[0])
        depth = np.stack([part.push(frame) for frame in frames[start - warmup:]])[warmup:]
        results[warmup] = errors(depth, reference[start:])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="random weights' seeds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sequence = make_sequence(height=42, width=56, frames_per_shot=150)
    frames, hw = prepared(sequence.rgb), sequence.rgb.shape[1:3]
    print(f"video: {len(frames)} frames at {hw[0]}x{hw[1]}; the segment starts at frame "
          f"{INFER_LEN - 8 + (SEGMENT_WINDOW - 1) * STEP} (window mode) / 200 (streaming mode)")
    for seed in args.seeds:
        model = random_video_model("vits", seed=seed)
        with torch.inference_mode():
            windows, stream = window_seams(model, frames, hw), stream_seams(model, frames, hw, 200)
        print(f"\nseed {seed}, window mode: warm-up windows -> relative L2 (segment's first frame / worst frame)")
        for warmup, (first, worst) in windows.items():
            note = " (from frame 0: exact)" if warmup == SEGMENT_WINDOW else ""
            print(f"  {warmup} ({warmup * STEP:3d} frames): {first:.2e} / {worst:.2e}{note}")
        print(f"seed {seed}, streaming mode: warm-up frames -> relative L2 (first / worst)")
        for warmup, (first, worst) in stream.items():
            note = " (from frame 0: exact)" if warmup == 200 else ""
            print(f"  {warmup:3d}: {first:.2e} / {worst:.2e}{note}")


if __name__ == "__main__":
    main()
