"""
A live camera's frames on their way to the model, and how long they took to come out.

FrameBuffer takes frames as they arrive (`put`, from the reader thread) and gives everything waiting (`take`, to the
camera's loop), at most `capacity`: a new frame pushes the oldest out, or only every k-th frame is kept, and every
drop is counted, so a backlog never builds. LatencyStats takes each frame's arrival-to-publication time in ms and
gives p50 / p95 / max for the whole run in bounded memory (a 1 ms histogram), and the recent window for live figures.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from pipeline.stages.sources.live_stream import LiveFrame

__all__ = ["FrameBuffer", "LatencyStats"]


class FrameBuffer:
    """The frames waiting for the model: at most `capacity`; a new frame pushes the oldest out (counted)."""

    def __init__(self, capacity: int, keep_every: int = 1):
        self.capacity, self.keep_every = capacity, keep_every
        self.dropped = 0
        self._frames: deque[LiveFrame] = deque()
        self._seen = 0
        self._closed = False
        self._ready = threading.Condition()

    def put(self, frame: LiveFrame) -> None:
        with self._ready:
            self._seen += 1
            if self.keep_every > 1 and (self._seen - 1) % self.keep_every:
                self.dropped += 1  # every-k: only every k-th frame goes to the model
                return
            if len(self._frames) >= self.capacity:
                gap = self._frames.popleft().after_gap
                self.dropped += 1
                if gap:  # the frame after a reconnect carries the smoother's restart: pass it on
                    frame.after_gap = True
            self._frames.append(frame)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def __len__(self) -> int:
        """Frames waiting now (the queue's depth)."""
        return len(self._frames)

    def take(self, timeout_s: float) -> tuple[list[LiveFrame], bool]:
        """(everything waiting, oldest first; whether the source has ended), waiting up to `timeout_s` for a frame."""
        with self._ready:
            if not self._frames and not self._closed:
                self._ready.wait(timeout_s)
            frames = list(self._frames)
            self._frames.clear()
            return frames, self._closed and not frames


class LatencyStats:
    """Arrival-to-publication latency: a millisecond histogram for the whole run (bounded memory, exact to 1 ms) and
    the recent window for the periodic log line."""

    MAX_MS = 60_000

    def __init__(self):
        self.histogram = np.zeros(self.MAX_MS + 1, dtype=np.int64)
        self.maximum = 0.0
        self.window: deque[float] = deque(maxlen=1000)

    def add(self, ms: float) -> None:
        self.histogram[min(int(ms), self.MAX_MS)] += 1
        self.maximum = max(self.maximum, ms)
        self.window.append(ms)

    def percentile(self, q: float) -> float | None:
        count = int(self.histogram.sum())
        if not count:
            return None
        return float(np.searchsorted(np.cumsum(self.histogram), q / 100 * count))

    def summary(self) -> dict:
        return {"p50": self.percentile(50), "p95": self.percentile(95),
                "max": round(self.maximum, 1) if self.histogram.any() else None}
