"""
ONNX export: the network as one file that ONNX Runtime, TensorRT, OpenVINO and edge runtimes read.

Takes: a loaded `DepthAnything` (v1, v2, v2 metric) or `VideoDepthAnything` (its window mode), in float32.
Gives: an .onnx file (opset 18, written whole: a temporary file renamed into place) whose graph is the network's
forward, with batch, height and width dynamic, so one file serves every input size:

    image model:  input `image`  B x 3 x H x W float32, ImageNet-normalised RGB, H and W multiples of 14
                  output `depth` B x H x W float32 (relative inverse depth, or metres for a metric model)
    video model:  input `image`  B x T x 3 x H x W (a window: T = 32 in the original), output `depth` B x T x H x W

What a runtime needs to use the file travels in its metadata (`read_metadata`): the network's config (variant,
version, metric range, patch size, ...), which mode, the source checkpoint's SHA-256, and the exporter's versions.

The export traces with symbolic sizes (torch.export, `dynamo=True`): the position table's resampling is then built as
tensor arithmetic (`PatchEmbed._resample_table_for_any_grid`), since F.interpolate's scale factor would be fixed to
the traced grid's; and Video Depth Anything's last blocks take every frame at once instead of four at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .config import DepthAnythingConfig

__all__ = ["FORMAT_VERSION", "INPUT_NAME", "OUTPUT_NAME", "OPSET", "export_onnx", "file_digest", "read_metadata"]

INPUT_NAME, OUTPUT_NAME = "image", "depth"
OPSET = 18
FORMAT_VERSION = "1"  # what our metadata says; a file of a later format is refused rather than misread
METADATA_PREFIX = "depth_anything."
IMAGE, VIDEO_WINDOW = "image", "video_window"
EXAMPLE_GRID = (5, 7)  # the traced example's patch grid (any: the sizes stay symbolic); small, so tracing is quick
MAX_GRID = 1024  # 14336 px a side: the symbolic sizes' upper bound


def export_onnx(net: torch.nn.Module, path: str | Path, source_digest: str = "", window_frames: int = 32) -> Path:
    """Export `net` (float32, any device: the export runs on the CPU) to `path`; checked with onnx.checker. A video
    model is exported in its window mode, traced with a window of `window_frames` (B, T, H and W stay dynamic)."""
    import onnx

    config: DepthAnythingConfig = net.config
    kind = VIDEO_WINDOW if config.temporal else IMAGE
    net = net.float().cpu().eval()
    grid_h, grid_w = (torch.export.Dim(name, min=1, max=MAX_GRID) for name in ("grid_h", "grid_w"))
    batch = torch.export.Dim("batch", min=1, max=4096)
    patch = config.patch_size
    if kind == IMAGE:
        example = torch.randn(2, 3, patch * EXAMPLE_GRID[0], patch * EXAMPLE_GRID[1])
        sizes = {0: batch, 2: patch * grid_h, 3: patch * grid_w}
    else:
        example = torch.randn(1, window_frames, 3, patch * EXAMPLE_GRID[0], patch * EXAMPLE_GRID[1])
        frames = torch.export.Dim("frames", min=1, max=window_frames)
        sizes = {0: batch, 1: frames, 3: patch * grid_h, 4: patch * grid_w}
    path = Path(path)
    metadata = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": json.dumps(dataclasses.asdict(config)),
        "source_sha256": source_digest,
        "exporter": f"torch {torch.__version__}, onnx {onnx.__version__}, opset {OPSET}",
    }
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(descriptor)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")  # (the exporter's progress and its notes on torchvision's absence)
            program = torch.onnx.export(net, (example,), dynamo=True, opset_version=OPSET, external_data=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                                        dynamic_shapes={next(iter(_forward_arguments(net))): sizes})
        model = program.model_proto
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = METADATA_PREFIX + key, value
        onnx.save(model, temporary)
        onnx.checker.check_model(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return path


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _forward_arguments(net: torch.nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(net.forward).parameters)


def read_metadata(model_proto) -> tuple[str, DepthAnythingConfig] | None:
    """(kind, config) from an exported file's metadata (a loaded ModelProto; its weights need not be loaded), or
    None when the file carries none of ours. ValueError for a format this code does not know."""
    props = {entry.key[len(METADATA_PREFIX):]: entry.value for entry in model_proto.metadata_props
             if entry.key.startswith(METADATA_PREFIX)}
    if not props:
        return None
    if props.get("format") != FORMAT_VERSION or props.get("kind") not in (IMAGE, VIDEO_WINDOW):
        raise ValueError(f"metadata of format {props.get('format')!r}, kind {props.get('kind')!r} (this code reads "
                         f"format {FORMAT_VERSION}: export it again)")
    fields = json.loads(props["config"])
    for name in ("reassembly_widths", "tap_blocks"):
        fields[name] = tuple(fields[name])
    return props["kind"], DepthAnythingConfig(**fields)


def file_digest(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """SHA-256 of a checkpoint's bytes, for the metadata and the export cache's key: a file's, or a folder's (a
    Hugging Face layout: each file's name and bytes, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file_path in files:
        if path.is_dir():
            digest.update(str(file_path.relative_to(path)).encode() + b"\0")
        with open(file_path, "rb") as file:
            while chunk := file.read(chunk_bytes):
                digest.update(chunk)
    return digest.hexdigest()
