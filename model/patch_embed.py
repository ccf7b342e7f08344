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
        and the cache's lookup by data_ptr() would break the graph in two); under torch.export (the ONNX export) as
        `_resample_table_for_any_grid`, which stays valid for every grid."""
        if torch.compiler.is_exporting():  # an ONNX file: one graph for every grid, traced with symbolic sizes
            return self._resample_table_for_any_grid(grid_hw)
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

    def _resample_table_for_any_grid(self, grid_hw: tuple) -> torch.Tensor:
        """`_resample_table` as tensor arithmetic on a grid that may be symbolic (an exported graph's, valid for
        every input size): the bicubic resampling as two weight matrices, gh x base and gw x base, built the way
        PyTorch's upsample_bicubic2d samples with a given scale factor (source = (i + 0.5) / scale - 0.5, A = -0.75,
        border taps clamped), and the base grid's exact copy as a scale of 1 (its taps are 0, 1, 0, 0). F.interpolate
        would not do: the exporter fixes its scale factor to the traced grid's. Agrees with `_resample_table` to
        float32 rounding (the sums run in another order)."""
        grid_h, grid_w = grid_hw
        base = self.base_grid
        table = self.position_table
        cls_slot_11d, patch_table_1nd = table[:, :1], table[:, 1:]
        patch_table_dhw = patch_table_1nd[0].float().transpose(0, 1).reshape(-1, base, base)
        rows_h, rows_w = torch.arange(grid_h, device=table.device), torch.arange(grid_w, device=table.device)
        # The grid's sizes as tensors (the graph computes them from the input's shape): 1.0 where both are the base
        size_h, size_w = rows_h.numel() + torch.zeros((), device=table.device), rows_w.numel() + torch.zeros(
            (), device=table.device)
        off_base = 1.0 - ((size_h == base) & (size_w == base)).float()
        weights_h = bicubic_weights(rows_h, (size_h + 0.1 * off_base) / base, base)
        weights_w = bicubic_weights(rows_w, (size_w + 0.1 * off_base) / base, base)
        resampled_dhw = weights_h @ patch_table_dhw @ weights_w.transpose(0, 1)
        resampled_1nd = resampled_dhw.flatten(1).transpose(0, 1).unsqueeze(0).to(table.dtype)
        return torch.cat((cls_slot_11d, resampled_1nd), dim=1)


def bicubic_weights(rows: torch.Tensor, scale: torch.Tensor, source_size: int, a: float = -0.75) -> torch.Tensor:
    """The matrix (len(rows) x source_size) that resamples a 1-D signal of `source_size` samples to output samples
    `rows` by PyTorch's bicubic convolution with scale factor `scale` (align_corners=False, taps past the border
    clamped onto it)."""
    # As PyTorch does it: the source step 1 / scale in double precision, rounded to float32, then float32 arithmetic
    step = (1.0 / scale.double()).float()
    source = step * (rows.float() + 0.5) - 0.5
    start = torch.floor(source)
    t = source - start
    taps = (
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    )
    columns = torch.arange(source_size, device=rows.device)
    weights = torch.zeros(rows.shape[0], source_size, device=rows.device)
    for offset, tap in enumerate(taps):
        index = (start.long() + offset - 1).clamp(0, source_size - 1)
        weights = weights + (index[:, None] == columns[None, :]).float() * tap[:, None]
    return weights
