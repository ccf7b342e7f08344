"""
Live mode: a camera or stream in, depth out to an RTSP server (and/or a recording), latency first.

Takes: a live source (`LiveSource`: a URL, or a file played at its own rate), where to publish (an rtsp:// URL) and/or
a file to record to, the job's settings, and a `DepthGraph` whose model actors do the inference.
Gives: the depth stream, published as frames come; `run()` returns the summary (frames_in, frames_out, dropped,
reconnects, latency_ms p50 / p95 / max, ...) when stopped (`stop()`, Ctrl-C, SIGTERM) or when a realtime file ends.

The same stages as a file run (decoder, model actors, smoother and renderer in a `DepthSink`, H.264), with another
policy around them:
- a reader thread decodes frames as they arrive into a small buffer (`live.queue` frames); when the model falls
  behind, the oldest waiting frame is dropped (`live.drop: oldest`), or only every k-th frame is kept (`every-k`), and
  every drop is counted: a backlog never builds, so latency stays bounded however long it runs;
- the main loop takes what is waiting (one frame when keeping up, the queue when behind: the batch adapts), infers on
  the model actors, smooths, renders and publishes at once, in the driver's process (no extra hop);
- while the source is away (reconnecting with backoff), the last depth frame is published again at the source's
  rate, so viewers stay connected; fresh frames continue by themselves when it is back, the smoother started again;
- a publisher that loses its server re-publishes with backoff (frames meanwhile are counted as lost).
Several cameras in one process would each need their own reader, buffer and sink around the shared model actors
(the loop below, per camera, in a thread); this runs one camera per process, and several processes can share a
cluster's GPUs with `--address`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..settings import PipelineSettings
from ..stages.encode import DepthVideoWriter
from ..stages.frames import FrameBatch, VideoInfo
from ..stages.live_source import LiveFrame, LiveSource
from ..stages.publish import LIVE_TIME_BASE, RtspPublisher
from ..stages.sink import DepthSink, output_metadata
from ..stages.smoothing import make_smoother
from ..live_metrics import RayMetrics


class FrameBuffer:
    """The frames waiting for the model: at most `capacity`; a new frame pushes the oldest out (counted)."""

    def __init__(self, capacity: int, keep_every: int = 1):
        self.capacity, self.keep_every = capacity, keep_every
        self.dropped = 0
        self._frames: deque[LiveFrame] = deque()
        self._seen = 0
        self._closed = False
        self._ready = threading.Condition()

    def put(self, frame: LiveFrame) -> None:
        with self._ready:
            self._seen += 1
            if self.keep_every > 1 and (self._seen - 1) % self.keep_every:
                self.dropped += 1  # every-k: only every k-th frame goes to the model
                return
            if len(self._frames) >= self.capacity:
                gap = self._frames.popleft().after_gap
                self.dropped += 1
                if gap:  # the frame after a reconnect carries the smoother's restart: pass it on
                    frame.after_gap = True
            self._frames.append(frame)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self, timeout_s: float) -> tuple[list[LiveFrame], bool]:
        """(everything waiting, oldest first; whether the source has ended), waiting up to `timeout_s` for a frame."""
        with self._ready:
            if not self._frames and not self._closed:
                self._ready.wait(timeout_s)
            frames = list(self._frames)
            self._frames.clear()
            return frames, self._closed and not frames


class LatencyStats:
    """Arrival-to-publication latency: a millisecond histogram for the whole run (bounded memory, exact to 1 ms) and
    the recent window for the periodic log line."""

    MAX_MS = 60_000

    def __init__(self):
        self.histogram = np.zeros(self.MAX_MS + 1, dtype=np.int64)
        self.maximum = 0.0
        self.window: deque[float] = deque(maxlen=1000)

    def add(self, ms: float) -> None:
        self.histogram[min(int(ms), self.MAX_MS)] += 1
        self.maximum = max(self.maximum, ms)
        self.window.append(ms)

    def percentile(self, q: float) -> float | None:
        count = int(self.histogram.sum())
        if not count:
            return None
        return float(np.searchsorted(np.cumsum(self.histogram), q / 100 * count))

    def summary(self) -> dict:
        return {"p50": self.percentile(50), "p95": self.percentile(95),
                "max": round(self.maximum, 1) if self.histogram.any() else None}


class LiveWriter:
    """What the sink writes to in live mode: the RTSP publisher and/or the recording, both fed every frame; the last
    image is kept to fill gaps while the source is away."""

    def __init__(self, publisher: RtspPublisher | None, recorder: DepthVideoWriter | None):
        self.publisher, self.recorder = publisher, recorder
        self.frames_written = 0
        self.last_image: np.ndarray | None = None
        self._record_origin: int | None = None

    def write(self, image: np.ndarray, pts: int) -> None:
        if self.publisher is not None:
            self.publisher.write(image, float(pts * LIVE_TIME_BASE))
        if self.recorder is not None:
            # The recording's clock starts at its first frame: the live clock runs from the process's start, and
            # the seconds of start-up before the first frame would be an empty stretch at the head of the file
            if self._record_origin is None:
                self._record_origin = pts
            self.recorder.write(image, pts - self._record_origin)
        self.last_image = image
        self.frames_written += 1

    def repeat_last(self, seconds: float) -> None:
        if self.publisher is not None and self.last_image is not None:
            self.publisher.write(self.last_image, seconds)

    def close(self):
        if self.publisher is not None:
            self.publisher.close()
        return self.recorder.close() if self.recorder is not None else None

    def abort(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.recorder is not None:
            self.recorder.abort()


@dataclass
class LiveTargets:
    publish: str | None  # rtsp:// URL
    record: str | None  # a file


class LiveJob:
    def __init__(self, settings: PipelineSettings, source: LiveSource, targets: LiveTargets, log=None):
        self.settings = settings
        self.source = source
        self.targets = targets
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        live = settings.live
        self.buffer = FrameBuffer(live.queue, live.keep_every if live.drop == "every-k" else 1)
        self.latency = LatencyStats()
        self.stopping = threading.Event()
        self.frames_out = self.filler_frames = 0
        self.sink: DepthSink | None = None  # made when the run starts
        self._last_publish = 0.0
        self._metrics = RayMetrics() if live.metrics else None

    def stop(self) -> None:
        self.stopping.set()
        self.source.stop()

    def run(self, graph, decoder) -> dict:
        """Until stopped (or a realtime file ends); `decoder` is the source's first connection."""
        info = decoder.info
        rate = float(info.rate or 25)
        started = time.monotonic()
        reader = threading.Thread(target=self._read, args=(decoder,), daemon=True)
        reader.start()
        self.sink = self._sink(info, rate)
        index, last_pts, last_log = 0, -1, started
        interval = {"in": 0, "out": 0}
        try:
            while True:
                stopping = self.stopping.is_set()  # then what is waiting is still written (flushed), once
                frames, ended = self.buffer.take(timeout_s=0.0 if stopping else 1.0 / rate)
                if ended or (stopping and not frames):
                    break
                now = time.monotonic()
                if not frames:
                    # Nothing new: keep viewers connected with the last picture, at the source's rate
                    writer = self.sink.writer
                    if writer is not None and writer.last_image is not None and now - self._last_publish >= 1.5 / rate:
                        writer.repeat_last(self.source.clock())
                        self.filler_frames += 1
                        self._last_publish = now
                    continue
                if any(frame.after_gap for frame in frames):
                    self.sink.smoother.reset()  # a new connection: the past says nothing about it
                    self.sink.colorizer.tracker.reset()
                pts_list = []
                for frame in frames:  # the live clock, on the RTP clock, strictly increasing
                    last_pts = max(round(frame.seconds / LIVE_TIME_BASE), last_pts + 1)
                    pts_list.append(last_pts)
                batch = FrameBatch(index, pts_list, LIVE_TIME_BASE, np.stack([f.pixels for f in frames]),
                                   frames[0].layout)
                depth = graph.infer(batch, "float16")
                self.sink.write(depth, batch)
                index += len(frames)
                published = time.monotonic()
                self._last_publish = published
                for frame in frames:
                    self.latency.add((published - frame.arrived) * 1e3)
                self.frames_out += len(frames)
                interval["out"] += len(frames)
                if self._metrics:
                    self._metrics.frames(len(frames), [(published - f.arrived) * 1e3 for f in frames])
                if published - last_log >= self.settings.live.log_every_s:
                    self._log_line(published - last_log, interval)
                    last_log = published
        finally:
            self.source.stop()
            reader.join(timeout=2.0)
            writer_result = self.sink.close() if self.sink.frames_written else None
        return self._summary(time.monotonic() - started, writer_result)

    # .................................................................................................................

    def _read(self, decoder) -> None:
        try:
            for frame in self.source.frames(decoder):
                self.buffer.put(frame)
                if self._metrics:
                    self._metrics.arrived()
        finally:
            self.buffer.close()

    def _sink(self, info: VideoInfo, rate: float) -> DepthSink:
        """The file run's sink (smoother, renderer), writing to the publisher and/or the recording."""
        settings = self.settings
        live_info = VideoInfo(source=info.source, width=info.width, height=info.height,
                              rate=Fraction(info.rate or 25), time_base=LIVE_TIME_BASE, rotation=0,
                              expected_frames=None, has_audio=False, codec=info.codec)
        render = settings.output

        def open_writer(frame_hw: tuple[int, int]) -> LiveWriter:
            publisher = (RtspPublisher(self.targets.publish, frame_hw, rate, settings.live.transport, log=self.log,
                                       qp=render.qp, crf=render.crf) if self.targets.publish else None)
            recorder = (DepthVideoWriter(self.targets.record, render.depth_format, live_info, frame_hw,
                                         preset=render.preset, qp=render.qp, crf=render.crf,
                                         metadata=output_metadata(None),
                                         b_frames=False) if self.targets.record else None)
            return LiveWriter(publisher, recorder)

        smoother = make_smoother(settings.smoothing.name, device="cpu", **settings.smoothing.params)
        return DepthSink(self.targets.record or self.targets.publish, live_info, render, smoother,
                         writer_factory=open_writer)

    def _log_line(self, seconds: float, interval: dict) -> None:
        p50, p95 = np.percentile(self.latency.window, [50, 95]) if self.latency.window else (0, 0)
        frames_in = self.source.frames_in
        self.log(f"live: in {(frames_in - interval['in']) / seconds:.1f} fps, out "
                 f"{interval['out'] / seconds:.1f} fps, latency p50 {p50:.0f} ms p95 {p95:.0f} ms, dropped "
                 f"{self.buffer.dropped}, reconnects {self.source.reconnects}")
        interval.update({"in": frames_in, "out": 0})

    def _summary(self, seconds: float, writer_result) -> dict:
        publisher = self.sink.writer.publisher if self.sink.writer is not None else None
        summary = {
            "input": self.source.source,
            "output": self.targets.publish,
            "record": str(writer_result["output"]) if self.targets.record and writer_result else None,
            "frames_in": self.source.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.buffer.dropped,
            "filler_frames": self.filler_frames,
            "reconnects": self.source.reconnects,
            "republished": publisher.republished if publisher else 0,
            "frames_lost_while_publishing": publisher.frames_lost if publisher else 0,
            "latency_ms": self.latency.summary(),
            "seconds": round(seconds, 3),
            "fps_in": round(self.source.frames_in / seconds, 3) if seconds > 0 else None,
            "fps_out": round(self.frames_out / seconds, 3) if seconds > 0 else None,
        }
        return summary
