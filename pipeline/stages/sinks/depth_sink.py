"""
Sink: depth batches (any order) -> restored frame order -> smoothing -> rendering -> encoding.

Takes: `write(depth_batch, frame_batch)` with matching `DepthBatch` (B x h x w at the model's resolution, or at
frame size) and `FrameBatch` (the frames are needed for the side-by-side view and by smoothers that look at the
image). Depth is smoothed at its own resolution and resized to the frame size once, for rendering.
Gives: the output (a video file, or a folder of EXR / 16-bit PNG frames: image_sequence_writer.py), on `close()`, with
exactly one output frame per input frame at the input's timestamp, and a small dict of what was written.

What the depth is (relative inverse depth, or metres from a metric model) arrives with the depth batches
(`DepthBatch.max_depth`) and decides three things (depth_units.py): the colour map is laid over 1 / metres, so near
is bright either way; 16-bit outputs of metres use a fixed millimetre scale; the aligned smoother smooths metres as
log-metres, without fitting a scale and shift per frame (which exist for relative depth only).

Batches may arrive out of order when several model actors work at once; the sink holds early ones until the gap
is filled. The caller bounds how many batches are in flight, which bounds this buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.formats import is_sequence_format, keeps_values, sixteen_bit
from pipeline.storage import is_remote
from pipeline.stages.frames import DepthBatch, FrameBatch, VideoInfo
from pipeline.stages.pixels import YUV420P, frame_height, i420_planes, luma_at, to_rgb
from pipeline.stages.render.colorize import GRAY, DepthColorizer, DepthQuantizer
from pipeline.stages.render.depth_units import DepthUnits
from pipeline.stages.render.flicker import FlickerMeter
from pipeline.stages.render.smoothing import Guide, Smoother
from pipeline.stages.sinks.background_writer import BackgroundWriter
from pipeline.stages.sinks.image_sequence_writer import DepthSequenceWriter
from pipeline.stages.sinks.remote_output import RemoteOutput
from pipeline.stages.sinks.video_writer import DepthVideoWriter, blank_i420

__all__ = ["DepthSink", "RenderOptions", "output_metadata"]


@dataclass(frozen=True)
class RenderOptions:
    depth_format: str = "color"  # color | gray | gray16 | side-by-side | exr | png16 (the last two: frame folders)
    colormap: str = "inferno"
    preset: str = "ultrafast"  # libx264
    qp: int = 16  # H.264 constant quantizer, or a constant rate factor when `crf` is set: see encode.x264_options
    crf: int | None = None
    # gray16 / png16: uint16 = depth * scale; None: set from the first frame (relative), millimetres (metric)
    depth_scale: float | None = None
    copy_audio: bool = True
    # Encode on a thread of its own, beside smoothing and rendering (see background_writer.py); files only
    encoder_thread: bool = True
    # --no-overwrite: an object output is uploaded with the store's conditional write (If-None-Match: *), so that one
    # that appeared while this run worked is never replaced (a local output is checked before the run)
    no_overwrite: bool = False


def output_metadata(depth_scale: float | None, units: DepthUnits = DepthUnits()) -> dict[str, str]:
    """The tags a depth video carries: what its values are, and the 16-bit scale that turns them back into depth."""
    metadata = {"DEPTH_MODEL": f"Depth-Anything {units.meaning}"}
    if depth_scale is not None:
        metadata["DEPTH_SCALE"] = repr(depth_scale)
        metadata["DEPTH_ENCODING"] = "depth = uint16 value / DEPTH_SCALE" + (" (metres)" if units.metric else "")
    return metadata


class DepthSink:
    """Owns the smoother, the renderer and the writer of one output video."""

    def __init__(self, output: str, info: VideoInfo, options: RenderOptions, smoother: Smoother,
                 write_from_pts: int | None = None, temporary_tag: str | None = None, writer_factory=None,
                 model: dict | None = None, flicker: FlickerMeter | None = None):
        """`write_from_pts`: frames before it only warm the smoother and the colour range up and are not written (a
        segment of a long video starts this way, so that its first written frames match an unsegmented run).
        `temporary_tag`: see DepthVideoWriter. `writer_factory(frame_hw)`: something else to write to (live mode:
        an RTSP publisher), with DepthVideoWriter's `write(image, pts)`, `close()`, `abort()`, `frames_written`.
        `model`: what made the depth (the model's description), for a frame folder's depth.json. `flicker`: a
        meter fed each written frame's depth as smoothed and the frame's luma (live cameras: render/flicker.py)."""
        self.output = output
        self.temporary_tag = temporary_tag
        self.writer_factory = writer_factory
        self.write_from_pts = write_from_pts
        self.warmup_frames = 0
        self._cache_history = 0  # frames the stream's cache has seen, as the last batch told
        self.cache_rebuilt_at: list[float] = []  # seconds where a video model's streaming cache started again
        self.info = info
        self.options = options
        self.smoother = smoother
        colormap = GRAY if options.depth_format == "gray" else options.colormap
        self.colorizer = DepthColorizer(colormap)
        self.quantizer = DepthQuantizer(options.depth_scale) if sixteen_bit(options.depth_format) else None
        self.model = model or {}
        self.flicker = flicker
        self.units: DepthUnits | None = None  # known from the first depth batch
        self._writer: DepthVideoWriter | None = None
        self._next_index = 0
        self._waiting: dict[int, tuple[DepthBatch, FrameBatch]] = {}
        self.stage_cpu_s = {"smooth": 0.0, "render": 0.0, "encode": 0.0}  # CPU seconds spent in each step

    # .................................................................................................................

    def write(self, depth_batch: DepthBatch, frame_batch: FrameBatch) -> int:
        """Accept one batch; writes every batch that is now next in order. Returns frames written so far."""
        if depth_batch.first_index != frame_batch.first_index or len(depth_batch) != len(frame_batch):
            raise ValueError("depth and frame batches do not match")
        if self.units is None:
            self._adopt_units(DepthUnits(depth_batch.max_depth))
        self._waiting[depth_batch.first_index] = (depth_batch, frame_batch)
        while self._next_index in self._waiting:
            depth_batch, frame_batch = self._waiting.pop(self._next_index)
            if depth_batch.history is not None:
                if depth_batch.history < self._cache_history:
                    # A video model's cache started again mid-stream (let go on a model actor serving more than
                    # MAX_STREAMS streams): the depth from here attends to fewer frames
                    self.cache_rebuilt_at.append(round(float(depth_batch.pts[0] * depth_batch.time_base), 3))
                self._cache_history = depth_batch.history + len(depth_batch)
            for depth, pixels, pts in zip(depth_batch.depth, frame_batch.pixels, depth_batch.pts):
                self._write_frame(depth, pixels, frame_batch.layout, pts)
            self._next_index += len(depth_batch)
        return self.frames_written

    def _adopt_units(self, units: DepthUnits) -> None:
        self.units = units
        if units.metric:
            if self.quantizer is not None and self.quantizer.scale is None:
                self.quantizer.scale = units.metric_scale  # millimetres: the same in every file, nothing saturates
            if hasattr(self.smoother, "metric"):
                self.smoother.metric = True  # metres: no per-frame scale and shift to fit (see AlignedSmoothing)

    def _write_frame(self, depth: np.ndarray, pixels: np.ndarray, layout: str, pts: int) -> None:
        started = time.thread_time()  # this thread's CPU: the encoder may run on another (background_writer.py)
        height, width = frame_height(pixels, layout), pixels.shape[1]
        model_hw = depth.shape
        # Smoothing runs at the model's resolution (fewer pixels; the motion gate sees the frame's luma shrunk to
        # match), then the depth is resized once to the frame, bilinear with half-pixel centres, as the original does.
        # Depth arrives as float16 or float32; every smoother gives float32
        guide = Guide.of_frame(pixels, model_hw, layout) if getattr(self.smoother, "uses_guide", False) else None
        smoothed = self.smoother.update(depth, guide)
        if self.flicker is not None:
            self.flicker.update(smoothed, *((guide.gray, guide.gray_unit) if guide is not None
                                            else luma_at(pixels, layout, model_hw)))
        smoothed_at = time.thread_time()
        if getattr(self.smoother, "cut_detected", False):
            self.colorizer.tracker.reset()  # a new shot gets its own display range at once, not a slow drift
        if self.write_from_pts is not None and pts < self.write_from_pts:
            # Warm-up: the smoother has seen the frame; the colour range follows it too; nothing is written
            if not keeps_values(self.options.depth_format):
                self.colorizer.tracker.update(self.units.display(smoothed))
            self.warmup_frames += 1
            return
        # Resized to the frame once: 16-bit depth before quantising; 8-bit pictures after the colour lookup (the
        # lookup then runs on the model's pixels, about half a 720p frame's; the two differ by a rounding)
        frame_hw = (height, width)
        if keeps_values(self.options.depth_format):
            if model_hw != frame_hw:
                smoothed = cv2.resize(smoothed, (width, height), interpolation=cv2.INTER_LINEAR)
            image = smoothed if self.quantizer is None else self.quantizer(smoothed)
        elif self.options.depth_format == "side-by-side":
            image = self._side_by_side(pixels, layout, self.units.display(smoothed), frame_hw)
        elif self.options.depth_format == "color" and height % 2 == 0 and width % 2 == 0:
            # What the encoder takes, without an RGB detour, written straight into the encoder's frame
            image, planes = blank_i420(height, width)
            self.colorizer.yuv420_into(self.units.display(smoothed), planes)
        else:
            image = self.colorizer(self.units.display(smoothed), frame_hw)
        if self._writer is None:
            self._writer = self._open_writer(frame_hw if self.options.depth_format != "side-by-side"
                                             else (height, 2 * width))
        rendered_at = time.thread_time()
        self._writer.write(image, pts)
        for stage, seconds in (("smooth", smoothed_at - started), ("render", rendered_at - smoothed_at),
                               ("encode", time.thread_time() - rendered_at)):
            self.stage_cpu_s[stage] += seconds

    def _side_by_side(self, pixels: np.ndarray, layout: str, depth: np.ndarray, frame_hw: tuple[int, int]):
        """The frame on the left and its coloured depth on the right, twice the width. An I420 frame goes straight
        into an I420 encoder frame (its planes copied to the left half, the colour looked up into the right half):
        no RGB, and no RGB -> YUV in the encoder. Otherwise RGB."""
        height, width = frame_hw
        if layout == YUV420P:
            image, planes = blank_i420(height, 2 * width)
            for plane, source in zip(planes, i420_planes(pixels, height)):
                plane[:, : source.shape[1]] = source
            self.colorizer.yuv420_into(depth, [plane[:, plane.shape[1] // 2 :] for plane in planes])
            return image
        coloured = self.colorizer(depth, frame_hw)
        if coloured.ndim == 2:  # the gray colormap
            coloured = np.repeat(coloured[..., None], 3, axis=2)
        return np.concatenate([to_rgb(pixels, layout), coloured], axis=1)

    @property
    def writer(self):
        """What the frames are written to, once the first one has been (None before)."""
        return self._writer

    def _open_writer(self, frame_hw: tuple[int, int]) -> DepthVideoWriter:
        if self.writer_factory is not None:
            return self.writer_factory(frame_hw)
        scale = self.quantizer.scale if self.quantizer is not None else None
        if is_sequence_format(self.options.depth_format):
            description = {"values": self.units.meaning, "unit": "metre" if self.units.metric else None,
                           "max_depth": self.units.max_depth, "model": self.model}
            if scale is not None:
                description.update(scale=scale, encoding="depth = png value / scale")

            def local_writer(path):
                return DepthSequenceWriter(path, self.options.depth_format, self.info, description,
                                           self.temporary_tag)
        else:
            def local_writer(path):
                return DepthVideoWriter(
                    path,
                    self.options.depth_format,
                    self.info,
                    frame_hw,
                    copy_audio_from=self.info.source if self.options.copy_audio else None,
                    preset=self.options.preset,
                    qp=self.options.qp,
                    crf=self.options.crf,
                    metadata=output_metadata(scale, self.units),
                    b_frames=self.write_from_pts is None,  # segments are joined by stream copy: see DepthVideoWriter
                    temporary_tag=self.temporary_tag,
                )
        # An object-store output is written to a local spool and uploaded whole when complete
        writer = RemoteOutput(self.output, local_writer, if_absent=self.options.no_overwrite) \
            if is_remote(self.output) else local_writer(self.output)
        return BackgroundWriter(writer) if self.options.encoder_thread else writer

    # .................................................................................................................

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written if self._writer else 0

    def close(self) -> dict:
        if self._waiting:
            raise RuntimeError(f"frames from index {self._next_index} never arrived; output is incomplete")
        if self._writer is None:
            raise RuntimeError("no frames were written")
        path = self._writer.close()
        if isinstance(self._writer, BackgroundWriter):  # the encoder's own CPU, beside the hand-over counted above
            self.stage_cpu_s["encode"] += self._writer.encode_cpu_s
        stats = {"output": str(path), "frames_out": self.frames_written, "stage_cpu_s": dict(self.stage_cpu_s),
                 "warmup_frames": self.warmup_frames, "cache_rebuilt_at_s": self.cache_rebuilt_at}
        if self.quantizer is not None:
            stats.update(depth_scale=self.quantizer.scale, saturated_pixels=self.quantizer.saturated_pixels)
        return stats

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
