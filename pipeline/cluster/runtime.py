"""
Ray itself: start a private local instance or join a cluster, and stop it, leaving nothing behind.

Takes: an address (None: a private local instance; "auto", host:port, ray://host:port: a cluster) and, for a local
instance, its CPU count.
Gives: Ray initialised in this process (`start_ray`), or shut down with every process it started ended
(`stop_ray`); an address that does not answer, or a cluster that refuses, is one line (`PipelineError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import ray

from pipeline.errors import PipelineError

__all__ = ["ships_this_project", "start_ray", "started_local_ray", "stop_ray", "submitted_job_runtime_env",
           "wait_for_gpus", "cuda_problem_on_gpu_nodes"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds model/ and pipeline/ (shipped to workers)
_started_local_ray = False  # whether this process started the Ray instance it uses (so may end what it left)


def start_ray(address: str | None = None, num_cpus: int | None = None, connect_timeout_s: float = 5.0) -> None:
    """Connect to a cluster (`address`: "auto", host:port or ray://host:port) or start a private local one.

    Workers of a local cluster inherit this process's environment, so this project is put on their PYTHONPATH
    (no packaging, which cost about a second); workers on other machines get its packages shipped as `py_modules`.
    An address that does not answer is a one-line `PipelineError` within `connect_timeout_s`, not a long retry.
    """
    if ray.is_initialized():
        return
    kwargs = dict(logging_level="ERROR", log_to_driver=True)
    # A stream that failed (a lost worker or node) is run again and its batches in flight abandoned: their errors
    # are handled by the retry, and Ray's "unhandled error" dumps of them (tens of lines each) would only alarm
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    # A driver thread still waiting when Ray is shut down (Ctrl-C in a batch job) must not start a new Ray instance
    # by calling into it: Ray's auto-connect would do just that (RAY_ENABLE_AUTO_CONNECT=0, read when ray is imported)
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    ray._private.auto_init_hook.enable_auto_connect = False
    try:
        if address:
            check_reachable(address, connect_timeout_s)
            # Under `ray job submit --working-dir .` the job's runtime env already ships this project to every
            # worker: shipping it again would upload it twice (and conflict if the job named py_modules itself)
            if not ships_this_project(submitted_job_runtime_env()):
                kwargs["runtime_env"] = {"py_modules": [str(PROJECT_ROOT / "model"), str(PROJECT_ROOT / "pipeline")]}
            ray.init(address=address, **kwargs)
        else:
            paths = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            os.environ["PYTHONPATH"] = os.pathsep.join(paths)
            global _started_local_ray
            _started_local_ray = True
            # "local": a private instance, even when another Ray runs on this machine (which ray.init() would join)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        # Ray 2.59+ starts clusters with token authentication: a driver without the token cannot tell that apart
        hint = (" (a cluster with token authentication needs RAY_AUTH_TOKEN set to what `ray get-auth-token` prints "
                "on its head node)" if address else "")
        raise PipelineError(f"cannot start or reach {where}: {str(error).strip().splitlines()[0][:200]}{hint}") \
            from None


def stop_ray() -> None:
    """Shut Ray down; for a local instance, also end whatever it started that outlives the shutdown.

    Ray's dashboard and runtime-env agents, when Ray is stopped within seconds of starting (a Ctrl-C during
    start-up), were left running for a minute or more: every process descended from this one is ended here.
    """
    global _started_local_ray
    descendants = _descendant_pids(os.getpid()) if _started_local_ray else []
    if ray.is_initialized():
        ray.shutdown()
    _started_local_ray = False
    for pid in descendants:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _descendant_pids(root: int) -> list[int]:
    """Every process below `root`, from /proc (Linux); empty where there is no /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) can hold spaces: the parent pid is the 2nd field after its ')'
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.parent.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def wait_for_gpus(count: int, timeout_s: float, poll_s: float = 2.0) -> dict[str, float]:
    """The cluster's resources once it has `count` GPUs, or after `timeout_s` with what it has then (said on stderr).

    An autoscaling cluster (KubeRay's, its GPU worker group from zero or still starting when the job starts) is asked
    for the GPUs at once (`request_resources`: without it the autoscaler adds nodes only for work already waiting,
    and the job plans from what is present). The request is withdrawn when the wait ends: the model actors then hold
    the GPUs, and a GPU node that dies later is replaced for the actor Ray restarts.
    """
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= count:
        return resources
    from ray.autoscaler.sdk import request_resources

    print(f"waiting for {count} GPUs in the Ray cluster ({resources.get('GPU', 0):g} now), asked of its autoscaler, "
          f"at most {timeout_s:g} s", file=sys.stderr, flush=True)
    request_resources(bundles=[{"GPU": 1}] * count)
    deadline = time.monotonic() + timeout_s
    try:
        while resources.get("GPU", 0) < count and time.monotonic() < deadline:
            time.sleep(poll_s)
            resources = ray.cluster_resources()
    finally:
        request_resources(bundles=[])
    if resources.get("GPU", 0) < count:
        print(f"warning: after {timeout_s:g} s the Ray cluster has {resources.get('GPU', 0):g} of the {count} GPUs "
              f"waited for: planning with those", file=sys.stderr, flush=True)
    return resources


def cuda_problem_on_gpu_nodes(timeout_s: float = 60.0) -> str | None:
    """Why torch on the cluster's GPU nodes cannot use their GPUs (a CPU-only build in the image, a driver older
    than its CUDA), asked of a task on one of them holding a sliver of a GPU: the model actors' torch. None when it
    can, or when no answer came within `timeout_s` (every GPU taken whole: the actors will tell)."""
    from pipeline.stages.inference.depth_worker import cuda_problem

    probe = ray.remote(num_cpus=0, num_gpus=0.01, max_retries=0)(cuda_problem).remote()
    ready, _ = ray.wait([probe], timeout=timeout_s)
    if not ready:
        ray.cancel(probe, force=True)
        return None
    try:
        return ray.get(probe)
    except ray.exceptions.RayError:
        return None


def check_reachable(address: str, timeout_s: float) -> None:
    """For host:port addresses, a TCP connection to the cluster's GCS port, so a dead address fails fast."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto" and the like: Ray itself says at once when it finds no cluster
    host, port = match[1], int(match[2])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise PipelineError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


def submitted_job_runtime_env() -> dict | None:
    """The runtime env of the Ray Job this process is the entrypoint of (`ray job submit`), or None outside one.

    Ray's job manager hands the entrypoint its job config as JSON in RAY_JOB_CONFIG_JSON_ENV_VAR.
    """
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not config:
        return None
    try:
        runtime_env = json.loads(config).get("runtime_env")
    except (ValueError, AttributeError):
        return None
    return runtime_env if isinstance(runtime_env, dict) else None


def ships_this_project(runtime_env: dict | None) -> bool:
    """Whether a job's runtime env carries this project to the workers: its working_dir is where the entrypoint
    runs, and the job was submitted from this project's folder (the working dir Ray unpacked holds run_pipeline.py)."""
    if not runtime_env or not runtime_env.get("working_dir"):
        return False
    return Path.cwd().resolve() == PROJECT_ROOT and (PROJECT_ROOT / "model").is_dir() \
        and (PROJECT_ROOT / "pipeline").is_dir()


def started_local_ray() -> bool:
    """Whether this process started the Ray instance it uses (its workers then run this machine's Python)."""
    return _started_local_ray
