"""
Depth with Ray Data: images or videos in, one float32 depth map a picture out, as .npy files (local or s3://).

    python examples/ray_data_depth.py photos/ -o depth/ --model small
    python examples/ray_data_depth.py clips/ --videos -o s3://bucket/depth/ --model small --concurrency 2 --num-gpus 1

Images: `ray.data.read_images` (a folder, files, or a prefix in object storage), each written as OUTPUT/NAME.npy.
Videos: the pipeline's video-frames datasource (its exact timestamps), each frame as OUTPUT/VIDEO/000000.npy, and a
frames.csv for each video (frame, pts, time_s), written last. Names come from the inputs' file names: two videos of
one name are refused before any work; two images of one name in different folders would share a file (an example's
simplification: the batch command keeps each input's relative path). The depth is the CLI's for the same pixels
(`--smoother none --depth-format exr`); see docs/batch-and-clusters.md, "Ray Data".

Runs on the Ray cluster it finds (`ray job submit -- python examples/ray_data_depth.py ...`, or RAY_ADDRESS), or on
a local one.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (run from a checkout without installing it)

from pipeline import storage  # noqa: E402
from pipeline.cluster.ray_data import DepthEstimator  # noqa: E402
from pipeline.cluster.runtime import start_ray  # noqa: E402
from pipeline.cluster.video_frames import frames_dataset  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.jobs.video_frames import frame_ranges  # noqa: E402


def save_depth(batch: dict, output: str, videos: bool) -> dict:
    """A batch's depth maps written as .npy files; gives back each row's file and timing (no pixels)."""
    files = []
    for row in range(len(batch["depth"])):
        source = Path(str(batch["path"][row]))
        name = (f"{source.stem}/{int(batch['frame_index'][row]):06d}.npy" if videos else f"{source.stem}.npy")
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(batch["depth"][row], dtype=np.float32))
        files.append(write_whole(storage.join(output, name), buffer.getvalue()))
    kept = {key: batch[key] for key in ("path", "frame_index", "pts", "time_s") if key in batch}
    return {**kept, "file": np.array(files, dtype=object)}


def write_whole(target, data: bytes) -> str:
    """A file appears whole or not at all: an object in one PUT; a local file renamed into place."""
    if storage.is_remote(target):
        storage.write_bytes(str(target), data)
        return str(target)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as partial:
        partial.write(data)
    os.replace(partial.name, target)
    return str(target)


def write_frame_tables(rows: list[dict], output: str) -> None:
    """frames.csv for each video: frame, pts, time_s, in frame order."""
    by_video: dict[str, list[dict]] = {}
    for row in rows:
        by_video.setdefault(Path(str(row["path"])).stem, []).append(row)
    for stem, frames in by_video.items():
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["frame", "pts", "time_s"])
        for row in sorted(frames, key=lambda r: int(r["frame_index"])):
            writer.writerow([int(row["frame_index"]), int(row["pts"]), repr(float(row["time_s"]))])
        write_whole(storage.join(output, stem, "frames.csv"), table.getvalue().encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="images (files, folders, prefixes) or, with --videos, videos")
    parser.add_argument("-o", "--output", required=True, help="a folder or an object-storage prefix")
    parser.add_argument("--videos", action="store_true", help="the inputs are videos (or image sequences)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="a released model: small, base, large, v2-small, ...")
    model.add_argument("--checkpoint", help="a checkpoint path or Hub repo id")
    model.add_argument("--random-weights", help="a variant with random weights (plumbing only: not real depth)")
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--batch-size", type=int, default=4, help="rows a call of the model")
    parser.add_argument("--concurrency", type=int, default=1, help="model actors")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs a model actor (1 on a GPU cluster)")
    parser.add_argument("--parts-per-video", type=int, default=1, help="read tasks a video (split at keyframes)")
    args = parser.parse_args(argv)

    if args.videos:  # (the read tasks planned first: a bad input or a clash of names fails before Ray starts)
        ranges = frame_ranges(args.inputs, args.parts_per_video)
        stems = {}
        for source in dict.fromkeys(part.source for part in ranges):
            if Path(source).stem in stems:
                sys.exit(f"error: {stems[Path(source).stem]} and {source} would both be written to "
                         f"{Path(source).stem}/ in {args.output}")
            stems[Path(source).stem] = source
    # The cluster in RAY_ADDRESS (set by `ray job submit`), this project shipped to its workers; else a local one
    start_ray(os.environ.get("RAY_ADDRESS") or None)
    if args.videos:
        dataset = frames_dataset(ranges)
        column = "frame"
    else:
        dataset = ray.data.read_images(args.inputs if len(args.inputs) > 1 else args.inputs[0], include_paths=True,
                                       mode="RGB")
        column = "image"
    estimator = {"model": args.model, "checkpoint": args.checkpoint, "random_weights": args.random_weights,
                 "input_size": args.input_size, "column": column}
    depth = dataset.map_batches(DepthEstimator, fn_constructor_kwargs=estimator, batch_size=args.batch_size,
                                concurrency=args.concurrency, num_gpus=args.num_gpus)
    written = depth.map_batches(save_depth, fn_kwargs={"output": args.output, "videos": args.videos},
                                batch_size=args.batch_size).take_all()
    if args.videos:
        write_frame_tables(written, args.output)
    print(f"{len(written)} depth maps written to {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PipelineError as error:  # a bad input or setting: one line, before any work
        sys.exit(f"error: {error}")
