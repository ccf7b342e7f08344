"""
The live tests' peers on 127.0.0.1 (also used by benchmarks/live_latency.py): a camera and an RTSP server.

Camera: tests/rtsp_camera.py (GStreamer's RTSP server, under the system Python) as a process that can be stopped and
started again on the same port. Receiver: FFmpeg's RTSP listen mode through PyAV, the server the pipeline publishes
to (ANNOUNCE / RECORD), keeping every decoded frame with its arrival time.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


def control_url(process: subprocess.Popen) -> str:
    """The control API's address a many-camera job (`run_pipeline.py live ... --control 127.0.0.1:0`) prints on
    stderr once it listens; the job's stderr is read up to that line."""
    while True:
        line = process.stderr.readline()
        assert line or process.poll() is None, "the job ended before it listened"
        found = re.search(r"control API at (http://127\.0\.0\.1:\d+)", line)
        if found:
            return found[1]


def free_port() -> int:
    """A port outside Ray's worker range (10002-19999)."""
    return random.randint(21000, 29999)


class Camera:
    """tests/rtsp_camera.py as a process: start, stop, start again on the same port."""

    def __init__(self, width=160, height=96, fps=15):
        self.port, self.size = free_port(), (width, height, fps)
        self.url = f"rtsp://127.0.0.1:{self.port}/camera"
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(PROJECT / "tests" / "rtsp_camera.py"), str(self.port),
                                         *map(str, self.size)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class Receiver:
    """The RTSP server the pipeline publishes to: FFmpeg's listen mode, one publisher per open, accepting the next
    publisher after one leaves; every decoded frame is kept (time, picture as grey)."""

    def __init__(self, once: bool = False):
        """`once`: listen for one publisher only, as `ffplay -rtsp_flags listen` does: a connection that is not a
        publisher (a probe) ends it."""
        self.once = once
        self.url = f"rtsp://127.0.0.1:{free_port()}/depth"
        self.frames: list[tuple[float, np.ndarray]] = []
        self.stream_seconds: list[float | None] = []  # each frame's timestamp in the stream, as the server sees it
        self.sessions = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "Receiver":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                with av.open(self.url, options={"rtsp_flags": "listen", "listen_timeout": "60"}) as container:
                    self.sessions += 1
                    for frame in container.decode(video=0):
                        self.stream_seconds.append(frame.time)
                        self.frames.append((time.monotonic(), frame.to_ndarray(format="gray")))
                        if self._stop.is_set():
                            return
            except (av.FFmpegError, OSError) as error:
                self.error = error
                time.sleep(0.1)
            if self.once:
                return

    def stop(self) -> None:
        self._stop.set()
