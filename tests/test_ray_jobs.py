"""The batch job under Ray Jobs, the conventional way to run on a cluster (slow: a real cluster and its job server).

A head node started with `ray start --head --block` on this machine (token authentication on, as Ray 2.59+ starts
it, with a token of the test's own so that nothing is read from or written to ~/.ray), the job submitted from the
project's folder with `ray job submit --working-dir . -- python run_pipeline.py batch ... --address auto`: the job
succeeds, every video is written once, `ray job logs` shows the progress lines, and the driver inside the job does not
ship the project a second time (the job's working dir already carries it to the workers; checked without Ray).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.cluster.runtime import ships_this_project, submitted_job_runtime_env
from tests.clips import clip, read_video
from tests.test_pipeline_e2e import FAST

PROJECT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")



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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node of its own (2 CPUs, dashboard and job server on 127.0.0.1), ended with everything it started.

    `ray start --block` stays in the foreground and stops its processes when it is signalled; `ray stop` would
    end every Ray instance on the machine, the test session's own included.
    """
    pytest.importorskip("aiohttp", reason="Ray's job server needs ray[default] (the project's [cluster] extra)")
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's long tmp_path
    temp_dir = Path("/tmp") / f"rayjob_{secrets.token_hex(3)}"
    port, dashboard_port = free_port(), free_port()
    environment = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                       RAY_USAGE_STATS_ENABLED="0",
                       # the job's `python` is this environment's (Ray starts the entrypoint with the head's PATH)
                       PATH=os.pathsep.join([str(RAY.parent), os.environ.get("PATH", "")]))
    environment.pop("RAY_ADDRESS", None)
    # Every port of its own: the test session's Ray instance holds the defaults (its dashboard agent listens on
    # 52365), and an agent that cannot bind leaves the job server with "No available agent to submit job"
    agent_ports = [flag for name in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                     "--runtime-env-agent-port", "--metrics-export-port")
                   for flag in (name, str(free_port()))]
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--num-cpus", "2",
         "--temp-dir", str(temp_dir), "--include-dashboard", "true", *agent_ports],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    server = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_job_server(server, head, timeout_s=90)
        yield server, environment
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job_server(server: str, head: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start --head ended ({head.returncode}): {head.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"{server}/api/version", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without the token: token authentication is on)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"Ray's job server at {server} did not answer within {timeout_s} s")


def ray_cli(environment: dict, *arguments: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """The ray CLI; a submission the job server turns away while its agent is still starting ("No available agent
    to submit job, please try again later": seen on a busy machine) is tried again, as the message asks."""
    deadline = time.monotonic() + 90
    while True:
        done = subprocess.run([str(RAY), *arguments], cwd=PROJECT, env=environment, capture_output=True, text=True,
                              timeout=timeout_s)
        if "No available agent to submit job" not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


@pytest.mark.slow
@needs_ray_cli
def test_a_batch_job_under_ray_jobs_stopped_and_submitted_again(ray_head, tmp_path):
    """`ray job submit --working-dir .` of a batch job; `ray job stop` (SIGTERM to the driver, SIGKILL after a few
    seconds) mid-batch: the videos finished stay recorded; the same job submitted again does only what was left and
    succeeds, every video written once at its frame count, nothing half-written, and `ray job logs` shows the
    progress lines."""
    server, environment = ray_head
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
