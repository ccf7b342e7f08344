"""
Each stream's own actors (a decoder and a sink), kept warm between streams.

Takes: a function that starts one new pair of actors (made by `DepthGraph`); from the streams, the pair back after a
stream that finished (`give_back`), or word that it failed (`discard`).
Gives: `take()`, an idle pair when there is one, else a new one.

A new actor is a new worker process that imports PyAV, OpenCV and torch before it does anything: about 1.5 s of two
cores for a pair on the build machine, paid by every video of a batch job and every segment of a long video. A pair
that finished a stream is as good as new (each stream opens its own decoder and sink in it), so the next stream
takes it instead. Only a stream that succeeded gives its pair back; after a failure both actors are killed, and
after a lost worker or node (`clear`) every idle pair is too, since some of them may have gone with it. The pool
never holds more pairs than streams ran at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import ray

StreamActors = tuple  # (decode actor, sink actor): Ray actor handles


class StreamActorPool:
    """Thread-safe: the driver's stream threads share one pool."""

    def __init__(self, start_pair: Callable[[], StreamActors]):
        self._start_pair = start_pair
        self._idle: list[StreamActors] = []
        self._lock = threading.Lock()
        self.started = 0  # pairs started so far (the rest of the streams reused one)

    def take(self) -> StreamActors:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.started += 1
        return self._start_pair()

    def give_back(self, pair: StreamActors) -> None:
        with self._lock:
            self._idle.append(pair)

    @staticmethod
    def discard(pair: StreamActors) -> None:
        for actor in pair:
            ray.kill(actor)

    def clear(self) -> None:
        """Kill every idle pair (a worker or node was lost: some of them may be gone, and would fail their stream)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for pair in idle:
            self.discard(pair)

    @property
    def idle(self) -> int:
        return len(self._idle)
