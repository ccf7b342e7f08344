"""Where streams run (pipeline/placement.py), without Ray: on nodes with model actors, in proportion to them, within
each node's limit; and (slow) on a real two-node cluster, a stream's three actors on one node."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.placement import StreamPlacement
from tests.clips import clip
from tests.test_pipeline_e2e import FAST

PROJECT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_on_two_nodes_each_with_a_model_actor_frames_never_cross(tmp_path):
    """Head without CPUs, two 1-CPU workers, a model actor on each: every video's streams ran beside a model actor
    (no byte of frames or depth crossed nodes), and both nodes took streams."""
    root = tmp_path / "in"
    for index in range(6):
        clip(root, f"clip{index}.mp4", width=64, height=48, frames=12)
    out, result_path = tmp_path / "out", tmp_path / "result.json"
    subprocess.run([sys.executable, str(PROJECT / "tests" / "multinode_batch.py"), str(root), str(out),
                    str(result_path), "--kill-after-videos", "999", *FAST, "--model-actors", "2"],
                   cwd=PROJECT, check=True, timeout=600)
    result = json.loads(result_path.read_text())
    assert result["exit_status"] == 0, result["stderr"][-3000:]
    report = json.loads((out / "batch_report.json").read_text())
    assert report["totals"]["done"] == 6
    assert all(row["bytes_across_nodes"] == 0 for row in report["videos"]), report["videos"]
    assert len({node for row in report["videos"] for node in row["nodes"]}) == 2
