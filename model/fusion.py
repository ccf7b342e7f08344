"""
Fusion stage of the DPT decoder (RefineNet-style blocks, "Vision Transformers for Dense Prediction", figure 1):
merges the four reassembled maps from the coarsest to the finest.

Takes: four maps B x F x h_k x w_k from the reassembly, finest first: (4gh, 4gw), (2gh, 2gw), (gh, gw), (ceil(gh/2), ..).
Gives: one map B x F x 8gh x 8gw.

Each block adds a residual-refined skip map to the path coming from the coarser block, refines the sum, resizes it
(bilinear, align_corners=True) and mixes channels with a 1x1 conv. Depth-Anything's 37-patch grids are odd, so the
coarsest map (ceil(37/2) = 19) is not half of the next one (37): each block resizes to the *size of the next map*
rather than by a fixed x2, which is the same thing on even grids. The last block, with no next map, doubles.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), both convs 3x3 with bias; B x F x h x w in and out."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)

    def forward(self, feature_map_bfhw: torch.Tensor) -> torch.Tensor:
        # Not in place: the input is needed again for the residual sum
        hidden = self.conv1(F.relu(feature_map_bfhw))
        return self.conv2(F.relu(hidden)) + feature_map_bfhw


class FusionBlock(nn.Module):
    """(path from the coarser block or None, skip map) -> fused map resized to `output_hw`."""

    def __init__(self, width: int, has_path_input: bool = True):
        super().__init__()
        # The coarsest block receives no path from above, only its own map: it has no unit for a second input
        self.skip_refine = ResidualConvUnit(width) if has_path_input else None
        self.fused_refine = ResidualConvUnit(width)
        self.out_proj = nn.Conv2d(width, width, kernel_size=1)

    def forward(self, path_bfhw: torch.Tensor | None, skip_bfhw: torch.Tensor, output_hw: tuple[int, int]):
        fused_bfhw = skip_bfhw if path_bfhw is None else path_bfhw + self.skip_refine(skip_bfhw)
        fused_bfhw = self.fused_refine(fused_bfhw)
        fused_bfhw = F.interpolate(fused_bfhw, size=output_hw, mode="bilinear", align_corners=True)
        return self.out_proj(fused_bfhw)


class FusionModel(nn.Module):
    """Four reassembled maps (finest first) -> B x F x 8gh x 8gw; `blocks[k]` fuses reassembly map k."""

    def __init__(self, width: int):
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(width, has_path_input=index < 3) for index in range(4))

    def forward(self, maps_fine_to_coarse: list[torch.Tensor]) -> torch.Tensor:
        finest_h, finest_w = maps_fine_to_coarse[0].shape[-2:]
        # Each block lands on the size of the next finer map; the finest block doubles
        output_sizes = [(2 * finest_h, 2 * finest_w)] + [tuple(m.shape[-2:]) for m in maps_fine_to_coarse[:3]]
        path_bfhw = None
        for index in (3, 2, 1, 0):
            path_bfhw = self.blocks[index](path_bfhw, maps_fine_to_coarse[index], output_sizes[index])
        return path_bfhw
