"""Frames travel as I420 (YUV 4:2:0) where the video is: conversions, rotation, and depth as from RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import DepthPredictor, PredictorOptions
from model.random_weights import random_model
from pipeline.stages.inference.depth_worker import DepthWorker
from pipeline.stages.pixels import RGB24, YUV420P, i420_to_rgb, i420_to_rgb_torch, to_rgb
from pipeline.stages.render.smoothing import Guide, _colour_histogram
from pipeline.stages.sources.video_decoder import VideoDecoder, rotate_upright
from tests.clips import clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixel_clips")
    return {
        "even": clip(folder, "even.mp4", width=160, height=96, frames=6),
        "odd": clip(folder, "odd.mp4", width=161, height=97, frames=3),
        "rotated": clip(folder, "rotated.mp4", width=160, height=96, frames=3, rotation=90),
    }


def both_layouts(path) -> tuple:
    i420 = next(VideoDecoder(str(path)).batches(8))
    rgb = next(VideoDecoder(str(path), layout="rgb24").batches(8))
    return i420, rgb


def test_decoder_sends_i420_for_4_2_0_video_of_even_size_and_rgb_otherwise(clips):
    i420, rgb = both_layouts(clips["even"])
    assert (i420.layout, i420.pixels.shape) == (YUV420P, (6, 144, 160))
    assert (rgb.layout, rgb.pixels.shape) == (RGB24, (6, 96, 160, 3))
    assert i420.pixels.nbytes * 2 == rgb.pixels.nbytes
    odd = next(VideoDecoder(str(clips["odd"])).batches(8))
    assert (odd.layout, odd.pixels.shape) == (RGB24, (3, 97, 161, 3))


def test_i420_converts_to_what_ffmpeg_gave_as_rgb(clips):
    """BT.601 limited range, as FFmpeg's own conversion: within a few levels (chroma repeated, not interpolated)."""
    i420, rgb = both_layouts(clips["even"])
    in_torch = i420_to_rgb_torch(torch.from_numpy(i420.pixels)).numpy().astype(int)  # what a GPU runs
    on_cpu = i420_to_rgb(torch.from_numpy(i420.pixels)).numpy().astype(int)  # OpenCV
    for converted in (in_torch, on_cpu):
        difference = np.abs(converted - rgb.pixels)
        assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 4
    assert np.abs(in_torch - on_cpu).max() <= 1
    np.testing.assert_array_equal(to_rgb(rgb.pixels[0], RGB24), rgb.pixels[0])


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotating_i420_planes_equals_rotating_the_picture(clips, rotation):
    frame = next(VideoDecoder(str(clips["even"])).batches(1)).pixels[0]
    turned = rotate_upright(frame, rotation, YUV420P)
    quarter_turns = rotation // 90
    assert turned.shape == ((160 if quarter_turns % 2 else 96) * 3 // 2, 96 if quarter_turns % 2 else 160)
    expected = np.rot90(i420_to_rgb_torch(torch.from_numpy(frame[None]))[0].numpy(), k=quarter_turns)
    np.testing.assert_array_equal(i420_to_rgb_torch(torch.from_numpy(turned[None]))[0].numpy(), expected)


def test_rotated_video_decodes_upright_in_both_layouts(clips):
    i420, rgb = both_layouts(clips["rotated"])
    assert rgb.pixels.shape[1:3] == (160, 96)
    converted = i420_to_rgb(torch.from_numpy(i420.pixels)).numpy().astype(int)
    assert np.abs(converted - rgb.pixels).mean() < 1.5


def test_depth_from_i420_matches_depth_from_rgb(clips):
    """What the model actor gives for the half-size transport agrees with the RGB path (float32, CPU).

    The two conversions differ by about one level (FFmpeg truncates, this rounds); random weights amplify input
    noise (uniform +-2 levels on the RGB frames moves this output by 2%), so the bound is loose: it catches a wrong
    plane order, matrix or size, which move the output by tens of per cent."""
    worker = DepthWorker(DepthPredictor(random_model("vits", seed=0), PredictorOptions(input_size=70)))
    i420, rgb = both_layouts(clips["even"])
    from_i420 = worker.infer(i420, "float32").depth
    from_rgb = worker.infer(rgb, "float32").depth
    relative = np.linalg.norm(from_i420 - from_rgb) / np.linalg.norm(from_rgb)
    assert from_i420.shape == from_rgb.shape and relative < 5e-2


def test_smoother_guide_from_i420_matches_the_one_from_rgb(clips):
    i420, rgb = both_layouts(clips["even"])
    size = (48, 80)
    from_i420 = Guide.of_frame(i420.pixels[0], size, YUV420P)
    from_rgb = Guide.of_frame(rgb.pixels[0], size, RGB24)
    assert from_i420.gray.shape == from_rgb.gray.shape == size and from_i420.gray.dtype == np.uint8
    assert from_rgb.gray_unit == 1.0 and from_i420.gray_unit == pytest.approx(255 / 219)
    # The Y plane as it is: limited range (16-235), so 16 is black and a step is worth 255/219 grey levels
    as_grey_levels = (from_i420.gray.astype(np.float32) - 16) * from_i420.gray_unit
    assert np.abs(as_grey_levels - from_rgb.gray).mean() < 1.5
    distance = 0.5 * np.abs(_colour_histogram(from_i420.colours) - _colour_histogram(from_rgb.colours)).sum()
    assert distance < 0.1  # a cut is 0.4
