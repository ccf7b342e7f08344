"""
Reassembly stage of the DPT decoder ("Vision Transformers for Dense Prediction", arXiv 2103.13413, section 3):
turns the four tapped token sets back into image-like feature maps at four resolutions.

Takes: four tensors B x N x D (patch tokens only, N = gh*gw) and the patch grid (gh, gw).
Gives: four maps B x F x h_k x w_k, with (h_k, w_k) = (4gh, 4gw), (2gh, 2gw), (gh, gw), (ceil(gh/2), ceil(gw/2)).

Each stage: tokens -> B x D x gh x gw (row-major), 1x1 conv D -> C_k, resample (transposed conv x4, transposed conv
x2, nothing, or a stride-2 3x3 conv), then a bias-free 3x3 conv C_k -> F so all maps share the fusion width.
Depth-Anything ignores the readout (class) token, the "ignore" option of the DPT paper, so no readout projection.
"""

from __future__ import annotations

import torch
from torch import nn


def make_resampler(stage_index: int, channels: int) -> nn.Module:
    """Stage 0 upsamples x4, stage 1 x2, stage 2 keeps the grid, stage 3 halves it (rounding up for odd grids)."""
    if stage_index == 0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if stage_index == 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if stage_index == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class ReassemblyStage(nn.Module):
    """Tokens B x N x D -> map B x F x h x w for one decoder resolution."""

    def __init__(self, stage_index: int, embed_dim: int, stage_width: int, fusion_width: int):
        super().__init__()
        self.project = nn.Conv2d(embed_dim, stage_width, kernel_size=1)
        self.resample = make_resampler(stage_index, stage_width)
        self.to_fusion_width = nn.Conv2d(stage_width, fusion_width, kernel_size=3, padding=1, bias=False)

    def forward(self, patch_tokens_bnd: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        return self.to_fusion_width(self.resampled(patch_tokens_bnd, grid_hw))

    def resampled(self, patch_tokens_bnd: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The map before its conv to the fusion width, B x C_k x h x w (where Video Depth Anything's motion
        modules act)."""
        batch, _, embed_dim = patch_tokens_bnd.shape
        image_like_bdhw = patch_tokens_bnd.transpose(1, 2).reshape(batch, embed_dim, *grid_hw)
        return self.resample(self.project(image_like_bdhw))


class ReassemblyModel(nn.Module):
    """Four token sets -> four feature maps (x4, x2, x1, x0.5 of the patch grid), all F channels wide."""

    def __init__(self, embed_dim: int, stage_widths: tuple[int, int, int, int], fusion_width: int):
        super().__init__()
        self.stages = nn.ModuleList(
            ReassemblyStage(index, embed_dim, width, fusion_width) for index, width in enumerate(stage_widths)
        )

    def forward(self, tapped_tokens: list[torch.Tensor], grid_hw: tuple[int, int]) -> list[torch.Tensor]:
        return [stage(tokens_bnd, grid_hw) for stage, tokens_bnd in zip(self.stages, tapped_tokens)]
