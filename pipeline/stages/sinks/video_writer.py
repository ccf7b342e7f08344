"""
Encode: rendered depth frames -> a video file with the source's exact timing, written atomically.

Takes: per frame, an image (H x W x 3 uint8 RGB, H x W uint8 gray, or H x W uint16) and its pts in the source's time
base; the source's `VideoInfo` (rate, time base) and, optionally, the source path to copy its audio from.
Gives: the output file, which appears under its final name only when complete (written to a hidden temporary name
in the same directory and renamed on `close`; `abort` removes it).

Codecs: H.264 (libx264) for colormaps, gray and side-by-side views; FFV1 gray16le in Matroska for lossless 16-bit
depth. Odd frame sizes use 4:4:4 chroma, which H.264 allows at any size (4:2:0 needs even sizes).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from pipeline.errors import PipelineError, write_failed
from pipeline.formats import depth_format as format_row
from pipeline.stages.frames import VideoInfo
from pipeline.stages.sinks.file_lock import FileLock
from pipeline.stages.sinks.image_sequence_writer import check_replaceable
from pipeline.stages.sinks.output_files import check_confined, temporary_path
from pipeline.storage import readable

__all__ = [
    "DepthVideoWriter", "X264_PRESETS", "blank_i420", "check_output_name", "check_output_path", "read_depth_scale", "video_frame_of",
    "x264_options",
]

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
# Seconds of audio allowed ahead of the video when interleaving (players buffer far more than this)
AUDIO_LEAD_S = 0.5
ENCODER_THREADS = int(os.environ.get("DEPTH_ENCODER_THREADS", "1"))


CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".nut": "nut"}  # (FFmpeg's names)


def check_output_path(output: str | Path, depth_format: str, folder_made_later: bool = False) -> Path:
    """Validate an output path before any work starts; one-line PipelineError naming it otherwise.
    `folder_made_later`: its folder is made when the work starts (a batch job's), so only the name is checked."""
    output = Path(output)
    format_row(depth_format)  # an unknown format: the user's error, naming the choices
    directory = output.parent if str(output.parent) else Path(".")
    if directory.is_dir():
        if not os.access(directory, os.W_OK):
            raise PipelineError(f"{output}: output directory {directory} is not writable")
    elif not folder_made_later:
        raise PipelineError(f"{output}: output directory {directory} does not exist")
    if format_row(depth_format).folder:
        check_output_name(output, depth_format)
        if output.exists() and not output.is_dir():
            raise PipelineError(f"{output}: exists and is not a folder ({depth_format} writes a folder of frames)")
        check_replaceable(output)
        return output
    if output.is_dir():
        raise PipelineError(f"{output}: output path is a directory")
    check_output_name(output, depth_format)
    return output


def check_output_name(output: str | Path, depth_format: str) -> None:
    """What the name alone says (any place: a path, or an object URL): a frame folder's name has no file suffix, a
    video's has a container's, and 16-bit depth goes to Matroska."""
    name = str(output).rstrip("/")
    suffix = Path(name.rsplit("/", 1)[-1]).suffix.lower()
    row = format_row(depth_format)
    if row.folder:
        if suffix in (".mp4", ".mkv", ".mov", ".nut", ".png", ".exr", ".jpg", ".jpeg", ".tif", ".tiff"):
            raise PipelineError(f"{output}: {depth_format} writes a folder of frames (not one file); give a folder "
                                f"name (out_depth/)")
        return
    # .nut: FFmpeg's own container, exact timestamps in any time base: the segments of a long video before the join
    if row.sixteen_bit and suffix not in (row.suffix, ".nut"):
        raise PipelineError(f"{output}: 16-bit depth (FFV1) is written to Matroska: use a .mkv output name")
    if suffix not in (".mp4", ".mkv", ".mov", ".nut"):
        raise PipelineError(f"{output}: unsupported output extension; use .mp4, .mkv or .mov")


def pixel_format_of(image: np.ndarray, height: int) -> str:
    """What a rendered image is, by its shape, for a picture `height` rows high: RGB, gray, 16-bit gray, or a ready
    I420 frame (3H/2 rows)."""
    if image.ndim == 3:
        return "rgb24"
    if image.dtype == np.uint16:
        return "gray16le"
    return "yuv420p" if image.shape[0] == height * 3 // 2 else "gray"


def video_frame_of(image: np.ndarray | av.VideoFrame, height: int) -> av.VideoFrame:
    """A rendered image (see `pixel_format_of`) as a VideoFrame for the encoder; a VideoFrame passes through."""
    if isinstance(image, av.VideoFrame):
        return image
    return av.VideoFrame.from_ndarray(image, format=pixel_format_of(image, height))


def x264_options(preset: str, qp: int = 16, crf: int | None = None) -> dict[str, str]:
    """libx264's options for a preset and a rate control: constant quantizer `qp`, or constant rate factor `crf` when
    given. QP is x264's cheapest: CRF makes it analyse a half-size copy of every frame to judge its complexity, about
    30% of the encoder's CPU at `ultrafast`, for a picture that looks the same on depth maps (720p colour depth: CRF
    18 51.1 dB PSNR, QP 16 50.7 dB, files of about the same size)."""
    rate_control = {"crf": str(crf)} if crf is not None else {"qp": str(qp)}
    return {"preset": preset, **rate_control, "threads": str(ENCODER_THREADS)}


def blank_i420(height: int, width: int) -> tuple[av.VideoFrame, list[np.ndarray]]:
    """A new yuv420p VideoFrame (even height and width) and writable views of its Y, U and V planes at the picture's
    size (rows `line_size` apart): a renderer fills the encoder's input in place, with no I420 array to assemble and
    copy into a frame."""
    frame = av.VideoFrame(width, height, "yuv420p")
    return frame, [np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
                   for plane in frame.planes]


class DepthVideoWriter:
    """Writes frames in order; copies the source's audio alongside, interleaved by time."""

    def __init__(
        self,
        output: str | Path,
        depth_format: str,
        info: VideoInfo,
        frame_hw: tuple[int, int],
        copy_audio_from: str | None = None,
        preset: str = "ultrafast",
        qp: int = 16,
        crf: int | None = None,
        metadata: dict[str, str] | None = None,
        b_frames: bool = True,
        video_template: av.video.stream.VideoStream | None = None,
        temporary_tag: str | None = None,
        fragmented: bool = False,
        confined_to: str | None = None,
    ):
        """`video_template`: copy already encoded packets of a stream like this one (`write_packet`), no encoder.
        `temporary_tag`: names the temporary file (`temporary_path`), so that whoever started this writer can remove
        what it leaves if its process dies; unique by default. `fragmented`: an MP4 / MOV written as fragments of
        about a second, each playable once written (a live recording: a kill or an out-of-memory end keeps what was
        recorded up to its last second; Matroska is written so anyway). `confined_to`: a folder the file must stay
        inside (a recording asked for over HTTP): checked again right before the file is created and renamed."""
        self.output = check_output_path(output, depth_format)
        self._confined_to = confined_to
        self.depth_format = depth_format
        self.frames_written = 0
        # Unique per writer: two runs on one output each write their own file, and the last to finish wins whole
        self._temporary = temporary_path(self.output, temporary_tag or uuid.uuid4().hex[:12])
        self._time_base = info.time_base
        # MP4 takes every frame's duration from the timestamps except the last one's, which comes from its packet
        # (libx264 leaves it at 0). One packet is held back so that, at the end, the last frame can be given the
        # duration that makes the file last exactly frames / rate: the source's length and average rate (30000/1001,
        # not 30/1 off a millisecond grid)
        self._frame_duration = max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1
        self._rate = info.rate
        self._held_packet: av.Packet | None = None
        self._first_pts = self._last_pts = None
        # Copied AAC audio starts before zero (encoder priming); without this the muxer would shift every video
        # timestamp to make room (Matroska by 21 ms), and the output would no longer match the input's timing
        self._container = self._audio_in = None  # for abort(), whatever fails next
        # Held while this writer lives: a clean-up of killed runs' leftovers (jobs/batch.py) leaves a live file alone
        self._lock = FileLock(self._temporary)
        with self._disk_errors():
            check_confined(self._temporary, confined_to)
            self._lock.acquire()
            options = {"avoid_negative_ts": "disabled"}
            if fragmented and self.output.suffix.lower() in (".mp4", ".mov"):
                options.update(movflags="empty_moov+default_base_moof+frag_keyframe", frag_duration="1000000")
            if confined_to is None:
                self._file = None
                self._container = av.open(str(self._temporary), mode="w", options=options)
            else:  # (created now, through no symlink, and written through this descriptor: FFmpeg would open the
                # path itself only at the first packet, long after the check)
                self._file = open(os.open(self._temporary, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "w+b")
                self._container = av.open(self._file, mode="w", format=CONTAINER_FORMATS[self.output.suffix.lower()],
                                          options=options)
        self._container.metadata.update(metadata or {})

        height, width = frame_hw
        if video_template is not None:
            self._stream = self._container.add_stream_from_template(video_template)
        elif depth_format == "gray16":
            self._stream = self._container.add_stream("ffv1", rate=info.rate)
            self._stream.pix_fmt = "gray16le"
        else:
            self._stream = self._container.add_stream("libx264", rate=info.rate)
            self._stream.options = x264_options(preset, qp, crf)
            if not b_frames:  # segments joined by stream copy: each must start with its decode timestamps at pts
                self._stream.options["bf"] = "0"
            if depth_format == "gray":
                self._stream.pix_fmt = "gray"
            else:
                self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._stream.time_base = info.time_base
        if video_template is None:
            self._stream.width, self._stream.height = width, height
            # The codec's time base is what frame pts are rounded into before the muxer sees them: it must be the
            # source's, or timestamps snap onto a 1/rate grid (VFR frames collide, start offsets shift)
            self._stream.codec_context.time_base = info.time_base

        self._audio_in = self._audio_out = self._audio_packets = None
        self._pending_audio = None
        if copy_audio_from and info.has_audio:
            self._open_audio(copy_audio_from)

    # .................................................................................................................

    def _open_audio(self, source: str) -> None:
        self._audio_in = av.open(readable(source), mode="r")
        audio = self._audio_in.streams.audio[0]
        try:
            self._audio_out = self._container.add_stream_from_template(audio)
        except (ValueError, av.FFmpegError) as error:
            self._audio_in.close()
            self._audio_in = None
            raise PipelineError(f"{source}: cannot copy its {audio.codec_context.name} audio into "
                                f"{self.output.suffix}: {error}") from None
        self._audio_packets: Iterator[av.Packet] = iter(
            p for p in self._audio_in.demux(audio) if p.dts is not None and p.size
        )

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Mux source audio packets up to `seconds` (all that remain when None)."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if seconds is not None and packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending_audio = packet
                return
            packet.stream = self._audio_out
            self._container.mux(packet)

    # .................................................................................................................


    @contextlib.contextmanager
    def _disk_errors(self):
        """A failed write (disk full, directory removed, quota) as one line that names the output."""
        try:
            yield
        except (av.FFmpegError, OSError) as error:
            raise write_failed(self.output, error) from None

    def write(self, image: np.ndarray | av.VideoFrame, pts: int) -> None:
        """Write one frame: H x W x 3 RGB, H x W gray (uint8 or uint16), (3H/2) x W I420, or a filled VideoFrame."""
        with self._disk_errors():
            self._write(image, pts)

    def _write(self, image: np.ndarray, pts: int) -> None:
        frame = video_frame_of(image, self._stream.height)
        frame.pts, frame.time_base = pts, self._time_base
        if self._first_pts is None:
            self._first_pts = pts
        self._last_pts = pts
        self._mux_audio_until(float(pts * self._time_base) + AUDIO_LEAD_S)
        self._mux_video(self._stream.encode(frame))
        self.frames_written += 1

    def write_packet(self, packet: av.Packet) -> None:
        """Copy one encoded packet (from a stream like `video_template`), in decode order."""
        with self._disk_errors():
            if packet.pts is not None:
                self._first_pts = packet.pts if self._first_pts is None else min(self._first_pts, packet.pts)
                self._last_pts = packet.pts if self._last_pts is None else max(self._last_pts, packet.pts)
                self._mux_audio_until(float(packet.pts * packet.time_base) + AUDIO_LEAD_S)
            packet.stream = self._stream
            self._mux_video([packet])
            self.frames_written += 1

    def _mux_video(self, packets: list[av.Packet], last: bool = False) -> None:
        for packet in packets:
            if self._held_packet is not None:
                self._container.mux(self._held_packet)
            packet.duration = packet.duration or self._frame_duration
            self._held_packet = packet
        if last and self._held_packet is not None:
            if self._rate and self._first_pts is not None:
                end = self._first_pts + round(self.frames_written / (self._rate * self._time_base))
                if 0 < end - self._last_pts <= 2 * self._frame_duration:  # a variable rate can make it nonsense
                    self._held_packet.duration = end - self._last_pts
            self._container.mux(self._held_packet)
            self._held_packet = None

    def close(self) -> Path:
        """Flush, finish the file and move it to its final name."""
        with self._disk_errors():
            self._mux_video(self._stream.encode() if self._stream.codec_context.is_encoder else [], last=True)
            self._mux_audio_until(None)
            self._container.close()
            if self._file is not None:
                self._file.close()
            if self._audio_in is not None:
                self._audio_in.close()
            try:
                check_confined(self.output, self._confined_to)
            except PipelineError:
                self._lock.release()  # (what was written stays where it is: nothing is renamed out of the folder)
                raise
            os.replace(self._temporary, self.output)
        self._lock.release()
        return self.output

    def abort(self) -> None:
        """Stop and remove the partial file; safe to call after a failure at any point."""
        for container in (self._container, self._audio_in, getattr(self, "_file", None)):
            try:
                if container is not None:
                    container.close()
            except Exception:  # the file is being discarded; a failed flush does not matter
                pass
        self._temporary.unlink(missing_ok=True)
        self._lock.release()


def read_depth_scale(path: str | Path) -> float:
    """The scale recorded in a 16-bit depth file: depth = uint16 value / scale."""
    with av.open(readable(path)) as container:
        value = container.metadata.get("DEPTH_SCALE") or container.metadata.get("depth_scale")
    if value is None:
        raise PipelineError(f"{path}: no DEPTH_SCALE metadata; not a 16-bit depth file from this pipeline")
    return float(value)


