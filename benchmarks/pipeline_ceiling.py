"""
The pipeline's own ceiling: the whole Ray pipeline, file to file, with an instant stand-in for the model.

    .venv/bin/python benchmarks/pipeline_ceiling.py [--frames 480] [--batch-size 8] [--width 1280 --height 720]

Everything but the network is real: decode actor, object store, model actor (input preparation at 518 px short
side, output at the model's resolution and back), sink (default smoother, tracked colour range, inferno colour
straight to YUV, libx264 ultrafast), audio-less MP4 out. The stand-in returns a cheap depth-like map (a blurred
luminance) at the model's resolution, so what is measured is what a GPU node pays per frame outside its GPU.

Prints, in one run, for frames sent as RGB (as before) and as I420 (the default): fps for one stream and for two
concurrent streams on the same model actor (start to end, and steady state from the first written frame), and CPU ms
per frame of each actor (decode, model actor, sink and its smooth / render / encode steps) and of the driver, with
batches of 8 as on a GPU node. The model actor's input preparation (I420 -> RGB, uint8 -> float, bicubic resize,
normalisation) and the stand-in's arithmetic are device work, done by the GPU on a GPU node: they are counted apart,
not in the total; so is the CPU of Ray's own raylet and GCS, which no actor's rusage includes.
Goals on the 2-core build machine: one stream >= 60 fps; CPU outside the model <= 15 ms per 720p frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import DepthPredictor, PredictorOptions, make_config  # noqa: E402
from pipeline.cluster.graph import DepthGraph  # noqa: E402
from pipeline.cluster.ray_calls import cpu_seconds, one_thread_each  # noqa: E402
from pipeline.cluster.runtime import start_ray  # noqa: E402
from pipeline.jobs.file import process_video  # noqa: E402
from pipeline.sample_video import make_sample_clip  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from pipeline.stages.inference.depth_worker import DepthWorker  # noqa: E402
from pipeline.stages.render.smoothing import make_smoother  # noqa: E402
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions  # noqa: E402
from pipeline.stages.sources.video_decoder import VideoDecoder  # noqa: E402


class InstantDepth(nn.Module):
    """Stand-in network: normalised B x 3 x h x w in, B x h x w "depth" out: a 4x-pooled luminance upsampled
    bilinearly, as the real head's last step upsamples its features (smooth surfaces, soft edges). Nearest-neighbour
    upsampling, used before, made 4-pixel steps all over the map: nothing like depth, and costlier to encode."""

    def __init__(self):
        super().__init__()
        self.config = make_config("vits")
        self.offset = nn.Parameter(torch.ones(1))  # a parameter, so the predictor finds the device

    def forward(self, image_bchw: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(image_bchw.mean(1, keepdim=True), 4)
        return F.interpolate(pooled, size=image_bchw.shape[-2:], mode="bilinear", align_corners=True)[:, 0] + 3 \
            + self.offset


def build_instant_depth() -> nn.Module:
    return InstantDepth()


def run_streams(graph: DepthGraph, clips: list[Path], folder: Path) -> tuple[float, list[dict], float]:
    """Process the clips at once (one thread each); returns (wall seconds, summaries, driver CPU seconds)."""
    summaries: list[dict | None] = [None] * len(clips)

    def one(index: int) -> None:
        summaries[index] = process_video(graph, str(clips[index]), str(folder / f"out_{len(clips)}_{index}.mp4"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clips))]
    cpu_before, started = cpu_seconds(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, summaries, cpu_seconds() - cpu_before


RAY_SYSTEM_PROCESSES = ("raylet", "gcs_server")  # the object store lives in the raylet


def ray_system_cpu_s() -> float:
    """CPU seconds used so far by this machine's Ray system processes (what moves objects between the actors)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().rsplit(")", 1)
        except OSError:  # the process ended
            continue
        if name.split("(", 1)[1] in RAY_SYSTEM_PROCESSES:
            total += sum(int(value) for value in fields.split()[11:13])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def model_actor_usage(graph: DepthGraph) -> dict:
    usages = ray.get([actor.usage.remote() for actor in graph.model_actors])
    return {key: sum(u[key] for u in usages) for key in ("cpu_s", "predict_cpu_s", "frames")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=480)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--batch-size", type=int, default=8, help="8: the default on a GPU node")
    parser.add_argument("--layouts", nargs="+", default=["rgb24", "auto"], choices=["rgb24", "auto"],
                        help="how frames travel to the model: RGB as before, I420 where the video is (auto)")
    args = parser.parse_args()
    start_ray(num_cpus=2)
    folder = Path(tempfile.mkdtemp(prefix="ceiling_"))
    clips = [make_sample_clip(folder / f"clip{i}.mp4", width=args.width, height=args.height, frames=args.frames,
                              rate=30) for i in range(2)]
    print(f"{args.width}x{args.height}, {args.frames} frames per stream, instant stand-in model, default "
          f"smoother, colour output, batch {args.batch_size}, torch {torch.__version__}")
    for layout in args.layouts:
        # As on a GPU node: the whole batch through the network at once
        settings = load_settings("default", {"model.device": "cpu", "batching.batch_size": args.batch_size,
                                                          "batching.network_batch": args.batch_size,
                                                          "batching.frame_layout": layout})
        graph = DepthGraph(settings, builder=build_instant_depth)
        try:
            process_video(graph, str(clips[0]), str(folder / "warm_up.mp4"))  # actor start-up and first-call costs
            for streams in (1, 2):
                print(f"\nframes as {LAYOUT_NAMES[layout]}, ", end="")
                measure(graph, clips[:streams], folder)
            if layout == "auto":
                encoder_thread_in_turn(graph, clips[0], folder)
        finally:
            graph.shutdown()
    stages_alone(clips[0], folder, args.batch_size)


def encoder_thread_in_turn(graph: DepthGraph, clip: Path, folder: Path) -> None:
    """One stream with the sink's encoder in the sink's thread and on its own (output.encoder_thread), in turn, three
    times each: start-to-end and steady-state fps, and the medians' ratio."""
    fps: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for encoder_thread in (False, True) * 3:
        settings = dataclasses.replace(graph.settings, output=dataclasses.replace(graph.settings.output,
                                                                                  encoder_thread=encoder_thread))
        _, [summary], _ = run_streams(graph.with_settings(settings), [clip], folder)
        fps[encoder_thread].append((summary["fps"], summary["fps_steady"]))
    print("\none stream, the sink's encoder in its thread / on a thread of its own (three runs each, in turn):")
    for flag, runs in fps.items():
        print(f"  encoder_thread {str(flag).lower():5s}: " + ", ".join(f"{a:.1f} ({b:.1f})" for a, b in runs)
              + " fps start to end (steady)")
    medians = {flag: statistics.median(a for a, _ in runs) for flag, runs in fps.items()}
    print(f"  median start to end: {medians[True] / medians[False]:.2f}x with the encoder thread")


def stages_alone(clip: Path, folder: Path, batch_size: int) -> None:
    """The decode and sink stages of one stream in this process, without Ray and with no other work on the machine:
    what each costs on a core of its own (in the runs above, four busy processes share two cores)."""
    one_thread_each()
    decoder = VideoDecoder(str(clip), threads=1)
    started = time.process_time()
    for _ in decoder.batches(batch_size):  # each batch dropped, as the decode actor's is once it is in the store
        pass
    decode_s = time.process_time() - started
    decoder = VideoDecoder(str(clip), threads=1)
    batches = list(decoder.batches(batch_size))
    worker = DepthWorker(DepthPredictor(build_instant_depth(), PredictorOptions()))
    depth = [worker.infer(batch, "float16") for batch in batches]
    frames = decoder.frames_decoded
    print(f"\nalone, no Ray ({decoder.layout}): decode {decode_s * 1e3 / frames:.2f} ms CPU per frame (one thread)")
    # The sink's cap on one stream: wall-clock fps with everything in one thread, and with the encoder on its own
    # (encoder_thread, the default), in turn, twice each
    wall: dict[bool, list[float]] = {False: [], True: []}
    for encoder_thread in (False, True, False, True):
        sink = DepthSink(str(folder / "alone.mp4"), decoder.info, RenderOptions(encoder_thread=encoder_thread),
                         make_smoother("default"))
        started, cpu_started = time.perf_counter(), time.process_time()
        for depth_batch, frame_batch in zip(depth, batches):
            sink.write(depth_batch, frame_batch)
        sink.close()
        wall[encoder_thread].append(frames / (time.perf_counter() - started))
        sink_s = time.process_time() - cpu_started
        print(f"  sink, encoder {'on its own thread' if encoder_thread else 'in the same thread'}: "
              f"{wall[encoder_thread][-1]:6.1f} fps wall, {sink_s * 1e3 / frames:.2f} ms CPU per frame ("
              + ", ".join(f"{stage} {seconds * 1e3 / frames:.2f}" for stage, seconds in sink.stage_cpu_s.items())
              + ")")
    print(f"  one stream's sink cap, encoder thread / one thread: "
          f"{max(wall[True]) / max(wall[False]):.2f}x (best of two each)")


LAYOUT_NAMES = {"rgb24": "RGB (before)", "auto": "I420 (frame_layout: auto)"}


def measure(graph: DepthGraph, clips: list[Path], folder: Path) -> None:
    model_before, ray_before, machine_before = model_actor_usage(graph), ray_system_cpu_s(), machine_busy_s()
    seconds, summaries, driver_cpu = run_streams(graph, clips, folder)
    model_after, ray_after, machine_after = model_actor_usage(graph), ray_system_cpu_s(), machine_busy_s()
    frames = sum(s["frames_out"] for s in summaries)
    each = ", ".join(f"{s['fps']:.1f}" for s in summaries)
    steady = ", ".join(f"{s['fps_steady']:.1f}" for s in summaries)
    print(f"{len(clips)} stream(s): {frames / seconds:6.1f} fps in all ({each} fps each, start to end; "
          f"{steady} steady state)")
    costs: dict[str, float] = {}
    for summary in summaries:
        for stage, ms in summary["cpu_ms_per_frame"].items():
            costs[stage] = costs.get(stage, 0.0) + ms * summary["frames_out"] / frames
    used = {key: (model_after[key] - model_before[key]) * 1e3 / frames for key in ("cpu_s", "predict_cpu_s")}
    costs["model actor: Ray, casts, copies"] = used["cpu_s"] - used["predict_cpu_s"]
    costs["driver"] = driver_cpu * 1e3 / frames
    for stage, ms in costs.items():
        print(f"  {stage:36s} {ms:6.2f} ms CPU per frame")
    total = sum(ms for stage, ms in costs.items() if not stage.startswith("sink: "))
    print(f"  {'total outside the model':36s} {total:6.2f} ms  (goal <= 15)")
    print(f"  {'(+ input preparation and stand-in':36s} {used['predict_cpu_s']:6.2f} ms: on a GPU node the GPU does it)")
    print(f"  {'(+ Ray system: raylet, GCS':36s} {(ray_after - ray_before) * 1e3 / frames:6.2f} ms: the object store's "
          f"side of the hand-overs)")
    busy, every = (after - before for after, before in zip(machine_after, machine_before))
    print(f"  machine busy {busy / every:.0%} of {os.cpu_count()} cores")
    print(f"  peak RSS MB: {summaries[0]['peak_rss_mb']}")

if __name__ == "__main__":
    main()
