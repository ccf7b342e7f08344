"""
Variant table for Depth-Anything (v1 and v2 share the network, they differ in which blocks feed the decoder).

Takes: a variant name ("vits", "vitb", "vitl") and a version ("v1" or "v2").
Gives: a frozen `DepthAnythingConfig` with every width the model needs.

Numbers come from the released checkpoints (spec, section a):

| variant | embed width D | blocks | heads | fusion width F | reassembly widths C0..C3 |
|---------|---------------|--------|-------|----------------|--------------------------|
| vits    | 384           | 12     | 6     | 64             | 48, 96, 192, 384         |
| vitb    | 768           | 12     | 12    | 128            | 96, 192, 384, 768        |
| vitl    | 1024          | 24     | 16    | 256            | 256, 512, 1024, 1024     |
"""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 14
BASE_IMAGE_SIZE = 518  # 37 patches of 14 px: the grid the learned position table was trained for
HEAD_HIDDEN_WIDTH = 32
VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class DepthAnythingConfig:
    """Every size the network needs; `tap_blocks` are the 0-based blocks whose outputs feed the decoder."""

    embed_dim: int
    num_blocks: int
    num_heads: int
    fusion_width: int
    reassembly_widths: tuple[int, int, int, int]
    tap_blocks: tuple[int, int, int, int]
    patch_size: int = PATCH_SIZE
    base_grid: int = BASE_IMAGE_SIZE // PATCH_SIZE
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-6
    variant: str = "custom"
    version: str = "v1"
    # What the head gives: None, relative inverse depth (ReLU, no unit); a number, metric depth in metres (Depth
    # Anything V2's metric models: sigmoid times this maximum, 20 for Hypersim indoor, 80 for Virtual KITTI outdoor)
    max_depth: float | None = None
    # Video Depth Anything: the same network with motion modules across frames (video_depth_anything.py)
    temporal: bool = False

    @property
    def metric(self) -> bool:
        return self.max_depth is not None

    @property
    def head_width(self) -> int:
        return self.embed_dim // self.num_heads


def default_tap_blocks(num_blocks: int, version: str = "v1") -> tuple[int, int, int, int]:
    """v1 taps the last four blocks; v2 spreads its taps (2,5,8,11 for 12 blocks, 4,11,17,23 for 24)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown Depth-Anything version {version!r}; expected one of {VERSIONS}")
    if version == "v1":
        return tuple(range(num_blocks - 4, num_blocks))  # type: ignore[return-value]
    v2_taps = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}
    if num_blocks not in v2_taps:
        raise ValueError(f"no Depth-Anything v2 tap layout is known for a {num_blocks}-block encoder")
    return v2_taps[num_blocks]


_VARIANT_WIDTHS = {
    # name: (embed_dim, num_blocks, num_heads, fusion_width, reassembly_widths)
    "vits": (384, 12, 6, 64, (48, 96, 192, 384)),
    "vitb": (768, 12, 12, 128, (96, 192, 384, 768)),
    "vitl": (1024, 24, 16, 256, (256, 512, 1024, 1024)),
}
VARIANTS = tuple(_VARIANT_WIDTHS)


def make_config(variant: str = "vits", version: str = "v1", max_depth: float | None = None) -> DepthAnythingConfig:
    """Config of a released variant, e.g. make_config("vitb", "v2"); `max_depth`: a metric head (metres)."""
    if variant not in _VARIANT_WIDTHS:
        raise ValueError(f"unknown Depth-Anything variant {variant!r}; expected one of {VARIANTS}")
    embed_dim, num_blocks, num_heads, fusion_width, widths = _VARIANT_WIDTHS[variant]
    return DepthAnythingConfig(
        embed_dim=embed_dim,
        num_blocks=num_blocks,
        num_heads=num_heads,
        fusion_width=fusion_width,
        reassembly_widths=widths,
        tap_blocks=default_tap_blocks(num_blocks, version),
        variant=variant,
        version=version,
        max_depth=max_depth,
    )


def variant_name(embed_dim: int) -> str:
    """'vits' / 'vitb' / 'vitl' for a released width, 'custom' otherwise."""
    for name, widths in _VARIANT_WIDTHS.items():
        if widths[0] == embed_dim:
            return name
    return "custom"
