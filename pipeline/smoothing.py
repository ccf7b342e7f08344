"""
Temporal smoothing of per-frame depth: a streaming, causal, stateful stage, fed in frame order.

Takes: `update(depth, rgb=None)` with depth H x W float32 relative inverse depth (rgb: the H x W x 3 uint8 frame).
Gives: the smoothed H x W float32 depth for that frame; `reset()` forgets the past (scene cut, new stream).

    from pipeline.smoothing import make_smoother
    smoother = make_smoother("ema", alpha=0.4)

Methods: `none` (pass-through), `ema` (a fixed per-pixel exponential moving average, the plain baseline) and the
default, `aligned`: each frame's unknown scale and shift are fitted to the previous output by robust least squares
on a pixel subsample, pulled gently towards the frame's own (so the global scale is anchored and cannot random-walk),
then each pixel is blended with the previous output with a weight that drops to zero where the image moved or the
depth jumped beyond the noise, so static regions are smoothed strongly and moving ones not at all (no lag, no
ghosting). Scene cuts (colour histogram jump, or an alignment that fails) reset the state on the cut frame.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np


class Smoother(Protocol):
    def update(self, depth: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray: ...

    def reset(self) -> None: ...


class NoSmoothing:
    """Pass-through."""

    def update(self, depth: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        return depth

    def reset(self) -> None:
        pass


class EmaSmoothing:
    """out_t = alpha * depth_t + (1 - alpha) * out_{t-1}, per pixel; lags and ghosts on motion by design."""

    def __init__(self, alpha: float = 0.5):
        if not 0 < alpha <= 1:
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._state: np.ndarray | None = None

    def update(self, depth: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        if self._state is None or self._state.shape != depth.shape:
            self._state = depth.astype(np.float32, copy=True)
        else:
            self._state += self.alpha * (depth - self._state)
        return self._state.copy()

    def reset(self) -> None:
        self._state = None


class AlignedSmoothing:
    """Scale/shift-aligned, motion-gated temporal smoothing with scene-cut reset (the default)."""

    def __init__(
        self,
        strength: float = 0.85,  # weight of the past in static regions
        anchor: float = 0.05,  # per-frame pull of the fitted scale/shift towards the frame's own
        motion_low: float = 4.0,  # grey-level change (0-255) below which a pixel counts as static ...
        motion_high: float = 12.0,  # ... and above which it counts as moving
        noise_gate: tuple[float, float] = (2.5, 5.0),  # depth change in noise sigmas: full smoothing -> none
        cut_histogram: float = 0.4,  # total-variation distance of colour histograms that means a cut
        cut_residual: float = 0.5,  # median alignment residual / depth spread that means a cut
        samples: int = 4096,
        seed: int = 0,
    ):
        if not 0 <= strength < 1 or not 0 <= anchor <= 1:
            raise ValueError("aligned smoother: strength must be in [0, 1) and anchor in [0, 1]")
        self.strength, self.anchor = strength, anchor
        self.motion_low, self.motion_high = motion_low, motion_high
        self.noise_gate = noise_gate
        self.cut_histogram, self.cut_residual = cut_histogram, cut_residual
        self.samples = samples
        self._rng = np.random.default_rng(seed)
        self.cut_detected = False
        self.cuts: list[int] = []  # frame numbers (since the last reset()) where a cut was detected
        self.reset()

    def reset(self) -> None:
        self._output = self._gray = self._histogram = self._sample_index = None
        self._frame = 0
        self.cuts = []

    # .................................................................................................................

    def update(self, depth: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        depth = np.asarray(depth, dtype=np.float32)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb is not None else None
        histogram = self._colour_histogram(rgb) if rgb is not None else None
        previous = self._output
        self.cut_detected = False
        if previous is None or previous.shape != depth.shape:
            return self._restart(depth, gray, histogram, cut=False)
        if histogram is not None and 0.5 * np.abs(histogram - self._histogram).sum() > self.cut_histogram:
            return self._restart(depth, gray, histogram, cut=True)

        index = self._sample_index
        raw_samples, previous_samples = depth.ravel()[index], previous.ravel()[index]
        scale, shift = self._robust_fit(raw_samples, previous_samples)
        residual = scale * raw_samples + shift - previous_samples
        spread = np.subtract(*np.percentile(previous_samples, [90, 10])) + 1e-6
        if np.median(np.abs(residual)) / spread > self.cut_residual:
            return self._restart(depth, gray, histogram, cut=True)
        # Anchor: lean the mapping towards the raw frame's own, so the output's scale follows the video slowly
        scale, shift = scale ** (1 - self.anchor), shift * (1 - self.anchor)
        aligned = depth * scale + shift

        noise = 1.4826 * np.median(np.abs(residual - np.median(residual))) + 1e-6
        low, high = self.noise_gate
        change = np.abs(aligned - previous)
        weight = np.clip((high * noise - change) / ((high - low) * noise), 0.0, 1.0)
        if gray is not None:
            motion = cv2.GaussianBlur(cv2.absdiff(gray, self._gray), (5, 5), 0).astype(np.float32)
            weight *= np.clip((self.motion_high - motion) / (self.motion_high - self.motion_low), 0.0, 1.0)
        weight *= self.strength
        self._output = aligned + weight * (previous - aligned)
        self._gray, self._histogram = gray, histogram
        self._frame += 1
        return self._output.copy()

    def _restart(self, depth, gray, histogram, cut: bool) -> np.ndarray:
        if cut:
            self.cut_detected = True
            self.cuts.append(self._frame)
        self._output = depth.copy()
        self._gray, self._histogram = gray, histogram
        count = min(self.samples, depth.size)
        self._sample_index = self._rng.choice(depth.size, size=count, replace=False)
        self._frame += 1
        return self._output.copy()

    @staticmethod
    def _colour_histogram(rgb: np.ndarray) -> np.ndarray:
        step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 20_000)))
        small = np.ascontiguousarray(rgb[::step, ::step])
        histogram = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
        return histogram / max(histogram.sum(), 1.0)

    @staticmethod
    def _robust_fit(x: np.ndarray, y: np.ndarray, iterations: int = 4) -> tuple[float, float]:
        """y ~ scale * x + shift by iteratively reweighted least squares (Huber weights): moving pixels are outliers."""
        weights = np.ones_like(x, dtype=np.float64)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        scale, shift = 1.0, 0.0
        for _ in range(iterations):
            sw = weights.sum()
            mean_x, mean_y = (weights * x64).sum() / sw, (weights * y64).sum() / sw
            variance = (weights * (x64 - mean_x) ** 2).sum()
            if variance <= 1e-12:
                return 1.0, float(mean_y - mean_x)
            scale = (weights * (x64 - mean_x) * (y64 - mean_y)).sum() / variance
            shift = mean_y - scale * mean_x
            residual = np.abs(scale * x64 + shift - y64)
            threshold = 1.345 * 1.4826 * np.median(residual) + 1e-12
            weights = np.minimum(1.0, threshold / np.maximum(residual, 1e-12))
        if scale <= 0:  # a degenerate frame (flat, or a cut the histogram missed): keep the frame's own scale
            return 1.0, 0.0
        return float(scale), float(shift)


SMOOTHERS = {"none": NoSmoothing, "ema": EmaSmoothing, "aligned": AlignedSmoothing}
DEFAULT_SMOOTHER = "aligned"


def make_smoother(name: str | None = None, **params) -> Smoother:
    """A smoother by name (`None` or "default" gives the default); unknown names and parameters are errors."""
    name = DEFAULT_SMOOTHER if name in (None, "default") else name
    if name not in SMOOTHERS:
        raise ValueError(f"unknown smoother {name!r}; expected one of {['default', *SMOOTHERS]}")
    try:
        return SMOOTHERS[name](**params)
    except TypeError as error:
        raise ValueError(f"smoother {name!r}: {error}") from None
