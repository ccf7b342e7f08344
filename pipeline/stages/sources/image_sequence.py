"""
Image sequences as a stream: a folder of images, a glob, or a printf pattern -> RGB frames with timestamps from a
frame rate, batched as a video's are. VideoDecoder's interface, so every job (smoothing, segments, batch, all
outputs) takes it as it takes a video.

Takes: `frames/` (png, jpg, tif: every image in it, in natural name order: 2.png before 10.png), `'frames/*.png'`
(a glob, quoted so the shell leaves it alone), or `frames/%06d.png` (numbered from the lowest number found), and the
frame rate (`input.fps`, default 30: frame i has pts i in a time base of 1 / fps).
Gives: `info` (`VideoInfo`: the first image's size, the rate, its time base), `frames()` and `batches(n)` of
B x H x W x 3 uint8 RGB, the same counters as VideoDecoder (all zero here: a bad image is an error, not a skip).

One rule for what a numbered sequence is: files named PREFIX NUMBER .EXT, one prefix and one extension (its case
aside: 0003.PNG belongs with 0002.png). A folder or glob whose images are mostly (two or more) one numbered sequence is
that sequence: a file that does not fit it (thumbnail.png, f001.jpg among f*.png) is named and refused, never taken
as a frame; otherwise its images are taken in natural name order. A printf pattern (%d, %06d; %% is a literal %)
takes exactly the files it matches.
What is refused, with one line naming the file: a numbered sequence with a gap (the first missing file is named) or a
number twice (1.png and 01.png), a file that does not fit the sequence, an image that cannot be read, an image of
another size than the first; a frame rate outside 0.001-1000 fps. The listing and its checks happen at construction
(before any work); each image is read when its turn comes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline import storage
from pipeline.errors import PipelineError
from pipeline.stages.frames import FrameBatch, VideoInfo, batched
from pipeline.stages.pixels import RGB24
from pipeline.urls import is_url

__all__ = [
    "DEFAULT_FPS", "IMAGE_SUFFIXES", "ImageSequenceDecoder", "frame_rate", "is_image_sequence", "list_images",
    "sequence_folder", "sequence_stamp",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
PRINTF_NUMBER = re.compile(r"(?<!%)((?:%%)*)%(0?\d*)d")  # a %d or %0Nd not escaped as %%d
DEFAULT_FPS = 30
# A file name that is a number between a fixed start and end (frame_000123.png): such a folder must have no gap
NUMBERED_NAME = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")
FPS_RANGE = (Fraction(1, 1000), Fraction(1000))


def is_image_sequence(source: str) -> bool:
    """A folder, a glob or a printf pattern of images (not a video file or a URL). In object storage: a prefix
    ending in `/`, or a pattern or glob whose name ends in an image suffix."""
    source = str(source)
    if storage.is_remote(source):
        name = storage.name_of(source)
        return source.endswith("/") or (Path(name).suffix.lower() in IMAGE_SUFFIXES and (
            bool(PRINTF_NUMBER.search(name)) or glob.has_magic(source)))
    path = Path(source)
    if is_url(source) or path.is_file():  # (a video named "take%d.mp4" is a video)
        return False
    return path.is_dir() or bool(PRINTF_NUMBER.search(path.name)) or glob.has_magic(source)


class ObjectFile:
    """An image in object storage where a sequence's code takes a Path: its URL, `name`, `suffix`, `parent`, `/`."""

    def __init__(self, url: str, size: int = 0, tag: str | None = None):
        self.url, self.size, self.tag = url.rstrip("/"), size, tag
        self.name = storage.name_of(self.url)
        self.suffix = Path(self.name).suffix

    @property
    def parent(self) -> "ObjectFile":
        return ObjectFile(storage.parent(self.url))

    def __truediv__(self, name: str) -> "ObjectFile":
        return ObjectFile(storage.join(self.url, name))

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectFile) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


def sequence_folder(source: str) -> Path | str:
    """The folder a sequence's images are in: the folder itself, or a pattern's (or glob's) fixed part (in object
    storage: the prefix, as a URL without its last `/`)."""
    if storage.is_remote(source):
        if str(source).endswith("/"):
            return str(source).rstrip("/")
        fixed = str(source)[: min([str(source).find(c) for c in "*?[" if c in str(source)] or [len(str(source))])]
        return storage.parent(fixed.rsplit("/", 1)[0] + "/x")
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
    if not FPS_RANGE[0] <= rate <= FPS_RANGE[1]:
        raise PipelineError(f"--fps {fps!r}: a frame rate must be from {FPS_RANGE[0]} to {FPS_RANGE[1]} frames a "
                            f"second")
    if rate.denominator > 1_000_000:  # a time base of 1 / fps must fit the encoders' 32-bit fractions
        raise PipelineError(f"--fps {fps!r}: too precise a frame rate (a fraction like 30000/1001 says it exactly)")
    return rate


def list_images(source: str) -> list[Path] | list[ObjectFile]:
    """The sequence's files in order; a gap in a numbered sequence, or no images, is a one-line error."""
    source = str(source)
    if storage.is_remote(source):
        return _list_objects(source)
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
    return _in_order(files, where)


def _in_order(files: list, where: str) -> list:
    """A folder's (prefix's, glob's) images in natural name order, checked as one sequence; none is an error."""
    if not files:
        raise PipelineError(f"{where} holds no images ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})")
    files.sort(key=lambda file: natural_key(file.name))
    _check_sequence(files)
    return files


def _list_objects(source: str) -> list[ObjectFile]:
    """list_images over object storage: the images directly below a prefix, a glob's matches, or a pattern's."""
    folder = sequence_folder(source)
    listing = storage.find(folder, detail=True, depth=1 if not glob.has_magic(source) else None)
    files = [ObjectFile(url, info.get("size") or 0, storage.stamp_of(info)["etag"]) for url, info in listing.items()
             if Path(url).suffix.lower() in IMAGE_SUFFIXES and not storage.name_of(url).startswith(".")]
    if PRINTF_NUMBER.search(storage.name_of(source)) and not glob.has_magic(source):
        return _numbered_pattern(source, files)
    if glob.has_magic(source):
        pattern = re.compile(fnmatch_regex(source[len(folder) + 1:]))
        files = [file for file in files if pattern.fullmatch(file.url[len(folder) + 1:])]
        where = f"{source}: pattern"
    else:
        where = f"{source}: prefix"
    return _in_order(files, where)


def fnmatch_regex(pattern: str) -> str:
    """A glob over `/`-separated names (`*` and `?` within one name, `**` across) as a regular expression."""
    return "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                   for part in re.split(r"(\*\*|\*|\?)", pattern) if part)


def _numbered_pattern(source: str, objects: list[ObjectFile] | None = None) -> list[Path] | list[ObjectFile]:
    """The files a printf pattern names (`objects`: a prefix's images in object storage, else a local folder's)."""
    pattern = Path(storage.name_of(source)) if objects is not None else Path(source)
    folder = ObjectFile(sequence_folder(source)) if objects is not None else \
        (pattern.parent if str(pattern.parent) else Path("."))
    match = PRINTF_NUMBER.search(pattern.name)
    head, tail = pattern.name[: match.start()] + match.group(1), pattern.name[match.end():]
    if "%" in (head + tail).replace("%%", ""):
        raise PipelineError(f"{source}: a % that is not the frame number (%d, %06d) nor a literal %% (write %% for "
                            f"a % in a file name)")
    head, tail = head.replace("%%", "%"), tail.replace("%%", "%")
    width = match.group(2)
    digits = rf"\d{{{int(width)},}}" if width.startswith("0") and len(width) > 1 else r"\d+"
    name_re = re.compile(re.escape(head) + f"({digits})" + re.escape(tail))
    if objects is None and not folder.is_dir():
        raise PipelineError(f"{source}: folder {folder} does not exist")
    # The files as named (a %d pattern over 0001.png takes 0001.png): one per number
    by_number: dict[int, str] = {}
    names = sorted(file.name for file in objects) if objects is not None else sorted(os.listdir(folder))
    for name in names:
        found = name_re.fullmatch(name)
        if found is None:
            continue
        number = int(found.group(1))
        if number in by_number:
            raise PipelineError(f"{folder / name}: frame {number} twice in the sequence {source} (and "
                                f"{by_number[number]}); keep one")
        by_number[number] = name
    if not by_number:
        raise PipelineError(f"{source}: no files match the pattern")
    numbers = sorted(by_number)
    missing = next((n for n, expected in zip(numbers, range(numbers[0], numbers[0] + len(numbers))) if n != expected),
                   None)
    if missing is not None:
        expected = numbers[numbers.index(missing) - 1] + 1
        name = f"{head}{expected:0{int(width or 0)}d}{tail}"
        raise PipelineError(f"{folder / name}: missing from the sequence {source} (frames {numbers[0]} to "
                            f"{numbers[-1]}; every number must be there)")
    if objects is not None:
        by_name = {file.name: file for file in objects}
        return [by_name[by_number[n]] for n in numbers]
    return [folder / by_number[n] for n in numbers]


def _check_sequence(files: list[Path]) -> None:
    """Images mostly of one numbered sequence (PREFIX NUMBER .EXT, two files or more) must all be of it, each number
    once, none skipped; otherwise (no such sequence) name order is all there is."""
    groups: dict[tuple[str, str], list[tuple[int, Path, str]]] = {}
    for file in files:
        found = NUMBERED_NAME.match(file.name)
        if found:
            key = (found.group(1), found.group(3).lower())
            groups.setdefault(key, []).append((int(found.group(2)), file, found.group(2)))
    if not groups:
        return
    (prefix, suffix), members = max(groups.items(), key=lambda item: len(item[1]))
    if len(members) < 2 or len(members) * 2 <= len(files):
        return  # not mostly one numbered sequence: name order
    described = f"{prefix}N{suffix} ({len(members)} files)"
    member_files = {file for _, file, _ in members}
    for file in files:
        if file not in member_files:
            raise PipelineError(f"{file}: not part of the numbered image sequence {described}: move it out, or name "
                                f"the frames with a pattern (frames/{prefix}%d{suffix})")
    members.sort(key=lambda member: member[0])
    for (previous, before, text), (number, after, _) in zip(members, members[1:]):
        if number == previous:
            raise PipelineError(f"{after}: frame {number} twice in the image sequence (and {before.name}); keep one")
        if number != previous + 1:
            digits = len(text) if text.startswith("0") else 1  # zero-padded names keep their width
            missing = f"{prefix}{previous + 1:0{digits}d}{suffix}"
            raise PipelineError(f"{after.parent / missing}: missing from the image sequence (after {before})")


def read_rgb(path: Path | ObjectFile) -> np.ndarray:
    """H x W x 3 uint8 RGB (16-bit images to 8 bits, grey repeated, alpha dropped, EXIF orientation applied)."""
    if isinstance(path, ObjectFile):
        image = cv2.imdecode(np.frombuffer(storage.read_bytes(path.url), np.uint8), cv2.IMREAD_COLOR)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if path.suffix.lower() in (".tif", ".tiff"):  # OpenCV's colour reader takes no float TIFF, for one
            raise PipelineError(f"{path}: unreadable TIFF (8- or 16-bit integer images are read; float or damaged "
                                f"ones are not)")
        raise PipelineError(f"{path}: unreadable image (damaged, or not the {path.suffix.lstrip('.')} its name "
                            f"says)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def sequence_stamp(source: str) -> dict:
    """What says a sequence is the same as last time: its files' count, total size and latest modification (in
    object storage: their ETags, digested)."""
    files = list_images(source)
    if files and isinstance(files[0], ObjectFile):
        tags = hashlib.sha256("\n".join(f"{file.name} {file.tag}" for file in files).encode()).hexdigest()[:16]
        return {"files": len(files), "size": sum(file.size for file in files), "etags": tags}
    stats = [p.stat() for p in files]
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
