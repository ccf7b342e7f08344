"""Frames for the Video Depth Anything reference tests, made again from a seed wherever they are needed (the fixture
maker and the tests), so that only the expected depth is stored: textured shapes drifting over a gradient, a new
picture every frame, sizes that are multiples of 14 (the model sees them as they are)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    mode: str  # window | stream
    frames: int
    height: int
    width: int
    variant: str = "vits"
    seed: int = 0
    metric: bool = False  # the metric models' window mode: no scale and shift between windows


CASES = (
    # four windows (32 frames, 22 a step): the keyframes, the alignment and the interpolation across three seams
    Case("window_70x28x42", "window", 70, 28, 42),
    # portrait, an even-by-odd grid the other way round, a last window padded by repeating the last frame
    Case("window_40x42x28", "window", 40, 42, 28, seed=1),
    # past the 42 frames after which the stream's cache keeps its steady shape
    Case("stream_50x28x42", "stream", 50, 28, 42),
    # a metric model's windows: the same network, its windows joined without fitting (the original's metric=True)
    Case("metric_window_50x28x42", "window", 50, 28, 42, seed=2, metric=True),
    # a clip shorter than a window: one window, padded by repeating its last frame
    Case("window_5x28x42", "window", 5, 28, 42, seed=3),
    # a stream of one frame: the first frame alone, no cache yet
    Case("stream_1x42x28", "stream", 1, 42, 28, seed=3),
)


def video_frames(case: Case) -> np.ndarray:
    """T x H x W x 3 uint8, the same on every machine (NumPy's PCG64 and float arithmetic only)."""
    rng = np.random.default_rng(case.seed)
    ys, xs = np.mgrid[0:case.height, 0:case.width].astype(np.float64)
    background = np.stack([ys / case.height, xs / case.width, 0.5 + 0.0 * ys], axis=-1) * 160
    centres = rng.uniform(0, 1, (3, 2)) * (case.height, case.width)
    velocities = rng.uniform(-1.5, 1.5, (3, 2))
    colours = rng.uniform(40, 255, (3, 3))
    frames = np.empty((case.frames, case.height, case.width, 3), np.uint8)
    for index in range(case.frames):
        picture = background.copy()
        for centre, velocity, colour in zip(centres, velocities, colours):
            cy, cx = centre + velocity * index
            radius = min(case.height, case.width) / 4
            inside = (ys - cy % case.height) ** 2 + (xs - cx % case.width) ** 2 < radius ** 2
            picture[inside] = colour
        picture += rng.normal(0, 6, picture.shape)
        frames[index] = np.clip(picture, 0, 255).astype(np.uint8)
    return frames
