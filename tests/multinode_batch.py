"""
A batch job on a real three-node Ray cluster on this machine, losing a worker node mid-job (run by test_batch.py).

    python tests/multinode_batch.py INPUT_SPEC OUTPUT_DIR RESULT_JSON [--kill-after-videos N] [extra CLI flags...]
    python tests/multinode_batch.py ... [--sigkill-driver-after-videos N] [extra CLI flags...]

A process of its own, because one process can be the driver of only one Ray instance (the test session has its
own). It starts `ray.cluster_utils.Cluster`: a head node without CPUs and two worker nodes with one CPU each;
runs `run_pipeline.py batch ... --address` against it as a subprocess; once N videos are recorded in the status
file, removes the worker node that hosts the model actor abruptly (`allow_graceful=False`: its raylet and workers
die at once, as when a machine goes away), so that its model actor must be restarted on the other node and the
streams that ran there are redone; then waits for the job and writes what happened to RESULT_JSON. With
`--sigkill-driver-after-videos N` it kills the job's driver instead (SIGKILL: nothing cleans up), once N videos are
recorded, and runs the same command again; RESULT_JSON then tells of the second run. INPUT_SPEC and OUTPUT_DIR may be
s3:// URLs (the endpoint and credentials: the AWS variables this process was given).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from pipeline import storage  # noqa: E402


def done_videos(output_dir: str) -> int:
    """Videos the job's status file (or, for an s3:// output, its ledger objects) records as done."""
    if storage.is_remote(output_dir):
        ledger = storage.read_all(storage.find(storage.join(output_dir, "batch_status")))
        return sum(json.loads(data).get("status") == "done" for data in ledger.values())
    status_file = Path(output_dir) / "batch_status.jsonl"
    if not status_file.exists():
        return 0
    return sum('"status": "done"' in line for line in status_file.read_text().splitlines())


def model_actor_node() -> str | None:
    """The node id of the live ModelActor (from the GCS's actor table; no dashboard needed)."""
    for actor in ray._private.state.actors().values():
        if actor.get("ActorClassName", "").endswith("ModelActor") and actor.get("State") == "ALIVE":
            return actor["Address"]["NodeID"]
    return None


def main() -> None:
    spec, output_dir, result_path, *rest = sys.argv[1:]
    kill_after, sigkill_after = 1, None
    if rest[:1] == ["--kill-after-videos"]:
        kill_after, rest = int(rest[1]), rest[2:]
    if rest[:1] == ["--sigkill-driver-after-videos"]:
        sigkill_after, rest = int(rest[1]), rest[2:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    # This helper only reads the actor table (its own logs would repeat the killed raylet's last words)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    result: dict = {"address": cluster.address}
    started = time.monotonic()
    command = [sys.executable, str(PROJECT / "run_pipeline.py"), "batch", spec, "--output-dir", output_dir,
               "--address", cluster.address, *rest]
    job = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if sigkill_after is not None:  # the driver killed mid-job (no clean-up at all), then the same command again
            while job.poll() is None and done_videos(output_dir) < sigkill_after:
                time.sleep(0.2)
            killed = job.poll() is None
            job.kill()
            job.communicate(timeout=60)
            result.update(killed_driver=killed, done_when_killed=done_videos(output_dir))
            job = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            kill_after = 10**9  # (no node is removed)
        while job.poll() is None and done_videos(output_dir) < kill_after:
            time.sleep(0.1)
        node_id = model_actor_node()
        victim = next((w for w in workers if w.node_id == node_id), workers[-1])
        if job.poll() is None and sigkill_after is None:
            cluster.remove_node(victim, allow_graceful=False)
            result.update(removed_node=victim.node_id, removed_model_actor_node=victim.node_id == node_id,
                          removed_after_s=round(time.monotonic() - started, 2),
                          done_when_removed=done_videos(output_dir))
        # What Ray says of the model actors from then on (for the record: when it noticed, what it did)
        states, finished = [], time.monotonic() + 400
        while job.poll() is None and time.monotonic() < finished:
            seen = sorted(a.get("State") for a in ray._private.state.actors().values()
                          if a.get("ActorClassName", "").endswith("ModelActor"))
            if not states or states[-1][1] != seen:
                states.append((round(time.monotonic() - started, 1), seen))
            time.sleep(0.5)
        result["model_actor_states"] = states
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
        ray.shutdown()
        cluster.shutdown()
    result.update(exit_status=job.returncode, stdout=stdout, stderr=stderr,
                  seconds=round(time.monotonic() - started, 2))
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
