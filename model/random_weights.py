"""
Seeded random weights for tests, benchmarks and the demo (real weights cannot be downloaded everywhere).

Takes: any module (ours or the transformers reference) and a seed.
Gives: the same module with every tensor drawn again, so that nothing is an identity: norm gains and biases,
LayerScale vectors, biases and the position table are all random, not just the matrices.

The output of a randomly weighted model is *not* depth: it only exercises the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from .config import make_config
from .depth_anything import DepthAnything
from .video_depth_anything import VideoDepthAnything


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every parameter in place (sorted by name, so the draw does not depend on registration order)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    for name, param in sorted(module.named_parameters()):
        shape = param.shape
        if param.ndim == 3:  # class token, position table (std 0.5 as real DINOv2 tables are far from smooth)
            value = normal(shape, 0.5)
        elif param.ndim >= 2:
            # Transposed convs store (in, out, k, k); either way keep activations near unit scale
            fan_in = shape[0 if isinstance(_owner(module, name), nn.ConvTranspose2d) else 1] * math.prod(shape[2:])
            value = normal(shape, 1.0 / math.sqrt(fan_in))
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + normal(shape, 0.1)
        elif shape == (1,):  # the single output bias: positive, so the final ReLU passes most pixels
            value = 0.5 + normal(shape, 0.1).abs()
        else:
            value = normal(shape, 0.1)
        param.copy_(value.to(param.dtype))
    return module


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else module


def random_model(variant: str = "vits", seed: int = 0, version: str = "v1",
                 max_depth: float | None = None) -> DepthAnything:
    """A randomly weighted model of a released variant, in eval mode on the CPU (`max_depth`: a metric head)."""
    return randomize_(DepthAnything(make_config(variant, version, max_depth)), seed).eval()


def random_video_model(variant: str = "vits", seed: int = 0) -> VideoDepthAnything:
    """A randomly weighted Video Depth Anything (v2 taps), every tensor drawn: the motion modules' output
    projections, zero in an untrained model, too, so that the temporal attention changes the depth."""
    return randomize_(VideoDepthAnything(replace(make_config(variant, "v2"), temporal=True)), seed).eval()
