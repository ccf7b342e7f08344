"""
Write depth as a folder of frames, for the tools downstream (compositing, point clouds, measurement): one float32
OpenEXR file (`exr`) or one 16-bit grey PNG (`png16`) per frame, a frame table and a description.

Takes: per frame, depth at frame size (exr: H x W float32, the depth itself; png16: H x W uint16, round(depth *
scale)) and its pts in the source's time base; the source's `VideoInfo`; what the values are (`description`).
Gives: the folder, which appears under its final name only when complete (built under a hidden temporary name beside
it and renamed on `close`; `abort` removes it):

    DIR/000000.exr, 000001.exr, ...   numbered from 0 in presentation order
    DIR/frames.csv                    frame,pts,time_s: each frame's timestamp in the source's time base and seconds
    DIR/depth.json                    what the values are (relative inverse depth or metres), the png16 scale, the
                                      time base, the model and the source

EXR: a single `Z` channel (the name compositing tools read depth from), ZIP compression (lossless), scanlines. An
existing folder at the output is replaced only when it is one this pipeline wrote (its depth.json says so), or empty:
never a user's folder that happens to have the name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError, write_failed
from pipeline.formats import DEPTH_FORMATS
from pipeline.stages.frames import VideoInfo
from pipeline.stages.sinks.file_lock import FileLock
from pipeline.stages.sinks.output_files import LOCK_NAME, remove_partial, temporary_path

__all__ = [
    "DepthSequenceWriter", "check_replaceable", "join_sequence_folders", "path_digest", "path_size", "read_exr",
    "written_by_this_pipeline",
]

FRAME_SUFFIXES = {row.name: row.frame_suffix for row in DEPTH_FORMATS.values() if row.folder}  # exr, png16
FRAME_TABLE = "frames.csv"
DESCRIPTION = "depth.json"
FRAME_TABLE_HEADER = "frame,pts,time_s\n"
WRITTEN_BY = "video-depth"  # depth.json's mark: a folder that says it may be replaced by the next run
NUMBER_DIGITS = 6


def frame_name(index: int, depth_format: str) -> str:
    return f"{index:0{NUMBER_DIGITS}d}{FRAME_SUFFIXES[depth_format]}"


def written_by_this_pipeline(folder: Path) -> bool:
    """A frame folder this pipeline wrote: its depth.json says so."""
    try:
        return json.loads((folder / DESCRIPTION).read_text()).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(folder: Path) -> None:
    """An existing output folder may be replaced only if it is empty, or if this pipeline wrote it and it holds
    nothing else: a user's file added there (notes, a subfolder) would go with it."""
    if not folder.is_dir():
        return
    if not written_by_this_pipeline(folder):
        if any(folder.iterdir()):
            raise PipelineError(f"{folder}: folder exists and is not a depth folder from this pipeline (no "
                                f"{DESCRIPTION} of ours): choose another output name")
        return
    ours = re.compile(rf"\d{{{NUMBER_DIGITS},}}({'|'.join(re.escape(s) for s in FRAME_SUFFIXES.values())})")
    for entry in sorted(folder.iterdir()):
        if entry.name not in (DESCRIPTION, FRAME_TABLE) and not (ours.fullmatch(entry.name) and entry.is_file()):
            raise PipelineError(f"{folder}: a depth folder from this pipeline, but it also holds {entry.name}, which "
                                f"the pipeline did not write: move it out, or choose another output name")


def write_exr(path: Path, depth_hw: np.ndarray) -> None:
    import OpenEXR  # the Academy Software Foundation's bindings (OpenCV's wheels write no EXR)

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Z": np.ascontiguousarray(depth_hw, dtype=np.float32)}) as exr:
        exr.write(str(path))


def read_exr(path: str | Path) -> np.ndarray:
    """The `Z` channel of an EXR file, H x W float32."""
    import OpenEXR

    with OpenEXR.File(str(path)) as exr:
        return np.array(exr.channels()["Z"].pixels, dtype=np.float32)


def partial_folder(output: Path, tag: str | None = None) -> Path:
    """Where a frame folder is built: the name a video's temporary file would have (encode.temporary_path), so that
    the clean-ups of killed runs find both the same way."""

    return temporary_path(output, tag or uuid.uuid4().hex[:12])


def publish_folder(built: Path, output: Path) -> Path:
    """Move a complete folder to its final name; an earlier output there (checked replaceable) goes only after."""
    check_replaceable(output)
    if output.exists():
        # Two renames: the old folder steps aside, the new one takes its name (a directory cannot replace a
        # non-empty one in one step); the old one is removed only once the new one is in place
        old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:12]}.replaced")
        os.replace(output, old)
        os.replace(built, output)
        # (an output that was a symlink to a folder: the link is replaced, as a file output's is, and the link moved
        # aside goes too; what it pointed at is left alone)
        remove_partial(old)
    else:
        os.replace(built, output)
    return output


def path_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


class DepthSequenceWriter:
    """DepthVideoWriter's interface (`write(image, pts)`, `close()`, `abort()`, `frames_written`) for frame folders."""

    def __init__(self, output: str | Path, depth_format: str, info: VideoInfo, description: dict,
                 temporary_tag: str | None = None):
        """`description`: what the values are, for depth.json (see DepthSink); the frame count, time base and
        source are added here. `temporary_tag`: names the temporary folder, as DepthVideoWriter's does."""
        if depth_format not in FRAME_SUFFIXES:
            raise ValueError(f"not a frame-folder format: {depth_format!r}")
        self.output = Path(output)
        self.depth_format = depth_format
        self.frames_written = 0
        self._time_base = info.time_base
        self._description = {"written_by": WRITTEN_BY, "format": depth_format, **description,
                             "source": info.source, "width": info.width, "height": info.height,
                             "time_base": str(info.time_base), "frame_rate": str(info.rate)}
        self._temporary = partial_folder(self.output, temporary_tag)
        self._table = None
        self._lock: FileLock | None = None
        with self._disk_errors():
            self._temporary.mkdir()
            self._lock = FileLock(self._temporary / LOCK_NAME)
            self._lock.acquire()
            self._table = open(self._temporary / FRAME_TABLE, "w", newline="")
            self._table.write(FRAME_TABLE_HEADER)

    @contextlib.contextmanager
    def _disk_errors(self):
        """A failed write (a full disk, whatever the encoder calls it: OpenEXR raises RuntimeError, OpenCV returns
        False) as one line that names the output and the disk."""
        try:
            yield
        except (OSError, RuntimeError) as error:
            raise write_failed(self.output, error) from None

    def write(self, image: np.ndarray, pts: int) -> None:
        """One frame: H x W float32 depth (exr) or H x W uint16 (png16)."""
        path = self._temporary / frame_name(self.frames_written, self.depth_format)
        with self._disk_errors():
            if self.depth_format == "exr":
                write_exr(path, image)
            elif not cv2.imwrite(str(path), np.ascontiguousarray(image, dtype=np.uint16)):
                raise OSError(f"PNG encoder failed for {path.name}")
            self._table.write(f"{self.frames_written},{pts},{float(Fraction(pts) * self._time_base):.9f}\n")
        self.frames_written += 1

    def close(self) -> Path:
        """The frame table and description written, the folder moved to its final name."""
        with self._disk_errors():
            self._table.close()
            description = {**self._description, "frames": self.frames_written}
            (self._temporary / DESCRIPTION).write_text(json.dumps(description, indent=1) + "\n")
            self._lock.release()
            (self._temporary / LOCK_NAME).unlink(missing_ok=True)
            try:
                return publish_folder(self._temporary, self.output)
            except PipelineError:  # the output became something not ours to replace meanwhile: nothing is left
                remove_partial(self._temporary)
                raise

    def abort(self) -> None:
        if self._table is not None:
            with contextlib.suppress(OSError):
                self._table.close()
        if self._lock is not None:
            self._lock.release()
        remove_partial(self._temporary)


def join_sequence_folders(folders: list[Path], output: Path, tag: str | None = None) -> tuple[Path, int]:
    """Segments' frame folders (each numbered from 0) -> one folder numbered from 0 in order, atomically: frames
    renumbered by moving them (no copy), frame tables joined, one description. Returns (output, frames)."""
    built = partial_folder(output, tag)
    built.mkdir()
    try:
        description = json.loads((folders[0] / DESCRIPTION).read_text())
        depth_format = description["format"]
        count = 0
        with open(built / FRAME_TABLE, "w", newline="") as table:
            table.write(FRAME_TABLE_HEADER)
            for folder in folders:
                with open(folder / FRAME_TABLE, newline="") as rows:
                    next(rows)  # the header
                    for row in rows:  # (read as it goes: memory stays flat for any length)
                        local, pts, seconds = row.rstrip("\n").split(",")
                        os.replace(folder / frame_name(int(local), depth_format),
                                   built / frame_name(count, depth_format))
                        table.write(f"{count},{pts},{seconds}\n")
                        count += 1
        (built / DESCRIPTION).write_text(json.dumps({**description, "frames": count}, indent=1) + "\n")
        return publish_folder(built, output), count
    except BaseException:
        remove_partial(built)
        raise
