#!/usr/bin/env python3
"""
Turn a video into a depth video, streaming through Ray actors (decode -> infer -> smooth -> encode).

    python run_pipeline.py INPUT -o OUTPUT                     # Depth-Anything small from the Hugging Face Hub
    python run_pipeline.py INPUT -o OUTPUT --model large       # or base, v2-small, ...; or --checkpoint PATH|REPO
    python run_pipeline.py --random-weights vits               # a sample clip, random weights: plumbing only
    python run_pipeline.py batch INPUTS... --output-dir DIR     # many videos (see: run_pipeline.py batch --help)
    python run_pipeline.py live CAMERAS.yaml                   # many cameras (see: run_pipeline.py live --help)
    python run_pipeline.py export --checkpoint X.pth -o X.onnx  # the network as ONNX (see: ... export --help)

Prints a JSON summary on stdout at the end; errors are one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _stopped_while_importing(signum, frame):
    """Ctrl-C / SIGTERM during the imports below (torch, a second or two): one line and the usual status, not a
    KeyboardInterrupt traceback from deep inside an import. Nothing has started yet, so there is nothing to clean."""
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    print(f"error: {what} while starting; nothing was written", file=sys.stderr, flush=True)
    os._exit(130 if signum == signal.SIGINT else 143)


if __name__ == "__main__":
    for _number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_number, _stopped_while_importing)

from model import VARIANTS, CheckpointError, check_checkpoint
from model.onnx_network import check_onnx_file, is_onnx_file
from model.hub import DEFAULT_MODEL, MODEL_NAMES, NON_COMMERCIAL, resolve_checkpoint
from pipeline.errors import PipelineError, one_line
from pipeline.formats import DEPTH_FORMATS
from pipeline.jobs.outputs import check_output_folder, check_summary_path
from pipeline.settings import load_settings
from pipeline.stages.inference.depth_worker import choose_runtime
from pipeline.urls import is_live_url, is_publish_url, redact

SAMPLE_INPUT = Path("outputs/sample_input.mp4")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("error: ...") and exit status 2, like every other error here."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="video file or URL, or an image sequence: a folder, 'frames/*.png' or "
                                                 "frames/%%06d.png; in object storage too (s3://bucket/clip.mp4, "
                                                 "s3://bucket/frames/); omit for a generated sample clip")
    parser.add_argument("-o", "--output", help="output video (.mp4/.mkv; .mkv for gray16), or a folder for exr and "
                                               "png16, or an object (s3://bucket/out/clip_depth.mp4); default: "
                                               "INPUT_depth.EXT (INPUT_depth/ for folders)")
    add_shared_flags(parser)
    parser.add_argument("--summary", help="also write the JSON summary to this file")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the segments a killed or interrupted run finished (with --segments)")
    live = parser.add_argument_group("live (an rtsp/srt/udp/rtmp input, an rtsp:// output, --realtime or --live)")
    live.add_argument("--live", action="store_true", help="treat the input as a live stream (e.g. an http one)")
    live.add_argument("--realtime", action="store_true", help="play a file at its own rate, as a camera would")
    live.add_argument("--record", help="also record the live depth stream to this file")
    live.add_argument("--metrics", action="store_true", help="export live metrics with ray.util.metrics")
    return parser.parse_args(argv)


def parse_batch_args(argv) -> argparse.Namespace:
    parser = OneLineParser(prog="run_pipeline.py batch", description=BATCH_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="folders (searched recursively), globs, video files, or manifests (.txt: one path per "
                             "line; .jsonl: {\"input\": PATH, \"options\": {\"output.depth_format\": ...}})")
    parser.add_argument("--output-dir", required=True, help="where outputs go, keeping each input's relative path "
                                                            "(a folder, or a prefix: s3://bucket/depth/)")
    add_shared_flags(parser)
    parser.add_argument("--force", action="store_true", help="redo every video, even those finished before")
    parser.add_argument("--videos-in-flight", type=int, metavar="N",
                        help="videos open at once (default: one per CPU the model actors leave, at least 2)")
    return parser.parse_args(argv)


def parse_live_args(argv) -> argparse.Namespace:
    from pipeline.jobs.control_api import DEFAULT_CONTROL, TOKEN_ENVIRONMENT

    parser = OneLineParser(prog="run_pipeline.py live", description=LIVE_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cameras", metavar="CAMERAS.yaml",
                        help="the cameras: `cameras:` a list of {name, input, output and/or record, realtime, "
                             "colormap, depth_format, drop, keep_every, queue, transport, smoothing}")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="HOST:PORT",
                        help=f"where the HTTP control API listens (default {DEFAULT_CONTROL}; port 0: any free one; "
                             f"an address beyond this machine needs a token)")
    parser.add_argument("--control-token-file", metavar="PATH",
                        help=f"the API's access token, on the file's first line (or ${TOKEN_ENVIRONMENT}): every "
                             f"request but /healthz, /readyz and /metrics then needs Authorization: Bearer TOKEN")
    parser.add_argument("--recordings-dir", metavar="DIR",
                        help="where a camera added over HTTP may record (its record: a new file's name inside DIR); "
                             "without it, recording over HTTP is refused")
    add_shared_flags(parser)
    parser.add_argument("--summary", help="also write the JSON summary to this file")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing recording")
    parser.add_argument("--no-persist", action="store_true",
                        help="leave the cameras file as it is: cameras added or removed over HTTP are forgotten when "
                             "the job ends (by default they are written back to it, the previous copy kept as .bak)")
    return parser.parse_args(argv)


def parse_export_args(argv) -> argparse.Namespace:
    parser = OneLineParser(prog="run_pipeline.py export", description=EXPORT_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    parser.add_argument("--model", choices=MODEL_NAMES, metavar="NAME",
                        help=f"released weights from the Hugging Face Hub: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--checkpoint", help="official .pth, Hugging Face folder, .safetensors file, or a Hub repo id")
    parser.add_argument("--random-weights", choices=VARIANTS, help="random weights of a variant (plumbing test only)")
    parser.add_argument("--version", choices=("v1", "v2"), help="Depth-Anything version (default: from checkpoint)")
    parser.add_argument("--max-depth", type=float, metavar="METRES", help="a metric .pth checkpoint's range")
    parser.add_argument("--vda-mode", choices=("window", "stream"), default="window",
                        help="a Video Depth Anything checkpoint's mode to export: window (32-frame windows, files' "
                             "default) or stream (one frame a step with its past: live cameras, --vda-mode stream)")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing file")
    return parser.parse_args(argv)


EXPORT_HELP = """The network as an ONNX file (opset 18; batch, height and width dynamic: one file for every input size).

    python run_pipeline.py export --checkpoint depth_anything_vits14.pth -o depth_anything_vits14.onnx
    python run_pipeline.py INPUT -o OUTPUT --checkpoint depth_anything_vits14.onnx      # run by ONNX Runtime

Input `image`: float32 B x 3 x H x W, ImageNet-normalised RGB, H and W multiples of 14; output `depth`: B x H x W.
Video Depth Anything: its window mode, B x T x 3 x H x W in, B x T x H x W out. The file's metadata says what it is
(variant, version, metric range, the source checkpoint's SHA-256). The export is checked by onnx.checker and by
running it in ONNX Runtime beside PyTorch (`agreement`: relative L2 difference, in the summary)."""


LIVE_HELP = """Many cameras in one job, sharing the model actors: their frames go through the network together.

    python run_pipeline.py live cameras.yaml [--control 127.0.0.1:8765] [model, output and Ray flags]

Runs until Ctrl-C or SIGTERM, then closes every camera's outputs and prints the summary (exit 0). While it runs:
GET /cameras, POST /cameras (a camera's entry as JSON), DELETE /cameras/NAME, GET /healthz, /readyz, /metrics."""


BATCH_HELP = """Many videos on one pool of model actors (a local Ray instance, or a cluster with --address).

    python run_pipeline.py batch videos/ more/*.mp4 list.txt --output-dir depth/ [--address auto]
    python run_pipeline.py batch s3://bucket/videos/ --output-dir s3://bucket/depth/     # object storage (gs:// too)

Resumable: DIR/batch_status.jsonl records each finished video; the same command again skips them (without touching
their outputs) and does the rest; --force redoes all. DIR/batch_report.json is the job's report. Exit status 0 when
every video succeeded (or was done before), 3 when some failed (named in the report), 2 for bad settings or inputs."""


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """The model, output and Ray flags the single-video and batch commands share."""
    parser.add_argument("--model", choices=MODEL_NAMES, metavar="NAME",
                        help=f"released weights from the Hugging Face Hub: {', '.join(MODEL_NAMES)} (default "
                             f"{DEFAULT_MODEL}; {' and '.join(NON_COMMERCIAL)} are non-commercial)")
    parser.add_argument("--checkpoint", help="official .pth, Hugging Face folder, .safetensors file, or a Hub repo "
                                             "id owner/name[@revision]")
    parser.add_argument("--random-weights", choices=VARIANTS, help="random weights of a variant (plumbing test only)")
    parser.add_argument("--version", choices=("v1", "v2"), help="Depth-Anything version (default: from checkpoint)")
    parser.add_argument("--max-depth", type=float, metavar="METRES",
                        help="a metric .pth checkpoint's range when its name does not say it (20 indoor, 80 outdoor; "
                             "a metric video model's outputs are laid out for 80 unless given); Hugging Face "
                             "checkpoints and the metric model names carry their own")
    parser.add_argument("--vda-mode", choices=("auto", "window", "stream"),
                        help="a Video Depth Anything model's way to run: window (files' default: 32-frame windows, "
                             "each aligned to the last) or stream (one frame at a time, live's way)")
    parser.add_argument("--fps", metavar="RATE", help="frame rate of an image-sequence input (a folder, 'glob*.png' or "
                                                     "pattern%%06d.png): 30 (default), 29.97 or 30000/1001")
    parser.add_argument("--config", help="a YAML file, or a preset: cpu, gpu, default, high-quality (flags override it)")
    parser.add_argument("--colormap", help="OpenCV colormap name (default inferno)")
    parser.add_argument("--depth-format", choices=DEPTH_FORMATS)
    parser.add_argument("--batch-size", type=int,
                        help="frames per batch between actors (default: 8 on a GPU, 4 on a CPU; a CPU runs the "
                             "network one frame at a time, batching.network_batch)")
    parser.add_argument("--input-size", type=int, help="short side fed to the model, multiple of 14 (default 518)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto (default): float16 on a GPU, float32 on a CPU")
    parser.add_argument("--runtime", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                        help="what runs the network: torch, onnxruntime (exported once into a cache, or an .onnx "
                             "--checkpoint), tensorrt (GPU, float16); auto: onnxruntime for an .onnx file, else torch")
    parser.add_argument("--smoother", help="temporal smoother: default, ema, none")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--address", help="existing Ray cluster: auto (the one on this machine) or HOST:PORT "
                                          "(default: start a private local one)")
    parser.add_argument("--model-actors", type=int, help="model actors (default: one per GPU, else one)")
    parser.add_argument("--wait-for-gpus", type=int, metavar="N",
                        help="wait until the Ray cluster has N GPUs before planning (asked of its autoscaler: a "
                             "KubeRay cluster's GPU workers start after the job; at most ray.gpu_wait_s, 900 s)")
    parser.add_argument("--segments", type=lambda text: int(text) if text.isdigit() else text, metavar="N|auto",
                        help="split a long video at keyframes into N streams run at once, joined by stream copy "
                             "(auto, the default: one per minute of video, at most one per CPU the model actors "
                             "leave; so short videos and small machines stay whole)")
    parser.add_argument("--storage-option", type=storage_option, action=StorageOptions, metavar="KEY=VALUE",
                        help="for s3:// and gs:// paths, what the store's filesystem takes (repeatable): "
                             "endpoint_url=http://HOST:PORT, anon=true, client_kwargs.region_name=eu-west-1; "
                             "credentials come from the standard chain (AWS_*, profiles, roles), never from here")


# Each setting a flag overrides, by its key; errors name the flag the user typed
FLAG_KEYS = {
    "model": "model.name",
    "checkpoint": "model.checkpoint",
    "random_weights": "model.random_weights",
    "version": "model.version",
    "max_depth": "model.max_depth",
    "vda_mode": "model.vda_mode",
    "fps": "input.fps",
    "input_size": "model.input_size",
    "precision": "model.precision",
    "runtime": "model.runtime",
    "device": "model.device",
    "batch_size": "batching.batch_size",
    "smoother": "smoothing.name",
    "colormap": "output.colormap",
    "depth_format": "output.depth_format",
    "address": "ray.address",
    "model_actors": "ray.model_actors",
    "wait_for_gpus": "ray.wait_for_gpus",
    "segments": "segments.count",
    "storage_option": "storage.options",
    "no_overwrite": "output.no_overwrite",
}


def overrides_from(args: argparse.Namespace) -> dict:
    return {key: getattr(args, name, None) or None if name == "no_overwrite" else getattr(args, name)
            for name, key in FLAG_KEYS.items()}


def storage_option(text: str) -> dict:
    """`--storage-option KEY=VALUE`: VALUE read as YAML (true, 10, text); a dotted KEY nests (client_kwargs.region_name)."""
    import yaml

    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    option: dict = {}
    target = option
    *outer, last = key.strip().split(".")
    for part in outer:
        target = target.setdefault(part, {})
    target[last] = parsed
    return option


class StorageOptions(argparse.Action):
    """Each --storage-option adds its key to one mapping (nested keys merged)."""

    def __call__(self, parser, namespace, values, option_string=None):
        merged = dict(getattr(namespace, self.dest) or {})
        for key, value in values.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
                else value
        setattr(namespace, self.dest, merged)


def flag_labels() -> dict[str, str]:
    return {key: "--" + name.replace("_", "-") for name, key in FLAG_KEYS.items()}


def progress_bar(total: int | None):
    """tqdm on a terminal (frames, fps, ETA); nothing when stderr is not a TTY."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=not sys.stderr.isatty(), dynamic_ncols=True)


def resolve_model(settings, live: bool = False):
    """The checkpoint to load (None for random weights), checked; last of the checks before Ray, since resolving a
    name can mean a download that a bad input or setting should not wait for. `live`: a camera's job (a video
    model runs in its streaming mode there)."""
    model = settings.model
    check_runtime(model)
    if model.random_weights:
        if model.vda_mode != "auto":
            raise PipelineError(f"--vda-mode {model.vda_mode} is for Video Depth Anything models; --random-weights "
                                f"{model.random_weights} is a per-frame model")
        print("note: random weights - the output shows the pipeline working, not real depth", file=sys.stderr)
        return None
    resolved = resolve_checkpoint(model.checkpoint or model.name or DEFAULT_MODEL)
    if model.name in NON_COMMERCIAL and not model.checkpoint:
        print(f"note: {model.name} ({resolved.repo_id}) is for non-commercial use only (CC-BY-NC-4.0; its model card "
              f"says)", file=sys.stderr)
    runtime = choose_runtime(model.runtime, resolved.path)
    if is_onnx_file(resolved.path):
        if runtime == "torch":
            raise PipelineError(f"{resolved.path} is an exported (ONNX) network: it runs with --runtime onnxruntime "
                                f"or tensorrt; for --runtime torch pass the checkpoint it was exported from")
        kind, config = check_onnx_file(resolved.path)
        if model.version and model.version != config.version:
            raise PipelineError(f"--version {model.version}: {resolved.path} was exported from a Depth-Anything "
                                f"{config.version} model")
        streaming = live or model.vda_mode == "stream"
        if config.temporal and (kind == "video_stream") != streaming:
            made, wanted = ("streaming", "window") if kind == "video_stream" else ("window", "streaming")
            raise PipelineError(f"{resolved.path} is Video Depth Anything's {made} mode; this run needs its {wanted} "
                                f"mode (export it with --vda-mode {'stream' if streaming else 'window'}"
                                f"{'' if streaming else ', or run this file with --vda-mode stream'})")
    else:
        config = check_checkpoint(resolved.path, model.version, model.max_depth)
    if model.vda_mode != "auto" and not config.temporal:
        raise PipelineError(f"--vda-mode {model.vda_mode} is for Video Depth Anything models; {resolved.path} is a "
                            f"per-frame Depth-Anything model")
    return resolved


def check_runtime(model) -> None:
    """A runtime asked for that this machine cannot run: one line before Ray starts."""
    if model.runtime in ("auto", "torch"):
        return
    from model.onnx_network import runtime_problem

    problem = runtime_problem(model.runtime, "cuda" if model.device.startswith("cuda") or model.runtime ==
                              "tensorrt" else "cpu")
    if problem:
        raise PipelineError(f"--runtime {model.runtime}: {problem}")


@contextlib.contextmanager
def depth_graph(settings, resolved, live: bool = False):
    """Ray started (or joined) and the model actors made, for the block (`live`: cameras' jobs); the actors are shut
    down after it, with Ctrl-C / SIGTERM held until that is done."""
    from pipeline.cluster.graph import DepthGraph
    from pipeline.cluster.runtime import start_ray

    with signals_deferred():  # an interrupt during start-up would orphan Ray's processes: it waits until Ray is up
        start_ray(settings.ray.address, settings.ray.num_cpus)
    graph = DepthGraph(settings, resolved=resolved, live=live)
    try:
        yield graph
    finally:
        with signals_deferred():
            graph.shutdown()


def run_export(args: argparse.Namespace) -> dict:
    """The export command: the network written to an ONNX file, checked by running it; the summary."""
    import torch

    from model import load_model
    from model.onnx_export import export_onnx, file_digest
    from model.onnx_network import OnnxNetwork, runtime_problem
    from model.random_weights import random_model

    given = [flag for flag, value in (("--model", args.model), ("--checkpoint", args.checkpoint),
                                      ("--random-weights", args.random_weights)) if value]
    if len(given) != 1:
        raise PipelineError(f"export needs one of --model, --checkpoint, --random-weights; got "
                            f"{' and '.join(given) or 'none'}")
    output = Path(args.output)
    if output.suffix.lower() != ".onnx":
        raise PipelineError(f"-o {output}: an exported network is written to a .onnx file")
    if output.is_dir() or not output.absolute().parent.is_dir() or not os.access(output.absolute().parent, os.W_OK):
        raise PipelineError(f"-o {output}: cannot write there (a folder, or its folder is missing or read-only)")
    if args.no_overwrite and output.exists():
        raise PipelineError(f"-o {output}: exists and --no-overwrite was given")
    problem = runtime_problem("onnxruntime")
    if problem:
        raise PipelineError(f"export: {problem}")
    started = time.monotonic()
    if args.random_weights:
        print("note: random weights - the file runs, but gives no real depth", file=sys.stderr)
        net, digest = random_model(args.random_weights, version=args.version or "v1", max_depth=args.max_depth), ""
        source = f"random weights ({args.random_weights})"
    else:
        resolved = resolve_checkpoint(args.checkpoint or args.model)
        if is_onnx_file(resolved.path):
            raise PipelineError(f"{resolved.path} is an exported network already")
        check_checkpoint(resolved.path, args.version, args.max_depth)
        net = load_model(resolved.path, version=args.version, max_depth=args.max_depth)
        digest, source = file_digest(resolved.path), resolved.path
    config = net.config
    streaming = args.vda_mode == "stream"
    if streaming and not config.temporal:
        raise PipelineError(f"--vda-mode stream is for Video Depth Anything models; {source} is a per-frame model")
    print(f"exporting {source} to {output} (a minute or two on a CPU)", file=sys.stderr, flush=True)
    export_onnx(net, output, source_digest=digest, mode=args.vda_mode)
    exported_s = time.monotonic() - started
    # Checked by running it: the file against PyTorch on one input of a size the trace did not use (a streaming
    # step: a first frame's)
    generator = torch.Generator().manual_seed(0)
    shape = (1, 3, 42, 56) if streaming or not config.temporal else (1, 2, 3, 42, 56)
    image = torch.randn(shape, generator=generator)
    with torch.inference_mode():
        if streaming:
            expected = net.decode(*net.encode(image), 1, None)[0]
            got = OnnxNetwork(output).step(image, None)[0]
        else:
            expected = net(image)
            got = OnnxNetwork(output)(image)
    agreement = float((got - expected).norm() / expected.norm().clamp_min(1e-12))
    return {"output": str(output), "bytes": output.stat().st_size, "source": source, "sha256": digest or None,
            "variant": config.variant, "version": config.version, "temporal": config.temporal,
            **({"vda_mode": args.vda_mode} if config.temporal else {}), "depth": "metric" if config.max_depth else "relative", "export_seconds": round(exported_s, 1),
            "agreement": {"relative_l2": agreement, "input": list(shape)}}


def run_batch(args: argparse.Namespace) -> tuple[dict, int]:
    """The batch command: (the job's report, exit status)."""
    from pipeline.jobs.batch import EXIT_SOME_FAILED, BatchJob, BatchOptions, report_table
    from pipeline.jobs.inputs import find_inputs

    settings = load_settings(args.config, overrides_from(args), flag_labels())
    if args.videos_in_flight is not None and args.videos_in_flight < 1:
        raise PipelineError(f"--videos-in-flight must be >= 1, got {args.videos_in_flight}")
    folder = check_output_folder(args.output_dir)
    job = args.batch_job = BatchJob(settings, find_inputs(args.inputs, folder), folder,
                                    BatchOptions(force=args.force, videos_in_flight=args.videos_in_flight or 0))
    if not job.pending:  # a rerun with nothing left to do: no model, no Ray
        report = job.run(None)
        print(report_table(report), file=sys.stderr)
        return report, (EXIT_SOME_FAILED if report["totals"]["failed"] else 0)
    resolved = resolve_model(settings)
    try:
        with depth_graph(settings, resolved) as graph:
            report = job.run(graph)
    except BaseException:
        with signals_deferred():
            job.remove_partial_outputs()  # once the actors are gone: no sink can open another one
        raise
    print(report_table(report), file=sys.stderr)
    return report, (EXIT_SOME_FAILED if report["totals"]["failed"] else 0)


def run_cameras(args: argparse.Namespace) -> dict:
    """The live command: many cameras until Ctrl-C / SIGTERM; the summary, exit 0."""
    from pipeline.jobs.cameras_job import CamerasJob, CamerasRequest

    overrides = {**overrides_from(args), "live.recordings_dir": args.recordings_dir}
    settings = load_settings(args.config, overrides, {**flag_labels(), "live.recordings_dir": "--recordings-dir"})
    check_summary_path(args.summary)
    request = CamerasRequest(args.cameras, args.control, args.control_token_file, args.no_overwrite,
                             ("--segments",) if args.segments is not None else (), persist=not args.no_persist)
    job = CamerasJob.from_request(settings, request,
                                  warn=lambda line: print(f"warning: {redact(line)}", file=sys.stderr, flush=True))
    try:  # (the control port is bound from here on)
        resolved = resolve_model(settings, live=True)
        with depth_graph(settings, resolved, live=True) as graph:
            # Ctrl-C and SIGTERM end the job normally: every camera's outputs closed, the summary printed
            with stop_signals_call(lambda number, frame: job.stop()):
                return job.run(graph, log=lambda line: print(redact(line), file=sys.stderr, flush=True),
                               shielded=signals_deferred)
    finally:
        job.close()


def is_live(args: argparse.Namespace) -> bool:
    """Live mode: a streaming input, an RTSP output, a file played in real time, or asked for."""
    return bool(args.live or args.realtime or is_live_url(args.input or "") or is_publish_url(args.output or ""))


def run_live(args: argparse.Namespace) -> dict:
    """Live mode until Ctrl-C / SIGTERM (or the end of a --realtime file): the summary, exit 0."""
    from pipeline.jobs.live import LiveJob, LiveRequest

    overrides = {**overrides_from(args), "live.metrics": True if args.metrics else None}
    settings = load_settings(args.config, overrides, flag_labels())
    file_flags = tuple(flag for flag, given in (("--segments", args.segments is not None), ("--resume", args.resume))
                       if given)
    check_summary_path(args.summary)
    job = LiveJob.from_request(settings, LiveRequest(args.input, args.output, args.record, args.realtime,
                                                     args.no_overwrite, file_flags))
    resolved = resolve_model(settings, live=True)
    with depth_graph(settings, resolved, live=True) as graph:
        # Ctrl-C and SIGTERM end a live run normally: stop reading, finish what is in flight, close the session
        with stop_signals_call(lambda number, frame: job.stop()):
            return job.run(graph)


def run(args: argparse.Namespace) -> dict:
    # Everything that can be checked without Ray is checked first, so a bad input or setting fails in about a second
    if is_live(args):
        return run_live(args)
    from pipeline.jobs.file import FileRequest, check_file_run, file_warnings, process_video

    settings = load_settings(args.config, overrides_from(args), flag_labels())
    if args.input is None:
        from pipeline.sample_video import make_sample_clip

        if not SAMPLE_INPUT.exists():
            make_sample_clip(SAMPLE_INPUT, width=640, height=360, frames=48, audio=True)
        print(f"note: no input given; using the generated sample clip {SAMPLE_INPUT}", file=sys.stderr)
    source = args.input if args.input is not None else str(SAMPLE_INPUT)  # a path or a URL, as given
    check_summary_path(args.summary)
    checked = check_file_run(settings, FileRequest(source, args.output, args.fps, args.record, args.no_overwrite))
    args.resolved_output = checked.output
    resolved = resolve_model(settings)
    with depth_graph(settings, resolved) as graph, progress_bar(checked.info.expected_frames) as bar:
        started = time.monotonic()
        summary = process_video(graph, source, str(checked.output), on_progress=bar.update, info=checked.info,
                                segments=settings.segments.count, resume=args.resume)
    summary["seconds_including_model_load"] = round(time.monotonic() - started, 3)
    for line in file_warnings(summary, checked):
        print(f"warning: {line}", file=sys.stderr)
    return summary


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that the same clean-up runs as for Ctrl-C, and so that Ray's own
    waits (its Cython calls check for signals) pass it on as they pass Ctrl-C on: any other exception raised from a
    signal handler inside them came out as `SystemError: ... returned a result with an exception set`."""


def on_stop_signal(signum, frame):
    """The first Ctrl-C or SIGTERM stops the run; later ones are ignored, so that the clean-up (the sink removing
    its temporary file, Ray shutting down) is not cut short by an impatient second Ctrl-C."""
    global _stopped_by
    _stopped_by = signum
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


_stopped_by: int | None = None  # the signal that stopped the run (Ray's waits re-raise a plain KeyboardInterrupt)


@contextlib.contextmanager
def stop_signals_call(handler):
    """Ctrl-C and SIGTERM call `handler(number, frame)` for the block (a live job that ends normally when told),
    then the handlers before it are back; in a thread other than the main one (the tests), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, restored in previous.items():
            signal.signal(number, restored)


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them: for steps that must not be cut in two.

    (Blocking them with a signal mask is not enough: Ray's and gRPC's threads receive them instead.) On leaving, the
    handlers are put back as they were before the block, undoing the one `ray.init` installs, which aborts.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda number, frame: received.append(number))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except SystemExit as exit_:
        # ray.init puts in a SIGTERM handler of its own, which calls sys.exit(15): a SIGTERM during its start-up
        # arrives as that. Taken as the SIGTERM it is: Ray is shut down and the run ends with 143, saying so
        if exit_.code != signal.SIGTERM:
            raise
        received.append(signal.SIGTERM)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])


def stop_ray_ignoring_signals() -> None:
    """Shut Ray down with further Ctrl-C / SIGTERM ignored: a second interrupt must not cut the clean-up short."""
    from pipeline.cluster.runtime import stop_ray

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_ray()


def write_summary(path: str, text: str) -> None:
    """The JSON summary to a file, or to an object (s3://, gs://: one PUT)."""
    from pipeline import storage

    if storage.is_remote(path):
        storage.write_bytes(path, text)
    else:
        Path(path).write_text(text)


def what_was_kept(args: argparse.Namespace) -> str:
    """After Ctrl-C / SIGTERM: what the user has (a batch job's finished videos, a long video's segments)."""
    job = getattr(args, "batch_job", None)
    if job is not None:
        done = job.finished_now
        return (f"{done} video{'s' if done != 1 else ''} finished in this run and recorded in "
                f"{job.status.path}; run the same command again to go on (batch_report.json is marked interrupted)")
    output = getattr(args, "resolved_output", None)
    from pipeline.jobs.segments import work_folders

    kept = " (finished segments are kept: run again with --resume)" if output and work_folders(output) else ""
    return f"no output written{kept}"


def main(argv=None, summary_out=None) -> int:
    """Run one command: its exit status; the JSON summary goes to `summary_out` (default: stdout)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in ("batch", "live", "export") else None
    parse = {"batch": parse_batch_args, "live": parse_live_args, "export": parse_export_args}.get(command)
    previous_stdout = sys.stdout
    sys.stdout = summary_out or sys.stdout  # (--help is printed on stdout, as every command's is)
    try:
        args = parse(argv[1:]) if parse else parse_args(argv)
    finally:
        sys.stdout = previous_stdout
    is_main_thread = threading.current_thread() is threading.main_thread()
    global _stopped_by
    _stopped_by = None  # (main may run more than once in a process: the tests)
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {n: signal.signal(n, on_stop_signal) for n in stop_signals} if is_main_thread else {}
    status = 0
    # stdout is the JSON summary's alone: whatever else would print there (Ray forwards its workers' and raylet's
    # lines, "(raylet) A worker died ...", to the driver's stdout) goes to stderr with the other messages
    previous_stdout = sys.stdout
    summary_out, sys.stdout = summary_out or sys.stdout, sys.stderr
    try:
        if command == "batch":
            summary, status = run_batch(args)
        elif command == "live":
            summary = run_cameras(args)
        elif command == "export":
            summary = run_export(args)
        else:
            summary = run(args)
        text = redact(json.dumps(summary, indent=2, default=str))  # (a camera URL's password never printed)
        if getattr(args, "summary", None):
            write_summary(args.summary, text + "\n")
    except (PipelineError, CheckpointError, ValueError, OSError) as error:
        print(f"error: {redact(one_line(error))}", file=sys.stderr)
        return 2
    except Exception as error:  # a fault of ours, not of the input: still one line, the traceback on request
        if os.environ.get("DEPTH_TRACEBACK", "0").strip().lower() not in ("", "0", "false", "no", "off"):
            raise
        print(f"error: internal {type(error).__name__}: {redact(one_line(error))} (DEPTH_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated): which one, on_stop_signal recorded
        what = "terminated" if _stopped_by == signal.SIGTERM else "interrupted"
        print(f"error: {what}; {what_was_kept(args)}", file=sys.stderr)
        return 130 if what == "interrupted" else 143
    finally:
        sys.stdout = previous_stdout
        if is_main_thread:
            for number, handler in previous.items():
                signal.signal(number, handler)
    print(text, file=summary_out, flush=True)
    return status



def command_line() -> None:
    """The command as a process: its stdout is the JSON summary's alone, whatever else prints and whenever (Ray's
    forwarded '(raylet) WARNING ...' lines came after the summary, while Ray shut down): file descriptor 1 is pointed
    at stderr while the command runs, and the summary goes to a copy of the original. Once the command has said its
    last line (the summary, or the one-line error), what Ray forwards while shutting down (its own kills' 'Task ...
    failed' notices) is dropped: the last line on stderr stays the command's."""
    sys.stdout.flush()
    summary_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        exit_status = main(summary_out=summary_out)
    finally:
        summary_out.flush()  # (--help ends main with SystemExit)
    sys.stdout.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    stop_ray_ignoring_signals()
    # Out at once, the work done and said: a SIGTERM that came while ray.init was connecting left Ray's C++ side in
    # a state whose teardown at the interpreter's exit aborted (SIGABRT or SIGSEGV instead of 143, after the error
    # line, in 2 of 3 runs on a loaded machine); the outputs are closed and Ray is shut down already
    sys.stderr.flush()
    os._exit(exit_status)


if __name__ == "__main__":
    command_line()
