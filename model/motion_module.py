"""
Motion module of Video Depth Anything ("Video Depth Anything: Consistent Depth Estimation for Super-Long Videos",
arXiv 2501.12375, section 3.1): attention across the frames of a clip, at every position of a feature map.

Takes: a feature map (B*T) x C x h x w of T consecutive frames (frame-major within each clip), and optionally, for
the streaming mode, each attention block's inputs of earlier frames (`cached`: (B*h*w) x T_past x C each).
Gives: the map with the temporal attention's residual added (same shape), and each attention block's inputs of
these T frames ((B*h*w) x T x C), which a stream keeps as the next frames' cache.

One module: GroupNorm(32) -> Linear C -> C -> a transformer block of two temporal attention blocks (pre-LayerNorm,
a sinusoidal position table over the frames added before the projections, 8 heads, bias-free q/k/v) and a GEGLU
feed-forward (x4) -> Linear C -> C (zero-initialised in training, so an untrained module is the identity) -> plus the
input. Checked against the original's `TemporalModule` (tests/test_video_depth_anything.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MotionModule", "sinusoidal_table"]

NUM_HEADS = 8
TEMPORAL_MAX_LEN = 32  # frames the position table covers: a window, or a stream's cache and its new frame
GROUP_NORM_GROUPS = 32


def sinusoidal_table(max_len: int, width: int) -> torch.Tensor:
    """1 x max_len x width: sin on even channels, cos on odd ones, frequencies 10000^(-2i/width) (Vaswani et al.)."""
    position = torch.arange(max_len).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(1, max_len, width)
    table[0, :, 0::2] = torch.sin(position * frequencies)
    table[0, :, 1::2] = torch.cos(position * frequencies)
    return table


class TemporalAttention(nn.Module):
    """Self-attention over frames at one position: (B*h*w) x T x C -> same, queries for the last T_new frames only."""

    def __init__(self, width: int, num_heads: int = NUM_HEADS, max_len: int = TEMPORAL_MAX_LEN):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width)
        # A buffer in the released files too (saved with the weights): loaded, so kept persistent
        self.register_buffer("position_table", sinusoidal_table(max_len, width))

    def forward(self, frames_ntc: torch.Tensor, new_frames: int) -> torch.Tensor:
        """`frames_ntc`: past frames then the new ones (N x T x C); gives N x new_frames x C."""
        count, length, width = frames_ntc.shape
        frames_ntc = frames_ntc + self.position_table[:, :length].to(frames_ntc.dtype)
        head_width = width // self.num_heads

        def heads(tensor_ntc):  # N x T x C -> N x heads x T x C/heads
            return tensor_ntc.reshape(count, tensor_ntc.shape[1], self.num_heads, head_width).transpose(1, 2)

        query = heads(self.to_q(frames_ntc[:, length - new_frames:]))
        attended = F.scaled_dot_product_attention(query, heads(self.to_k(frames_ntc)), heads(self.to_v(frames_ntc)))
        return self.to_out(attended.transpose(1, 2).reshape(count, new_frames, width))


class GEGLUFeedForward(nn.Module):
    """x -> Linear(C, 2 * 4C) split into (value, gate) -> value * GELU(gate) -> Linear(4C, C)."""

    def __init__(self, width: int, multiplier: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(width, 2 * multiplier * width)
        self.proj_out = nn.Linear(multiplier * width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(tokens).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class MotionModule(nn.Module):
    """(B*T) x C x h x w of T frames -> the same, mixed across frames at each position (see the module docstring)."""

    def __init__(self, width: int, num_heads: int = NUM_HEADS, num_attention_blocks: int = 2,
                 max_len: int = TEMPORAL_MAX_LEN):
        super().__init__()
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, width, eps=1e-6)
        self.proj_in = nn.Linear(width, width)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(num_attention_blocks))
        self.attentions = nn.ModuleList(TemporalAttention(width, num_heads, max_len)
                                        for _ in range(num_attention_blocks))
        self.feed_forward_norm = nn.LayerNorm(width)
        self.feed_forward = GEGLUFeedForward(width)
        self.proj_out = nn.Linear(width, width)

    def forward(self, maps_bt_chw: torch.Tensor, frames: int, cached: list[torch.Tensor] | None = None):
        """`frames`: T, the frames of each clip in the batch (B*T maps); `cached`: per attention block, the earlier
        frames' inputs (a stream's past). Gives (maps, each attention block's inputs for these T frames)."""
        batch_frames, width, height, breadth = maps_bt_chw.shape
        clips = batch_frames // frames
        tokens = self.proj_in(self.norm(maps_bt_chw).permute(0, 2, 3, 1).reshape(batch_frames, height * breadth, width))
        inputs_for_cache = []
        for index, (norm, attention) in enumerate(zip(self.attention_norms, self.attentions)):
            # (B*T) x hw x C -> (B*hw) x T x C: each position's frames in a row
            normed = norm(tokens).reshape(clips, frames, height * breadth, width).transpose(1, 2)
            normed = normed.reshape(clips * height * breadth, frames, width)
            inputs_for_cache.append(normed)
            sequence = normed if cached is None else torch.cat([cached[index].to(normed.dtype), normed], dim=1)
            attended = attention(sequence, frames)
            attended = attended.reshape(clips, height * breadth, frames, width).transpose(1, 2)
            tokens = tokens + attended.reshape(batch_frames, height * breadth, width)
        tokens = tokens + self.feed_forward(self.feed_forward_norm(tokens))
        tokens = self.proj_out(tokens).reshape(batch_frames, height, breadth, width).permute(0, 3, 1, 2)
        return tokens + maps_bt_chw, inputs_for_cache
