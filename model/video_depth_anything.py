"""
Video Depth Anything ("Video Depth Anything: Consistent Depth Estimation for Super-Long Videos", arXiv 2501.12375):
Depth-Anything V2's DINOv2 encoder and DPT decoder with four motion modules in the decoder, so each frame's depth
is made looking at the frames beside it.

Takes: clips B x T x 3 x H x W, ImageNet-normalised RGB, H and W multiples of 14 (any aspect ratio, odd or even
grids), T frames each (the original runs windows of 32); or, streaming, one frame at a time with the earlier frames'
motion-module inputs (`cached`).
Gives: B x T x H x W depth (>= 0): relative inverse depth, or metres for the metric models (same ReLU head: the
metric files differ in their weights only); and each motion module's inputs of these frames, a stream's next cache.

    frames -> PatchEmbed -> ImageEncoder (v2 taps), batched over every frame
           -> reassembly maps; motion modules on the x1 and x0.5 maps, before their 3x3 convs to the fusion width
           -> fusion, coarsest first, a motion module after each of the two coarsest blocks -> head (its last
              convolutions in float32 under autocast, as the original keeps them)

Checked against the original's `VideoDepthAnything` in float64 on seeded random weights
(tests/test_video_depth_anything.py, fixtures made by tests/fixtures/make_vda_fixtures.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DepthAnythingConfig
from .fusion import FusionModel
from .head import MonocularDepthHead
from .image_encoder import ImageEncoder
from .motion_module import MotionModule
from .patch_embed import PatchEmbed
from .reassembly import ReassemblyModel

__all__ = ["VideoDepthAnything"]

MOTION_CACHE_ENTRIES = 8  # four motion modules x two attention blocks: the inputs a stream keeps per frame
FINE_BLOCK_FRAMES = 4  # the finest two fusion blocks and the head take this many frames at a time (memory)


class VideoDepthAnything(nn.Module):
    """`forward(frames_bt3hw) -> depth_bthw`; `encode` and `decode` apart for the streaming mode."""

    def __init__(self, config: DepthAnythingConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.embed_dim, config.patch_size, config.base_grid)
        self.image_encoder = ImageEncoder(config.embed_dim, config.num_blocks, config.num_heads, config.tap_blocks,
                                          config.mlp_ratio, config.layer_norm_eps)
        self.reassembly = ReassemblyModel(config.embed_dim, config.reassembly_widths, config.fusion_width)
        self.fusion = FusionModel(config.fusion_width)
        self.head = MonocularDepthHead(config.fusion_width, patch_size=config.patch_size, float32_tail=True)
        widths = config.reassembly_widths
        self.motion_modules = nn.ModuleList(
            MotionModule(width) for width in (widths[2], widths[3], config.fusion_width, config.fusion_width))
        self.to(memory_format=torch.channels_last)

    def forward(self, frames_bt3hw: torch.Tensor) -> torch.Tensor:
        clips, frames = frames_bt3hw.shape[:2]
        tapped, grid_hw = self.encode(frames_bt3hw.flatten(0, 1))
        depth, _ = self.decode(tapped, grid_hw, frames)
        return depth.unflatten(0, (clips, frames))

    def encode(self, images_n3hw: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The encoder, frame by frame (no time): four tapped token sets N x gh*gw x D, and the grid."""
        tokens, grid_hw = self.patch_embed(images_n3hw)
        return self.image_encoder(tokens), grid_hw

    def decode(self, tapped: list[torch.Tensor], grid_hw: tuple[int, int], frames: int,
               cached: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tapped tokens of (B*T) frames, T = `frames` per clip -> (depth (B*T) x H x W, the motion modules' inputs
        of these frames: eight tensors (B*h*w) x T x C). `cached`: eight such tensors of earlier frames (streaming)."""
        stages = self.reassembly.stages
        maps = [stage.resampled(tokens, grid_hw) for stage, tokens in zip(stages, tapped)]
        caches: list[torch.Tensor] = []

        def temporal(index: int, map_bt_chw: torch.Tensor) -> torch.Tensor:
            past = cached[2 * index: 2 * index + 2] if cached is not None else None
            mixed, inputs = self.motion_modules[index](map_bt_chw, frames, past)
            caches.extend(inputs)
            return mixed

        maps[2], maps[3] = temporal(0, maps[2]), temporal(1, maps[3])
        maps = [stage.to_fusion_width(feature_map) for stage, feature_map in zip(stages, maps)]
        blocks = self.fusion.blocks
        path = temporal(2, blocks[3](None, maps[3], tuple(maps[2].shape[-2:])))
        path = temporal(3, blocks[2](path, maps[2], tuple(maps[1].shape[-2:])))
        finest_hw = tuple(maps[0].shape[-2:])
        depth = []
        # (an exported graph takes every frame at once: a loop over a symbolic count would be fixed to the traced one)
        step = path.shape[0] if torch.compiler.is_exporting() else FINE_BLOCK_FRAMES
        for start in range(0, path.shape[0], step):  # (no frame sees another from here on)
            part = slice(start, start + step)
            fine = blocks[1](path[part], maps[1][part], finest_hw)
            fine = blocks[0](fine, maps[0][part], (2 * finest_hw[0], 2 * finest_hw[1]))
            depth.append(self.head(fine, grid_hw))
        return torch.cat(depth), caches
