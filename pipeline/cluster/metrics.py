"""
Live mode's counters in Ray's metrics (Prometheus format, served by each node's metrics agent where the cluster runs
one: `ray start` with `ray[default]`).

Takes: a frame's arrival (`arrived`), and frames published with their latencies (`frames`).
Gives: the counters `depth_live_frames_in`, `depth_live_frames_out` and the histogram `depth_live_latency_ms`.
"""

from __future__ import annotations

__all__ = ["RayMetrics"]


class RayMetrics:
    """The live counters in Ray's metrics (Prometheus format, from each node's metrics endpoint)."""

    def __init__(self):
        from ray.util import metrics

        self._in = metrics.Counter("depth_live_frames_in", description="frames read from the live source")
        self._out = metrics.Counter("depth_live_frames_out", description="depth frames published")
        self._latency = metrics.Histogram("depth_live_latency_ms", description="arrival to publication",
                                          boundaries=[10, 25, 50, 100, 200, 400, 800, 1600, 3200])

    def arrived(self) -> None:
        self._in.inc()

    def frames(self, count: int, latencies_ms: list[float]) -> None:
        self._out.inc(count)
        for ms in latencies_ms:
            self._latency.observe(ms)
