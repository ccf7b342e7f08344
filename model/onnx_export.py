"""
ONNX export: the network as one file that ONNX Runtime, TensorRT, OpenVINO and edge runtimes read.

Takes: a loaded `DepthAnything` (v1, v2, v2 metric) or `VideoDepthAnything` (its window mode), in float32.
Gives: an .onnx file (opset 18, written whole: a temporary file renamed into place) whose graph is the network's
forward, with batch, height and width dynamic, so one file serves every input size:

    image model:  input `image`  B x 3 x H x W float32, ImageNet-normalised RGB, H and W multiples of 14
                  output `depth` B x H x W float32 (relative inverse depth, or metres for a metric model)
    video model, window mode:  input `image` B x T x 3 x H x W (a window: T = 32 in the original), output `depth`
                  B x T x H x W
    video model, streaming mode (`mode="stream"`): one step of a stream: inputs `image` N x 3 x H x W (each of N
                  streams' next frame) and `past_0` .. `past_7`, the motion modules' inputs of the frames each frame
                  looks back at ((N*h*w) x P x C at each module's resolution, P = 31 in the original, 0 for a
                  stream's first frame); outputs `depth` N x H x W and `entry_0` .. `entry_7`, this frame's inputs
                  ((N*h*w) x 1 x C), which the caller keeps for the next frames (temporal_stream.py's ring buffers)

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
IMAGE, VIDEO_WINDOW, VIDEO_STREAM = "image", "video_window", "video_stream"
CACHED_TENSORS = 8  # a streaming step's past and entries: four motion modules x two attention blocks
PAST_FRAMES = 31  # what a streaming frame looks back at (the traced example's; the size stays dynamic)
EXAMPLE_GRID = (5, 7)  # the traced example's patch grid (any: the sizes stay symbolic); small, so tracing is quick
MAX_GRID = 1024  # 14336 px a side: the symbolic sizes' upper bound


def export_onnx(net: torch.nn.Module, path: str | Path, source_digest: str = "", window_frames: int = 32,
                mode: str = "window") -> Path:
    """Export `net` (float32, any device: the export runs on the CPU) to `path`; checked with onnx.checker. A video
    model is exported in its window mode, traced with a window of `window_frames` (B, T, H and W stay dynamic), or
    with `mode="stream"` as one step of its streaming mode."""
    import onnx

    config: DepthAnythingConfig = net.config
    kind = (VIDEO_STREAM if mode == "stream" else VIDEO_WINDOW) if config.temporal else IMAGE
    net = net.float().cpu().eval()
    grid_h, grid_w = (torch.export.Dim(name, min=1, max=MAX_GRID) for name in ("grid_h", "grid_w"))
    batch = torch.export.Dim("batch", min=1, max=4096)
    patch = config.patch_size
    example_hw = (patch * EXAMPLE_GRID[0], patch * EXAMPLE_GRID[1])
    input_names, output_names = [INPUT_NAME], [OUTPUT_NAME]
    if kind == IMAGE:
        example = (torch.randn(2, 3, *example_hw),)
        dynamic_shapes = {_forward_arguments(net)[0]: {0: batch, 2: patch * grid_h, 3: patch * grid_w}}
    elif kind == VIDEO_WINDOW:
        example = (torch.randn(1, window_frames, 3, *example_hw),)
        frames = torch.export.Dim("frames", min=1, max=window_frames)
        dynamic_shapes = {_forward_arguments(net)[0]: {0: batch, 1: frames, 3: patch * grid_h, 4: patch * grid_w}}
    else:
        # The past's rows are products of the batch and each module's grid (h*w at x1, x0.5, x2): no linear
        # expression of the image's sizes, so torch.export infers every size's relations itself (Dim.AUTO)
        net = StreamStep(net)
        image = torch.randn(2, 3, *example_hw)
        with torch.no_grad():
            entries = net.step_entries(image)
        example = (image, *(entry.repeat(1, PAST_FRAMES, 1) for entry in entries))
        auto = torch.export.Dim.AUTO
        dynamic_shapes = {"image": {0: auto, 2: auto, 3: auto}, **{f"past_{i}": {0: auto, 1: auto}
                                                                   for i in range(CACHED_TENSORS)}}
        input_names += [f"past_{i}" for i in range(CACHED_TENSORS)]
        output_names += [f"entry_{i}" for i in range(CACHED_TENSORS)]
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
            program = torch.onnx.export(net, example, dynamo=True, opset_version=OPSET, external_data=False,
                                        input_names=input_names, output_names=output_names, verbose=False,
                                        dynamic_shapes=dynamic_shapes)
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


class StreamStep(torch.nn.Module):
    """Video Depth Anything's streaming mode as one call: (frames N x 3 x H x W, eight past tensors) -> (depth
    N x H x W, eight entry tensors); the encoder and the decoder with the cache, as `push_together` runs them."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, image, past_0, past_1, past_2, past_3, past_4, past_5, past_6, past_7):
        tapped, grid_hw = self.net.encode(image)
        depth, entries = self.net.decode(tapped, grid_hw, 1, [past_0, past_1, past_2, past_3, past_4, past_5,
                                                               past_6, past_7])
        return (depth, *entries)

    def step_entries(self, image: torch.Tensor) -> list[torch.Tensor]:
        """A first frame's entries (no past): the shapes the traced past takes."""
        tapped, grid_hw = self.net.encode(image)
        return self.net.decode(tapped, grid_hw, 1, None)[1]


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
    if props.get("format") != FORMAT_VERSION or props.get("kind") not in (IMAGE, VIDEO_WINDOW, VIDEO_STREAM):
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
