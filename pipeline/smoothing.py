"""
Temporal smoothing of per-frame depth: a streaming, causal, stateful stage, fed in frame order.

Takes: `update(depth, rgb=None)` with depth H x W float32 relative inverse depth (rgb: the H x W x 3 uint8 frame).
Gives: the smoothed H x W float32 depth for that frame; `reset()` forgets the past (scene cut, new stream).

    from pipeline.smoothing import make_smoother
    smoother = make_smoother("ema", alpha=0.4)

Methods: `none` (pass-through) and `ema` (a fixed per-pixel exponential moving average, the plain baseline).
"""

from __future__ import annotations

from typing import Protocol

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


SMOOTHERS = {"none": NoSmoothing, "ema": EmaSmoothing}
DEFAULT_SMOOTHER = "ema"


def make_smoother(name: str | None = None, **params) -> Smoother:
    """A smoother by name (`None` or "default" gives the default); unknown names and parameters are errors."""
    name = DEFAULT_SMOOTHER if name in (None, "default") else name
    if name not in SMOOTHERS:
        raise ValueError(f"unknown smoother {name!r}; expected one of {['default', *SMOOTHERS]}")
    try:
        return SMOOTHERS[name](**params)
    except TypeError as error:
        raise ValueError(f"smoother {name!r}: {error}") from None
