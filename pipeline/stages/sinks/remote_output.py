"""
A remote output (`s3://bucket/out/clip_depth.mp4`, or a frame folder `s3://bucket/out/shot_depth/`) while it is
written: a local writer writes it into a spool folder of this process's own, and `close` uploads it whole.

Takes: the output URL, and `make_writer(local_path)`, which opens the local writer (DepthVideoWriter,
DepthSequenceWriter: `write(image, pts)` or `write_packet(packet)`, `close() -> path`, `abort()`, `frames_written`).
Gives: the same interface; `close()` returns the URL once the object is complete in the store (one PUT, or a
multipart upload completed at the end; a frame folder's depth.json uploaded last, its sign of being complete);
`abort()` leaves nothing in the store. Either way the spool is removed.

Why a local file first: an MP4's index is written at its end (and moved to the front), and FFmpeg seeks back to
write it; an object store cannot seek or append. The spool holds one output at most per sink.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline import storage
from pipeline.stages.sinks.image_sequence_writer import DESCRIPTION

__all__ = ["RemoteOutput"]


SPOOL_PREFIX = "video-depth-spool-"


def remove_dead_spools() -> None:
    """The spools of processes that died on this machine (a killed sink's): removed by the next one made here."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = folder.name[len(SPOOL_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


class RemoteOutput:
    def __init__(self, url: str, make_writer: Callable[[Path], object], if_absent: bool = False):
        self.url = url
        self.if_absent = if_absent
        remove_dead_spools()
        self._spool = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))  # (TMPDIR moves it)
        try:
            self.writer = make_writer(self._spool / storage.name_of(url))
        except BaseException:
            shutil.rmtree(self._spool, ignore_errors=True)
            raise

    def write(self, image, pts: int) -> None:
        self.writer.write(image, pts)

    def write_packet(self, packet) -> None:
        self.writer.write_packet(packet)

    @property
    def frames_written(self) -> int:
        return self.writer.frames_written

    def close(self) -> str:
        try:
            local = self.writer.close()
            storage.upload(local, self.url, if_absent=self.if_absent, last=DESCRIPTION)
        finally:
            shutil.rmtree(self._spool, ignore_errors=True)
        return self.url

    def abort(self) -> None:
        try:
            self.writer.abort()
        finally:
            shutil.rmtree(self._spool, ignore_errors=True)
