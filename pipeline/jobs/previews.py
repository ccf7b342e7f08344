"""
Live previews of the cameras for the dashboard's viewers (GET /cameras/NAME/preview.mjpg), with nothing spent on a
camera nobody watches and no viewer able to slow a camera down.

Takes: `fetch(name, newer_than)` -> (number, JPEG bytes) of the camera's last depth picture if newer, or None; a
KeyError once the camera is gone (CameraService.preview, over the camera supervisor); the pictures a second.
Gives: `watch(name)`: an iterator of JPEG pictures for one viewer, each newer than the last it got (an MJPEG
stream); `latest(name, after)`: the newest picture if newer than number `after` (a snapshot, or the dashboard's
poll), asked of the camera at most `fps` times a second however many poll.

One poller thread a camera, only while it has viewers: it asks for the camera's newest picture `fps` times a second
(the camera encodes one JPEG per ask, whatever the number of viewers) and keeps the latest. Each viewer takes the
latest when it is ready for one: a viewer that reads slowly or not at all only misses pictures (its own connection
times out), while the poller, the camera and the other viewers go on. The last viewer gone, the poller stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["PreviewHub"]

VIEWER_WAIT_S = 5.0  # a viewer with no new picture this long (a camera away) is sent the last one again
LATEST_KEPT_S = 60.0  # a camera's newest picture is forgotten once nobody asked for it this long


class _Channel:
    def __init__(self):
        self.viewers = 0
        self.picture: tuple[int, bytes] | None = None
        self.gone = False
        self.changed = threading.Condition()
        self.poller: threading.Thread | None = None


class _Latest:
    def __init__(self):
        self.picture: tuple[int, bytes] | None = None
        self.asked = float("-inf")  # (time.monotonic of the last ask of the camera)
        self.lock = threading.Lock()


class PreviewHub:
    def __init__(self, fetch: Callable[[str, int], tuple[int, bytes] | None], fps: float):
        self.fetch, self.fps, self.interval_s = fetch, fps, 1.0 / fps
        self._channels: dict[str, _Channel] = {}
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def latest(self, name: str, after: int = 0) -> tuple[int, bytes] | None:
        """The camera's newest picture (number, JPEG) if newer than `after`, else None; KeyError: no such camera."""
        now = time.monotonic()
        with self._lock:
            for stale in [key for key, kept in self._latest.items() if now - kept.asked > LATEST_KEPT_S]:
                del self._latest[stale]  # (memory bounded by the cameras polled lately)
            kept = self._latest.setdefault(name, _Latest())
        with kept.lock:
            if now - kept.asked >= self.interval_s:
                kept.asked = now
                try:
                    picture = self.fetch(name, kept.picture[0] if kept.picture else 0)
                except KeyError:
                    with self._lock:
                        self._latest.pop(name, None)
                    raise
                if picture is not None:
                    kept.picture = picture
            picture = kept.picture
        return picture if picture is not None and picture[0] > after else None

    def watch(self, name: str) -> Iterator[bytes]:
        """One viewer's pictures of camera `name` until it is gone or the hub closes (KeyError at once for a camera
        that is not there)."""
        first = self.fetch(name, 0)  # (a KeyError here: no such camera, nothing started)
        channel = self._join(name, first)
        try:
            sent = 0
            while not self._closed.is_set():
                with channel.changed:
                    channel.changed.wait_for(lambda: channel.gone or self._closed.is_set() or (
                        channel.picture is not None and channel.picture[0] > sent), timeout=VIEWER_WAIT_S)
                    if channel.gone:
                        return
                    picture = channel.picture
                if picture is not None:
                    sent = picture[0]
                    yield picture[1]
        finally:
            self._leave(name, channel)

    def close(self) -> None:
        """Every viewer's iterator ends; pollers stop."""
        self._closed.set()
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            with channel.changed:
                channel.changed.notify_all()

    # .................................................................................................................

    def _join(self, name: str, first: tuple[int, bytes] | None) -> _Channel:
        with self._lock:
            channel = self._channels.setdefault(name, _Channel())
            channel.viewers += 1
            if first is not None and (channel.picture is None or first[0] > channel.picture[0]):
                channel.picture = first
            if channel.poller is None:
                channel.poller = threading.Thread(target=self._poll, args=(name, channel), daemon=True,
                                                  name=f"preview-{name}")
                channel.poller.start()
        return channel

    def _leave(self, name: str, channel: _Channel) -> None:
        with self._lock:
            channel.viewers -= 1
            if channel.viewers == 0 and self._channels.get(name) is channel:
                del self._channels[name]  # (its poller sees no viewers and ends)

    def _poll(self, name: str, channel: _Channel) -> None:
        while not self._closed.wait(self.interval_s):
            with self._lock:
                if channel.viewers == 0:
                    return
            newest = channel.picture[0] if channel.picture is not None else 0
            try:
                picture = self.fetch(name, newest)
            except KeyError:  # the camera was removed: its viewers are done
                picture, channel.gone = None, True
            with channel.changed:
                if picture is not None:
                    channel.picture = picture
                channel.changed.notify_all()
            if channel.gone:
                return
