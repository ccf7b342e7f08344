"""
Image sequences as a stream: a folder of images, a glob, or a printf pattern -> RGB frames with timestamps from a
frame rate, batched as a video's are. VideoDecoder's interface, so every job (smoothing, segments, batch, all
outputs) takes it as it takes a video.

Takes: `frames/` (png, jpg, tif: every image in it, in natural name order: 2.png before 10.png), `'frames/*.png'`
(a glob, quoted so the shell leaves it alone), or `frames/%06d.png` (numbered from the lowest number found), and the
frame rate (`input.fps`, default 30: frame i has pts i in a time base of 1 / fps).
Gives: `info` (`VideoInfo`: the first image's size, the rate, its time base), `frames()` and `batches(n)` of
B x H x W x 3 uint8 RGB, the same counters as VideoDecoder (all zero here: a bad image is an error, not a skip).

What is refused, with one line naming the file: a numbered sequence with a gap (the first missing file is named), an
image that cannot be read, an image of another size than the first. The listing and its gap check happen at
construction (before any work); each image is read when its turn comes.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .decode import is_url
from .frames import FrameBatch, PipelineError, VideoInfo, batched
from .pixels import RGB24

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
PRINTF_NUMBER = re.compile(r"%(0?\d*)d")
DEFAULT_FPS = 30
# A file name that is a number between a fixed start and end (frame_000123.png): such a folder must have no gap
NUMBERED_NAME = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")


def is_image_sequence(source: str) -> bool:
    """A folder, a glob or a printf pattern of images (not a video file or a URL)."""
    source = str(source)
    path = Path(source)
    if is_url(source) or path.is_file():  # (a video named "take%d.mp4" is a video)
        return False
    return path.is_dir() or bool(PRINTF_NUMBER.search(path.name)) or glob.has_magic(source)


def sequence_folder(source: str) -> Path:
    """The folder a sequence's images are in: the folder itself, or a pattern's (or glob's) fixed part."""
    path = Path(source)
    if path.is_dir():
        return path
    fixed = list(path.parent.parts)
    for number, part in enumerate(fixed):
        if glob.has_magic(part):
            fixed = fixed[:number]
            break
    return Path(*fixed) if fixed else Path(".")


def natural_key(name: str) -> list:
    """'frame10.png' after 'frame9.png': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_rate(fps: float | str | Fraction) -> Fraction:
    """30, 29.97 or '30000/1001' as an exact rate; a one-line error otherwise."""
    try:
        rate = Fraction(str(fps))
    except (ValueError, ZeroDivisionError):
        raise PipelineError(f"--fps {fps!r}: not a frame rate (a number, or a fraction like 30000/1001)") from None
    if rate <= 0:
        raise PipelineError(f"--fps {fps!r}: a frame rate must be above 0")
    return rate


def list_images(source: str) -> list[Path]:
    """The sequence's files in order; a gap in a numbered sequence, or no images, is a one-line error."""
    source = str(source)
    if PRINTF_NUMBER.search(Path(source).name):
        return _numbered_pattern(source)
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                 and p.is_file()]
        where = f"{source}: folder"
    else:
        files = [Path(p) for p in glob.glob(source) if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file()]
        where = f"{source}: pattern"
    if not files:
        raise PipelineError(f"{where} holds no images ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})")
    files.sort(key=lambda p: natural_key(p.name))
    _check_no_gap(files)
    return files


def _numbered_pattern(source: str) -> list[Path]:
    pattern = Path(source)
    folder = pattern.parent if str(pattern.parent) else Path(".")
    match = PRINTF_NUMBER.search(pattern.name)
    head, tail = pattern.name[: match.start()], pattern.name[match.end():]
    width = match.group(1)
    digits = rf"\d{{{int(width)},}}" if width.startswith("0") and len(width) > 1 else r"\d+"
    name_re = re.compile(re.escape(head) + f"({digits})" + re.escape(tail))
    if not folder.is_dir():
        raise PipelineError(f"{source}: folder {folder} does not exist")
    numbers = sorted(int(m.group(1)) for name in os.listdir(folder) if (m := name_re.fullmatch(name)))
    if not numbers:
        raise PipelineError(f"{source}: no files match the pattern")
    missing = next((n for n, expected in zip(numbers, range(numbers[0], numbers[0] + len(numbers))) if n != expected),
                   None)
    if missing is not None:
        expected = numbers[numbers.index(missing) - 1] + 1
        raise PipelineError(f"{folder / (pattern.name % expected)}: missing from the sequence {source} (frames "
                            f"{numbers[0]} to {numbers[-1]}; every number must be there)")
    return [folder / (pattern.name % n) for n in numbers]


def _check_no_gap(files: list[Path]) -> None:
    """Files all named as one numbered sequence (same start, same end) must not skip a number."""
    matches = [NUMBERED_NAME.match(p.name) for p in files]
    if not all(matches) or len({(m.group(1), m.group(3)) for m in matches}) != 1:
        return  # not one numbered sequence: name order is all there is
    for before, after, file in zip(matches, matches[1:], files[1:]):
        previous = int(before.group(2))
        if int(after.group(2)) != previous + 1:
            digits = len(before.group(2)) if before.group(2).startswith("0") else 1  # zero-padded names keep width
            missing = f"{before.group(1)}{previous + 1:0{digits}d}{before.group(3)}"
            raise PipelineError(f"{file.parent / missing}: missing from the image sequence (after "
                                f"{file.parent / before.group(0)})")


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (16-bit images to 8 bits, grey repeated, alpha dropped, EXIF orientation applied)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PipelineError(f"{path}: unreadable image (not a complete png, jpg or tif)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def sequence_stamp(source: str) -> dict:
    """What says a sequence is the same as last time: its files' count, total size and latest modification."""
    stats = [p.stat() for p in list_images(source)]
    return {"files": len(stats), "size": sum(s.st_size for s in stats),
            "mtime_ns": max(s.st_mtime_ns for s in stats)}


class ImageSequenceDecoder:
    """VideoDecoder's interface over an image sequence (see the module docstring)."""

    def __init__(self, source: str, fps: float | str | Fraction = DEFAULT_FPS,
                 pts_range: tuple[int, int | None] | None = None, **_video_options):
        """`pts_range` (first, end): only frames first <= pts < end (a segment); pts is the frame's number in the
        sequence. `_video_options` (threads, layout, options): a video decoder's, nothing to do here."""
        self.source = str(source)
        self.files = list_images(self.source)
        self._pts_range = pts_range
        rate = frame_rate(fps)
        first = read_rgb(self.files[0])
        self.layout = RGB24
        self.info = VideoInfo(source=self.source, width=first.shape[1], height=first.shape[0], rate=rate,
                              time_base=1 / rate, rotation=0, expected_frames=len(self.files), has_audio=False,
                              codec=self.files[0].suffix.lower().lstrip("."))
        self.frames_decoded = 0
        self.corrupt_packets = self.repaired_timestamps = self.resized_frames = self.unreadable_frames = 0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(pts, H x W x 3 uint8 RGB) for every image in the range, in order."""
        first, end = self._pts_range or (0, None)
        end = len(self.files) if end is None else min(end, len(self.files))
        for pts in range(first or 0, end):
            image = read_rgb(self.files[pts])
            if image.shape[:2] != (self.info.height, self.info.width):
                raise PipelineError(f"{self.files[pts]}: {image.shape[1]}x{image.shape[0]}, but the sequence is "
                                    f"{self.info.width}x{self.info.height} ({self.files[0].name}); every image must "
                                    f"have one size")
            self.frames_decoded += 1
            yield pts, image

    def batches(self, batch_size: int, max_wait_s: float | None = None) -> Iterator[FrameBatch]:
        """Consecutive frames in batches of `batch_size`, as VideoDecoder.batches."""
        shape = (self.info.height, self.info.width, 3)
        return batched(self.frames(), lambda image, out: np.copyto(out, image), shape, self.info.time_base,
                       self.layout, batch_size, max_wait_s)

    def close(self) -> None:
        pass
