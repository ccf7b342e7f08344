"""
One live camera's loop: frames as they arrive -> the model -> smoothing, rendering -> an RTSP publisher and/or a
recording, latency first. Plain: the model is any callable, so the loop runs in the CLI's process (one camera, the
model actors through the graph) or in a camera actor of its own (many cameras, the model actors batching them).

Takes: the camera's options (`LiveCameraOptions`), a `LiveSource`, where to send depth (`LiveTargets`), and at
`run()` a
`submit(FrameBatch, depth_dtype)` that sends a batch to the model and gives a function that waits for its DepthBatch.
Gives: the depth stream, published as frames come; `stats()` at any moment (thread-safe: state, counters, fps and
latency of the last seconds); `run()` returns the summary (frames_in, frames_out, dropped, reconnects, latency_ms
p50 / p95 / max, ...) once stopped (`stop()`) or when a realtime file ends.

- A reader thread decodes frames as they arrive into a small buffer (`live.queue` frames); when the model falls
  behind, the oldest waiting frame is dropped (`live.drop: oldest`), or only every k-th frame is kept (`every-k`), and
  every drop is counted: a backlog never builds, so latency stays bounded however long it runs.
- The loop takes what is waiting (one frame when keeping up, the queue when behind: the batch adapts) and sends it
  to the model; up to `live.in_flight` batches are there at once, so the model computes the next while the camera
  smooths, renders and publishes the last (in order). When the buffer was full (the model behind), one: a second
  would only add to the frames' wait.
- While the source is away (reconnecting with backoff), the last depth frame is published again at the source's
  rate, so viewers stay connected; fresh frames continue by themselves when it is back, the smoother started again.
  A camera that comes back at another size is published at its new size (a new RTSP session); a recording keeps its
  first size (frames resized to it, counted).
- A publisher that loses its server re-publishes with backoff (frames meanwhile are counted as lost); a model call
  that fails (a model actor restarting) loses its frames (counted as dropped), not the camera.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.errors import one_line
from pipeline.formats import keeps_values
from pipeline.stages.frames import DepthBatch, FrameBatch, VideoInfo
from pipeline.stages.live.frame_buffer import FrameBuffer, LatencyStats
from pipeline.stages.inference.depth_worker import StreamRefused
from pipeline.stages.render.flicker import FlickerMeter
from pipeline.stages.render.smoothing import make_smoother, smoother_for
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions, output_metadata
from pipeline.stages.sinks.output_files import recover_recordings
from pipeline.urls import redact
from pipeline.stages.sinks.rtsp_publisher import LIVE_TIME_BASE, RtspPublisher
from pipeline.stages.sinks.video_writer import DepthVideoWriter
from pipeline.stages.sources.live_stream import LiveFrame, LiveSource

__all__ = ["LiveCamera", "LiveCameraOptions", "LiveTargets"]

# (batch, depth dtype) -> a function that waits for the batch's depth
Submit = Callable[[FrameBatch, str], Callable[[], DepthBatch]]
RATE_WINDOW_S = 5.0  # fps in `stats()`: over about this many seconds
PREVIEW_QUALITY = 80  # JPEG quality of a preview picture (a 720p depth picture: about 40 kB)


@dataclass(frozen=True)
class LiveCameraOptions:
    """What one camera's loop is told (the job's settings turn into these: settings.live_camera_options): how it
    renders and smooths, how it buffers and drops, how it publishes."""

    render: RenderOptions = RenderOptions()
    smoother: str = "default"
    smoother_params: dict = field(default_factory=dict)
    queue: int = 2  # frames waiting for the model at most; a new one pushes the oldest out (counted)
    drop: str = "oldest"  # oldest | every-k (only every keep_every-th frame goes to the model)
    keep_every: int = 2
    in_flight: int = 2  # batches at the model at once
    transport: str = "tcp"  # RTSP out: tcp or udp
    log_every_s: float = 5.0


@dataclass(frozen=True)
class LiveTargets:
    publish: str | None  # rtsp:// URL
    record: str | None  # a file
    record_confined_to: str | None = None  # a recording asked for over HTTP stays inside this folder (checked again
    # right before its file is created and renamed)


def image_size(image: np.ndarray | av.VideoFrame) -> tuple[int, int]:
    """(height, width) of a rendered picture: an encoder frame, or an array (grey, RGB, 16-bit grey)."""
    if isinstance(image, av.VideoFrame):
        return image.height, image.width
    return image.shape[0], image.shape[1]


def resized_image(image: np.ndarray | av.VideoFrame, size_hw: tuple[int, int]):
    """A rendered picture at another size (bilinear), in the same form."""
    height, width = size_hw
    if isinstance(image, av.VideoFrame):
        return image.reformat(width=width, height=height)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


class LiveWriter:
    """What the sink writes to in live mode: the RTSP publisher and/or the recording, both fed every frame; the last
    image is kept to fill gaps while the source is away. A new picture size (a camera back at another resolution)
    starts a new RTSP session at that size; the recording keeps its first size."""

    def __init__(self, publisher: RtspPublisher | None, recorder: DepthVideoWriter | None, size_hw: tuple[int, int]):
        self.publisher, self.recorder = publisher, recorder
        self.size_hw = self.record_hw = size_hw
        self.frames_written = self.resized_for_recording = self.size_changes = 0
        self.last_image = None
        self._record_origin: int | None = None

    def write(self, image, pts: int) -> None:
        size_hw = image_size(image)
        if size_hw != self.size_hw:
            self.size_hw = size_hw
            self.size_changes += 1
            if self.publisher is not None:
                self.publisher.change_size(size_hw)
        if self.publisher is not None:
            self.publisher.write(image, float(pts * LIVE_TIME_BASE))
        if self.recorder is not None:
            # The recording's clock starts at its first frame: the live clock runs from the process's start, and
            # the seconds of start-up before the first frame would be an empty stretch at the head of the file
            if self._record_origin is None:
                self._record_origin = pts
            recorded = image
            if size_hw != self.record_hw:  # one file has one size
                recorded = resized_image(image, self.record_hw)
                self.resized_for_recording += 1
            self.recorder.write(recorded, pts - self._record_origin)
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


class RateMeter:
    """Frames per second over the last `window_s` seconds, from running totals sampled when asked."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def rates(self, frames_in: int, frames_out: int) -> tuple[float | None, float | None]:
        now = time.monotonic()
        self._samples.append((now, frames_in, frames_out))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        then, first_in, first_out = self._samples[0]
        if now - then < 0.2:
            return None, None
        return round((frames_in - first_in) / (now - then), 2), round((frames_out - first_out) / (now - then), 2)


class LiveCamera:
    def __init__(self, options: LiveCameraOptions, source: LiveSource, targets: LiveTargets, name: str | None = None,
                 log=None, metrics=None, publish_must_connect: bool = False):
        """`name`: the camera's, for log lines (several cameras share a log); `metrics`: where frames are also
        counted (cluster/metrics.py: RayMetrics), or None; `publish_must_connect`: a destination that refuses the first
        session is an error that ends the run (else retried with backoff)."""
        self.options = options
        self.publish_must_connect = publish_must_connect
        self.source = source
        self.targets = targets
        self.name = name
        base_log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        # (a camera URL's user and password never reach a log: every line is redacted where it is made)
        self.log = (lambda line: base_log(redact(f"[{name}] {line}"))) if name else (
            lambda line: base_log(redact(line)))
        source.log = self.log
        self.buffer = FrameBuffer(options.queue, options.keep_every if options.drop == "every-k" else 1)
        self.latency = LatencyStats()
        self.model_turnaround = LatencyStats()  # a batch sent to the model until its depth is back (queue included)
        self.stopping = threading.Event()
        self.frames_out = self.filler_frames = self.model_errors = self.frames_lost_to_model = 0
        self.previews_encoded = 0  # JPEG pictures made for viewers (none while nobody watches)
        self._model: dict = {}  # what the model actors loaded (run's `model`)
        self.sink: DepthSink | None = None  # made at the first frame
        self.error: str | None = None  # what ended the loop, if something did
        self._finished = False
        self._last_publish = 0.0
        self._metrics = metrics
        self._rates = RateMeter()
        self._first_frame_at: float | None = None  # when the first frame arrived (fps are taken from then on)
        self._stats_lock = threading.Lock()
        # A 16-bit recording keeps the depth's values: float32 from the model (float16 is plenty for 8-bit pictures)
        self._depth_dtype = "float32" if keeps_values(options.render.depth_format) else "float16"

    def stop(self) -> None:
        self.stopping.set()
        self.source.stop()

    @property
    def cache_restarts(self) -> int:
        """A video model's streaming cache started again mid-run (its model actor restarted, or the camera came back
        at another size): its depth then attends to fewer frames for a while (DepthBatch.history)."""
        return len(self.sink.cache_rebuilt_at) if self.sink is not None else 0

    def preview(self, newer_than: int = 0, quality: int = PREVIEW_QUALITY) -> tuple[int, bytes] | None:
        """The last depth picture written, as JPEG, with its number (frames written so far), if newer than
        `newer_than`; None before the first or when nothing newer. Encoded here, on the caller's thread, only when
        asked: a camera nobody watches encodes none, and the camera's own loop never waits for it."""
        writer = self.sink.writer if self.sink is not None else None
        if writer is None or writer.last_image is None or writer.frames_written <= newer_than:
            return None
        number, picture = writer.frames_written, writer.last_image  # (replaced whole by the loop, never changed)
        if isinstance(picture, av.VideoFrame):
            picture = picture.to_ndarray(format="rgb24")
        if picture.dtype == np.uint16:
            picture = (picture >> 8).astype(np.uint8)
        if picture.ndim == 3:
            picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
        encoded, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not encoded:
            return None
        with self._stats_lock:
            self.previews_encoded += 1
        return number, jpeg.tobytes()

    # .................................................................................................................

    def run(self, submit: Submit, decoder=None, model: dict | None = None) -> dict:
        """Until stopped (or a realtime file ends). `submit(batch, depth_dtype)` sends a batch to the model and gives
        a function that waits for its depth: up to `live.in_flight` batches are at the model at once, so it computes
        one while the camera renders and publishes the one before. `decoder`: the source's first connection, opened
        by the caller (a camera that cannot be opened at start is then its error); None: connected here, with
        backoff. `model`: what the model actors loaded; a video model (`temporal`) gets one batch at a time, in order
        (its cache of earlier frames), and no smoother unless one is named."""
        self._model = model or {}
        started = time.monotonic()
        if self.targets.record:  # a killed run's recording (fragmented: playable to its last second) is kept
            for kept in recover_recordings(Path(self.targets.record)):
                self.log(f"live: kept what a killed run recorded to {self.targets.record} as {kept}")
        reader = threading.Thread(target=self._read, args=(decoder,), daemon=True, name=f"reader-{self.name}")
        reader.start()
        last_pts, last_log = -1, started
        interval = {"in": 0, "out": 0}
        in_flight: deque[tuple[list[LiveFrame], FrameBatch, Callable[[], DepthBatch] | Exception]] = deque()
        try:
            while True:
                stopping = self.stopping.is_set()  # then what is waiting is still written (flushed), once
                rate = self._rate()
                # While batches are at the model, new frames are taken only if they are there already
                frames, ended = self.buffer.take(timeout_s=0.0 if stopping or in_flight else 1.0 / rate)
                if not frames:
                    if in_flight:
                        interval["out"] += self._finish(in_flight.popleft(), rate)
                        continue
                    if ended or stopping:
                        break
                    self._keep_viewers(time.monotonic(), rate)
                    continue
                # A full buffer says the model is behind: a second batch in flight would only add to the wait
                limit = 1 if len(frames) >= self.buffer.capacity or self._model.get("temporal") else \
                    self.options.in_flight
                # Frames of one size at a time (a reconnect can bring another size into the same take)
                for group in _same_size_runs(frames):
                    pts_list = []
                    for frame in group:  # the live clock, on the RTP clock, strictly increasing
                        last_pts = max(round(frame.seconds / LIVE_TIME_BASE), last_pts + 1)
                        pts_list.append(last_pts)
                    batch = FrameBatch(0, pts_list, LIVE_TIME_BASE, np.stack([f.pixels for f in group]),
                                       group[0].layout)
                    while len(in_flight) >= limit:
                        interval["out"] += self._finish(in_flight.popleft(), rate)
                    try:
                        pending = submit(batch, self._depth_dtype)
                    except Exception as error:  # noqa: BLE001 - reported when its turn comes, in order
                        pending = error
                    in_flight.append((group, batch, pending, time.monotonic()))
                if time.monotonic() - last_log >= self.options.log_every_s:
                    self._log_line(time.monotonic() - last_log, interval)
                    last_log = time.monotonic()
        except BaseException as error:
            self.error = one_line(error)
            raise
        finally:
            self.source.stop()
            reader.join(timeout=2.0)
            writer_result = None
            if self.sink is not None and self.sink.frames_written:
                writer_result = self.sink.close()
            elif self.sink is not None:
                self.sink.abort()  # nothing was written (a destination refused at once): no partial recording left
            self._finished = True
        return self._summary(time.monotonic() - started, writer_result)

    def _finish(self, entry: tuple, rate: float) -> int:
        """Wait for the oldest batch's depth and write it (smoothed, rendered, published): frames written."""
        group, batch, pending, submitted = entry
        try:
            if isinstance(pending, Exception):
                raise pending
            depth = pending()
        except Exception as error:  # noqa: BLE001 - a model actor restarting: these frames are lost, not the camera
            self._model_failed(error, len(group))
            return 0
        self.model_turnaround.add((time.monotonic() - submitted) * 1e3)
        if self.sink is None:
            self.sink = self._sink(rate)
        elif any(frame.after_gap for frame in group):
            self.sink.smoother.reset()  # a new connection: the past says nothing about it
            self.sink.colorizer.tracker.reset()
            self.sink.flicker.reset()
        # Indices in the order written (a batch lost to the model leaves no gap the sink would wait on)
        written = self.frames_out
        self.sink.write(DepthBatch(written, depth.pts, depth.time_base, depth.depth, depth.max_depth, depth.history),
                        FrameBatch(written, batch.pts, batch.time_base, batch.pixels, batch.layout))
        self._published(group)
        return len(group)

    def stats(self) -> dict:
        """The camera now: state, counters, fps in and out and latency p50 / p95 over the last seconds."""
        with self._stats_lock:
            fps_in, fps_out = self._rates.rates(self.source.frames_in, self.frames_out)
        window = list(self.latency.window)
        p50, p95 = (round(float(v), 1) for v in np.percentile(window, [50, 95])) if window else (None, None)
        writer = self.sink.writer if self.sink is not None else None
        publisher = writer.publisher if writer is not None else None
        return {"state": self._state(), "frames_in": self.source.frames_in, "frames_out": self.frames_out,
                "dropped": self.dropped, "reconnects": self.source.reconnects,
                "fps_in": fps_in, "fps_out": fps_out, "latency_ms": {"p50": p50, "p95": p95},
                "flicker_pct": self.sink.flicker.value if self.sink is not None else None,
                "faulty_depth_frames": self.sink.flicker.faulty_frames if self.sink is not None else 0,
                "queue": len(self.buffer), "previews_encoded": self.previews_encoded,
                "cache_restarts": self.cache_restarts,
                "size": [self.source.info.width, self.source.info.height] if self.source.info else None,
                "publishing": publisher.connected if publisher is not None else None,
                # what ended the loop; else why the camera is not connected (refused, not found, timed out)
                "error": self.error or self.source.last_error}

    @property
    def dropped(self) -> int:
        """Frames that never came out: pushed out of the buffer, or lost with a failed model call."""
        return self.buffer.dropped + self.frames_lost_to_model

    # .................................................................................................................

    def _state(self) -> str:
        if self.error:
            return "failed"
        if self._finished:
            return "stopped" if self.stopping.is_set() else "ended"
        if self.stopping.is_set():
            return "stopping"
        return {"connected": "running"}.get(self.source.state, self.source.state)

    def _rate(self) -> float:
        info = self.source.info
        return float(info.rate) if info is not None and info.rate else 25.0

    def _read(self, decoder) -> None:
        try:
            for frame in self.source.frames(decoder):
                if self._first_frame_at is None:
                    self._first_frame_at = frame.arrived
                self.buffer.put(frame)
                if self._metrics:
                    self._metrics.arrived()
        except Exception as error:  # noqa: BLE001 - reported in stats and the summary, not lost in a thread
            self.error = f"reading {self.source.source}: {one_line(error)}"
        finally:
            self.buffer.close()

    def _keep_viewers(self, now: float, rate: float) -> None:
        """Nothing new: keep viewers connected with the last picture, at the source's rate."""
        writer = self.sink.writer if self.sink is not None else None
        if writer is not None and writer.last_image is not None and now - self._last_publish >= 1.5 / rate:
            writer.repeat_last(self.source.clock())
            self.filler_frames += 1
            self._last_publish = now

    def _published(self, frames: list[LiveFrame]) -> None:
        published = time.monotonic()
        self._last_publish = published
        latencies = [(published - frame.arrived) * 1e3 for frame in frames]
        for ms in latencies:
            self.latency.add(ms)
        self.frames_out += len(frames)
        if self._metrics:
            self._metrics.frames(len(frames), latencies)

    def _model_failed(self, error: Exception, frames: int) -> None:
        if isinstance(error, StreamRefused):  # no room for this camera's cache: it fails, said once, not retried
            if not self.error:
                self.error = one_line(error)
                self.log(f"live: not run: {self.error}")
            self.stopping.set()
            return
        self.model_errors += 1
        self.frames_lost_to_model += frames
        if self.model_errors in (1, 10, 100) or self.model_errors % 1000 == 0:
            self.log(f"live: the model failed {self.model_errors} time(s), {self.frames_lost_to_model} frames lost "
                     f"(last: {one_line(error)})")
        time.sleep(0.05)  # a model actor restarting: a moment, not a busy loop

    def _sink(self, rate: float) -> DepthSink:
        """The file run's sink (smoother, renderer), writing to the publisher and/or the recording."""
        options = self.options
        info = self.source.info
        live_info = VideoInfo(source=info.source, width=info.width, height=info.height,
                              rate=Fraction(info.rate or 25), time_base=LIVE_TIME_BASE, rotation=0,
                              expected_frames=None, has_audio=False, codec=info.codec)
        render = options.render

        def open_writer(frame_hw: tuple[int, int]) -> LiveWriter:
            publisher = (RtspPublisher(self.targets.publish, frame_hw, rate, options.transport, log=self.log,
                                       qp=render.qp, crf=render.crf, must_connect_first=self.publish_must_connect)
                         if self.targets.publish else None)
            recorder = (DepthVideoWriter(self.targets.record, render.depth_format, live_info, frame_hw,
                                         preset=render.preset, qp=render.qp, crf=render.crf,
                                         metadata=output_metadata(
                                             sink.quantizer.scale if sink.quantizer is not None else None,
                                             sink.units),
                                         b_frames=False, fragmented=True,
                                         confined_to=self.targets.record_confined_to)
                        if self.targets.record else None)
            return LiveWriter(publisher, recorder, frame_hw)

        smoother = make_smoother(smoother_for(options.smoother, self._model), device="cpu",
                                 **options.smoother_params)
        # (the writer opens at the first frame: by then the sink knows the depth's units and 16-bit scale)
        sink = DepthSink(self.targets.record or self.targets.publish, live_info, render, smoother,
                         writer_factory=open_writer, flicker=FlickerMeter())
        return sink

    def _log_line(self, seconds: float, interval: dict) -> None:
        p50, p95 = np.percentile(self.latency.window, [50, 95]) if self.latency.window else (0, 0)
        frames_in = self.source.frames_in
        self.log(f"live: in {(frames_in - interval['in']) / seconds:.1f} fps, out "
                 f"{interval['out'] / seconds:.1f} fps, latency p50 {p50:.0f} ms p95 {p95:.0f} ms, dropped "
                 f"{self.dropped}, reconnects {self.source.reconnects}")
        interval.update({"in": frames_in, "out": 0})

    def _summary(self, seconds: float, writer_result) -> dict:
        # Rates from the first frame on: start-up and connecting are not the camera's rate
        flowing = time.monotonic() - self._first_frame_at if self._first_frame_at is not None else None
        writer = self.sink.writer if self.sink is not None else None
        publisher = writer.publisher if writer is not None else None
        return {
            "input": self.source.source,
            "output": self.targets.publish,
            "record": str(writer_result["output"]) if self.targets.record and writer_result else None,
            "frames_in": self.source.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "filler_frames": self.filler_frames,
            "reconnects": self.source.reconnects,
            "size_changes": writer.size_changes if writer is not None else 0,
            "resized_for_recording": writer.resized_for_recording if writer is not None else 0,
            "model_errors": self.model_errors,
            "republished": publisher.republished if publisher else 0,
            "frames_lost_while_publishing": publisher.frames_lost if publisher else 0,
            "latency_ms": self.latency.summary(),
            # of it, the model's turnaround: a batch sent until its depth was back (waiting at the model included)
            "model_ms": self.model_turnaround.summary(),
            "flicker_pct": self.sink.flicker.value if self.sink is not None else None,  # (the last 50 frames)
            # frames whose depth held NaN or infinity (the model's fault, e.g. a half-precision overflow)
            "faulty_depth_frames": self.sink.flicker.faulty_frames if self.sink is not None else 0,
            "cache_restarts": self.cache_restarts,
            "seconds": round(seconds, 3),
            "fps_in": round(self.source.frames_in / flowing, 3) if flowing else None,
            "fps_out": round(self.frames_out / flowing, 3) if flowing else None,
        }


def _same_size_runs(frames: list[LiveFrame]) -> list[list[LiveFrame]]:
    """Consecutive frames grouped by picture size and layout (in order)."""
    runs: list[list[LiveFrame]] = []
    for frame in frames:
        if runs and runs[-1][0].pixels.shape == frame.pixels.shape and runs[-1][0].layout == frame.layout:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return runs
