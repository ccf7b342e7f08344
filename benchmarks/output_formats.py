"""
What each output format costs the sink, per frame: the video formats against the frame folders (EXR, 16-bit PNG).

    .venv/bin/python benchmarks/output_formats.py [--frames 60] [--width 1280 --height 720]

Runs the real sink (`DepthSink`, no Ray, no model) on one thread, encoder inline, on depth-like maps at the model's
resolution for a 720p frame (518 x 924: a blurred, moving gradient, smooth as real depth is) with the default smoother
off, so that what differs between the rows is the output alone: resize to the frame, render or quantise, encode or
write. Prints, in one run, CPU ms per frame, the ratio to the default colour video, and bytes written per frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stages.frames import DepthBatch, FrameBatch, VideoInfo  # noqa: E402
from pipeline.stages.render.smoothing import make_smoother  # noqa: E402
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions  # noqa: E402
from pipeline.stages.sinks.image_sequence_writer import path_size  # noqa: E402

FORMATS = [("color", ".mp4"), ("gray16", ".mkv"), ("exr", ""), ("png16", "")]


def depth_maps(frames: int, height: int, width: int) -> list[np.ndarray]:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    maps = []
    for t in range(frames):
        depth = 1.0 + (rows / height) * 3 + 0.5 * np.sin((cols + 4 * t) / 60.0)
        maps.append(cv2.GaussianBlur(depth, (0, 0), 3).astype(np.float32))
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    model_hw = (518, round(518 * args.width / args.height / 14) * 14)
    maps = depth_maps(args.frames, *model_hw)
    info = VideoInfo("synthetic", args.width, args.height, Fraction(30), Fraction(1, 30), 0, args.frames, False, "raw")
    pixels = np.zeros((1, args.height, args.width, 3), np.uint8)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for depth_format, suffix in FORMATS:
            output = Path(folder) / f"out_{depth_format}{suffix}"
            render = RenderOptions(depth_format=depth_format, encoder_thread=False, copy_audio=False)
            sink = DepthSink(str(output), info, render, make_smoother("none"))
            started = time.process_time()
            for index, depth in enumerate(maps):
                sink.write(DepthBatch(index, [index], info.time_base, depth[None]),
                           FrameBatch(index, [index], info.time_base, pixels))
            sink.close()
            cpu_ms = (time.process_time() - started) * 1e3 / args.frames
            results[depth_format] = (cpu_ms, path_size(output) / args.frames)
    base = results["color"][0]
    print(f"{args.frames} frames at {args.width}x{args.height} (depth {model_hw[1]}x{model_hw[0]}), one thread:")
    print(f"{'format':8s} {'CPU ms/frame':>13s} {'x color':>8s} {'kB/frame':>9s}")
    for depth_format, (cpu_ms, size) in results.items():
        print(f"{depth_format:8s} {cpu_ms:13.2f} {cpu_ms / base:8.2f} {size / 1e3:9.1f}")


if __name__ == "__main__":
    main()
