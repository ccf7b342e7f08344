#!/usr/bin/env python3
"""
Turn a video into a depth video, streaming through Ray actors (decode -> infer -> smooth -> encode).

    python run_pipeline.py INPUT -o OUTPUT --checkpoint depth_anything_vits14.pth
    python run_pipeline.py --random-weights vits          # demo: makes a sample clip; random weights = no real depth

Prints a JSON summary on stdout at the end; errors are one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model import VARIANTS, CheckpointError
from pipeline.colorize import colormap_id
from pipeline.encode import DEPTH_FORMATS, check_output_path
from pipeline.frames import PipelineError
from pipeline.settings import load_settings

SAMPLE_INPUT = Path("outputs/sample_input.mp4")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="video file (omit for a generated sample clip)")
    parser.add_argument("-o", "--output", help="output video (.mp4/.mkv; .mkv for gray16); default: INPUT_depth.EXT")
    parser.add_argument("--checkpoint", help="official .pth, Hugging Face folder or .safetensors file")
    parser.add_argument("--random-weights", choices=VARIANTS, help="random weights of a variant (plumbing test only)")
    parser.add_argument("--version", choices=("v1", "v2"), help="Depth-Anything version (default: from checkpoint)")
    parser.add_argument("--config", help="YAML preset, e.g. configs/cpu.yaml (flags override it)")
    parser.add_argument("--colormap", help="OpenCV colormap name (default inferno)")
    parser.add_argument("--depth-format", choices=DEPTH_FORMATS)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--input-size", type=int, help="short side fed to the model, multiple of 14 (default 518)")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--smoother", help="temporal smoother: default, ema, none")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--address", help="existing Ray cluster address (default: start a local one)")
    parser.add_argument("--model-actors", type=int, help="model actors (default: one per GPU, else one)")
    parser.add_argument("--summary", help="also write the JSON summary to this file")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict:
    return {
        "model.checkpoint": args.checkpoint,
        "model.random_weights": args.random_weights,
        "model.version": args.version,
        "model.input_size": args.input_size,
        "model.precision": args.precision,
        "model.device": args.device,
        "batching.batch_size": args.batch_size,
        "smoothing.name": args.smoother,
        "output.colormap": args.colormap,
        "output.depth_format": args.depth_format,
        "ray.address": args.address,
        "ray.model_actors": args.model_actors,
    }


def default_output(source: Path, depth_format: str) -> Path:
    return source.with_name(f"{source.stem}_depth{'.mkv' if depth_format == 'gray16' else '.mp4'}")


def progress_bar(total: int | None):
    """tqdm on a terminal (frames, fps, ETA); nothing when stderr is not a TTY."""
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=not sys.stderr.isatty(), dynamic_ncols=True)


def run(args: argparse.Namespace) -> dict:
    settings = load_settings(args.config, overrides_from(args))
    if not settings.model.checkpoint and not settings.model.random_weights:
        raise PipelineError("no model: pass --checkpoint PATH (or --random-weights vits for a plumbing test)")
    if settings.model.checkpoint and not Path(settings.model.checkpoint).exists():
        raise CheckpointError(f"{settings.model.checkpoint}: checkpoint not found")
    colormap_id(settings.output.colormap)  # fail early on a typo
    if settings.model.random_weights:
        print("note: random weights - the output shows the pipeline working, not real depth", file=sys.stderr)

    if args.input is None:
        from pipeline.sample_video import make_sample_clip

        if not SAMPLE_INPUT.exists():
            make_sample_clip(SAMPLE_INPUT, width=640, height=360, frames=48, audio=True)
        print(f"note: no input given; using the generated sample clip {SAMPLE_INPUT}", file=sys.stderr)
        source = SAMPLE_INPUT
    else:
        source = Path(args.input)
    output = Path(args.output) if args.output else default_output(source, settings.output.depth_format)
    check_output_path(output, settings.output.depth_format)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise PipelineError(f"{output}: output would overwrite the input; choose another name")

    from pipeline.decode import VideoDecoder
    from pipeline.graph import DepthGraph, start_ray

    probe = VideoDecoder(str(source))  # input errors before Ray starts
    info = probe.info
    probe.close()

    start_ray(settings.ray.address, settings.ray.num_cpus)
    started = time.monotonic()
    graph = DepthGraph(settings)
    try:
        with progress_bar(info.expected_frames) as bar:
            summary = graph.process(str(source), str(output), on_progress=bar.update, info=info)
    finally:
        graph.shutdown()
    summary["seconds_including_model_load"] = round(time.monotonic() - started, 3)
    if summary.get("unreadable_frames"):
        print(f"warning: {source}: {summary['unreadable_frames']} frames could not be read (damaged or truncated "
              f"file); depth was written for the {summary['frames_in']} decodable frames", file=sys.stderr)
    if summary.get("repaired_timestamps"):
        print(f"warning: {source}: {summary['repaired_timestamps']} frames repeated or went back on the previous "
              f"frame's timestamp; each was moved one tick past it", file=sys.stderr)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (PipelineError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.summary:
        Path(args.summary).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
