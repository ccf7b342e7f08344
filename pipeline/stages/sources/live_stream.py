"""
Live source: a camera or stream URL (or a file played at its own rate) -> frames on the live clock, reconnecting
with backoff when the source goes away.

Takes: a URL PyAV opens (rtsp://, srt://, udp://, http://, ...) or a file with `realtime=True`.
Gives: `frames()`, an endless iterator of `LiveFrame` (the picture as `VideoDecoder` gives it, its time in seconds
on the live clock, its arrival time) and, after a reconnect, a frame with `after_gap=True` (the smoother starts
again there). Counters: `reconnects`, `frames_in`; `state`: connecting, connected, reconnecting or ended;
`last_error`: why the last connection failed or ended, while not connected (None once connected).

The live clock follows the source's own timestamps, offset at each (re)connection so that it continues from the
arrival time: monotonic across reconnects, and a stall shows as a gap, not a jump back. RTSP is read over TCP by
default, with FFmpeg's low-latency flags (no input buffering) and socket timeouts, so a source that stalls is
noticed in `read_timeout_s` instead of never.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from pipeline.errors import PipelineError, one_line
from pipeline.stages.sources.video_decoder import VideoDecoder
from pipeline.urls import is_publish_url, is_url

__all__ = ["LiveFrame", "LiveSource"]


@dataclass
class LiveFrame:
    pixels: np.ndarray
    layout: str
    seconds: float  # on the live clock
    arrived: float  # time.monotonic() when it was decoded
    after_gap: bool = False


def live_options(source: str, transport: str, read_timeout_s: float) -> dict[str, str]:
    """FFmpeg options for reading a live source with little delay and a bounded wait."""
    options = {"fflags": "nobuffer", "flags": "low_delay"}
    if is_publish_url(source):  # (RTSP: its transport and socket timeout)
        options.update(rtsp_transport=transport, timeout=str(int(read_timeout_s * 1e6)))
    elif is_url(source):
        options.update(rw_timeout=str(int(read_timeout_s * 1e6)))
    return options


class LiveSource:
    def __init__(self, source: str, realtime: bool = False, transport: str = "tcp", read_timeout_s: float = 5.0,
                 backoff_s: tuple[float, float] = (0.5, 8.0), log=None):
        self.source = source
        self.realtime = realtime
        self.options = live_options(source, transport, read_timeout_s) if is_url(source) else {}
        self.backoff_s = backoff_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.reconnects = 0
        self.frames_in = 0
        self.state = "connecting"  # -> connected <-> reconnecting -> ended
        self.info = None  # the current connection's VideoInfo (its size changes when a camera comes back resized)
        self.last_error: str | None = None  # why it is not connected (a camera refusing, a stream that ended)
        self._started = time.monotonic()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def clock(self) -> float:
        """Now, on the live clock (seconds; what a frame arriving now would be stamped with)."""
        return time.monotonic() - self._started

    def open(self) -> VideoDecoder:
        """The first connection; errors are the caller's (a bad URL at start-up is an error, not a retry loop)."""
        return VideoDecoder(self.source, options=self.options)

    def frames(self, decoder: VideoDecoder | None = None) -> Iterator[LiveFrame]:
        """Frames until stopped (or a realtime file ends), from `decoder` (the first connection, opened by the
        caller) or, without one, from a first connection made here, with backoff until the source answers (a camera
        of several that is not up yet waits for it instead of failing the job)."""
        after_gap = False
        if decoder is None:
            decoder = self._connect("not connected yet", first=True)
        while decoder is not None and not self._stopped:
            self.state, self.info, self.last_error, offset = "connected", decoder.info, None, None
            try:
                for pts, pixels in decoder.frames():
                    if self._stopped:
                        return
                    seconds = float(pts * decoder.info.time_base)
                    now = time.monotonic()
                    if offset is None:  # first frame of this connection: continue the clock from now
                        offset = (now - self._started) - seconds
                    if self.realtime:  # a file stands in for a camera: wait until its frame is due
                        time.sleep(max(0.0, self._started + offset + seconds - now))
                        now = time.monotonic()
                    self.frames_in += 1
                    yield LiveFrame(pixels, decoder.layout, offset + seconds, now, after_gap)
                    after_gap = False
                reason = "the stream ended"
            except (av.FFmpegError, OSError, PipelineError) as error:
                reason = one_line(error)
            finally:
                decoder.close()
            if not is_url(self.source) or self._stopped:
                break  # a file played in real time ends like a file
            self.state, self.last_error = "reconnecting", reason
            decoder, after_gap = self._connect(reason), True
        self.state = "ended"

    def _connect(self, reason: str, first: bool = False) -> VideoDecoder | None:
        """A new connection, tried with exponential backoff (bounded) until the source answers; None once stopped."""
        delay = self.backoff_s[0]
        while not self._stopped:
            if first:
                try:
                    return VideoDecoder(self.source, options=self.options)
                except PipelineError as error:
                    reason, first = one_line(error), False
                    self.last_error = reason
                    continue
            said = reason.removeprefix(f"{self.source}: ")  # (the decoder's errors begin with the URL already)
            self.log(f"live: {self.source}: {said}; {'connecting' if self.state == 'connecting' else 'reconnecting'}"
                     f" in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, self.backoff_s[1])
            try:
                decoder = VideoDecoder(self.source, options=self.options)
            except PipelineError as error:
                reason = self.last_error = one_line(error)
                continue
            if self.state == "reconnecting":
                self.reconnects += 1
                self.log(f"live: {self.source}: reconnected")
            return decoder
        return None
