"""
Publish: rendered depth frames -> H.264 over RTSP to a server (ANNOUNCE / RECORD, as MediaMTX and the like take
streams), re-publishing with backoff when the server goes away.

Takes: `write(image, seconds)` with an image as the sink renders it (I420 (3H/2) x W, RGB, or gray) and its time on
the live clock (seconds, increasing).
Gives: the stream at `url`; `frames_out`, `frames_lost` (written while the server was away: dropped, counted) and
`republished` (how many times the session was opened again). With `must_connect_first`, a first session that cannot
be opened is a one-line `PipelineError` (a destination wrong from the start), not a retry loop: the session itself is
the check, since a probe connection ahead of it would be taken by a one-shot receiver (ffplay or FFmpeg in listen
mode) as its one publisher, which then leaves.

H.264 for latency: libx264 `ultrafast` with `zerolatency` (no lookahead, no B-frames, one frame in, one packet out),
a keyframe every second so a viewer who joins (or a server that restarts) gets a picture within a second, and the
parameter sets repeated before every keyframe. RTSP over TCP: no losses on a busy network, and one connection.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction
from urllib.parse import urlsplit

import av
import numpy as np

from pipeline.errors import PipelineError, one_line
from pipeline.stages.sinks.video_writer import video_frame_of, x264_options

__all__ = ["LIVE_TIME_BASE", "RtspPublisher", "check_publish_url"]

LIVE_TIME_BASE = Fraction(1, 90_000)  # RTP's clock for video


def check_publish_url(url: str) -> None:
    """An rtsp:// or rtsps:// URL with a host and a valid port, or a one-line `PipelineError`; nothing is contacted."""
    parts = urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        raise PipelineError(f"{url}: not a valid RTSP URL (bad port)") from None
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise PipelineError(f"{url}: not a valid RTSP URL (rtsp://HOST[:PORT]/PATH)")


class RtspPublisher:
    def __init__(self, url: str, frame_hw: tuple[int, int], rate: float, transport: str = "tcp",
                 backoff_s: tuple[float, float] = (0.5, 8.0), log=None, qp: int = 16, crf: int | None = None,
                 must_connect_first: bool = False):
        """`qp` / `crf`: the picture's quality, as for files (see `encode.x264_options`); `must_connect_first`: the
        first session failing is an error (one camera's run), not retried (many cameras: it may come up later)."""
        self.url = url
        self.must_connect_first = must_connect_first
        self.rate_control = (qp, crf)
        self.frame_hw = frame_hw
        self.rate = rate
        self.transport = transport
        self.backoff_s = backoff_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.frames_out = self.frames_lost = self.republished = 0
        self._container = self._stream = None
        self._retry_at = 0.0
        self._delay = backoff_s[0]
        self._last_pts = -1
        self._opened_once = False

    def _open(self) -> None:
        height, width = self.frame_hw
        container = av.open(self.url, mode="w", format="rtsp",
                            options={"rtsp_transport": self.transport, "timeout": "5000000"})
        stream = container.add_stream("libx264", rate=max(1, round(self.rate)))
        gop = max(1, round(self.rate))
        stream.options = {**x264_options("ultrafast", *self.rate_control), "tune": "zerolatency", "g": str(gop),
                          "bf": "0", "x264-params": "repeat-headers=1"}
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.time_base = LIVE_TIME_BASE
        stream.codec_context.time_base = LIVE_TIME_BASE
        container.start_encoding()  # the RTSP session (ANNOUNCE, SETUP, RECORD) happens here
        self._container, self._stream = container, stream
        if self._opened_once:
            self.republished += 1
            self.log(f"live: publishing to {self.url} again")
        self._opened_once = True
        self._delay = self.backoff_s[0]

    def write(self, image: np.ndarray | av.VideoFrame, seconds: float) -> bool:
        """Encode and send one frame; False when the server is away (the frame is counted as lost)."""
        if self._container is None:
            if time.monotonic() < self._retry_at:
                self.frames_lost += 1
                return False
            try:
                self._open()
            except (av.FFmpegError, OSError) as error:
                if self.must_connect_first and not self._opened_once:
                    raise PipelineError(f"{self.url}: cannot publish there ({one_line(error)})") from None
                self._failed(error, "cannot publish to")
                return False
        pts = max(round(seconds / LIVE_TIME_BASE), self._last_pts + 1)  # strictly increasing, on the RTP clock
        frame = video_frame_of(image, self.frame_hw[0])
        frame.pts, frame.time_base = pts, LIVE_TIME_BASE
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.FFmpegError, OSError) as error:
            self._failed(error, "lost the connection to")
            return False
        self._last_pts = pts
        self.frames_out += 1
        return True

    @property
    def connected(self) -> bool:
        """Whether a session with the server is open now."""
        return self._container is not None

    def change_size(self, frame_hw: tuple[int, int]) -> None:
        """Pictures of another size from now on (a camera came back at another resolution): the session is ended
        and the next frame opens a new one at the new size (an H.264 stream's size is fixed by its parameter sets)."""
        if frame_hw != self.frame_hw:
            self.close()
            self.frame_hw = frame_hw
            self._retry_at = 0.0

    def _failed(self, error: BaseException, what: str) -> None:
        self.frames_lost += 1
        self._close()
        self._retry_at = time.monotonic() + self._delay
        self.log(f"live: {what} {self.url} ({one_line(error)}); trying again in {self._delay:.1f} s")
        self._delay = min(self._delay * 2, self.backoff_s[1])

    def _close(self) -> None:
        container, self._container, self._stream = self._container, None, None
        if container is None:
            return
        try:
            container.close()  # TEARDOWN
        except (av.FFmpegError, OSError):
            pass  # the server is gone already

    def close(self) -> None:
        """Flush the encoder and end the RTSP session cleanly."""
        if self._container is not None:
            try:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
            except (av.FFmpegError, OSError):
                pass
        self._close()
