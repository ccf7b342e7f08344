"""
Depth-Anything ("Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", arXiv 2401.10891): a DPT
decoder on a DINOv2 encoder, assembled from its five components.

Takes: B x 3 x H x W float, ImageNet-normalised RGB, H and W multiples of 14 (any aspect ratio, odd or even grids).
Gives: B x H x W relative inverse depth (>= 0, larger is nearer, unknown scale and shift per image), or, with a
metric head (`config.max_depth`, Depth Anything V2's metric models), depth in metres (larger is farther).

    image -> PatchEmbed -> ImageEncoder (4 taps) -> ReassemblyModel (4 maps) -> FusionModel -> MonocularDepthHead

The original ends with a resize to the input size and another ReLU; both are exact no-ops at H = 14gh, W = 14gw,
so they are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DepthAnythingConfig
from .fusion import FusionModel
from .head import MonocularDepthHead
from .image_encoder import ImageEncoder
from .patch_embed import PatchEmbed
from .reassembly import ReassemblyModel


class DepthAnything(nn.Module):
    """The whole network; `forward(image_bchw) -> depth_bhw`."""

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.embed_dim, config.patch_size, config.base_grid)
        self.image_encoder = ImageEncoder(
            config.embed_dim,
            config.num_blocks,
            config.num_heads,
            config.tap_blocks,
            config.mlp_ratio,
            config.layer_norm_eps,
        )
        self.reassembly = ReassemblyModel(config.embed_dim, config.reassembly_widths, config.fusion_width)
        self.fusion = FusionModel(config.fusion_width)
        self.head = MonocularDepthHead(config.fusion_width, patch_size=config.patch_size, max_depth=config.max_depth)
        # NHWC convolution weights: the decoder's large 3x3 convs run 1.4x (float32) to 1.7x (bf16) faster on CPU
        # (oneDNN) and suit cuDNN's tensor cores; loading a checkpoint copies into these tensors and keeps the layout
        self.to(memory_format=torch.channels_last)

    def forward(self, image_bchw: torch.Tensor) -> torch.Tensor:
        tokens_btd, grid_hw = self.patch_embed(image_bchw)
        tapped_tokens = self.image_encoder(tokens_btd)
        feature_maps = self.reassembly(tapped_tokens, grid_hw)
        return self.head(self.fusion(feature_maps), grid_hw)
