"""
What every actor and the graph share about Ray calls: errors unwrapped to the user's own, answers within a deadline,
errors that name the node, and a process's own figures (peak memory, CPU time).

Takes: Ray errors, object references, an actor's method. Gives: plain exceptions, results, figures.
"""

from __future__ import annotations

import functools
import resource
import socket

import cv2
import ray
import torch

from pipeline.errors import PipelineError, one_line

__all__ = [
    "HEALTH_CHECK_S", "answers", "cpu_seconds", "naming_the_node", "one_thread_each", "peak_rss_mb",
    "unwrap_ray_error", "with_node",
]

HEALTH_CHECK_S = 5.0  # how often a stream looks at the model actors' health (and when a write takes this long)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """CPU time of this process, all threads, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unwrap_ray_error(error: Exception) -> Exception:
    """The user's exception inside a Ray task error (for a one-line message), or the error itself; through every
    level (a sink's error reaches the driver through the stream actor that waited on it)."""
    while isinstance(getattr(error, "cause", None), Exception):
        error = error.cause
    return error


def answers(refs: list, timeout_s: float) -> list:
    """The results of the calls that answer within `timeout_s` (an actor restarting, or lost with its node, would
    hold the caller up, or forever where it has no room to restart); failed calls are left out."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    results = []
    for ref in ready:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError:
            pass
    return results


def with_node(error: Exception) -> Exception:
    """An error of the input or output, naming the node it happened on when the cluster has more than one (another
    machine may not see a path the driver sees)."""
    if sum(node["Alive"] for node in ray.nodes()) < 2:
        return error
    node = f"{socket.gethostname()}, {ray.util.get_node_ip_address()}"
    return PipelineError(f"{one_line(error)} (on node {node})")


def naming_the_node(method):
    """For a stream actor's methods: errors of the input or output name the node (see `with_node`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (PipelineError, OSError) as error:
            raise with_node(error) from None

    return wrapper


def one_thread_each() -> None:
    """A stream actor's OpenCV and torch work runs on its own thread: streams (segments, videos) are the parallelism,
    and thread pools on small per-frame operations cost more CPU in hand-offs than they save in time."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

