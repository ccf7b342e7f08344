"""
Cross-stream batching: frames of several cameras -> one pass through the network, as a GPU wants them.

Takes: `submit(stream, FrameBatch)` from any thread (each camera sends what it has waiting: one frame when it keeps
up); `infer(list[FrameBatch]) -> list[DepthBatch]`, the network on several batches at once (`DepthWorker.
infer_together`; with `keyed`, (stream, FrameBatch) pairs: `infer_streams_together`, a video model), and
`group_of(FrameBatch)`, which batches may go through it together (`DepthWorker.input_size_for`:
those the network sees at one input size).
Gives: a `Future` per submission, resolved with that submission's own `DepthBatch` (its indices and timestamps).

A batch is sent when it holds `batch_size` frames, or when its oldest frame has waited `wait_s` (NVIDIA DeepStream's
nvstreammux does the same with its batch size and push timeout), or as soon as every stream that has been sending to
it has a frame in it (no one else is coming: a camera alone is never held back); a worker that comes free takes at
once what has waited that long, so under load batches fill without any waiting. Frames go through the network together only when
`group_of` says they can: the network's input size follows the frame's aspect ratio, so 1080p and 720p cameras batch
together and a 4:3 one apart from them; the group whose oldest frame came first goes first. A submission is never split:
one larger than `batch_size` goes alone. Statistics: `stats()` (totals), `batch_means` (per batch).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from pipeline.stages.frames import DepthBatch, FrameBatch

__all__ = ["BATCH_SECONDS_BUCKETS", "CrossStreamBatcher", "batch_means"]

ACTIVE_S = 1.0  # a stream that has sent nothing for this long (or 20 waits) is not waited for
# Upper bounds (seconds) of the network-time histogram's buckets: a CPU's 50-500 ms to a GPU's few milliseconds
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def same_frames(batch: FrameBatch) -> Hashable:
    """Batches of one frame size and layout (what a stand-in network needs; a real one: `input_size_for`)."""
    return batch.pixels.shape[1:], batch.layout


@dataclass
class _Request:
    stream: str
    batch: FrameBatch
    arrived: float
    future: Future = field(default_factory=Future)


class CrossStreamBatcher:
    def __init__(self, infer: Callable[[list], list[DepthBatch]], batch_size: int, wait_s: float,
                 group_of: Callable[[FrameBatch], Hashable] = same_frames, workers: int = 1,
                 clock: Callable[[], float] = time.monotonic, keyed: bool = False):
        """`workers`: batches in the network at once (2 on a GPU overlaps one batch's copies with another's
        compute; 1 on a CPU, where the network uses every core it has). `keyed`: `infer` takes (stream, batch)
        pairs (a video model's streaming mode: each stream's frames through its own cache,
        `DepthWorker.infer_streams_together`)."""
        if batch_size < 1 or wait_s < 0:
            raise ValueError("batch_size must be at least 1 and wait_s not negative")
        self.infer, self.batch_size, self.wait_s, self.clock = infer, batch_size, wait_s, clock
        self.keyed = keyed
        self.group_of = group_of
        self._groups: dict[Hashable, list[_Request]] = {}  # group_of -> requests, oldest first
        self._seen: dict[Hashable, dict[str, float]] = {}  # group_of -> stream -> when it last submitted
        self._changed = threading.Condition()
        self._closed = False
        self.batches = self.frames = self.stream_sum = 0
        # each batch's time in the network (its `infer` call): a histogram, for an alert on a slow model
        self.seconds_sum, self.seconds_counts = 0.0, [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"cross-batcher-{i}")
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, stream: str, batch: FrameBatch) -> Future:
        request = _Request(stream, batch, self.clock())
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            key = self.group_of(batch)
            self._groups.setdefault(key, []).append(request)
            self._seen.setdefault(key, {})[stream] = request.arrived
            self._changed.notify()
        return request.future

    def close(self) -> None:
        """Stop taking work; what is waiting is still run."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def stats(self) -> dict:
        """Totals so far: batches run, frames in them, and streams in them (each batch's distinct streams, summed);
        see `batch_means`."""
        with self._changed:
            return {"count": self.batches, "frames": self.frames, "cameras": self.stream_sum,
                    "seconds_sum": self.seconds_sum, "seconds_counts": list(self.seconds_counts)}

    # .................................................................................................................

    def _work(self) -> None:
        while True:
            with self._changed:
                requests = self._next_batch()
                while requests is None:
                    if self._closed and not self._groups:
                        return
                    self._changed.wait(timeout=self._time_to_wait())
                    requests = self._next_batch()
            self._run(requests)

    def _frames_in(self, requests: list[_Request]) -> int:
        return sum(len(request.batch) for request in requests)

    def _time_to_wait(self) -> float | None:
        """Until the oldest waiting frame has waited `wait_s` (None: nothing waits, until something arrives)."""
        if not self._groups:
            return None
        oldest = min(requests[0].arrived for requests in self._groups.values())
        return max(0.0, oldest + self.wait_s - self.clock())

    def _everyone_in(self, key: Hashable, requests: list[_Request], now: float) -> bool:
        """Every stream that sends to this group lately has a frame waiting in it: no one else is coming, so waiting
        longer would only add latency (one camera alone is never held back)."""
        seen = self._seen[key]
        for stream, last in list(seen.items()):
            if now - last > max(ACTIVE_S, 20 * self.wait_s):
                del seen[stream]  # gone quiet (stopped, or sending frames of another size now)
        return {request.stream for request in requests} >= set(seen)

    def _next_batch(self) -> list[_Request] | None:
        """The requests of the next batch, taken from their group, or None when no group is due (full, or its
        oldest frame has waited long enough, or the batcher is closing)."""
        now = self.clock()
        due = [(requests[0].arrived, key) for key, requests in self._groups.items()
               if self._closed or self._frames_in(requests) >= self.batch_size
               or now - requests[0].arrived >= self.wait_s or self._everyone_in(key, requests, now)]
        if not due:
            return None
        _, key = min(due)
        waiting = self._groups[key]
        taken, frames = [], 0
        while waiting and (not taken or frames + len(waiting[0].batch) <= self.batch_size):
            request = waiting.pop(0)
            taken.append(request)
            frames += len(request.batch)
        if not waiting:
            del self._groups[key]
        return taken

    def _run(self, requests: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            results = self.infer([(request.stream, request.batch) if self.keyed else request.batch
                                  for request in requests])
        except BaseException as error:  # every waiting camera hears of it (a model actor's failure is theirs too)
            for request in requests:
                request.future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        with self._changed:
            self.batches += 1
            self.frames += sum(len(request.batch) for request in requests)
            self.stream_sum += len({request.stream for request in requests})
            self.seconds_sum += seconds
            self.seconds_counts[bisect.bisect_left(BATCH_SECONDS_BUCKETS, seconds)] += 1
        for request, result in zip(requests, results):
            request.future.set_result(result)

def batch_means(totals: list[dict]) -> dict:
    """Several batchers' `stats()` as one: `count`, `mean_frames` (frames per batch), `mean_cameras`, and the
    batches' seconds in the network (`seconds`: `buckets`, cumulative counts at each of BATCH_SECONDS_BUCKETS and
    +Inf, as Prometheus histograms have them; `sum`)."""
    count = sum(t["count"] for t in totals)
    per_bucket = [sum(counts) for counts in zip(*(t["seconds_counts"] for t in totals))] or \
        [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
    return {"count": count,
            "mean_frames": round(sum(t["frames"] for t in totals) / count, 3) if count else None,
            "mean_cameras": round(sum(t["cameras"] for t in totals) / count, 3) if count else None,
            "seconds": {"buckets": list(itertools.accumulate(per_bucket)),
                        "sum": round(sum(t["seconds_sum"] for t in totals), 6)}}
