"""
The depth outputs, in one table: what each format writes, and what every part of the pipeline must know of it.

Takes: a format's name as the user gave it (`--depth-format`, `output.depth_format`, a camera's `depth_format`).
Gives: its `DepthFormat` row: a video or a folder of frames, the output name's default ending, whether it holds
depth values (16-bit or float32) or a picture, and what live mode can do with it. The writers, the settings, the
CLI and the jobs read this table rather than lists of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError

__all__ = ["DEPTH_FORMATS", "DepthFormat", "depth_format", "is_sequence_format", "keeps_values", "output_suffix",
           "sixteen_bit"]


@dataclass(frozen=True)
class DepthFormat:
    name: str
    what: str  # one line for the documentation and error messages
    suffix: str  # the output name's default ending: a video container, or "" for a folder of frames
    frame_suffix: str | None = None  # a folder of frames: each frame's file ending; None for a video
    sixteen_bit: bool = False  # depth as uint16 = round(depth * scale), the scale in the output's metadata
    float32: bool = False  # depth as float32 values (OpenEXR)
    publish: bool = True  # live mode can publish it over RTSP (8-bit H.264)
    record: bool = True  # live mode can record it (a video file)

    @property
    def folder(self) -> bool:
        """A folder of numbered frames (with frames.csv and depth.json) rather than one video file."""
        return self.frame_suffix is not None

    @property
    def keeps_values(self) -> bool:
        """Holds depth values rather than a picture: the model then sends float32 depth (float16 is plenty for
        8-bit pictures, not for millimetres)."""
        return self.sixteen_bit or self.float32


DEPTH_FORMATS: dict[str, DepthFormat] = {row.name: row for row in (
    DepthFormat("color", "a colour-mapped H.264 video (the default)", ".mp4"),
    DepthFormat("gray", "an 8-bit gray H.264 video", ".mp4"),
    DepthFormat("gray16", "a 16-bit gray FFV1 video in Matroska", ".mkv", sixteen_bit=True, publish=False),
    DepthFormat("side-by-side", "the frame and its colour-mapped depth side by side, H.264", ".mp4"),
    DepthFormat("exr", "a folder of float32 OpenEXR frames", "", frame_suffix=".exr", float32=True, publish=False,
                record=False),
    DepthFormat("png16", "a folder of 16-bit gray PNG frames", "", frame_suffix=".png", sixteen_bit=True,
                publish=False, record=False),
)}


def depth_format(name: str) -> DepthFormat:
    """The format's row; an unknown name is the user's error, naming the choices."""
    try:
        return DEPTH_FORMATS[name]
    except (KeyError, TypeError):
        raise PipelineError(f"unknown depth format {name!r}; expected one of {', '.join(DEPTH_FORMATS)}") from None


def output_suffix(name: str) -> str:
    return depth_format(name).suffix


def is_sequence_format(name: str) -> bool:
    return name in DEPTH_FORMATS and DEPTH_FORMATS[name].folder


def sixteen_bit(name: str) -> bool:
    return name in DEPTH_FORMATS and DEPTH_FORMATS[name].sixteen_bit


def keeps_values(name: str) -> bool:
    return name in DEPTH_FORMATS and DEPTH_FORMATS[name].keeps_values
