"""Stand-in networks for tests that need the model actor's behaviour, not its depth (importable by Ray's workers as
`tests.stand_ins`, unlike a test module)."""

from __future__ import annotations

import time

import torch

from model.config import make_config


class SlowDepth(torch.nn.Module):
    """Normalised B x 3 x h x w in, B x h x w out, one second a pass."""

    def __init__(self):
        super().__init__()
        self.config = make_config("vits")
        self.offset = torch.nn.Parameter(torch.ones(1))  # a parameter, so the predictor finds the device

    def forward(self, image_bchw: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return image_bchw.mean(1) + self.offset


def build_slow_depth() -> torch.nn.Module:
    return SlowDepth()


def build_slow_loading_depth() -> torch.nn.Module:
    """SlowDepth after a 6-second load (a Hub download on a worker node, a large checkpoint)."""
    time.sleep(6.0)
    return SlowDepth()
