"""
Live latency: a GStreamer RTSP camera -> the pipeline -> an RTSP server (FFmpeg's listen mode), all on 127.0.0.1.

    .venv/bin/python benchmarks/live_latency.py [--seconds 20] [--video-model]

Two runs, one after the other: a camera the model keeps up with (160 x 96 at 15 fps, vits at input size 70) and one
it cannot (320 x 192 at 30 fps, input size 196: about a third of the camera's rate on 2 cores). Each runs for
`--seconds` after its first published frame, is stopped with SIGTERM, and prints its JSON summary's figures:
frames in / out, dropped, latency from a frame's arrival to its publication (p50, p95, max). `--video-model` runs
each case a second time with Video Depth Anything Small (random weights in the released layout, its streaming mode)
beside Depth Anything Small. Needs GStreamer's RTSP server under the system Python (see tests/rtsp_camera.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.live_peers import Camera, Receiver  # noqa: E402

CASES = {
    "keeping up (160x96 @ 15 fps, input 70)": ((160, 96, 15), 70),
    "overloaded (320x192 @ 30 fps, input 196)": ((320, 192, 30), 196),
}


def run_case(size: tuple[int, int, int], input_size: int, seconds: float,
             model_flags: tuple[str, ...] = ("--random-weights", "vits")) -> dict:
    camera, receiver = Camera(*size), Receiver().start()
    camera.start()
    process = subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), camera.url, "-o", receiver.url,
                                *model_flags, "--input-size", str(input_size), "--batch-size", "1"],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not receiver.frames:
            if process.poll() is not None:
                raise SystemExit(process.stderr.read())
            time.sleep(0.1)
        time.sleep(seconds)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        receiver.stop()
        camera.stop()
    return json.loads(stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--video-model", action="store_true", help="each case also with Video Depth Anything Small")
    args = parser.parse_args()
    models = {"DA-S": ("--random-weights", "vits")}
    with tempfile.TemporaryDirectory() as folder:
        if args.video_model:
            import torch

            from model.random_weights import random_video_model
            from tests.test_video_depth_anything import official_layout

            checkpoint = Path(folder) / "video_depth_anything_vits.pth"
            torch.save(official_layout(random_video_model("vits")), checkpoint)
            models["VDA-S stream"] = ("--checkpoint", str(checkpoint))
        print("| case | model | frames in | out | dropped | latency p50 | p95 | max |\n"
              "|---|---|---|---|---|---|---|---|")
        for name, (size, input_size) in CASES.items():
            for model, flags in models.items():
                summary = run_case(size, input_size, args.seconds, flags)
                latency = summary["latency_ms"]
                print(f"| {name} | {model} | {summary['frames_in']} | {summary['frames_out']} | {summary['dropped']} | "
                      f"{latency['p50']:.0f} ms | {latency['p95']:.0f} ms | {latency['max']:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
