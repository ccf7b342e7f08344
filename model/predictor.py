"""
A ready-to-run depth predictor: frames in, depth at frame size out, with the precision and compilation choices.

Takes: uint8 RGB frames B x H x W x 3 (torch tensor; moved to the model's device if it is not there).
Gives: float32 relative inverse depth B x H x W on the model's device (or B x h x w at model size).

Precision: "float32" (faithful; TF32 matmuls on a GPU), "bfloat16" (CPUs with AVX512-BF16/AMX and GPUs), "float16"
(GPU only), or "auto": float16 on a GPU, float32 on a CPU.
Reduced precision runs under autocast, on a GPU as on a CPU: matrix products and convolutions in half precision,
while DINOv2's residual stream (the layer scales are float32), LayerNorm, softmax statistics, the motion modules'
sums and the position-table resampling stay in float32. That is how the original runs Video Depth Anything in
float16, and what keeps the residual stream's large activations finite: with every weight cast to float16 a residual
past 65504 (real checkpoints' outliers grow through the blocks) overflows to inf and the depth turns NaN
(tests/test_gpu_path.py). `cast_weights=True` casts every weight once instead (less work a call; the device check's
section c measures what autocast's casts cost), for models known to stay in range.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn

from .depth_anything import DepthAnything
from .transforms import model_input_size, prepare_frames, resize_depth

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PredictorOptions:
    """How the model is run: short side fed to it, grid rounding, arithmetic precision, torch.compile."""

    input_size: int = 518
    even_grid: bool = False
    precision: str = "float32"
    compile: bool = False
    # Reduced precision by casting every weight once (LayerNorm's too) instead of autocast: less work a call, but the
    # residual stream in half precision too (see the module docstring). Off unless asked for
    cast_weights: bool = False

    def __post_init__(self):
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"unknown precision {self.precision!r}; expected auto or one of {sorted(PRECISIONS)}")
        if self.input_size < 14 or self.input_size % 14:
            raise ValueError(f"input size {self.input_size} must be a positive multiple of 14")


class DepthPredictor:
    """Wraps a loaded `DepthAnything` for inference on batches of frames of one size."""

    def __init__(self, net: DepthAnything, options: PredictorOptions = PredictorOptions()):
        self.net = net.eval()
        # (a module's weights say where it runs; an ONNX Runtime network has none, a buffer of its own says it)
        self.device = next(itertools.chain(net.parameters(), net.buffers())).device
        if options.precision == "auto":  # float16 on a GPU; float32 (faithful) on a CPU
            options = replace(options, precision="float16" if self.device.type == "cuda" else "float32")
        self.options = options
        if options.precision == "float16" and self.device.type != "cuda":
            raise ValueError("float16 needs a CUDA device; use bfloat16 on the CPU")
        if self.device.type == "cuda":
            # A stream keeps one input size for thousands of frames: cuDNN picks its fastest convolution per size once
            torch.backends.cudnn.benchmark = True
        if self.device.type == "cuda" and options.precision == "float32":
            # TF32 tensor cores for float32 matmuls and convolutions (Ampere and later): relative error ~1e-3
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._cast = options.precision != "float32" and options.cast_weights
        if self._cast:
            cast_weights_once(net, PRECISIONS[options.precision])
        self._forward = torch.compile(net, dynamic=False) if options.compile else net

    def input_size_for(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return model_input_size(frame_hw, self.options.input_size, self.net.config.patch_size, self.options.even_grid)

    def autocast(self):
        """The autocast context for the chosen precision (a no-op for float32 and for weights cast once)."""
        if self.options.precision == "float32" or self._cast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.options.precision])

    @torch.inference_mode()
    def predict(self, frames_bhwc: torch.Tensor, at_frame_size: bool = True) -> torch.Tensor:
        """uint8 RGB frames B x H x W x 3 -> float32 depth B x H x W (or B x h x w, the network's resolution)."""
        depth_bhw = self.forward(self.prepare(frames_bhwc))
        return resize_depth(depth_bhw, tuple(frames_bhwc.shape[1:3])) if at_frame_size else depth_bhw

    __call__ = predict

    @torch.inference_mode()
    def prepare(self, frames_bhwc: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames B x H x W x 3 -> the network's input B x 3 x h x w on its device, in its dtype: h x w from
        the frame's size (`input_size_for`), so frames of different sizes with one aspect ratio (1080p and 720p) give
        inputs of one size, which can go through the network together (torch.cat, then `forward`)."""
        frame_hw = tuple(frames_bhwc.shape[1:3])
        image_bchw = prepare_frames(frames_bhwc.to(self.device, non_blocking=True), self.input_size_for(frame_hw))
        return image_bchw.to(PRECISIONS[self.options.precision]) if self._cast else image_bchw

    @torch.inference_mode()
    def forward(self, image_bchw: torch.Tensor) -> torch.Tensor:
        """The network on prepared input (`prepare`) -> float32 depth B x h x w at the network's resolution."""
        with self.autocast():
            depth_bhw = self._forward(image_bchw)
        return depth_bhw.float()


def cast_weights_once(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every weight to `dtype`, LayerNorm's included. CUDA's layer norm refuses parameters of another dtype than its
    input (PyTorch issue 135969; only the CPU kernel takes the mix), and for half-precision input it computes the
    mean and variance in float32 anyway, so the statistics keep float32's accuracy (tests/test_cuda_rules.py compares
    this with normalising in float32 and casting back: no less accurate, without two extra casts a norm)."""
    return net.to(dtype)
