"""
The README's picture: a frame of the synthetic test scene (benchmarks/temporal_data.py), its depth as a per-frame
model gives it (the known depth with per-frame scale, shift and noise), and that depth after the pipeline's default
smoother, each coloured by the pipeline's own colouriser. (No Depth-Anything weights can be downloaded on the build
machines, so the picture shows the pipeline's stages on a scene whose depth is known, not the network's output.)

    .venv/bin/python docs/make_picture.py [--out docs/frame_and_depth.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.temporal_data import make_sequence  # noqa: E402
from pipeline.stages.render.colorize import DepthColorizer  # noqa: E402
from pipeline.stages.render.smoothing import make_smoother  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("frame_and_depth.png")))
    parser.add_argument("--frame", type=int, default=40)
    args = parser.parse_args()
    sequence = make_sequence(height=120, width=160, frames_per_shot=48, seed=0)
    smoother, raw_colour, smooth_colour = make_smoother(), DepthColorizer("inferno"), DepthColorizer("inferno")
    for index in range(args.frame + 1):
        raw = raw_colour(sequence.observed[index])
        smoothed = smooth_colour(np.asarray(smoother.update(sequence.observed[index], sequence.rgb[index])))
    panels = [sequence.rgb[args.frame], raw, smoothed]
    strip = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255) for p in panels], axis=1)[:, :-4]
    strip = cv2.resize(strip, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(args.out, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({strip.shape[1]} x {strip.shape[0]})")


if __name__ == "__main__":
    main()
