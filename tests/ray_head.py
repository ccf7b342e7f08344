"""A Ray head node of the tests' own, started with `ray start --head --block` as a cluster's head is: token
authentication on (Ray 2.59+ starts it so), with a token of its own so that nothing is read from or written to
~/.ray; its job server (Ray Jobs) and its Ray Client server on 127.0.0.1. Used by the Ray Jobs tests and the KubeRay
manifests' entrypoints (tests/test_ray_jobs.py, tests/test_kuberay.py) through conftest's `ray_head` fixture."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.object_store import free_port

PROJECT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


@dataclass(frozen=True)
class RayHead:
    server: str  # the job server: http://127.0.0.1:PORT
    client_address: str  # Ray Client: ray://127.0.0.1:PORT
    environment: dict  # what a process that joins it needs (its token, this environment's PATH)


@contextlib.contextmanager
def running_head() -> Iterator[RayHead]:
    """A head node of 2 CPUs and 2 GPUs (in name only), ended with everything it started on exit.

    `ray start --block` stays in the foreground and stops its processes when it is signalled; `ray stop` would
    end every Ray instance on the machine, the test session's own included.
    """
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's long tmp_path
    temp_dir = Path("/tmp") / f"rayhead_{secrets.token_hex(3)}"
    port, dashboard_port, client_port = free_port(), free_port(), free_port()
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
         # Two GPUs as Ray counts them, which this CPU-only torch cannot use (a misbuilt image): jobs must find out
         "--num-gpus", "2",
         "--ray-client-server-port", str(client_port), "--temp-dir", str(temp_dir), "--include-dashboard", "true",
         *agent_ports],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    server = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_job_server(server, head, timeout_s=90)
        yield RayHead(server, f"ray://127.0.0.1:{client_port}", environment)
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
