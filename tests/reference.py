"""
The reference the model is checked against: Hugging Face transformers' DepthAnythingForDepthEstimation, with its
position-table resampling replaced by the original DINOv2 rule (bicubic scale factor (g + 0.1) / 37, spec d.3 and g).
Stock transformers 5.x resizes to an exact target size and so differs from the original by about 2e-2 at every
size but 518x518. Test-only: transformers is not a runtime dependency.
"""

from __future__ import annotations

import types

import torch
from torch.nn import functional as F

from model.config import make_config
from model.random_weights import randomize_


def original_interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own rule, written from its description, bound onto a transformers Dinov2Embeddings instance."""
    num_patches = embeddings.shape[1] - 1
    table = self.position_embeddings
    num_positions = table.shape[1] - 1
    if num_patches == num_positions and height == width:
        return table
    base = int(round(num_positions**0.5))
    patch = self.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    grid_h, grid_w = height // patch, width // patch
    dim = table.shape[-1]
    grid = table[:, 1:].reshape(1, base, base, dim).permute(0, 3, 1, 2)
    resampled = F.interpolate(
        grid.float(), scale_factor=((grid_h + 0.1) / base, (grid_w + 0.1) / base), mode="bicubic", antialias=False
    ).to(table.dtype)
    return torch.cat((table[:, :1], resampled.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def hf_config_for(variant: str, version: str = "v1", max_depth: float | None = None):
    """transformers' config of a released variant; `max_depth`: the metric head (sigmoid x max_depth)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    ours = make_config(variant, version)
    backbone = Dinov2Config(
        hidden_size=ours.embed_dim,
        num_hidden_layers=ours.num_blocks,
        num_attention_heads=ours.num_heads,
        mlp_ratio=ours.mlp_ratio,
        patch_size=ours.patch_size,
        image_size=ours.patch_size * ours.base_grid,
        layerscale_value=1.0,
        layer_norm_eps=ours.layer_norm_eps,
        out_indices=[tap + 1 for tap in ours.tap_blocks],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=ours.embed_dim,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(ours.reassembly_widths),
        fusion_hidden_size=ours.fusion_width,
        head_hidden_size=32,
        patch_size=ours.patch_size,
        depth_estimation_type="metric" if max_depth else "relative",
        **({"max_depth": max_depth} if max_depth else {}),
    )


def random_reference(variant: str = "vits", seed: int = 0, version: str = "v1", original_positions: bool = True,
                     max_depth: float | None = None):
    """A randomly weighted transformers model (eval, float32), with the original position rule unless asked not to;
    `max_depth`: a metric model."""
    from transformers import DepthAnythingForDepthEstimation

    reference = DepthAnythingForDepthEstimation(hf_config_for(variant, version, max_depth))
    randomize_(reference, seed).eval()
    if original_positions:
        embeddings = reference.backbone.embeddings
        embeddings.interpolate_pos_encoding = types.MethodType(original_interpolate_pos_encoding, embeddings)
    return reference


@torch.inference_mode()
def reference_depth(reference, image_bchw: torch.Tensor) -> torch.Tensor:
    return reference(pixel_values=image_bchw).predicted_depth
