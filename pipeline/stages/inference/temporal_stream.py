"""
Video Depth Anything's streaming mode: the original's `infer_video_depth_one`, one frame in and its depth out at
once, the motion modules looking back through a cache of earlier frames' inputs instead of a window.

Takes: prepared frames (3 x h x w float, ImageNet-normalised, h and w multiples of 14), one at a time, in order;
`encode` (frames N x 3 x h x w -> the encoder's tapped tokens and the grid) and `decode` (tokens, grid, frames per
clip, cache -> depth N x h x w and the new cache entries), the network's two halves (VideoDepthAnything.encode and
.decode, on the model's device).
Gives: each frame's depth at `output_hw` (float32, bilinear with aligned corners, as the original resizes it).

The cache is the original's: the first frame's entries stand in for a full window at the start; each later frame
attends to the first frame, the oldest entry not yet let go, and the 29 newest, 32 positions with itself; from the
12th frame on, one entry is let go a frame, so the cache holds 42 frames' entries whatever the stream's length
(8 tensors a frame: B*h*w x 1 x C at four decoder resolutions).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["CACHED_FRAMES", "StreamingDepth"]

INFER_LEN, OVERLAP, INTERP_LEN = 32, 10, 8
GAP = (INFER_LEN - OVERLAP) * 2 - 1 - (OVERLAP - INTERP_LEN)  # 41: the original's rule for when entries are let go
CACHED_FRAMES = GAP + 1  # entries the cache holds in its steady state


class StreamingDepth:
    def __init__(self, encode: Callable, decode: Callable, output_hw: tuple[int, int]):
        self.encode, self.decode, self.output_hw = encode, decode, output_hw
        self.frames_in = 0
        self._cache: list[list[torch.Tensor]] = []  # per cached frame, its eight motion-module inputs

    def push(self, frame_3hw: torch.Tensor) -> np.ndarray:
        index = self.frames_in
        self.frames_in += 1
        tapped, grid_hw = self.encode(frame_3hw.unsqueeze(0))
        if index == 0:
            depth, entries = self.decode(tapped, grid_hw, 1, None)
            self._cache = [entries] * INFER_LEN  # the first frame stands in for a whole window
        else:
            chosen = self._cache[0:2] + self._cache[-INFER_LEN + 3:]
            cached = [torch.cat([entries[slot] for entries in chosen], dim=1) for slot in range(len(chosen[0]))]
            depth, entries = self.decode(tapped, grid_hw, 1, cached)
            self._cache.append(entries)
        if index + INFER_LEN > GAP + 1:
            del self._cache[1]
        depth = F.interpolate(depth.float().unsqueeze(1), size=self.output_hw, mode="bilinear", align_corners=True)
        return depth[0, 0].cpu().numpy()

    def reset(self) -> None:
        """Forget the stream (a new one starts with its own first frame)."""
        self.frames_in = 0
        self._cache = []
