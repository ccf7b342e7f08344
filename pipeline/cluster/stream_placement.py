"""
Where a stream runs: on a node with a model actor, streams spread over the nodes in proportion to their model actors,
at most as many open on a node as its CPUs and memory hold.

Takes: the model actors' nodes (`{node id: model actors there}`, asked again for every stream: an actor restarted
elsewhere moves its streams with it) and each node's limit (`{node id: streams}`), both as functions, so that this
is plain Python, tested without Ray.
Gives: `acquire()` -> the node for the next stream (waits while every node with a model actor is full), and
`release(node)` when that stream ends. None when no model actor's node is known (one is restarting): the stream is
then placed by Ray, anywhere.

Why: a stream's frames (1.4 MB a 720p frame as I420) go from its decoder to a model actor, and the depth on to its
sink: on one node they stay in that node's shared-memory object store; across nodes they cross the network, several
Gbit/s per node at GPU rates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["StreamPlacement"]


class StreamPlacement:
    def __init__(self, model_nodes: Callable[[], dict[str, int]], node_limits: Callable[[], dict[str, int]]):
        self._model_nodes = model_nodes
        self._node_limits = node_limits
        self.open: dict[str, int] = {}  # node id -> streams open there now
        self._turn = 0
        self._changed = threading.Condition()

    def acquire(self, wait_s: float = 1.0) -> str | None:
        """The node with model actors that has the fewest open streams per model actor and room for one more."""
        with self._changed:
            while True:
                nodes = self._model_nodes()
                if not nodes:
                    return None
                limits = self._node_limits()
                with_room = [node for node in nodes if self.open.get(node, 0) < limits.get(node, 1)]
                if with_room:
                    # Fewest open streams per model actor; among equals, in turn (sequential streams spread too)
                    self._turn += 1
                    ordered = sorted(with_room)
                    ordered = ordered[self._turn % len(ordered):] + ordered[: self._turn % len(ordered)]
                    node = min(ordered, key=lambda n: self.open.get(n, 0) / nodes[n])
                    self.open[node] = self.open.get(node, 0) + 1
                    return node
                self._changed.wait(wait_s)  # a stream ends, or a node comes (asked again each time)

    def release(self, node: str | None) -> None:
        if node is None:
            return
        with self._changed:
            self.open[node] = max(0, self.open.get(node, 0) - 1)
            self._changed.notify()
