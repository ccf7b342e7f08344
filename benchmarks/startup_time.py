"""
Where the start-up of a short run goes: importing, Ray's start, the actors, the run, Ray's shutdown.

    .venv/bin/python benchmarks/startup_time.py [--frames 10]

Runs the same steps as `run_pipeline.py` (vits random weights, input size 70, a 160x96 clip) and prints seconds per
step and in total. The goal: cut what can be cut; a bad input or setting must fail in about a second
(the CLI checks everything it can before Ray starts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

started = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cluster.graph import DepthGraph  # noqa: E402
from pipeline.cluster.runtime import start_ray, stop_ray  # noqa: E402
from pipeline.jobs.file import process_video  # noqa: E402
from pipeline.sample_video import make_sample_clip  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    steps = {"import (torch, ray, av)": time.monotonic() - started}
    with tempfile.TemporaryDirectory() as folder:
        source = make_sample_clip(Path(folder) / "clip.mp4", width=160, height=96, frames=args.frames)
        settings = load_settings(None, {"model.random_weights": "vits", "model.input_size": 70})
        for name, step in (
            ("ray.init", lambda: start_ray()),
            ("DepthGraph (model actors start loading)", lambda: steps.__setitem__("graph", DepthGraph(settings))),
            ("process (decode + sink actors, wait for models, run)",
             lambda: process_video(steps["graph"], str(source), str(Path(folder) / "depth.mp4"))),
            ("shutdown", lambda: (steps.pop("graph").shutdown(), stop_ray())),
        ):
            begun = time.monotonic()
            step()
            steps[name] = time.monotonic() - begun
    for name, seconds in steps.items():
        print(f"{name:55s} {seconds:6.2f} s")
    print(f"{'total (this process)':55s} {time.monotonic() - started:6.2f} s")


if __name__ == "__main__":
    main()
