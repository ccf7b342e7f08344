"""
What one driver costs per frame and per video, and what crosses nodes, on a local multi-node Ray cluster.

    .venv/bin/python benchmarks/cluster_scale.py [--nodes 1 2 4] [--videos 4] [--frames 48]

For each cluster size: `ray.cluster_utils.Cluster` with a head node without CPUs and N worker nodes of one CPU, a
model actor on each (an instant stand-in network: what is measured is the pipeline around the model), videos of
64 x 48 run as a batch job runs them (several at once on one graph). Three runs, each on the same warm graph:
V videos of F frames, V of 2F, 2V of F, in turn, three times (medians). The driver's CPU (this process: all its threads) per frame is the second
minus the first over the extra frames, per video the third minus the first over the extra videos, less their frames:
start-up and Ray's idle threads cancel out. Also: bytes of frames and depth that crossed nodes (from the streams' own
counts), and frames per second in all. On this 2-core machine every node shares the same two cores: fps here says
nothing of a real cluster's; the driver's cost and the bytes are what carry over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from benchmarks.pipeline_ceiling import build_instant_depth  # noqa: E402
from pipeline.cluster.graph import DepthGraph  # noqa: E402
from pipeline.cluster.ray_calls import cpu_seconds  # noqa: E402
from pipeline.cluster.runtime import start_ray  # noqa: E402
from pipeline.jobs.file import process_video  # noqa: E402
from pipeline.sample_video import make_sample_clip  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402


def run_videos(graph: DepthGraph, clip: Path, count: int, folder: Path, in_flight: int) -> tuple[float, float, list]:
    """`count` videos of `clip`, `in_flight` at a time; (driver CPU s, wall s, summaries)."""
    summaries: list = []
    pending = list(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop()
            summaries.append(process_video(graph, str(clip), str(folder / f"out_{count}_{index}.mp4")))

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    cpu, wall = cpu_seconds(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return cpu_seconds() - cpu, time.perf_counter() - wall, summaries


def measure(nodes: int, videos: int, frames: int, folder: Path, rounds: int) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    start_ray(cluster.address)
    short = make_sample_clip(folder / f"short_{frames}.mp4", width=64, height=48, frames=frames, rate=30)
    long = make_sample_clip(folder / f"long_{frames}.mp4", width=64, height=48, frames=2 * frames, rate=30)
    settings = load_settings(None, {"model.device": "cpu", "ray.model_actors": nodes, "model.input_size": 70,
                                    "batching.batch_size": 8, "batching.network_batch": 8, "ray.max_streams": 2 * nodes})
    graph = DepthGraph(settings, builder=build_instant_depth)
    per_frame, per_video, fps, across, used = [], [], [], [], set()
    try:
        run_videos(graph, short, 2 * nodes, folder, 2 * nodes)  # warm: every node's stream actors started
        for _ in range(rounds):  # the three runs in turn, `rounds` times: medians
            base_cpu, base_wall, base = run_videos(graph, short, videos, folder, 2 * nodes)
            long_cpu, _, _ = run_videos(graph, long, videos, folder, 2 * nodes)
            more_cpu, _, _ = run_videos(graph, short, 2 * videos, folder, 2 * nodes)
            per_frame.append((long_cpu - base_cpu) / (videos * frames))
            per_video.append((more_cpu - base_cpu - per_frame[-1] * videos * frames) / videos)
            total_frames = sum(s["frames_out"] for s in base)
            fps.append(total_frames / base_wall)
            across.append(sum(s["bytes_across_nodes"] for s in base) / total_frames)
            used |= {n for s in base for n in s["nodes"]}
    finally:
        graph.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return {"nodes": nodes, "driver_ms_per_frame": statistics.median(per_frame) * 1e3,
            "driver_ms_per_video": statistics.median(per_video) * 1e3, "bytes_across_per_frame": max(across),
            "fps": statistics.median(fps), "nodes_used": len(used)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    folder = Path(tempfile.mkdtemp(prefix="cluster_scale_"))
    print(f"{args.videos} / {2 * args.videos} videos of {args.frames} / {2 * args.frames} frames (64 x 48), instant "
          f"stand-in model, a model actor per worker node")
    print(f"{'worker nodes':>12s} {'driver ms/frame':>16s} {'driver ms/video':>16s} {'bytes across/frame':>19s} "
          f"{'fps in all':>10s} {'nodes used':>10s}")
    for nodes in args.nodes:
        row = measure(nodes, args.videos, args.frames, folder, args.rounds)
        print(f"{row['nodes']:12d} {row['driver_ms_per_frame']:16.3f} {row['driver_ms_per_video']:16.1f} "
              f"{row['bytes_across_per_frame']:19.0f} {row['fps']:10.1f} {row['nodes_used']:10d}", flush=True)
    print("goals: driver <= 0.05 ms per frame, <= 60 ms per video; 0 bytes across nodes when every node has a model "
          "actor")


if __name__ == "__main__":
    main()
