"""
A synthetic video with known inverse depth, degraded the way Depth-Anything's per-frame output is, and the metrics
that say whether a temporal smoother removes flicker without lag, ghosting or missed cuts.

Takes: sizes and seeds. Gives: `Sequence` (truth T x H x W, observed T x H x W, rgb T x H x W x 3, masks) and
`evaluate(outputs, sequence)` -> dict of metrics. Shared by benchmarks/temporal_quality.py and the tests.

Scene (shot 1, then a hard cut to shot 2): a static floor (inverse depth grows towards the bottom), three boxes
moving at 1, 3 and 6 px per frame, a disc approaching the camera, a near bar sweeping across the frame (it uncovers
pixels: ghosting), and a box that appears suddenly (a depth step: lag). Degradation: per-frame random scale and
shift (AR(1) over time plus independent jitter), smooth spatial noise and white noise, new every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Sequence:
    truth: np.ndarray  # T x H x W float32 inverse depth
    observed: np.ndarray  # T x H x W float32, degraded
    rgb: np.ndarray  # T x H x W x 3 uint8
    cut_frames: list[int]
    step_frame: int
    step_mask: np.ndarray  # H x W: where the sudden box appears
    sweep_masks: np.ndarray  # T x H x W bool: covered by the sweeping bar


def _shot(height, width, frames, rng, start, style):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    floor = (0.5 + 1.5 * ys / height) if style == 0 else (0.4 + 1.2 * xs / width)
    texture = (np.sin(xs / 3.1) * np.cos(ys / 2.3) * 40).astype(np.float32)
    base_colour = np.array([90, 140, 60] if style == 0 else [60, 90, 160], np.float32)
    truth = np.empty((frames, height, width), np.float32)
    rgb = np.empty((frames, height, width, 3), np.uint8)
    sweep = np.zeros((frames, height, width), bool)
    step_mask = np.zeros((height, width), bool)
    for t in range(frames):
        depth = floor.copy()
        image = base_colour + texture[..., None] + (floor * 30)[..., None]
        for row, speed, value, colour in ((0.15, 1, 2.2, (200, 60, 60)), (0.4, 3, 2.6, (60, 200, 200)),
                                          (0.62, 6, 3.0, (220, 220, 60))):
            x0 = int((start * speed + t * speed) % (width + 20)) - 20
            box = (ys >= row * height) & (ys < row * height + height // 8) & (xs >= x0) & (xs < x0 + width // 8)
            depth[box], image[box] = value, colour
        radius = height * (0.06 + 0.15 * t / frames)
        disc = (xs - 0.75 * width) ** 2 + (ys - 0.3 * height) ** 2 < radius**2
        depth[disc], image[disc] = 1.5 + 2.0 * t / frames, (250, 140, 20)
        bar_x = int(width * 1.2 * t / frames) - width // 10
        bar = (xs >= bar_x) & (xs < bar_x + width // 10)
        depth[bar], image[bar] = 4.0, (30, 30, 30)
        sweep[t] = bar
        if style == 0 and t >= frames // 2:  # the sudden box: a depth step at a fixed place
            step_mask = (ys >= 0.8 * height) & (ys < 0.95 * height) & (xs >= 0.1 * width) & (xs < 0.3 * width)
            depth[step_mask], image[step_mask] = 3.5, (240, 240, 240)
        truth[t] = depth
        rgb[t] = np.clip(image, 0, 255).astype(np.uint8)
    return truth, rgb, sweep, step_mask


def make_sequence(height: int = 120, width: int = 160, frames_per_shot: int = 48, seed: int = 0) -> Sequence:
    rng = np.random.default_rng(seed)
    truth_a, rgb_a, sweep_a, step_mask = _shot(height, width, frames_per_shot, rng, 0, 0)
    truth_b, rgb_b, sweep_b, _ = _shot(height, width, frames_per_shot, rng, 7, 1)
    truth = np.concatenate([truth_a, truth_b])
    rgb = np.concatenate([rgb_a, rgb_b])
    frames = len(truth)

    log_scale, shift = np.zeros(frames), np.zeros(frames)
    for t in range(1, frames):  # correlated drift (AR(1)) ...
        log_scale[t] = 0.9 * log_scale[t - 1] + rng.normal(0, 0.05)
        shift[t] = 0.9 * shift[t - 1] + rng.normal(0, 0.05)
    log_scale += rng.normal(0, 0.05, frames)  # ... plus independent jitter
    shift += rng.normal(0, 0.05, frames)
    observed = np.empty_like(truth)
    for t in range(frames):
        smooth = cv2.resize(rng.normal(0, 0.06, (height // 16, width // 16)).astype(np.float32), (width, height),
                            interpolation=cv2.INTER_CUBIC)
        white = rng.normal(0, 0.03, (height, width)).astype(np.float32)
        observed[t] = np.exp(log_scale[t]) * (truth[t] + smooth + white) + shift[t]
    return Sequence(truth, observed, rgb, [frames_per_shot], frames_per_shot // 2, step_mask,
                    np.concatenate([sweep_a, sweep_b]))


def _shots(sequence: Sequence) -> list[tuple[int, int]]:
    edges = [0, *sequence.cut_frames, len(sequence.truth)]
    return list(zip(edges[:-1], edges[1:]))


def to_truth_units(outputs: np.ndarray, sequence: Sequence) -> np.ndarray:
    """One least-squares scale and shift per shot, mapping a method's output onto the truth."""
    mapped = np.empty_like(outputs, dtype=np.float64)
    for start, end in _shots(sequence):
        out, truth = outputs[start:end].ravel().astype(np.float64), sequence.truth[start:end].ravel()
        scale, shift = np.linalg.lstsq(np.stack([out, np.ones_like(out)], 1), truth, rcond=None)[0]
        mapped[start:end] = outputs[start:end] * scale + shift
    return mapped


def evaluate(outputs: np.ndarray, sequence: Sequence, cuts_detected: list[int] | None = None) -> dict:
    truth = sequence.truth.astype(np.float64)
    mapped = to_truth_units(outputs, sequence)
    depth_range = np.percentile(truth, 99) - np.percentile(truth, 1)
    pairs = [t for t in range(1, len(truth)) if t not in sequence.cut_frames]
    static = [(truth[t] == truth[t - 1]) & (truth[t - 1] == truth[max(t - 2, 0)]) for t in pairs]
    flicker = np.mean([np.abs(mapped[t] - mapped[t - 1])[m].mean() for t, m in zip(pairs, static)])
    gradient = np.mean([np.abs((mapped[t] - mapped[t - 1]) - (truth[t] - truth[t - 1])).mean() for t in pairs])
    abs_rel = np.mean(np.abs(mapped - truth) / truth)
    uncovered = [sequence.sweep_masks[t - 1] & ~sequence.sweep_masks[t] for t in pairs]
    ghost = np.mean([np.abs(mapped[t] - truth[t])[m].mean() / depth_range for t, m in zip(pairs, uncovered) if m.any()])
    # Lag: frames until the output covers 90% of its own jump (from its level before the step to where it settles),
    # so a method's overall scale does not count as lag
    step, mask = sequence.step_frame, sequence.step_mask
    before = mapped[step - 1][mask].mean()
    after = np.mean([mapped[t][mask].mean() for t in range(step + 4, step + 8)])
    lag = next((k for k in range(0, 10)
                if (mapped[step + k][mask].mean() - before) >= 0.9 * (after - before)), 10)
    return {
        "static flicker %": 100 * flicker / depth_range,
        "temporal gradient error %": 100 * gradient / depth_range,
        "AbsRel": abs_rel,
        "ghosting error %": 100 * ghost,
        "lag (frames)": lag,
        "cuts detected": cuts_detected,
    }
