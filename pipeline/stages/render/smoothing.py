"""
Temporal smoothing of per-frame depth: a streaming, causal, stateful stage, fed in frame order.

Takes: `update(depth, guide=None)` with depth H x W float32 or float16 (relative inverse depth, or metres with the
aligned smoother's `metric` on: see there) and what the picture
shows: a `Guide` (luma at the depth's resolution and a sample of the frame's colours; `Guide.of_frame` makes one from
an RGB or I420 frame) or simply the H x W x 3 uint8 RGB frame.
Gives: the smoothed H x W float32 depth for that frame; `reset()` forgets the past (scene cut, new stream).

    from pipeline.stages.render.smoothing import make_smoother
    smoother = make_smoother("ema", alpha=0.4)

Methods: `none` (pass-through), `ema` (a fixed per-pixel exponential moving average, the plain baseline) and the
default, `aligned`: each frame's unknown scale and shift are fitted to the previous output by robust least squares
on a pixel subsample, pulled gently towards the frame's own (so the global scale is anchored and cannot random-walk),
then each pixel is blended with the previous output with a weight that drops to zero where the image moved or the
depth jumped beyond the noise, so static regions are smoothed strongly and moving ones not at all (no lag, no
ghosting). Scene cuts (colour histogram jump, or an alignment that fails) reset the state on the cut frame.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from pipeline.stages.pixels import RGB24, colour_sample, luma_at
from pipeline.stages.render.statistics import lower_median, quantiles

__all__ = ["AlignedSmoothing", "Guide", "SMOOTHER_NAMES", "Smoother", "make_smoother", "smoother_for"]


@dataclass(frozen=True)
class Guide:
    """What a smoother may look at in the picture: `gray`, H x W uint8 luma at the depth's resolution (for the motion
    gate), worth `gray_unit` full-range grey levels (0-255) a step, and `colours`, N x 3 uint8 RGB pixels sampled over
    the frame (for the scene-cut histogram)."""

    gray: np.ndarray
    colours: np.ndarray
    gray_unit: float = 1.0

    @classmethod
    def of_frame(cls, pixels: np.ndarray, size_hw: tuple[int, int], layout: str = RGB24) -> Guide:
        """From one frame in `layout` (see `pixels.py`), for depth of `size_hw`."""
        gray, unit = luma_at(pixels, layout, tuple(size_hw))
        return cls(gray, colour_sample(pixels, layout), unit)


# Metric depth is smoothed as log-metres: values at or below zero (none from a metric head) count as 0.1 mm
METRIC_FLOOR_M = 1e-4


class Smoother(Protocol):
    def update(self, depth: np.ndarray, guide: Guide | np.ndarray | None = None) -> np.ndarray: ...

    def reset(self) -> None: ...


class NoSmoothing:
    """Pass-through (float16 depth comes out as float32, as from every smoother)."""

    def update(self, depth: np.ndarray, guide: Guide | np.ndarray | None = None) -> np.ndarray:
        if depth.dtype == np.float32:
            return depth
        if not depth.flags.writeable:  # (depth read from Ray's object store: torch takes writable arrays only)
            return depth.astype(np.float32)
        return torch.from_numpy(depth).float().numpy()  # (four times faster than NumPy's astype)

    def reset(self) -> None:
        pass


class EmaSmoothing:
    """out_t = alpha * depth_t + (1 - alpha) * out_{t-1}, per pixel; lags and ghosts on motion by design."""

    def __init__(self, alpha: float = 0.5):
        if not 0 < alpha <= 1:
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._state: np.ndarray | None = None

    def update(self, depth: np.ndarray, guide: Guide | np.ndarray | None = None) -> np.ndarray:
        if self._state is None or self._state.shape != depth.shape:
            self._state = depth.astype(np.float32, copy=True)
        else:
            self._state += self.alpha * (depth - self._state)
        return self._state.copy()

    def reset(self) -> None:
        self._state = None


class AlignedSmoothing:
    """Scale/shift-aligned, motion-gated temporal smoothing with scene-cut reset (the default).

    Written in torch so it runs where the depth is: `device="cuda"` keeps its state and arithmetic on the GPU (the
    pipeline's sink does this when the model runs on one); numpy input gives numpy output, tensors give tensors.
    """

    runs_on_device = True
    uses_guide = True  # the sink makes a Guide for it (the others never look at the picture)

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
        # Depth in metres (the sink sets this for metric models). Relative depth has an unknown scale and shift per
        # frame, fitted to the last output; metres have none, so nothing is fitted: the output keeps the model's
        # metres, and a real change of distance (the camera moving 20% closer) passes on its frame instead of being
        # fitted away. Metres are smoothed as their logarithm, where a model's errors (a few per cent of the
        # distance) are the same size near and far, so the noise gate measures them
        metric: bool = False,
        device: str | torch.device = "cpu",
    ):
        if not 0 <= strength < 1 or not 0 <= anchor <= 1:
            raise ValueError("aligned smoother: strength must be in [0, 1) and anchor in [0, 1]")
        self.strength, self.anchor = strength, anchor
        self.motion_low, self.motion_high = motion_low, motion_high
        self.noise_gate = noise_gate
        self.cut_histogram, self.cut_residual = cut_histogram, cut_residual
        self.samples = samples
        self.metric = metric
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed)
        self.cut_detected = False
        self.cuts: list[int] = []  # frame numbers (since the last reset()) where a cut was detected
        self.reset()

    def reset(self) -> None:
        self._output = self._gray = self._histogram = self._sample_index = None
        self._gray_unit = 1.0
        self._buffers: dict[str, torch.Tensor] = {}
        self._frame = 0
        self.cuts = []

    # .................................................................................................................

    @torch.inference_mode()
    def update(self, depth, guide: Guide | np.ndarray | None = None):
        as_numpy = isinstance(depth, np.ndarray)
        # A float32 copy that this smoother owns (it is scaled in place): never the caller's array (which may be a
        # read-only view of Ray's object store: only read here, so torch's warning about it says nothing)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            depth = torch.as_tensor(depth).to(self.device, torch.float32, copy=True)
        if guide is not None and not isinstance(guide, Guide):
            guide = Guide.of_frame(np.asarray(guide), tuple(depth.shape))  # an RGB frame
        if self.metric:
            depth.clamp_(min=METRIC_FLOOR_M).log_()
        smoothed = self._update(depth, guide)
        if self.metric:
            smoothed = smoothed.exp()  # (a new tensor: the state stays in log-metres)
        return smoothed.cpu().numpy() if as_numpy else smoothed.clone()

    def _update(self, depth: torch.Tensor, guide: Guide | None) -> torch.Tensor:
        gray = torch.as_tensor(guide.gray, device=self.device) if guide is not None else None
        histogram = _colour_histogram(guide.colours) if guide is not None else None
        previous = self._output
        self.cut_detected = False
        if previous is None or previous.shape != depth.shape:
            return self._restart(depth, guide, gray, histogram, cut=False)
        if histogram is not None and 0.5 * np.abs(histogram - self._histogram).sum() > self.cut_histogram:
            return self._restart(depth, guide, gray, histogram, cut=True)

        # The fit runs on the host in float64 over a few thousand pixels (one transfer from a GPU, not dozens of
        # tiny kernels and synchronising reads)
        raw_samples, previous_samples = torch.stack(
            [depth.reshape(-1)[self._sample_index], previous.reshape(-1)[self._sample_index]]).cpu().double().numpy()
        scale, shift = (1.0, 0.0) if self.metric else _robust_fit(raw_samples, previous_samples)
        residual = scale * raw_samples + shift - previous_samples
        low_decile, high_decile = quantiles(previous_samples, (0.1, 0.9))
        spread = high_decile - low_decile + 1e-6
        if lower_median(np.abs(residual)) / spread > self.cut_residual:
            return self._restart(depth, guide, gray, histogram, cut=True)
        # Anchor: lean the mapping towards the raw frame's own, so the output's scale follows the video slowly
        scale, shift = scale ** (1 - self.anchor), shift * (1 - self.anchor)
        aligned = depth if self.metric else _affine_(depth, scale, shift)

        # Per-pixel weight of the past, strength where depth and picture hold still, falling to 0 through the two
        # gates; out = aligned + weight * (previous - aligned). Every pass over the map costs about as much as the
        # arithmetic in it, so the passes are few, in place, and into buffers kept from frame to frame
        noise = 1.4826 * lower_median(np.abs(residual - lower_median(residual))) + 1e-6
        low, high = self.noise_gate
        change = torch.sub(previous, aligned, out=self._scratch("change", aligned))
        weight = torch.abs(change, out=self._scratch("weight", aligned))
        _affine_(weight, -1.0 / ((high - low) * noise), high / (high - low)).clamp_(0.0, 1.0)
        if gray is not None:
            # The motion gate on the 5 x 5 sum of luma changes: grey levels = sum * unit / 25
            span = self.motion_high - self.motion_low
            per_step = self.strength * self._gray_unit / (25.0 * span)
            motion = self._motion_sum(gray, self._gray, self._scratch("motion", aligned))
            gate = _affine_(motion, -per_step, self.strength * self.motion_high / span)
            weight.mul_(gate.clamp_(0.0, self.strength))
        else:
            weight.mul_(self.strength)
        self._output = aligned.addcmul_(weight, change)
        self._gray, self._histogram = gray, histogram
        self._frame += 1
        return self._output

    def _scratch(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A float32 buffer the shape of `like`, kept for the next frame (fresh ones cost page faults on a CPU)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != like.shape or buffer.device != like.device:
            buffer = self._buffers[name] = torch.empty_like(like)
        return buffer

    def _restart(self, depth, guide, gray, histogram, cut: bool) -> torch.Tensor:
        if cut:
            self.cut_detected = True
            self.cuts.append(self._frame)
        self._output = depth
        self._gray, self._histogram = gray, histogram
        self._gray_unit = guide.gray_unit if guide is not None else 1.0
        count = min(self.samples, depth.numel())
        self._sample_index = torch.randperm(depth.numel(), generator=self._generator)[:count].to(self.device)
        self._frame += 1
        return self._output

    @staticmethod
    def _motion_sum(gray_hw: torch.Tensor, previous_hw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Absolute luma change (uint8 maps) summed over 5 x 5 pixels with replicated borders, as float32 in `out`: a
        lone noisy pixel should not count as motion.

        On a CPU, OpenCV on the uint8 maps (difference, then a box sum in 16 bits: a few times faster than the same
        in float32, which was in turn several times faster than torch there); on a GPU, shifted sums. (Replicated,
        not mirrored: mirroring needs three pixels each way; a video can be 1 pixel wide.)
        """
        if gray_hw.device.type == "cpu":
            difference = cv2.absdiff(gray_hw.numpy(), previous_hw.numpy())
            summed = cv2.boxFilter(difference, cv2.CV_16U, (5, 5), normalize=False, borderType=cv2.BORDER_REPLICATE)
            return out.copy_(torch.from_numpy(summed))
        difference = (gray_hw.float() - previous_hw.float()).abs_()
        padded = F.pad(difference[None, None], (2, 2, 2, 2), mode="replicate")[0, 0]
        height, width = gray_hw.shape
        rows = sum(padded[:, k : k + width] for k in range(5))
        return out.copy_(sum(rows[k : k + height] for k in range(5)))


def _affine_(values: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """values * scale + offset, in place and in one pass over memory (mul_ then add_ is two: about 0.06 ms more a
    518 x 924 map on a CPU core)."""
    return torch.add(torch.tensor(offset, dtype=values.dtype), values, alpha=scale, out=values)


def _colour_histogram(colours_n3: np.ndarray) -> np.ndarray:
    """8x8x8 colour histogram of the sampled pixels, normalised to sum 1."""
    bins = np.asarray(colours_n3).astype(np.intp) >> 5
    counts = np.bincount(bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2], minlength=512).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _robust_fit(x: np.ndarray, y: np.ndarray, iterations: int = 4) -> tuple[float, float]:
    """y ~ scale * x + shift on the pixels that agree: moving pixels are outliers.

    Iteratively reweighted least squares (Huber weights) finds the inliers; the scale is then the ratio of their
    spreads (reduced major axis: sign(cov) * std(y) / std(x)), not the least-squares slope. The least-squares
    slope shrinks towards zero whenever x is noisy (regression dilution), and as every frame's scale builds on
    the last one's, that shrinkage compounded: the output faded towards zero over a few seconds of video.
    """
    weights = np.ones_like(x)
    for _ in range(iterations):
        total = weights.sum()
        mean_x, mean_y = (weights @ x) / total, (weights @ y) / total
        centred_x = x - mean_x
        variance = weights @ (centred_x * centred_x)
        if variance <= 1e-12:
            return 1.0, float(mean_y - mean_x)
        scale_t = (weights @ (centred_x * (y - mean_y))) / variance
        residual = np.abs(scale_t * x + (mean_y - scale_t * mean_x) - y)
        threshold = 1.345 * 1.4826 * lower_median(residual) + 1e-12
        weights = np.minimum(threshold / np.maximum(residual, 1e-12), 1.0)
    total = weights.sum()
    mean_x, mean_y = (weights @ x) / total, (weights @ y) / total
    centred_x, centred_y = x - mean_x, y - mean_y
    variance_x = weights @ (centred_x * centred_x)
    covariance = weights @ (centred_x * centred_y)
    if variance_x <= 1e-12 or covariance <= 0:
        # A degenerate frame (flat, or a cut the histogram missed): keep the frame's own scale
        return 1.0, 0.0
    variance_y = weights @ (centred_y * centred_y)
    # How far the fit is trusted: r^2 of the inliers. A frame that hardly resembles the last one (motion everywhere)
    # keeps more of its own scale
    trust = covariance**2 / max(variance_x * variance_y, 1e-30)
    scale = np.sqrt(variance_y / variance_x) ** trust
    return float(scale), float(mean_y - scale * mean_x)


SMOOTHERS = {"none": NoSmoothing, "ema": EmaSmoothing, "aligned": AlignedSmoothing}
DEFAULT_SMOOTHER = "aligned"
SMOOTHER_NAMES = ("default", *SMOOTHERS)


def smoother_for(name: str, model: dict | None) -> str:
    """The smoother a stream runs: the default is none for a video model (`model["temporal"]`: its depth is
    consistent over time already), the aligned smoother for the others; one named is run whatever the model."""
    return "none" if name == "default" and (model or {}).get("temporal") else name


def make_smoother(name: str | None = None, device: str | None = None, **params) -> Smoother:
    """A smoother by name (`None` or "default" gives the default); unknown names and parameters are errors.

    `device` ("cpu", "cuda") is where a smoother that can run in torch keeps its state; others ignore it.
    """
    name = DEFAULT_SMOOTHER if name in (None, "default") else name
    if name not in SMOOTHERS:
        raise ValueError(f"unknown smoother {name!r}; expected one of {', '.join(SMOOTHER_NAMES)}")
    accepted = [p for p in inspect.signature(SMOOTHERS[name]).parameters if p != "device"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"smoother {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(accepted) or 'none'}")
    if device is not None and getattr(SMOOTHERS[name], "runs_on_device", False):
        params = {**params, "device": device}
    try:
        return SMOOTHERS[name](**params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"smoother {name!r}: {error}") from None
