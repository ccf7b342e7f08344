"""
Segments of one long video at once: fps with 1, 2 and 4 segments, on a setting where decode and encode weigh.

    .venv/bin/python benchmarks/segments_scaling.py [--frames 600] [--input-size 70] [--warmup-seconds 1]

A 720p clip (a keyframe every second), vits with random weights at a small model input (so the model is not all
the work), the default smoother, colour output; one DepthGraph (one set of model actors) for all runs. Prints
fps from start to joined output for each segment count, and the speed-up over one segment, in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cluster.graph import DepthGraph  # noqa: E402
from pipeline.cluster.runtime import start_ray  # noqa: E402
from pipeline.jobs.file import process_video  # noqa: E402
from pipeline.sample_video import make_sample_clip  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--input-size", type=int, default=70)
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument("--counts", default="1,2,4")
    args = parser.parse_args()
    start_ray()
    folder = Path(tempfile.mkdtemp(prefix="segments_scaling_"))
    clip = make_sample_clip(folder / "clip720.mp4", width=1280, height=720, frames=args.frames, rate=30,
                            keyframe_interval=30)
    settings = load_settings("default", {
        "model.random_weights": "vits", "model.input_size": args.input_size,
        "segments.warmup_seconds": args.warmup_seconds,
    })
    graph = DepthGraph(settings)
    try:
        process_video(graph, str(clip), str(folder / "warm_up.mp4"))
        print(f"720p, {args.frames} frames, vits at input {args.input_size}, default smoother, colour, "
              f"warm-up {args.warmup_seconds:g} s per segment, {graph.plan.model_actors} model actor(s)")
        base = None
        for count in (int(c) for c in args.counts.split(",")):
            started = time.perf_counter()
            summary = process_video(graph, str(clip), str(folder / f"out_{count}.mp4"), segments=count)
            fps = summary["frames_out"] / (time.perf_counter() - started)
            base = base or fps
            print(f"  {count} segment(s): {fps:6.1f} fps  ({fps / base:.2f}x one segment; "
                  f"{len(summary.get('segments', [1]))} streams)")
    finally:
        graph.shutdown()


if __name__ == "__main__":
    main()
