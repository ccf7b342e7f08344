"""
A writer on a thread of its own: the sink renders frame N+1 while frame N is being encoded.

Takes: a writer with DepthVideoWriter's interface (`write(image, pts)`, `close()`, `abort()`, `frames_written`) and
the number of rendered frames that may wait for it.
Gives: the same interface; `write` hands the frame over and returns (blocking only while `depth` frames wait),
`close` waits for every frame to be encoded and then closes the writer; an error of the writer is raised by the
next `write` or by `close`. `encode_cpu_s`: CPU seconds of the encoder thread.

Why: a stream's sink does three steps a frame on one core (smooth, render, encode: about 9 ms a 720p frame), which
caps one stream near 110 fps whatever the GPU does. libx264 and the smoother's NumPy / OpenCV / torch work release
the GIL, so encoding beside rendering uses a second core: the cap becomes the larger of the two parts, not their sum.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

__all__ = ["BackgroundWriter"]

_END = object()


class BackgroundWriter:
    def __init__(self, writer, depth: int = 2):
        self.writer = writer
        self.encode_cpu_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, name="encoder", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None:
                continue  # after an error the frames are only taken off the queue, so that write() never blocks
            image, pts = item
            started = time.thread_time()
            try:
                self.writer.write(image, pts)
            except BaseException as error:  # noqa: BLE001 - handed to the sink's thread
                self._error = error
            self.encode_cpu_s += time.thread_time() - started

    def _raise_error(self) -> None:
        if self._error is not None:  # kept: the frames after it are not written either
            raise self._error

    def write(self, image: np.ndarray, pts: int) -> None:
        self._raise_error()
        self._queue.put((image, pts))

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def _finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()

    def close(self):
        self._finish()
        self._raise_error()
        return self.writer.close()

    def abort(self) -> None:
        self._finish()
        self.writer.abort()
