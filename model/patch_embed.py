"""
Patch embedding of the DINOv2 encoder used by Depth-Anything: 14-px patches, a class token and a learned
position table for a 37x37 grid, resampled to other grids exactly as the original DINOv2 code does.

Takes: an image tensor B x 3 x H x W (normalised RGB; H and W multiples of 14).
Gives: tokens B x (1 + gh*gw) x D (class token first, then patches row by row) and the patch grid (gh, gw).

Why the resampling looks odd: the original resizes the 37x37 table with a bicubic *scale factor* of
(g + 0.1) / 37 (not a target size of g), without antialias. PyTorch maps source coordinates with the given factor, so
the sampled positions differ slightly from a plain resize to g; released weights were used this way, so we do the
same (spec, section d.3). Hugging Face transformers 5.x and muggled_dpt resize to a target size instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchEmbed(nn.Module):
    """Image B x 3 x H x W -> tokens B x (1 + gh*gw) x D, with class token and position encoding added."""

    def __init__(self, embed_dim: int, patch_size: int = 14, base_grid: int = 37, cache_size: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.base_grid = base_grid
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.position_table = nn.Parameter(torch.zeros(1, 1 + base_grid * base_grid, embed_dim))
        # Video runs at one grid for thousands of frames: keep the resampled tables of the last few grids
        self._cache_size = cache_size
        self._table_cache: dict[tuple, torch.Tensor] = {}

    # .................................................................................................................

    def forward(self, image_bchw: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        _, _, height, width = image_bchw.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_hw = (height // self.patch_size, width // self.patch_size)

        patch_tokens_bnd = self.proj(image_bchw).flatten(2).transpose(1, 2)
        cls_token_b1d = self.cls_token.expand(patch_tokens_bnd.shape[0], -1, -1).to(patch_tokens_bnd.dtype)
        tokens_bnd = torch.cat((cls_token_b1d, patch_tokens_bnd), dim=1)
        return tokens_bnd + self.position_encoding(grid_hw).to(tokens_bnd.dtype), grid_hw

    # .................................................................................................................

    def position_encoding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Position table for a grid, 1 x (1 + gh*gw) x D; cached while no gradient is being recorded.

        Under torch.compile the resampling is traced into the graph instead (the graph is specialised to the grid,
        and the cache's lookup by data_ptr() would break the graph in two)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._resample_table(grid_hw)
        table = self.position_table
        # data_ptr and _version change when the weights are moved or loaded, so a stale table is never reused
        version = 0 if table.is_inference() else table._version  # inference tensors cannot change in place
        key = (grid_hw, table.device, table.dtype, table.data_ptr(), version)
        cached = self._table_cache.get(key)
        if cached is None:
            cached = self._resample_table(grid_hw)
            if len(self._table_cache) >= self._cache_size:
                self._table_cache.pop(next(iter(self._table_cache)))
            self._table_cache[key] = cached
        return cached

    def _resample_table(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        grid_h, grid_w = grid_hw
        base = self.base_grid
        table = self.position_table
        # The original keeps the stored table only for the square base grid (its test is on pixel sizes: H == W)
        if grid_h == base and grid_w == base:
            return table

        cls_slot_11d, patch_table_1nd = table[:, :1], table[:, 1:]
        embed_dim = table.shape[-1]
        patch_table_1dhw = patch_table_1nd.reshape(1, base, base, embed_dim).permute(0, 3, 1, 2)
        resampled_1dhw = F.interpolate(
            patch_table_1dhw.float(),
            scale_factor=((grid_h + 0.1) / base, (grid_w + 0.1) / base),
            mode="bicubic",
            align_corners=False,
            antialias=False,
        ).to(table.dtype)
        assert resampled_1dhw.shape[-2:] == grid_hw, "scale factor rounding must land on the grid"
        resampled_1nd = resampled_1dhw.flatten(2).transpose(1, 2)
        return torch.cat((cls_slot_11d, resampled_1nd), dim=1)
