"""
A ready-to-run depth predictor: frames in, depth at frame size out, with the precision and compilation choices.

Takes: uint8 RGB frames B x H x W x 3 (torch tensor; moved to the model's device if it is not there).
Gives: float32 relative inverse depth B x H x W on the model's device (or B x h x w at model size).

Precision: "float32" (faithful; TF32 matmuls on a GPU), "bfloat16" (CPUs with AVX512-BF16/AMX and GPUs), "float16"
(GPU only), or "auto": float16 on a GPU, float32 on a CPU.
Reduced precision runs under autocast, so LayerNorm, softmax statistics and the position-table resampling stay in
float32 while the matrix products and convolutions run in the lower precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch

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

    def __post_init__(self):
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"unknown precision {self.precision!r}; expected auto or one of {sorted(PRECISIONS)}")
        if self.input_size < 14 or self.input_size % 14:
            raise ValueError(f"input size {self.input_size} must be a positive multiple of 14")


class DepthPredictor:
    """Wraps a loaded `DepthAnything` for inference on batches of frames of one size."""

    def __init__(self, net: DepthAnything, options: PredictorOptions = PredictorOptions()):
        self.net = net.eval()
        self.device = next(net.parameters()).device
        if options.precision == "auto":  # float16 on a GPU; float32 (faithful) on a CPU
            options = replace(options, precision="float16" if self.device.type == "cuda" else "float32")
        self.options = options
        if options.precision == "float16" and self.device.type != "cuda":
            raise ValueError("float16 needs a CUDA device; use bfloat16 on the CPU")
        if self.device.type == "cuda" and options.precision == "float32":
            # TF32 tensor cores for float32 matmuls and convolutions (Ampere and later): relative error ~1e-3
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._forward = torch.compile(net, dynamic=False) if options.compile else net

    def input_size_for(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return model_input_size(frame_hw, self.options.input_size, self.net.config.patch_size, self.options.even_grid)

    def autocast(self):
        """The autocast context for the chosen precision (a no-op for float32)."""
        if self.options.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.options.precision])

    @torch.inference_mode()
    def predict(self, frames_bhwc: torch.Tensor, at_frame_size: bool = True) -> torch.Tensor:
        frame_hw = tuple(frames_bhwc.shape[1:3])
        image_bchw = prepare_frames(frames_bhwc.to(self.device, non_blocking=True), self.input_size_for(frame_hw))
        with self.autocast():
            depth_bhw = self._forward(image_bchw)
        depth_bhw = depth_bhw.float()
        return resize_depth(depth_bhw, frame_hw) if at_frame_size else depth_bhw

    __call__ = predict
