"""Where streams run (pipeline/cluster/stream_placement.py), without Ray: on nodes with model actors, in proportion to them, within
each node's limit. On a real two-node cluster, a stream's three actors on one node: tests/test_batch.py's node-loss
test with a model actor on each node (no byte of frames or depth crossed nodes)."""

from __future__ import annotations

import threading
import time

from pipeline.cluster.stream_placement import StreamPlacement


def test_streams_go_to_nodes_with_model_actors_in_proportion():
    placement = StreamPlacement(lambda: {"gpu-a": 2, "gpu-b": 1}, lambda: {"gpu-a": 10, "gpu-b": 10, "cpu-c": 10})
    nodes = [placement.acquire() for _ in range(6)]
    assert nodes.count("gpu-a") == 4 and nodes.count("gpu-b") == 2 and "cpu-c" not in nodes
    placement.release("gpu-a")
    assert placement.open == {"gpu-a": 3, "gpu-b": 2}


def test_a_full_node_is_skipped_and_a_stream_waits_when_every_node_is_full():
    placement = StreamPlacement(lambda: {"a": 1, "b": 1}, lambda: {"a": 1, "b": 2})
    assert sorted(placement.acquire() for _ in range(3)) == ["a", "b", "b"]
    got = []
    waiting = threading.Thread(target=lambda: got.append(placement.acquire(wait_s=0.05)))
    waiting.start()
    time.sleep(0.3)
    assert got == [], "no node had room: the stream waits"
    placement.release("a")
    waiting.join(timeout=5)
    assert got == ["a"]


def test_no_known_model_node_leaves_the_stream_to_ray():
    placement = StreamPlacement(lambda: {}, lambda: {"a": 4})
    assert placement.acquire() is None
    placement.release(None)
