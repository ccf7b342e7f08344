"""
Video Depth Anything against Depth-Anything, per frame, on this machine: the network alone (random weights, one seed;
the speed does not depend on the weights), frames prepared once, in rounds with the contenders' order rotated and
the medians compared (this machine's speed drifts by 10% and more over minutes).

    .venv/bin/python benchmarks/video_model_speed.py [--input-size 126] [--rounds 3] [--memory]

Contenders, all vits:
- `DA-S v2`: Depth Anything V2 Small, one frame a pass (the CPU pipeline's `network_batch`).
- `VDA-S window`: Video Depth Anything Small in its window mode (WindowedDepth): 32-frame windows, 22 new frames each,
  so a new frame costs a window / 22 in the steady state (the first window's 32 frames are run, and timed, too).
- `VDA-S stream`: its streaming mode (StreamingDepth): one frame a pass with the cache of earlier frames, timed once
  the cache is full (from the 42nd frame).
`--memory` also runs each mode over 300 and 3000 frames at input 70 in a process of its own and prints the peak RSS
of each, and their ratio: memory bounded by a window (or by the cache), not by the length.
Random weights say nothing of depth quality: the temporal-quality figures want the released weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.random_weights import random_model, random_video_model  # noqa: E402
from pipeline.stages.inference.temporal_stream import CACHED_FRAMES, StreamingDepth  # noqa: E402
from pipeline.stages.inference.temporal_windows import INFER_LEN, OVERLAP, WindowedDepth  # noqa: E402


def frames_for(count: int, input_size: int, aspect: float = 16 / 9) -> torch.Tensor:
    """Prepared frames, count x 3 x h x w, h the input size and w the 16:9 multiple of 14 (as 720p is seen)."""
    width = round(input_size * aspect / 14) * 14
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 3, input_size, width, generator=generator)


def per_frame_da(net, frames: torch.Tensor) -> float:
    started = time.perf_counter()
    for frame in frames:
        net(frame.unsqueeze(0))
    return (time.perf_counter() - started) / len(frames)


def per_frame_window(net, frames: torch.Tensor) -> float:
    """Seconds a new frame in the steady state: the second window's time over its new frames."""
    windows = WindowedDepth(lambda window: net(window.unsqueeze(0))[0], tuple(frames.shape[-2:]))
    for frame in frames[:INFER_LEN]:
        windows.push(frame)  # the first window runs on its 32nd frame
    started = time.perf_counter()
    for frame in frames[INFER_LEN:INFER_LEN + INFER_LEN - OVERLAP]:
        windows.push(frame)
    return (time.perf_counter() - started) / (INFER_LEN - OVERLAP)


def per_frame_stream(net, frames: torch.Tensor, timed: int) -> float:
    stream = StreamingDepth(net.encode, net.decode, tuple(frames.shape[-2:]))
    for frame in frames[:CACHED_FRAMES]:
        stream.push(frame)
    started = time.perf_counter()
    for frame in frames[CACHED_FRAMES:CACHED_FRAMES + timed]:
        stream.push(frame)
    return (time.perf_counter() - started) / timed


def speed(input_size: int, rounds: int, stream_frames: int) -> dict:
    da, vda = random_model("vits", version="v2"), random_video_model("vits")
    frames = frames_for(max(INFER_LEN + INFER_LEN - OVERLAP, CACHED_FRAMES + stream_frames), input_size)
    contenders = {
        "DA-S v2": lambda: per_frame_da(da, frames[:stream_frames]),
        "VDA-S window": lambda: per_frame_window(vda, frames),
        "VDA-S stream": lambda: per_frame_stream(vda, frames, stream_frames),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    with torch.inference_mode():
        for name in names:  # warm-up: first calls allocate
            contenders[name]()
        for round_index in range(rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                times[name].append(contenders[name]())
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"input": list(frames.shape[-2:]), "rounds": rounds, "ms_per_frame": {k: round(v * 1e3, 1)
                                                                                 for k, v in medians.items()},
            "x DA-S": {name: round(value / medians["DA-S v2"], 2) for name, value in medians.items()}}


def memory_run(mode: str, count: int) -> None:
    """In a process of its own: `count` frames through one mode at input 70; prints the peak RSS (MB)."""
    vda = random_video_model("vits")
    frame = frames_for(1, 70)[0]
    with torch.inference_mode():
        if mode == "window":
            runner = WindowedDepth(lambda window: vda(window.unsqueeze(0))[0], tuple(frame.shape[-2:]))
            written = sum(len(runner.push(frame + index % 5)) for index in range(count)) + len(runner.finish())
        else:
            runner = StreamingDepth(vda.encode, vda.decode, tuple(frame.shape[-2:]))
            written = sum(runner.push(frame + index % 5) is not None for index in range(count))
    assert written == count
    print(json.dumps({"mode": mode, "frames": count, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024}))


def memory() -> dict:
    results = {}
    for mode in ("window", "stream"):
        peaks = []
        for count in (300, 3000):
            done = subprocess.run([sys.executable, __file__, "--memory-run", mode, str(count)], capture_output=True,
                                  text=True, check=True)
            peaks.append(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])
        results[mode] = {"peak_rss_mb_300": round(peaks[0]), "peak_rss_mb_3000": round(peaks[1]),
                         "ratio": round(peaks[1] / peaks[0], 3)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--input-size", type=int, default=126)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-frames", type=int, default=8, help="frames timed a round (DA-S and stream mode)")
    parser.add_argument("--memory", action="store_true", help="also peak RSS over 300 and 3000 frames at input 70")
    parser.add_argument("--memory-run", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        memory_run(args.memory_run[0], int(args.memory_run[1]))
        return
    torch.manual_seed(0)
    result = {"torch_threads": torch.get_num_threads(), **speed(args.input_size, args.rounds, args.stream_frames)}
    if args.memory:
        result["memory"] = memory()
    print(json.dumps(result, indent=2))
    for name, value in result["ms_per_frame"].items():
        print(f"{name:14s} {value:8.1f} ms/frame  {result['x DA-S'][name]:.2f}x DA-S", file=sys.stderr)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
