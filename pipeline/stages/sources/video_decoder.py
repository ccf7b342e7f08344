"""
Decode: a video file or URL -> upright RGB frames with their exact timestamps, grouped into batches.

Takes: a path or URL PyAV can open.
Gives: `VideoInfo` (size, exact rate, time base, rotation) and an iterator of `FrameBatch` (uint8, in `layout`).

Frames leave as the decoder made them when that is 8-bit YUV 4:2:0 of even size (I420, B x H*3/2 x W: one copy,
no conversion; the model actor converts on its device), and are converted once to packed RGB (B x H x W x 3)
otherwise. Rotation metadata is applied with a lossless 90-degree turn (each plane turned for I420). Decoding is
threaded by FFmpeg. Corrupt packets are
skipped and counted rather than ending the run, so a file truncated mid-stream still yields every decodable frame.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.errors import PipelineError
from pipeline.stages.frames import FrameBatch, VideoInfo, batched
from pipeline.stages.pixels import RGB24, YUV420P, frame_height, i420_planes
from pipeline.storage import ObjectReadError, is_remote, readable
from pipeline.urls import is_url

__all__ = ["VideoDecoder", "open_source", "open_video", "rotate_upright"]


def open_video(source: str, options: dict | None = None):
    """Open a container and return (container, its first video stream); one-line PipelineError otherwise."""
    if is_remote(source):
        source_file = readable(source)  # (its own checks: the object is there, not a prefix, not empty)
    elif not is_url(source):
        path = Path(source)
        if not path.exists():
            raise PipelineError(f"{source}: input file not found")
        if path.is_dir():
            raise PipelineError(f"{source}: input is a directory, not a video file")
        if path.stat().st_size == 0:
            raise PipelineError(f"{source}: input file is empty")
    try:
        container = av.open(source_file if is_remote(source) else source, mode="r", options=options or {})
    except av.FFmpegError as error:
        raise PipelineError(f"{source}: not a readable video ({error.strerror or error})") from None
    except ObjectReadError as error:  # (an object's read failed: one line naming it already)
        raise PipelineError(str(error)) from None
    if not container.streams.video:
        container.close()
        raise PipelineError(f"{source}: has no video stream")
    return container, container.streams.video[0]


def rotate_upright(pixels: np.ndarray, rotation: int, layout: str = RGB24) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, multiples of 90) to one frame in `layout`."""
    quarter_turns = round(rotation / 90) % 4
    if not quarter_turns:
        return pixels
    if layout == RGB24:
        return np.ascontiguousarray(np.rot90(pixels, k=quarter_turns))
    planes = [np.rot90(plane, k=quarter_turns) for plane in i420_planes(pixels, frame_height(pixels, layout))]
    width = planes[0].shape[1]
    return np.concatenate([plane.reshape(-1) for plane in planes]).reshape(-1, width)


class VideoDecoder:
    """Iterates a source's video frames as upright RGB; `info` describes the stream, counters describe losses."""

    def __init__(self, source: str, threads: int = 0, options: dict | None = None,
                 pts_range: tuple[int, int | None] | None = None, layout: str = "auto"):
        """`pts_range` (first, end): only frames with first <= pts < end (end None: to the end), found by seeking to
        the keyframe at or before `first` and decoding from there (a segment of a long video). `layout`: "auto"
        (I420 where the stream is 8-bit 4:2:0 of even size, RGB otherwise) or "rgb24"."""
        self.source = str(source)
        self._pts_range = pts_range
        self._container, self._stream = open_video(self.source, options)
        self._stream.thread_type = "AUTO"  # frame + slice threads
        if threads:
            self._stream.codec_context.thread_count = threads
        self.frames_decoded = 0
        self.corrupt_packets = 0
        self.repaired_timestamps = 0  # frames whose timestamp repeated or went backwards in the source
        self.resized_frames = 0  # frames of another size than the stream's first, scaled to it
        self._last_pts = None
        self._first_frame = self._read_first_frame()
        stream = self._stream
        self._end_seconds = self._stream_end_seconds()
        expected_frames, self._expected_is_exact = self._expected_frame_count()
        rotation = int(self._first_frame.rotation or 0) if self._first_frame is not None else 0
        # The size of the first frame, as decoded (before rotation): the stream's size for the whole run. (The codec
        # context's size follows the stream: after a mid-stream change it is the new size)
        first = self._first_frame
        width, height = (first.width, first.height) if first is not None else (stream.codec_context.width,
                                                                              stream.codec_context.height)
        self._coded_size = (width, height)
        if round(rotation / 90) % 2:
            width, height = height, width
        coded_format = stream.codec_context.format.name if stream.codec_context.format else None
        self.layout = (YUV420P if layout == "auto" and coded_format == YUV420P and width % 2 == 0 and height % 2 == 0
                       else RGB24)
        self.info = VideoInfo(
            source=self.source,
            width=width,
            height=height,
            rate=Fraction(stream.average_rate or stream.guessed_rate or 25),
            time_base=Fraction(stream.time_base or Fraction(1, 90000)),
            rotation=rotation,
            expected_frames=expected_frames,
            has_audio=bool(self._container.streams.audio),
            codec=stream.codec_context.name,
        )
        if pts_range is not None and pts_range[0] is not None:
            self._container.seek(pts_range[0], backward=True, stream=stream)
            self._frames = self._decoded_frames()
            self._first_frame = None

    # .................................................................................................................

    def _decoded_frames(self) -> Iterator[av.VideoFrame]:
        demux = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.FFmpegError:  # a damaged container: stop at the last readable packet
                self.corrupt_packets += 1
                return
            try:
                yield from packet.decode()
            except av.FFmpegError:
                self.corrupt_packets += 1

    def _read_first_frame(self) -> av.VideoFrame | None:
        self._frames = self._decoded_frames()
        first = next(self._frames, None)
        if first is None:
            self._container.close()
            raise PipelineError(f"{self.source}: no decodable video frames")
        return first

    def _expected_frame_count(self) -> tuple[int | None, bool]:
        """(frame count, whether it is exact): the container's count, else an estimate from duration and rate."""
        stream = self._stream
        if stream.frames:
            return int(stream.frames), True
        end_s = self._end_seconds
        if end_s and stream.average_rate:
            return round(end_s * float(stream.average_rate)), False
        return None, False

    def _stream_end_seconds(self) -> float | None:
        """Where the video stream itself ends, in seconds; None when nothing says.

        The container's duration is used only when video is its one stream: audio that runs past the video would
        otherwise read as missing frames.
        """
        stream = self._stream
        if stream.duration is not None and stream.time_base:
            return float((stream.duration + (stream.start_time or 0)) * stream.time_base)
        tagged = stream.metadata.get("DURATION")  # Matroska writes each stream's length as a tag "HH:MM:SS.fffffffff"
        if tagged:
            try:
                hours, minutes, seconds = tagged.split(":")
                return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            except ValueError:
                pass
        if self._container.duration and len(self._container.streams) == 1:
            return self._container.duration / av.time_base
        return None

    # .................................................................................................................

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(pts, one upright frame in `layout`, uint8) for every decodable frame, in presentation order."""
        for pts, frame in self._timed_frames():
            yield pts, self._pixels(frame)

    def _pixels(self, frame: av.VideoFrame) -> np.ndarray:
        return rotate_upright(frame.to_ndarray(format=self.layout), self.info.rotation, self.layout)

    def _pixels_into(self, frame: av.VideoFrame, out: np.ndarray) -> None:
        """One frame, upright, into `out` (its place in a batch). An unrotated I420 frame is copied plane by plane
        straight from the decoder's buffers: one copy, not one into an array and a second into the batch."""
        if self.layout == YUV420P and not round(self.info.rotation / 90) % 4:
            for target, plane in zip(i420_planes(out, self.info.height), frame.planes):
                target[...] = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        else:
            out[...] = self._pixels(frame)

    def _timed_frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """(pts, decoded frame in the stream's starting size and, for I420, format) in presentation order."""
        rate, time_base = self.info.rate, self.info.time_base
        frame_step = max(1, round(1 / (rate * time_base))) if rate and time_base else 1
        last_pts = None
        first_pts, end_pts = self._pts_range or (None, None)
        first, self._first_frame = self._first_frame, None
        for frame in itertools.chain([first] if first is not None else [], self._frames):
            pts = frame.pts
            if pts is None:  # streams without timestamps (raw elementary streams) get them from the frame rate
                pts = 0 if last_pts is None else last_pts + frame_step
            elif last_pts is not None and pts <= last_pts:
                # A repeated or backward timestamp would be refused by the muxer (or collide): move it one tick
                # past the previous frame, and count it
                pts = last_pts + 1
                self.repaired_timestamps += 1
            last_pts = self._last_pts = pts
            if first_pts is not None and pts < first_pts:
                continue  # decoded from the keyframe before the range: needed as a reference only
            if end_pts is not None and pts >= end_pts:
                return  # frames come out in presentation order: everything before `end` has been seen
            coded_width, coded_height = self._coded_size
            resized = frame.width != coded_width or frame.height != coded_height
            if resized or (self.layout == YUV420P and frame.format.name != YUV420P):
                # A mid-stream size or format change: scaled back to what the stream started with
                frame = frame.reformat(width=coded_width, height=coded_height, format=self.layout)
                self.resized_frames += resized
            self.frames_decoded += 1
            yield pts, frame

    def batches(self, batch_size: int, max_wait_s: float | None = None) -> Iterator[FrameBatch]:
        """Consecutive frames in batches of `batch_size`; a live source also closes a batch after `max_wait_s`.
        Each batch's array is allocated once and the frames decoded into it."""
        height, width = self.info.height, self.info.width
        frame_shape = (height * 3 // 2, width) if self.layout == YUV420P else (height, width, 3)
        return batched(self._timed_frames(), self._pixels_into, frame_shape, self.info.time_base, self.layout,
                       batch_size, max_wait_s)

    @property
    def unreadable_frames(self) -> int:
        """Frames the stream announced but that could not be decoded (0 when nothing says more were there).

        The stretch between the last decoded frame and the stream's stated end, in frames at the average rate
        (robust to variable rates, and to MP4 edit lists that hide leading frames the sample count includes). When
        packets were damaged and the container gives an exact count, the count's shortfall is used if larger.
        """
        if self._pts_range is not None and self._pts_range[1] is not None:
            return 0  # a range before the end: the caller compares with its packet count
        missing_at_end = 0
        end_s = self._end_seconds
        if end_s is not None and self._last_pts is not None and self.info.rate:
            covered_s = float(self._last_pts * self.info.time_base) + 1 / float(self.info.rate)
            missing_at_end = max(0, round((end_s - covered_s) * float(self.info.rate)))
        if self._expected_is_exact and self._pts_range is None and (self.corrupt_packets or end_s is None):
            return max(missing_at_end, self.info.expected_frames - self.frames_decoded)
        return missing_at_end

    def close(self) -> None:
        self._container.close()



def open_source(source: str, fps=None, **options):
    """The decoder for a source: an image sequence (a folder, glob or printf pattern: image_sequence.py, its frames
    timed at `fps`), or a video file or URL (VideoDecoder, `options` its keyword arguments)."""
    from pipeline.stages.sources.image_sequence import DEFAULT_FPS, ImageSequenceDecoder, is_image_sequence

    if is_image_sequence(source):
        return ImageSequenceDecoder(source, fps if fps is not None else DEFAULT_FPS, **options)
    return VideoDecoder(source, **options)
