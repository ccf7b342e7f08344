"""Input sizing, preparation and output resizing against the original OpenCV/NumPy recipe (spec, section e)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from model import DepthPredictor, PredictorOptions, model_input_size, prepare_frames, resize_depth
from model.random_weights import random_model
from model.transforms import IMAGENET_MEAN, IMAGENET_STD, prepare_frames_opencv, prepare_frames_torch


@pytest.mark.parametrize(
    "frame_hw, expected",
    [
        ((1080, 1920), (518, 924)),
        ((720, 1280), (518, 924)),
        ((2160, 3840), (518, 924)),
        ((360, 640), (518, 924)),
        ((480, 640), (518, 686)),
        ((1080, 1440), (518, 686)),
        ((1920, 1080), (924, 518)),
        ((256, 256), (518, 518)),
        ((1000, 1000), (518, 518)),
    ],
)
def test_original_sizing_rule(frame_hw, expected):
    assert model_input_size(frame_hw) == expected


def test_even_grid_option_rounds_to_28():
    height, width = model_input_size((1080, 1920), even_grid=True)
    assert height % 28 == 0 and width % 28 == 0 and height >= 518


def original_preparation(frame_rgb: np.ndarray, input_hw) -> np.ndarray:
    """The original run.py recipe: float64 in [0, 1], cv2 INTER_CUBIC, ImageNet normalisation, CHW."""
    image = frame_rgb / 255.0
    image = cv2.resize(image, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_CUBIC)
    image = (image - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)


@pytest.mark.parametrize("frame_hw", [(362, 642), (480, 640), (700, 500), (518, 924)])
@pytest.mark.parametrize("prepare, tolerance",
                         [(prepare_frames_opencv, (1e-4, 2e-6)), (prepare_frames_torch, (2e-3, 1e-4))],
                         ids=["opencv", "torch"])
def test_prepare_frames_matches_original(frame_hw, prepare, tolerance):
    """Both paths: OpenCV's (a CPU's: the original's own resize, so agreement to float32 rounding) and torch's (a
    GPU's: same kernel, a = -0.75 and half-pixel centres, sampled slightly differently at the borders)."""
    rng = np.random.default_rng(0)
    # A smooth image plus a few hard edges: bicubic overshoot appears where the original keeps it
    ys, xs = np.mgrid[0 : frame_hw[0], 0 : frame_hw[1]]
    base = 127 + 100 * np.sin(xs[..., None] / 17.0 + np.arange(3)) * np.cos(ys[..., None] / 23.0)
    base[frame_hw[0] // 3 : frame_hw[0] // 2] = rng.integers(0, 256, size=3)
    frame = np.clip(base, 0, 255).astype(np.uint8)
    input_hw = model_input_size(frame_hw)
    frames = torch.from_numpy(np.stack([frame, frame[::-1].copy()]))
    ours = prepare(frames, input_hw).numpy()
    for index, expected in enumerate((original_preparation(frame, input_hw),
                                      original_preparation(frame[::-1].copy(), input_hw))):
        assert ours[index].shape == expected.shape
        worst, mean = tolerance
        assert np.abs(ours[index] - expected).max() < worst
        assert np.abs(ours[index] - expected).mean() < mean


def test_prepare_frames_takes_the_opencv_path_on_a_cpu():
    frames = torch.randint(0, 256, (1, 40, 60, 3), dtype=torch.uint8)
    assert torch.equal(prepare_frames(frames, (42, 56)), prepare_frames_opencv(frames, (42, 56)))


def test_resize_depth_back_to_frame_size():
    depth = torch.arange(2 * 28 * 42, dtype=torch.float32).reshape(2, 28, 42)
    resized = resize_depth(depth, (57, 85))
    assert resized.shape == (2, 57, 85)
    expected = cv2.resize(depth[1].numpy(), (85, 57), interpolation=cv2.INTER_LINEAR)
    assert np.abs(resized[1].numpy() - expected).max() < 1e-2 * depth.max().item()
    assert resize_depth(depth, (28, 42)) is depth


@pytest.mark.parametrize("cast_weights", [False, True], ids=["autocast", "weights-cast-once"])
def test_predictor_bfloat16_close_to_float32(cast_weights):
    """Both reduced-precision paths: autocast (the CPU's), and every weight cast once, LayerNorm's too (the GPU's,
    exercised here in bfloat16 since float16 needs a GPU; tests/test_cuda_rules.py runs it under CUDA's dtype rules)."""
    frames = torch.randint(0, 256, (2, 101, 143, 3), dtype=torch.uint8)
    small = dict(input_size=196)
    reference = DepthPredictor(random_model("vits", seed=5), PredictorOptions(**small))(frames)
    net = random_model("vits", seed=5)
    reduced = DepthPredictor(net, PredictorOptions(precision="bfloat16", cast_weights=cast_weights, **small))(frames)
    assert reference.shape == reduced.shape == (2, 101, 143)
    assert reduced.dtype == torch.float32
    error = ((reduced - reference).norm() / reference.norm()).item()
    assert 0 < error < 3e-2
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(m.weight.dtype == (torch.bfloat16 if cast_weights else torch.float32) for m in norms)
    assert net.patch_embed.proj.weight.dtype == (torch.bfloat16 if cast_weights else torch.float32)


def test_predictor_rejects_bad_options():
    with pytest.raises(ValueError, match="multiple of 14"):
        PredictorOptions(input_size=500)
    with pytest.raises(ValueError, match="unknown precision"):
        PredictorOptions(precision="int8")
    with pytest.raises(ValueError, match="CUDA"):
        DepthPredictor(random_model("vits"), PredictorOptions(precision="float16"))
