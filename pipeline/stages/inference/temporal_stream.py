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

Where it is kept: in eight ring buffers per stream, allocated at its first frame and never again (one per cached
tensor: h*w x `RING_SLOTS` x C, in the entries' dtype, on the model's device), each frame's entries copied into a
free position once; the cache itself is a list of positions in the original's order. A round gathers every
stream's 31 past positions straight into one tensor per cached tensor (`index_select` into its rows): the past is
copied once a round, not once per stream and again to join the streams. `cache_bytes` is what a stream holds
(measured: about 0.23 GiB for vits at 518 x 924 in float16), for the model actor's byte budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["CACHED_FRAMES", "RING_SLOTS", "StreamingDepth", "push_together"]

INFER_LEN, OVERLAP, INTERP_LEN = 32, 10, 8
GAP = (INFER_LEN - OVERLAP) * 2 - 1 - (OVERLAP - INTERP_LEN)  # 41: the original's rule for when entries are let go
CACHED_FRAMES = GAP + 1  # entries the cache holds in its steady state
RING_SLOTS = CACHED_FRAMES + 1  # distinct entries held at once: the cache's, and a new frame's before one is let go
PAST_FRAMES = INFER_LEN - 1  # what a frame attends to besides itself


class StreamingDepth:
    def __init__(self, encode: Callable | None, decode: Callable | None, output_hw: tuple[int, int],
                 step: Callable | None = None):
        """`step`: instead of `encode` and `decode`, a network that runs both in one call ((frames N x 3 x h x w,
        past or None) -> (depth, entries): an exported streaming step run by ONNX Runtime, `OnnxNetwork.step`)."""
        self.encode, self.decode, self.output_hw, self.step = encode, decode, output_hw, step
        self.frames_in = 0
        self._rings: list[torch.Tensor] = []  # per cached tensor: h*w x RING_SLOTS x C (allocated at frame 0)
        self._order: list[int] = []  # the cache, in the original's order, as ring positions

    def push(self, frame_3hw: torch.Tensor) -> np.ndarray:
        """The stream's next frame -> its depth at `output_hw` (H x W float32)."""
        return push_together([self], frame_3hw.unsqueeze(0))[0].cpu().numpy()

    def reset(self) -> None:
        """Forget the stream (a new one starts with its own first frame; its buffers go)."""
        self.frames_in = 0
        self._rings, self._order = [], []

    @property
    def cached_frames(self) -> int:
        """Entries in the cache (the first frame's counted as many times as it stands in)."""
        return len(self._order)

    @property
    def cache_bytes(self) -> int:
        return sum(ring.numel() * ring.element_size() for ring in self._rings)

    def _past_positions(self) -> list[int]:
        """What the next frame attends to besides itself: the first frame's and the oldest kept entries, and the 29
        newest (31 positions)."""
        return self._order[0:2] + self._order[-INFER_LEN + 3:]

    def _keep(self, entries: list[torch.Tensor]) -> None:
        """A new frame's entries (eight tensors h*w x 1 x C) copied into a free position; the original's rule for
        which one is let go."""
        index = self.frames_in
        self.frames_in += 1
        if index == 0:
            self._rings = [torch.empty((entry.shape[0], RING_SLOTS, entry.shape[2]), dtype=entry.dtype,
                                       device=entry.device) for entry in entries]
            position = 0
        else:
            position = min(set(range(RING_SLOTS)) - set(self._order))
        for ring, entry in zip(self._rings, entries):
            ring[:, position] = entry[:, 0]
        if index == 0:
            self._order = [position] * INFER_LEN  # the first frame stands in for a whole window
        else:
            self._order.append(position)
        if index + INFER_LEN > GAP + 1:
            del self._order[1]

    def _resized(self, depth_hw: torch.Tensor) -> torch.Tensor:
        depth = F.interpolate(depth_hw.float()[None, None], size=self.output_hw, mode="bilinear", align_corners=True)
        return depth[0, 0]


def gathered_past(streams: list[StreamingDepth]) -> list[torch.Tensor]:
    """Every stream's past, joined: per cached tensor, (streams x h*w) x 31 x C, each stream's rows gathered from its
    ring buffer straight into their place (one copy)."""
    device = streams[0]._rings[0].device
    positions = [torch.tensor(stream._past_positions(), device=device) for stream in streams]  # (once a stream)
    joined = []
    for slot, first in enumerate(streams[0]._rings):
        rows = first.shape[0]
        out = torch.empty((len(streams) * rows, PAST_FRAMES, first.shape[2]), dtype=first.dtype, device=device)
        for number, (stream, chosen) in enumerate(zip(streams, positions)):
            torch.index_select(stream._rings[slot], 1, chosen, out=out[number * rows:(number + 1) * rows])
        joined.append(out)
    return joined


def push_together(streams: list[StreamingDepth], frames_n3hw: torch.Tensor) -> list[torch.Tensor]:
    """Frame i through `streams[i]`'s cache, for several streams at once (live cameras): their depth (H x W float32
    at each stream's `output_hw`, on the frames' device), in order. The
    streams share one network and one input size. The encoder sees every frame in one pass; the decoder, which
    looks back through each stream's own cache, one pass per round: each stream's next frame (a stream may appear
    several times, its frames in order), the streams' first frames (no cache yet) apart from the others. The same
    depth as each stream alone, to float32 rounding."""
    if streams[0].step is not None:  # encoder and decoder in one call: the encoder runs on each round's frames
        def run(members, cached):
            return streams[0].step(frames_n3hw[members], cached)
    else:
        tapped, grid_hw = streams[0].encode(frames_n3hw)

        def run(members, cached):
            return streams[0].decode([tokens[members] for tokens in tapped], grid_hw, 1, cached)
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
            cached = None if first_frames else gathered_past([streams[index] for index in members])
            part_depth, entries = run(members, cached)
            # (each slot: every clip's h*w positions, clip after clip, at that slot's resolution)
            per_clip = [slot.chunk(len(members)) for slot in entries]
            for position, index in enumerate(members):
                streams[index]._keep([chunks[position] for chunks in per_clip])
                depth[index] = streams[index]._resized(part_depth[position])
    return depth
