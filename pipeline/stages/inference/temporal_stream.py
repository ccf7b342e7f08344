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

__all__ = ["CACHED_FRAMES", "StreamingDepth", "push_together"]

INFER_LEN, OVERLAP, INTERP_LEN = 32, 10, 8
GAP = (INFER_LEN - OVERLAP) * 2 - 1 - (OVERLAP - INTERP_LEN)  # 41: the original's rule for when entries are let go
CACHED_FRAMES = GAP + 1  # entries the cache holds in its steady state


class StreamingDepth:
    def __init__(self, encode: Callable, decode: Callable, output_hw: tuple[int, int]):
        self.encode, self.decode, self.output_hw = encode, decode, output_hw
        self.frames_in = 0
        self._cache: list[list[torch.Tensor]] = []  # per cached frame, its eight motion-module inputs

    def push(self, frame_3hw: torch.Tensor) -> np.ndarray:
        """The stream's next frame -> its depth at `output_hw` (H x W float32)."""
        return push_together([self], frame_3hw.unsqueeze(0))[0].cpu().numpy()

    def reset(self) -> None:
        """Forget the stream (a new one starts with its own first frame)."""
        self.frames_in = 0
        self._cache = []

    def _past(self) -> list[torch.Tensor]:
        """What the next frame attends to besides itself: the first frame's and the oldest kept entries, and the 29
        newest (31 frames), per attention block: eight tensors (h*w) x 31 x C."""
        chosen = self._cache[0:2] + self._cache[-INFER_LEN + 3:]
        return [torch.cat([entries[slot] for entries in chosen], dim=1) for slot in range(len(chosen[0]))]

    def _keep(self, entries: list[torch.Tensor]) -> None:
        """A new frame's entries in; the original's rule for which one is let go."""
        index = self.frames_in
        self.frames_in += 1
        if index == 0:
            self._cache = [entries] * INFER_LEN  # the first frame stands in for a whole window
        else:
            self._cache.append(entries)
        if index + INFER_LEN > GAP + 1:
            del self._cache[1]

    def _resized(self, depth_hw: torch.Tensor) -> torch.Tensor:
        depth = F.interpolate(depth_hw.float()[None, None], size=self.output_hw, mode="bilinear", align_corners=True)
        return depth[0, 0]


def push_together(streams: list[StreamingDepth], frames_n3hw: torch.Tensor) -> list[torch.Tensor]:
    """Frame i through `streams[i]`'s cache, for several streams at once (live cameras): their depth (H x W float32
    at each stream's `output_hw`, on the frames' device), in order. The
    streams share one network and one input size. The encoder sees every frame in one pass; the decoder, which
    looks back through each stream's own cache, one pass per round: each stream's next frame (a stream may appear
    several times, its frames in order), the streams' first frames (no cache yet) apart from the others. The same
    depth as each stream alone, to float32 rounding."""
    encode, decode = streams[0].encode, streams[0].decode
    tapped, grid_hw = encode(frames_n3hw)
    depth: list[torch.Tensor | None] = [None] * len(streams)
    pending = list(range(len(streams)))
    while pending:
        taking, round_ = set(), []
        for index in pending:  # each stream's earliest frame not yet decoded
            if id(streams[index]) not in taking:
                taking.add(id(streams[index]))
                round_.append(index)
        pending = [index for index in pending if index not in round_]
        starting = [streams[index].frames_in == 0 for index in round_]
        for first_frames in (True, False):
            members = [index for index, fresh in zip(round_, starting) if fresh == first_frames]
            if not members:
                continue
            cached = None
            if not first_frames:
                pasts = [streams[index]._past() for index in members]
                cached = [torch.cat([past[slot] for past in pasts]) for slot in range(len(pasts[0]))]
            part_depth, entries = decode([tokens[members] for tokens in tapped], grid_hw, 1, cached)
            # (each slot: every clip's h*w positions, clip after clip, at that slot's resolution)
            per_clip = [slot.chunk(len(members)) for slot in entries]
            for position, index in enumerate(members):
                streams[index]._keep([chunks[position] for chunks in per_clip])
                depth[index] = streams[index]._resized(part_depth[position])
    return depth
