"""
A few driver threads working through a queue: how the driver keeps several streams (segments, videos) open at once.

Takes: items, the work for one item, how many at once, and optionally a condition that stops new items starting.
Gives: nothing; returns when every item is done or skipped. The calling thread waits in short steps, so that Ctrl-C
and SIGTERM reach it; then no new item starts, and the caller's clean-up (stopping Ray) ends the open ones.

The threads only wait on Ray (the work runs in actors), so the GIL is not the limit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["run_in_threads"]

Item = TypeVar("Item")


def run_in_threads(items: Iterable[Item], work: Callable[[Item], None], threads: int,
                   stop: Callable[[], bool] = lambda: False) -> None:
    pending = deque(items)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending or stop():
                    return
                item = pending.popleft()
            work(item)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(threads, len(pending))))]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            while thread.is_alive():
                thread.join(timeout=0.2)
    except BaseException:
        with lock:
            pending.clear()  # no new item starts
        raise
