"""Cross-camera batching (pipeline/stages/inference/cross_stream_batcher.py) without Ray: batches fill to batch_size or leave when the
oldest frame has waited, never mix frame sizes, give each camera its own depth, and share a failure."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from pipeline.stages.frames import DepthBatch, FrameBatch
from pipeline.stages.inference.cross_stream_batcher import BATCH_SECONDS_BUCKETS, CrossStreamBatcher, batch_means


def frames(camera: int, count: int, first_index: int = 0, shape=(6, 8, 3)) -> FrameBatch:
    """Frames whose every pixel says which camera and frame they are (camera * 20 + index)."""
    pixels = np.stack([np.full(shape, camera * 20 + first_index + i, np.uint8) for i in range(count)])
    return FrameBatch(first_index, [1000 * (first_index + i) for i in range(count)], Fraction(1, 90000), pixels)


class Network:
    """A stand-in network: depth = the frame's pixel value (so each answer can be traced to its frame); records the
    batches it ran; can be held shut, so that submissions pile up."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batches: list[FrameBatch]) -> list[DepthBatch]:
        self.gate.wait(10)
        self.batches.append([int(frame.flat[0]) for batch in batches for frame in batch.pixels])
        return [DepthBatch(batch.first_index, batch.pts, batch.time_base,
                           batch.pixels[:, :3, :4, 0].astype(np.float32)) for batch in batches]


def test_frames_of_several_cameras_share_a_batch_and_each_gets_its_own_depth():
    network = Network()
    network.gate.clear()
    batcher = CrossStreamBatcher(network, batch_size=4, wait_s=5.0)
    try:
        blocker = batcher.submit("warm", frames(9, 4))  # full at once: runs, and holds the network shut
        time.sleep(0.1)
        futures = {camera: batcher.submit(f"cam{camera}", frames(camera, 1, first_index=7)) for camera in (1, 2, 3)}
        futures[4] = batcher.submit("cam4", frames(4, 1, first_index=7))
        network.gate.set()
        blocker.result(timeout=10)
        results = {camera: future.result(timeout=10) for camera, future in futures.items()}
    finally:
        batcher.close()
    # Four cameras' single frames went through together (full: no wait for wait_s), each answer its own frame's
    assert sorted(network.batches[1]) == [27, 47, 67, 87]
    for camera, depth in results.items():
        assert depth.first_index == 7 and depth.pts == [7000] and depth.depth.shape == (1, 3, 4)
        assert np.all(depth.depth == camera * 20 + 7)
    # Two batches: the blocker's 4 frames of one camera, then 4 cameras' single frames
    means = batch_means([batcher.stats()])
    assert {key: means[key] for key in ("count", "mean_frames", "mean_cameras")} == {
        "count": 2, "mean_frames": 4.0, "mean_cameras": 2.5}
    # Another batcher's totals (a second model actor's: one batch of two cameras' single frames) add to them
    other = CrossStreamBatcher(Network(), batch_size=2, wait_s=5.0)
    try:
        pair = [other.submit("a", frames(1, 1)), other.submit("b", frames(2, 1))]
        [future.result(timeout=10) for future in pair]
    finally:
        other.close()
    means = batch_means([batcher.stats(), other.stats()])
    assert {key: means[key] for key in ("count", "mean_frames", "mean_cameras")} == {
        "count": 3, "mean_frames": round(10 / 3, 3), "mean_cameras": round(7 / 3, 3)}
    # Each batch's seconds in the network, as a cumulative histogram (a stand-in network: well under 5 ms)
    buckets = means["seconds"]["buckets"]
    assert len(buckets) == len(BATCH_SECONDS_BUCKETS) + 1 and buckets[-1] == 3 and buckets == sorted(buckets)
    assert 0 < means["seconds"]["sum"] < 3 * 5.0


def test_a_frame_waits_for_the_other_cameras_at_most_wait_s_and_sizes_are_never_mixed():
    network = Network()
    batcher = CrossStreamBatcher(network, batch_size=8, wait_s=0.3)
    try:
        # Both cameras' frames are in: no one else is coming, so the batch leaves at once
        both = [batcher.submit("a", frames(1, 1)), batcher.submit("b", frames(2, 1))]
        [future.result(timeout=5) for future in both]
        assert network.batches == [[20, 40]]
        # Camera a's next frame waits for camera b's, up to wait_s; camera c's larger frames go in a pass of their own
        submitted = time.monotonic()
        waiting = batcher.submit("a", frames(1, 1, first_index=1))
        larger = batcher.submit("c", frames(3, 2, shape=(10, 12, 3)))
        larger.result(timeout=5)
        time.sleep(0.1)
        assert network.batches == [[20, 40], [60, 61]], "a waits for b (0.3 s); c is alone in its size, not held"
        waiting.result(timeout=5)
        assert time.monotonic() - submitted >= 0.3
    finally:
        batcher.close()
    assert network.batches[-1] == [21]


def test_a_camera_alone_is_never_held_back():
    network = Network()
    batcher = CrossStreamBatcher(network, batch_size=8, wait_s=5.0)
    try:
        started = time.monotonic()
        for index in range(3):
            batcher.submit("only", frames(1, 1, first_index=index)).result(timeout=2)
        assert time.monotonic() - started < 2.0  # (each would have waited 5 s for company)
    finally:
        batcher.close()


def test_a_submission_larger_than_a_batch_goes_alone_and_is_never_split():
    network = Network()
    network.gate.clear()
    batcher = CrossStreamBatcher(network, batch_size=3, wait_s=0.0)
    try:
        first = batcher.submit("a", frames(1, 5))
        time.sleep(0.1)
        second = batcher.submit("b", frames(2, 2))
        third = batcher.submit("c", frames(3, 2))
        network.gate.set()
        assert len(first.result(timeout=5).depth) == 5
        second.result(timeout=5), third.result(timeout=5)
    finally:
        batcher.close()
    assert [len(b) for b in network.batches] == [5, 2, 2]  # 2 + 2 > 3: the two cameras' frames went one after another


def test_a_failure_reaches_every_camera_in_the_batch_and_the_batcher_goes_on():
    calls = []

    def network(batches: list[FrameBatch]) -> list[DepthBatch]:
        calls.append(len(batches))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        return [DepthBatch(b.first_index, b.pts, b.time_base, np.zeros((len(b), 2, 2), np.float32)) for b in batches]

    batcher = CrossStreamBatcher(network, batch_size=2, wait_s=1.0)
    try:
        failed = [batcher.submit(name, frames(1, 1)) for name in ("a", "b")]
        for future in failed:
            with pytest.raises(RuntimeError, match="illegal memory access"):
                future.result(timeout=5)
        assert len(batcher.submit("a", frames(1, 2)).result(timeout=5)) == 2
    finally:
        batcher.close()


def test_closing_runs_what_waits_and_then_refuses():
    network = Network()
    batcher = CrossStreamBatcher(network, batch_size=16, wait_s=60.0)
    waiting = batcher.submit("a", frames(1, 1))
    batcher.close()
    assert waiting.result(timeout=1).depth.shape == (1, 3, 4)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("a", frames(1, 1))
