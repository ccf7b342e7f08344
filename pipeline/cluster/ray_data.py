"""
Ray Data's door: depth as a callable class for `Dataset.map_batches`, for teams whose inference is written as Ray Data.

Takes: batches of rows (numpy dicts, Ray Data's default, or pandas DataFrames) with an image column: uint8 RGB
H x W x 3 (grey H x W and RGBA H x W x 4 are taken too), rows of different sizes in one batch allowed, as
`ray.data.read_images` gives them ("image") or as `ray.data.read_videos` and our `read_video_frames`
(jobs/video_frames.py) give them ("frame").
Gives: the same batch with a "depth" column added: float32 H x W a row, at that row's image size (relative inverse
depth, or metres from a metric model), every other column kept.

    ds = ray.data.read_images("s3://bucket/photos/", include_paths=True)
    ds = ds.map_batches(DepthEstimator, fn_constructor_kwargs={"model": "small"}, batch_size=8, concurrency=2,
                        num_gpus=1)

The depth is the CLI's for the same pixels (tests/test_ray_data.py: within 1e-4 of `run_pipeline.py --smoother none
--depth-format exr`): the network runs in the model actors' `DepthWorker` (on a GPU with its pinned upload and
casting), and the depth is resized to the row's size as the sink resizes it (bilinear, half-pixel centres). The rows
of one size go through the network together; a batch of several sizes makes one pass a size.

Our own jobs (run_pipeline.py, batch) keep their actor graph: a video's frames in order to one sink, its timestamps,
audio and resumable outputs. This is the door for datasets of images and frames, where each row stands alone; a video
model (Video Depth Anything) needs a video's frames in order and is refused here.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from model import PredictorOptions, check_checkpoint
from model.hub import DEFAULT_MODEL, resolve_checkpoint
from model.onnx_network import is_onnx_file
from pipeline.errors import PipelineError
from pipeline.stages.frames import FrameBatch
from pipeline.stages.inference.depth_worker import DepthWorker, ModelSource, choose_runtime
from pipeline.stages.pixels import resized

__all__ = ["DepthEstimator"]

DEPTH_COLUMN = "depth"


class DepthEstimator:
    """A depth model held by one Ray Data actor (`map_batches(DepthEstimator, fn_constructor_kwargs=...)`).

    Keyword arguments, as the CLI's options of the same names: `model` (a released model's name: small, base, large,
    v2-small, ...; or a Hub repo id) or `checkpoint` (a path or repo id), or `random_weights` (a variant, for plumbing
    tests: not meaningful depth); `input_size` (the short side the network sees, a multiple of 14), `precision`
    (auto: float16 on a GPU, float32 on a CPU), `device` (auto: the actor's GPU when Ray gave it one), `runtime`
    (auto, torch, onnxruntime, tensorrt), `version` and `max_depth` for files whose name does not say; `column`, the
    image column ("image"; "frame" for video frames); `threads`: torch threads (0: what Ray gave the actor).
    """

    def __init__(self, model: str | None = None, checkpoint: str | None = None, input_size: int = 518,
                 precision: str = "auto", device: str = "auto", runtime: str = "auto", column: str = "image",
                 random_weights: str | None = None, version: str | None = None, max_depth: float | None = None,
                 threads: int = 0, onnx_cache: str | None = None):
        if model and checkpoint:
            raise PipelineError("DepthEstimator: pass model (a released model's name) or checkpoint, not both")
        self.column = column
        options = PredictorOptions(input_size=input_size, precision=precision)
        resolved = None if random_weights else resolve_checkpoint(checkpoint or model or DEFAULT_MODEL)
        path = resolved.path if resolved else None
        if path and not is_onnx_file(path) and check_checkpoint(path, version, max_depth).temporal:
            raise PipelineError(f"{path}: a video model (Video Depth Anything) needs a video's frames in order; "
                                f"Ray Data's rows stand alone: run it with run_pipeline.py or its batch command")
        source = ModelSource(path, random_weights, version, max_depth,
                             hub_reference=resolved.spec if resolved and resolved.repo_id else None,
                             runtime=choose_runtime(runtime, path), onnx_cache=onnx_cache)
        self.worker = DepthWorker.create(source, options, device, threads)
        if getattr(self.worker.predictor.net.config, "temporal", False):  # (an exported video model's file)
            raise PipelineError(f"{path}: a video model needs a video's frames in order; run it with run_pipeline.py")
        # One frame a pass on a CPU (measured faster there: see BatchingSettings.network_batch); the whole batch on a GPU
        self.worker.network_batch = 0 if self.worker.device.type == "cuda" else 1
        config = self.worker.predictor.net.config
        self.units = "metres" if getattr(config, "max_depth", None) else "relative inverse depth"

    def __call__(self, batch):
        """A batch (dict of numpy arrays, or a pandas DataFrame) -> the same batch with its "depth" column."""
        if self.column not in batch:
            raise PipelineError(f"DepthEstimator: the batch has no column {self.column!r} (it has "
                                f"{', '.join(map(str, batch.keys()))}); pass column=... (\"image\" from read_images, "
                                f"\"frame\" from read_videos or read_video_frames)")
        images = [self._rgb(image) for image in batch[self.column]]
        depth = self.depth_of(images)
        if hasattr(batch, "assign"):  # pandas: a column of H x W arrays
            return batch.assign(**{DEPTH_COLUMN: depth})
        result = dict(batch)
        result[DEPTH_COLUMN] = _column(depth)
        return result

    def depth_of(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 RGB images (H x W x 3, any sizes) -> float32 depth H x W for each, in their order."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(index)
        depth: list[np.ndarray | None] = [None] * len(images)
        for size_hw, members in by_size.items():
            pixels = np.stack([images[i] for i in members])
            frames = FrameBatch(0, list(range(len(members))), Fraction(1), pixels)
            # float32 all the way: the 16-bit and EXR outputs' precision, not the colour pictures' float16
            for index, plane in zip(members, self.worker.infer(frames, "float32").depth):
                depth[index] = resized(plane, size_hw)
        return depth

    def _rgb(self, image) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise PipelineError(f"DepthEstimator: column {self.column!r} holds {image.dtype} images; it takes uint8 "
                                f"RGB (read_images(..., mode=\"RGB\") converts others)")
        if image.ndim == 2:
            return np.repeat(image[..., None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return image[..., :3]
        raise PipelineError(f"DepthEstimator: column {self.column!r} holds an image of shape {image.shape}; it takes "
                            f"H x W x 3 RGB, H x W x 4 RGBA or H x W grey")


def _column(planes: list[np.ndarray]) -> np.ndarray:
    """One array N x H x W when every row has one size; otherwise an object array of H x W arrays (Ray Data stores
    it as a variable-shaped tensor column)."""
    if len({plane.shape for plane in planes}) <= 1:
        return np.stack(planes) if planes else np.zeros((0, 0, 0), np.float32)
    column = np.empty(len(planes), dtype=object)
    for index, plane in enumerate(planes):  # (a slice assignment would try to broadcast the planes together)
        column[index] = plane
    return column
