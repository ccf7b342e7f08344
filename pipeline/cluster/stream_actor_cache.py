"""
Each stream's own actors (a decoder and a sink), kept warm between streams.

Takes: a function that starts one new pair of actors (made by `DepthGraph`); from the streams, the pair back after a
stream that finished (`give_back`), or word that it failed (`discard`).
Gives: `take()`, an idle pair when there is one, else a new one.

A new actor is a new worker process that imports PyAV, OpenCV and torch before it does anything: about 1.5 s of two
cores for a pair on the build machine, paid by every video of a batch job and every segment of a long video. A pair
that finished a stream is as good as new (each stream opens its own decoder and sink in it), so the next stream
takes it instead. Only a stream that succeeded gives its pair back; after a failure both actors are killed, and
after a lost worker or node (`clear`) every idle pair is too, since some of them may have gone with it. The cache
never holds more pairs than streams ran at once, and a pair that has served `streams_per_pair` streams is retired
(as a worker pool's "max tasks per child"): whatever a stream leaves behind in its process cannot add up over a
batch job of thousands of videos (measured: a sink's peak memory rose 5 MB over its first 5 videos, then 1 MB over
the next 35).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import ray

__all__ = ["StreamActorCache"]

StreamActors = tuple  # (stream actor, sink actor): Ray actor handles
STREAMS_PER_PAIR = 200


class StreamActorCache:
    """Thread-safe: the driver's stream threads share one pool."""

    def __init__(self, start_pair: Callable[[str | None], StreamActors], streams_per_pair: int = STREAMS_PER_PAIR,
                 kill: Callable = ray.kill):
        """`start_pair(node)`: a new pair on that node (None: wherever Ray puts it)."""
        self._start_pair = start_pair
        self._streams_per_pair = streams_per_pair
        self._kill = kill
        self._idle: dict[str | None, list[StreamActors]] = {}  # node -> pairs waiting there
        self._served: dict[int, int] = {}  # id(pair) -> streams it finished
        self._node: dict[int, str | None] = {}  # id(pair) -> the node it was started for
        self._lock = threading.Lock()
        self.started = 0  # pairs started so far (the rest of the streams reused one)

    def take(self, node: str | None = None) -> StreamActors:
        """An idle pair on `node`, else a new one there."""
        with self._lock:
            if self._idle.get(node):
                return self._idle[node].pop()
            self.started += 1
        pair = self._start_pair(node)
        with self._lock:
            self._served[id(pair)] = 0
            self._node[id(pair)] = node
        return pair

    def give_back(self, pair: StreamActors, node: str | None = None) -> None:
        """After a stream that succeeded: the pair waits for the next stream (on `node`, where it ran, when known),
        or is retired after its last."""
        with self._lock:
            if node is not None:
                self._node[id(pair)] = node
            served = self._served[id(pair)] = self._served[id(pair)] + 1
            if served < self._streams_per_pair:
                self._idle.setdefault(self._node[id(pair)], []).append(pair)
                return
        self.discard(pair)

    def discard(self, pair: StreamActors) -> None:
        with self._lock:
            self._served.pop(id(pair), None)
            self._node.pop(id(pair), None)
        for actor in pair:
            self._kill(actor)

    def clear(self) -> None:
        """Kill every idle pair (a worker or node was lost: some of them may be gone, and would fail their stream)."""
        with self._lock:
            idle = [pair for pairs in self._idle.values() for pair in pairs]
            self._idle = {}
        for pair in idle:
            self.discard(pair)

    @property
    def idle(self) -> int:
        return sum(len(pairs) for pairs in self._idle.values())
