"""The batch job under Ray Jobs, the conventional way to run on a cluster (slow: a real cluster and its job server).

A head node started with `ray start --head --block` on this machine (token authentication on, as Ray 2.59+ starts
it, with a token of the test's own so that nothing is read from or written to ~/.ray), the job submitted from the
project's folder with `ray job submit --working-dir . -- python run_pipeline.py batch ... --address auto`: the job
succeeds, every video is written once, `ray job logs` shows the progress lines, and the driver inside the job does not
ship the project a second time (the job's working dir already carries it to the workers; checked without Ray).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from pipeline.cluster.runtime import ships_this_project, submitted_job_runtime_env
from tests.clips import clip, read_video
from tests.ray_head import RAY, ray_cli
from tests.test_pipeline_e2e import FAST

PROJECT = Path(__file__).resolve().parents[1]



def test_the_driver_of_a_submitted_job_ships_the_project_only_without_a_working_dir(monkeypatch):
    config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    monkeypatch.chdir(PROJECT)
    assert ships_this_project(submitted_job_runtime_env())
    monkeypatch.chdir(PROJECT / "tests")  # the working dir is another folder: the project is not in it for sure
    assert not ships_this_project(submitted_job_runtime_env())
    monkeypatch.chdir(PROJECT)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {}}}))
    assert not ships_this_project(submitted_job_runtime_env())
    for broken in ("not json", "[1, 2]", '{"runtime_env": "x"}'):
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", broken)
        assert submitted_job_runtime_env() is None
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert submitted_job_runtime_env() is None


needs_ray_cli = pytest.mark.skipif(shutil.which("ray", path=str(RAY.parent)) is None, reason="no ray CLI here")


@pytest.mark.slow
@needs_ray_cli
def test_a_batch_job_under_ray_jobs_stopped_and_submitted_again(ray_head, tmp_path):
    """`ray job submit --working-dir .` of a batch job; `ray job stop` (SIGTERM to the driver, SIGKILL after a few
    seconds) mid-batch: the videos finished stay recorded; the same job submitted again does only what was left and
    succeeds, every video written once at its frame count, nothing half-written, and `ray job logs` shows the
    progress lines."""
    server, environment = ray_head.server, ray_head.environment
    videos = tmp_path / "videos"
    for index in range(4):
        clip(videos / ("nested" if index == 3 else ""), f"v{index}.mp4", width=64, height=48, frames=90)
    out = tmp_path / "depth"
    command = ["python", "run_pipeline.py", "batch", str(videos), "--output-dir", str(out), *FAST,
               "--videos-in-flight", "1", "--address", "auto"]
    submitted = ray_cli(environment, "job", "submit", "--no-wait", "--address", server, "--working-dir", ".", "--",
                        *command)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)[0]
    status_file = out / "batch_status.jsonl"
    deadline = time.monotonic() + 240
    while not (status_file.exists() and '"done"' in status_file.read_text()):
        assert time.monotonic() < deadline, "no video finished"
        time.sleep(0.2)
    stopped = ray_cli(environment, "job", "stop", "--address", server, job_id, timeout_s=120)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    status = ray_cli(environment, "job", "status", "--address", server, job_id, timeout_s=60)
    assert "was stopped" in status.stdout + status.stderr  # (its status: STOPPED)
    finished = [line for line in status_file.read_text().splitlines() if '"done"' in line]
    assert 1 <= len(finished) < 4

    again = ray_cli(environment, "job", "submit", "--address", server, "--working-dir", ".", "--", *command)
    assert again.returncode == 0 and "succeeded" in again.stdout + again.stderr, again.stdout[-3000:]
    assert f"{len(finished)} already done, {4 - len(finished)} to do" in again.stdout
    rows = json.loads((out / "batch_report.json").read_text())["videos"]
    names = ["v0.mp4", "v1.mp4", "v2.mp4", "nested/v3.mp4"]
    assert sorted(row["video"] for row in rows if row["status"] in ("done", "skipped")) == sorted(names)
    assert sum(row["status"] == "skipped" for row in rows) == len(finished)  # done before: not done again
    for row in rows:
        if row["status"] == "done":
            assert row["frames"] == 90 and row["nodes"] and row["bytes_across_nodes"] == 0
    for name in names:
        assert read_video(out / name.replace(".mp4", "_depth.mp4"))["count"] == 90
    second_id = re.search(r"raysubmit_\w+", again.stdout + again.stderr)[0]
    logs = ray_cli(environment, "job", "logs", "--address", server, second_id, timeout_s=60)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert re.search(r"\[\d/4 videos\] \S+: 90 frames in", logs.stdout) and "4 videos:" in logs.stdout, logs.stdout
    done = [json.loads(line)["video"] for line in status_file.read_text().splitlines() if '"done"' in line]
    assert len(done) == len(set(done)) == 4, "each video written once"
    assert not list(out.rglob(".*partial*")), "nothing half-written is left (a killed driver's, cleaned by the rerun)"
