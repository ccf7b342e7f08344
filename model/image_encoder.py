"""
Image encoder of Depth-Anything: a DINOv2 vision transformer (no register tokens) from "DINOv2: Learning Robust
Visual Features without Supervision" (arXiv 2304.07193), built like the ViT of "An Image is Worth 16x16 Words".

Takes: tokens B x (1 + N) x D from the patch embedding (class token first).
Gives: four tensors B x N x D, the patch tokens after four tapped blocks, each passed through the shared output norm.

Unlike classic DPT, which spreads its taps through the network, Depth-Anything v1 taps the *last four* blocks
(v2 spreads them again); the class token is normalised with the rest and then dropped, because the reassembly
ignores the readout token.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def chunked_attention(q_bhtc: torch.Tensor, k_bhtc: torch.Tensor, v_bhtc: torch.Tensor, chunk: int = 256):
    """softmax(q k^T / sqrt(c)) v, a block of queries at a time: B x H x T x C for q, k, v and the result.

    For bfloat16 on the CPU: PyTorch's fused CPU attention kernel runs no faster in bf16 than in float32, while plain
    bf16 matrix products do (measured 1.5x on AVX512-BF16); blocks of queries keep the score matrix in cache.
    """
    keys_t_bhct = k_bhtc.transpose(-1, -2)
    q_bhtc = q_bhtc * q_bhtc.shape[-1] ** -0.5
    blocks = [
        torch.softmax(q_bhtc[:, :, start : start + chunk] @ keys_t_bhct, dim=-1) @ v_bhtc
        for start in range(0, q_bhtc.shape[2], chunk)
    ]
    return torch.cat(blocks, dim=2)


class SelfAttention(nn.Module):
    """Multi-head self-attention, B x T x D -> B x T x D, through PyTorch's fused attention kernel."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)  # rows: all queries, then all keys, then all values
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, tokens_btd: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, embed_dim = tokens_btd.shape
        qkv_3bhtc = (
            self.qkv(tokens_btd)
            .reshape(batch, num_tokens, 3, self.num_heads, embed_dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        q_bhtc, k_bhtc, v_bhtc = qkv_3bhtc.unbind(0)
        if q_bhtc.dtype == torch.bfloat16 and q_bhtc.device.type == "cpu":
            attended_bhtc = chunked_attention(q_bhtc, k_bhtc, v_bhtc)
        else:
            # Default scale is head_width ** -0.5, as in the original (which scales q before q.k^T: same maths)
            attended_bhtc = F.scaled_dot_product_attention(q_bhtc, k_bhtc, v_bhtc)
        return self.proj(attended_bhtc.transpose(1, 2).reshape(batch, num_tokens, embed_dim))


class MLP(nn.Module):
    """Two linear layers with exact (erf) GELU between them, B x T x D -> B x T x D."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, tokens_btd: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens_btd)))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block with LayerScale: t + g1 * attn(norm(t)), then t + g2 * mlp(norm(t)). B x T x D in and out."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.attn_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attn = SelfAttention(embed_dim, num_heads)
        self.attn_scale = nn.Parameter(torch.ones(embed_dim))
        self.mlp_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = MLP(embed_dim, mlp_ratio * embed_dim)
        self.mlp_scale = nn.Parameter(torch.ones(embed_dim))

    def forward(self, tokens_btd: torch.Tensor) -> torch.Tensor:
        tokens_btd = tokens_btd + self.attn_scale * self.attn(self.attn_norm(tokens_btd))
        return tokens_btd + self.mlp_scale * self.mlp(self.mlp_norm(tokens_btd))


class ImageEncoder(nn.Module):
    """Transformer blocks; returns the normalised patch tokens (class token dropped) of the four tapped blocks."""

    def __init__(
        self,
        embed_dim: int,
        num_blocks: int,
        num_heads: int,
        tap_blocks: tuple[int, int, int, int],
        mlp_ratio: int = 4,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.tap_blocks = tuple(tap_blocks)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, layer_norm_eps) for _ in range(num_blocks)
        )
        self.output_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)

    def forward(self, tokens_btd: torch.Tensor) -> list[torch.Tensor]:
        tapped_patch_tokens = []
        # Blocks after the last tap would not change the output: skip them (v2 taps block 11 of 12, v1 the last)
        for index, block in enumerate(self.blocks[: max(self.tap_blocks) + 1]):
            tokens_btd = block(tokens_btd)
            if index in self.tap_blocks:
                # LayerNorm is per token, so dropping the class token first gives the same patch tokens
                tapped_patch_tokens.append(self.output_norm(tokens_btd[:, 1:]))
        return tapped_patch_tokens
