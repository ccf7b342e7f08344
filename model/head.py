"""
Monocular depth head of Depth-Anything: turns the fused feature map into one channel of depth.

Takes: the fusion output B x F x 8gh x 8gw and the patch grid (gh, gw).
Gives: depth B x 14gh x 14gw at the input image size: relative inverse depth (>= 0, larger is nearer), or, for a
metric head (Depth Anything V2's metric models), metres in (0, max_depth) (larger is farther).

The DPT head doubles the fusion output (8 x 2 = 16 px patches). Depth-Anything's patches are 14 px, so it resizes
by 1.75 (8 x 1.75 = 14) instead, to exactly 14 x the grid, with bilinear align_corners=True.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import HEAD_HIDDEN_WIDTH


class MonocularDepthHead(nn.Module):
    """3x3 conv F -> F/2, resize to 14 px per patch, 3x3 conv -> 32, ReLU, 1x1 conv -> 1, then ReLU (relative) or
    sigmoid x max_depth (metric). The two heads have the same weights: only the checkpoint's config tells them apart."""

    def __init__(self, fusion_width: int, hidden_width: int = HEAD_HIDDEN_WIDTH, patch_size: int = 14,
                 max_depth: float | None = None, float32_tail: bool = False):
        """`float32_tail`: the convolutions after the resize run in float32 even under autocast, the result cast
        back (Video Depth Anything's head does so)."""
        super().__init__()
        self.patch_size = patch_size
        self.max_depth = max_depth
        self.float32_tail = float32_tail
        self.halve_width = nn.Conv2d(fusion_width, fusion_width // 2, kernel_size=3, padding=1)
        self.hidden_conv = nn.Conv2d(fusion_width // 2, hidden_width, kernel_size=3, padding=1)
        self.proj_1ch = nn.Conv2d(hidden_width, 1, kernel_size=1)

    def forward(self, fused_bfhw: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        output_hw = (grid_hw[0] * self.patch_size, grid_hw[1] * self.patch_size)
        hidden = F.interpolate(self.halve_width(fused_bfhw), size=output_hw, mode="bilinear", align_corners=True)
        if self.float32_tail:
            with torch.autocast(hidden.device.type, enabled=False):
                logits = _conv(self.proj_1ch, F.relu(_conv(self.hidden_conv, hidden.float())))
            return F.relu(logits).to(hidden.dtype).squeeze(1)
        hidden = F.relu(self.hidden_conv(hidden))
        logits = self.proj_1ch(hidden)
        if self.max_depth is None:
            return F.relu(logits).squeeze(1)
        return (torch.sigmoid(logits) * self.max_depth).squeeze(1)


def _conv(conv: nn.Conv2d, input_bchw: torch.Tensor) -> torch.Tensor:
    """`conv` in float32 whatever its weights were cast to (weights cast once to half precision included)."""
    return F.conv2d(input_bchw, conv.weight.float(), conv.bias.float(), conv.stride, conv.padding)
