"""
Object storage against local files, in one run, on an S3 server on this machine (moto's, 127.0.0.1):

  1. the pipeline's fps from and to the bucket (s3:// in, s3:// out) against the same job on local files, the two
     alternated `--rounds` times (medians, and the ratio within each round);
  2. peak memory of a process decoding every frame of a large object (`--size-mb`, 500 by default: raw 720p video)
     through the pipeline's decoder, against the same file on local disk: the object is read with ranged GETs and
     one read-ahead block, so memory must not grow with its size.

    .venv/bin/python benchmarks/object_storage.py [--frames 96] [--input-size 266] [--rounds 3] [--size-mb 500]

Goals (issue 37): S3 / local fps >= 0.9 (the transfers are a small part of a frame's cost); peak memory reading the
object within 100 MB of reading the local file, far below its size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.object_store import ObjectStore, set_session_environment  # noqa: E402

set_session_environment()  # (before Ray starts: its workers inherit the endpoint and credentials)

from pipeline.cluster.graph import DepthGraph  # noqa: E402
from pipeline.cluster.runtime import start_ray  # noqa: E402
from pipeline.jobs.file import process_video  # noqa: E402
from pipeline.sample_video import make_sample_clip  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402

# VmHWM, not ru_maxrss: a child's ru_maxrss counts the parent's size at the fork (this benchmark's, with Ray)
PEAK_MEMORY = """
import re, sys
sys.path.insert(0, {project!r})
from pipeline.stages.sources.video_decoder import VideoDecoder
def megabytes(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024
decoder = VideoDecoder({source!r}, threads=1)
before = megabytes("VmRSS")
frames = sum(len(batch) for batch in decoder.batches(4))
print(frames, before, megabytes("VmHWM"))
"""


def raw_video(path: Path, size_mb: int) -> Path:
    """Raw 1280 x 720 I420 frames in NUT (1.4 MB a frame): a large file that costs no encoding to make."""
    frame_bytes = 1280 * 720 * 3 // 2
    frames = size_mb * 2**20 // frame_bytes
    generator = np.random.default_rng(0)
    with av.open(str(path), "w", format="nut") as container:
        stream = container.add_stream("rawvideo", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        noise = generator.integers(0, 255, (720 * 3 // 2, 1280), dtype=np.uint8)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(noise, index, axis=1), format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def peak_memory_mb(source: str) -> tuple[int, int, int]:
    """(frames decoded, RSS once opened, peak RSS; in MB) of a fresh process decoding every frame of `source`."""
    script = PEAK_MEMORY.format(project=str(PROJECT), source=source)
    frames, opened, peak = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                                          cwd=PROJECT).stdout.split()
    return int(frames), int(opened), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--input-size", type=int, default=266)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=500)
    args = parser.parse_args()
    store = ObjectStore().start()
    work = Path(tempfile.mkdtemp(prefix="object_storage_bench_"))
    try:
        bucket = store.bucket("bench")
        clip = work / "clip.mp4"
        make_sample_clip(clip, width=1280, height=720, frames=args.frames, audio=True)
        source = store.put(clip, f"{bucket}/in/clip.mp4")
        settings = load_settings("cpu", {"model.random_weights": "vits", "model.input_size": args.input_size,
                                         "segments.count": 1})
        start_ray()
        graph = DepthGraph(settings)
        _ = graph.model_info
        process_video(graph, str(clip), str(work / "warm.mp4"))  # warm-up: actors, thread pools
        runs = {"local": [], "s3": []}
        for round_number in range(args.rounds):
            order = [("local", str(clip), str(work / "out.mp4")), ("s3", source, f"{bucket}/out/clip_depth.mp4")]
            for name, inp, out in order if round_number % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                summary = process_video(graph, inp, out)
                runs[name].append(summary["frames_out"] / (time.perf_counter() - started))
        graph.shutdown()
        ratios = [s3 / local for s3, local in zip(runs["s3"], runs["local"])]
        print(f"fps, 1280x720, {args.frames} frames, vits at {args.input_size}, random weights, this machine's CPUs:")
        print(f"  local -> local {statistics.median(runs['local']):6.2f} fps  (rounds: "
              f"{', '.join(f'{v:.2f}' for v in runs['local'])})")
        print(f"  s3 -> s3       {statistics.median(runs['s3']):6.2f} fps  (rounds: "
              f"{', '.join(f'{v:.2f}' for v in runs['s3'])})")
        print(f"  s3 / local     {statistics.median(ratios):6.3f}       (per round: "
              f"{', '.join(f'{r:.3f}' for r in ratios)})")

        big = raw_video(work / "big.nut", args.size_mb)
        size_mb = big.stat().st_size / 2**20
        big_url = store.put(big, f"{bucket}/in/big.nut")
        local_frames, local_opened, local_peak = peak_memory_mb(str(big))
        remote_frames, remote_opened, remote_peak = peak_memory_mb(big_url)
        assert local_frames == remote_frames, (local_frames, remote_frames)
        print(f"peak memory of a process decoding every frame ({remote_frames} raw 720p frames, {size_mb:.0f} MB):")
        print(f"  local file: {local_peak} MB ({local_peak - local_opened} MB more than once opened)")
        print(f"  s3 object:  {remote_peak} MB ({remote_peak - remote_opened} MB more than once opened); "
              f"s3 - local: {remote_peak - local_peak} MB")
        print(json.dumps({"fps_local": runs["local"], "fps_s3": runs["s3"], "ratio_median": statistics.median(ratios),
                          "object_mb": round(size_mb), "peak_mb_local": local_peak, "peak_mb_s3": remote_peak,
                          "opened_mb_local": local_opened, "opened_mb_s3": remote_opened}))
    finally:
        store.stop()
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        work.rmdir()


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
