"""
Many cameras: K cameras in one job (`run_pipeline.py live CAMERAS.yaml`) against K single-camera processes
(`run_pipeline.py URL --record FILE`, each with its own Ray and model), all on 127.0.0.1. The job has one model
actor per core, for any number of cameras (on a CPU a model actor uses about one core at a small input).

    .venv/bin/python benchmarks/live_cameras.py [--cameras 1 2 4 8] [--seconds 20] [--input-size 70]

Each camera is a GStreamer RTSP server (tests/rtsp_camera.py, 96 x 64 at 15 fps, a moving pattern); depth is recorded
to a file (the same encoder work in both ways). Each run lasts `--seconds` from the moment every camera has given a
depth frame, is stopped with SIGTERM, and its JSON summaries give: depth frames per second per camera and in all,
p95 latency (arrival to written, the worst camera's), frames dropped, frames per network batch (the one job). Memory
is the proportional set size (PSS: shared pages split between the processes that share them) of every process
started for the run (drivers, Ray, model actors, camera actors), sampled every second, its peak. Needs GStreamer's
RTSP server under the system Python.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pipeline.cluster.runtime import _descendant_pids  # noqa: E402
from tests.live_peers import Camera  # noqa: E402

CAMERA_SIZE = (96, 64, 15)


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class MemorySampler:
    """The peak PSS of some processes and all their descendants, sampled every second on a thread."""

    def __init__(self, roots: list[int]):
        self.roots, self.peak_mb = roots, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            pids = [pid for root in self.roots for pid in (root, *_descendant_pids(root))]
            self.peak_mb = max(self.peak_mb, pss_mb(pids))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


EXTRA_FLAGS: list[str] = []  # --config, from the command line


def model_flags(input_size: int) -> list[str]:
    return ["--random-weights", "vits", "--input-size", str(input_size), "--batch-size", "8", *EXTRA_FLAGS]


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def one_job(cameras: list[Camera], folder: Path, seconds: float, input_size: int) -> dict:
    """K cameras in one job: its summary, and the peak memory."""
    file = folder / "cameras.yaml"
    file.write_text(json.dumps({"cameras": [
        {"name": f"cam{i}", "input": camera.url, "record": str(folder / f"job_cam{i}.mp4")}
        for i, camera in enumerate(cameras)]}))
    # On a CPU, one model actor's torch uses about one core at this small input (its matrices are too small for
    # more): the job has one model actor per core, whatever the number of cameras, as a CPU node would be set up
    # once (a GPU node: one a GPU)
    actors = str(os.cpu_count() or 1)
    process = subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), "live", str(file), "--control",
                                "127.0.0.1:0", *model_flags(input_size), "--model-actors", actors], cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler([process.pid])
    base = None
    while base is None:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise SystemExit("the job ended before it listened")
        if "control API at " in line:
            base = line.split("control API at ")[1].split()[0]
    threading.Thread(target=process.stderr.read, daemon=True).start()  # (drained: a full pipe would block it)

    def all_flowing() -> bool:
        import urllib.request

        with urllib.request.urlopen(base + "/cameras", timeout=10) as answer:
            listed = json.loads(answer.read())["cameras"]
        return len(listed) == len(cameras) and all(c.get("frames_out", 0) > 0 for c in listed)

    wait_until(all_flowing, 180, "every camera's first depth frame")
    time.sleep(seconds)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    peak = sampler.stop()
    summary = json.loads(stdout)
    return {"cameras": list(summary["cameras"].values()), "batches": summary["model_batches"], "memory_mb": peak}


def separate_processes(cameras: list[Camera], folder: Path, seconds: float, input_size: int) -> dict:
    """K single-camera processes, each with its own Ray and model: their summaries, and the peak memory of all."""
    processes = []
    for i, camera in enumerate(cameras):
        recording = folder / f"alone_cam{i}.mp4"
        processes.append((recording, subprocess.Popen(
            [sys.executable, str(PROJECT / "run_pipeline.py"), camera.url, "--record", str(recording),
             *model_flags(input_size)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)))
    sampler = MemorySampler([process.pid for _, process in processes])
    # Flowing once each recording's temporary file has grown past its header (the first frames are written)
    wait_until(lambda: all(any(p.stat().st_size > 4096 for p in folder.glob(f".{r.stem}*")) or r.exists()
                           for r, _ in processes), 300, "every process's first depth frames")
    time.sleep(seconds)
    for _, process in processes:
        process.send_signal(signal.SIGTERM)
    summaries = [json.loads(process.communicate(timeout=120)[0]) for _, process in processes]
    return {"cameras": summaries, "batches": None, "memory_mb": sampler.stop()}


def figures(run: dict) -> dict:
    cameras = run["cameras"]
    fps = [c["fps_out"] for c in cameras]
    return {"fps_per_camera": round(sum(fps) / len(fps), 2), "fps_all": round(sum(fps), 1),
            "p95_ms": max(c["latency_ms"]["p95"] or 0 for c in cameras),
            "dropped": sum(c["dropped"] for c in cameras), "frames_in": sum(c["frames_in"] for c in cameras),
            "mean_frames": (run["batches"] or {}).get("mean_frames"), "memory_mb": round(run["memory_mb"]),
            "camera_cpu_ms": round(sum(c["cpu_ms_per_frame"] for c in cameras) / len(cameras), 2)
            if all(c.get("cpu_ms_per_frame") for c in cameras) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--input-size", type=int, default=70)
    parser.add_argument("--config", help="a settings preset for both ways (live.in_flight, live.batch_wait_ms, ...)")
    parser.add_argument("--only", choices=("one_job", "processes"), help="run one way only")
    args = parser.parse_args()
    if args.config:
        EXTRA_FLAGS.extend(["--config", args.config])
    ways = [args.only] if args.only else ["one_job", "processes"]
    run_way = {"one_job": one_job, "processes": separate_processes}
    results = {}
    for count in args.cameras:
        cameras = [Camera(*CAMERA_SIZE) for _ in range(count)]
        for camera in cameras:
            camera.start()
        try:
            with tempfile.TemporaryDirectory(prefix="live_cameras_") as folder:
                results[count] = {way: figures(run_way[way](cameras, Path(folder), args.seconds, args.input_size))
                                  for way in ways}
        finally:
            for camera in cameras:
                camera.stop()
        print(json.dumps({"cameras": count, **results[count]}), flush=True)
    first = min(results)
    print("\n| cameras | way | fps per camera | fps in all | p95 latency | dropped / in | frames per batch | memory |"
          " memory per added camera | a camera's CPU per frame |\n|---|---|---|---|---|---|---|---|---|---|")
    for count, result in results.items():
        for way, row in result.items():
            label = "one job" if way == "one_job" else f"{count} process{'es' if count > 1 else ''}"
            added = "" if count == first else \
                f"{(row['memory_mb'] - results[first][way]['memory_mb']) / (count - first):.0f} MB"
            print(f"| {count} | {label} | {row['fps_per_camera']} | {row['fps_all']} | {row['p95_ms']:.0f} ms | "
                  f"{row['dropped']} / {row['frames_in']} | {row['mean_frames'] or '-'} | {row['memory_mb']} MB | "
                  f"{added} | {str(row['camera_cpu_ms']) + ' ms' if row['camera_cpu_ms'] else '-'} |")
    if len(ways) < 2:
        return
    single_process = results[first]["processes"]["memory_mb"] / first
    print(f"\nratios taken in this run, one job / K processes: fps in all, p95 latency; and the job's memory per "
          f"added camera against one single-camera process ({single_process:.0f} MB):")
    for count, result in results.items():
        job, alone = result["one_job"], result["processes"]
        added = (job["memory_mb"] - results[first]["one_job"]["memory_mb"]) / (count - first) if count != first \
            else None
        print(f"  {count} cameras: fps {job['fps_all'] / alone['fps_all']:.2f}x, p95 "
              f"{job['p95_ms'] / max(alone['p95_ms'], 1):.2f}x" +
              (f", memory per added camera {added / single_process:.2f} of a process" if added is not None else ""))

if __name__ == "__main__":
    main()
