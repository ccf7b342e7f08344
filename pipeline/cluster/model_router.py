"""
The model actors every stream shares, and which of them to send the next batch to.

Takes: the model actors (Ray actor handles, made by `DepthGraph`), and reports from the streams: a call that failed
(`suspect`), a write that is taking long (`check`).
Gives: `next()`, round robin over the actors that are alive and have not failed a call lately; `actors`, the
router's actors as they are now (fewer once an actor is lost for good).

Ray restarts a model actor whose process or node died wherever there is room (`max_restarts`) and sends it the calls
that were in flight again. Two things it does not do, done here:
- a lost node takes Ray a while to notice (heartbeats, about 15 s): until then its actors read as alive and every
  call to them fails at once, so an actor whose call failed gets no new batches for `SUSPECT_S`;
- where no node has room for the restart, the actor (and every batch sent to it) would wait forever: one not alive
  again within `restart_timeout_s` of being seen down is killed and dropped, so the streams that waited on it fail
  with a retriable error and run again on the actors that are left.
"""

from __future__ import annotations

import sys
import threading
import time

import ray

from pipeline.errors import PipelineError

__all__ = ["ModelRouter", "actor_state"]

SUSPECT_S = 30.0  # a model actor whose call failed gets no new batches for this long (unless it is the only one)
NODES_TTL_S = 2.0  # how long the model actors' nodes, once read, are taken as they were


def actor_state(actor_id: str) -> str | None:
    """ALIVE, RESTARTING, PENDING_CREATION, DEAD, ... from the cluster's actor table (the GCS; no dashboard)."""
    try:
        return ray._private.state.actors(actor_id).get("State")
    except Exception:  # noqa: BLE001 - an internal API: should it move, actors read as alive (no dropping)
        return "ALIVE"


def actor_node(actor_id: str) -> str | None:
    """The node an alive actor runs on (hex id), from the same table; None while it is not alive, or unknown."""
    try:
        info = ray._private.state.actors(actor_id)
    except Exception:  # noqa: BLE001 - see actor_state: then placement is left to Ray
        return None
    return info.get("Address", {}).get("NodeID") if info.get("State") == "ALIVE" else None


class ModelRouter:
    """Thread-safe: the driver's stream threads share one router."""

    def __init__(self, actors: list, restart_timeout_s: float, log: bool = True):
        """`log`: say so on stderr when an actor is dropped (the job's own pool; a stream's copy stays quiet)."""
        self.actors = list(actors)
        self.restart_timeout_s = restart_timeout_s
        self._log = log
        self._down_since: dict[str, float] = {}  # actor id -> when it was first seen not alive
        self._suspected_at: dict[str, float] = {}  # actor id -> when a call to it last failed
        self._checked_at = 0.0
        self._nodes: dict[str, list] = {}
        self._nodes_read_at = -NODES_TTL_S
        self._turn = 0
        self._lock = threading.Lock()

    def next(self):
        """The actor for the next batch."""
        candidates = self.healthy()
        with self._lock:
            self._turn += 1
            return candidates[self._turn % len(candidates)]

    def healthy(self) -> list:
        """The actors to give a new stream: alive and not suspected, or all there are when none is."""
        now = time.monotonic()
        with self._lock:
            healthy = [a for a in self.actors if self._id(a) not in self._down_since
                       and now - self._suspected_at.get(self._id(a), -SUSPECT_S) >= SUSPECT_S]
            return healthy or list(self.actors)

    def by_node(self) -> dict[str, list]:
        """The healthy actors, by the node they run on now (an actor restarted elsewhere has moved). Asked for every
        stream: the actor table is read at most once per `NODES_TTL_S` (one lookup per actor: 128 on a 16 x 8-GPU
        cluster)."""
        now = time.monotonic()
        with self._lock:
            if now - self._nodes_read_at < NODES_TTL_S:
                return {node: list(actors) for node, actors in self._nodes.items()}
        nodes: dict[str, list] = {}
        for actor in self.healthy():
            node = actor_node(self._id(actor))
            if node:
                nodes.setdefault(node, []).append(actor)
        with self._lock:
            self._nodes, self._nodes_read_at = nodes, now
        return {node: list(actors) for node, actors in nodes.items()}

    def suspect(self, actor_id: str | None) -> None:
        """A call to this actor failed (any actor id may come here; only the router's count)."""
        with self._lock:
            if actor_id and any(self._id(a) == actor_id for a in self.actors):
                self._suspected_at[actor_id] = time.monotonic()
                self._nodes_read_at = -NODES_TTL_S

    def check(self, every_s: float = 0.0) -> None:
        """Look at the actors' states (at most once per `every_s`); drop those lost for good."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < every_s:
                return
            self._checked_at = now
            for actor in list(self.actors):
                key = self._id(actor)
                state = actor_state(key)
                if state == "ALIVE":
                    self._down_since.pop(key, None)
                    continue
                self._nodes_read_at = -NODES_TTL_S  # not alive: no longer where the nodes said
                # DEAD never comes back (restarts used up, or dropped by a stream's pool): out at once
                if state != "DEAD" and now - self._down_since.setdefault(key, now) < self.restart_timeout_s:
                    continue
                self.actors.remove(actor)
                ray.kill(actor, no_restart=True)
                if self._log:
                    print(f"warning: a model actor was lost and could not be restarted within "
                          f"{self.restart_timeout_s:g} s ({state}: no node with room for it); going on with "
                          f"{len(self.actors)}", file=sys.stderr, flush=True)
            if not self.actors:
                raise PipelineError(f"every model actor was lost and none could be restarted within "
                                    f"{self.restart_timeout_s:g} s (nodes died and the cluster has no room left)")

    @staticmethod
    def _id(actor) -> str:
        return actor._actor_id.hex()
