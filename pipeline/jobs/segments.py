"""
Segments of a long video: keyframe index, the split, the resume manifest, and the join by stream copy.

Takes: a video (its packet index: every video packet's pts and keyframe flag, read without decoding), or an image
sequence (every frame a keyframe, at pts = its number).
Gives: `plan_segments` -> contiguous `Segment`s that start at keyframes, each with a warm-up run from the keyframe
before; `SegmentStore` -> the hidden folder next to the output that holds finished segment files and a manifest;
`join_segments` -> the final output, the segments' packets copied in order (no re-encode), audio copied once.

A segment writes the frames with start <= pts < end; it decodes from the previous keyframe (`warmup_from`) and feeds
those frames through the smoother and the colour range without writing them, so that its first written frames look
as an unsegmented run's would. Segment files are NUT (FFmpeg's own container: exact timestamps in the source's time
base, any codec), so the join keeps every timestamp. For the frame-folder formats (exr, png16) each segment writes a
folder of its own, and the join renames their frames into the output's numbering
(stages/sinks/image_sequence_writer.py).
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from pipeline import storage
from pipeline.errors import PipelineError
from pipeline.jobs.status import input_stamp
from pipeline.stages.frames import VideoInfo
from pipeline.stages.inference.temporal_windows import (
    INFER_LEN,
    STEP,
    WindowSpan,
    first_final,
    position_in_video,
)
from pipeline.stages.sinks.file_lock import FileLock
from pipeline.stages.sinks.image_sequence_writer import path_digest
from pipeline.stages.sinks.output_files import remove_partial, write_whole
from pipeline.stages.sinks.remote_output import RemoteOutput
from pipeline.stages.sinks.video_writer import DepthVideoWriter
from pipeline.stages.sources.image_sequence import is_image_sequence, list_images
from pipeline.storage import readable

__all__ = [
    "SEGMENT_SUFFIX", "ObjectSegmentStore", "Segment", "SegmentStore", "auto_segment_count", "check_segmentable",
    "fingerprint", "join_segments", "packet_index", "plan_segments", "plan_stream_segments", "plan_window_segments",
    "segment_store", "work_folders",
]

SEGMENT_SUFFIX = ".nut"


@dataclass(frozen=True)
class Segment:
    """Frames with start <= pts < end (end None: to the end of the video); decoding starts at `warmup_from`.

    A video model's segment also decodes the video's opening frames first (pts < `prefix_end`: window 0 in window
    mode, frame 0 in streaming mode: what every later window or cache entry is tied to), and in window mode runs the
    windows of `windows`, decoding up to `decode_end` (its last window's frames, past `end`)."""

    index: int
    start: int
    end: int | None
    warmup_from: int
    frames: int  # in the packet index (frames the segment should write)
    prefix_end: int | None = None
    windows: WindowSpan | None = None
    decode_end: int | None = None  # window mode: None to the video's end

    @property
    def decode_range(self) -> tuple[int, int | None]:
        return self.warmup_from, self.decode_end if self.windows is not None else self.end

    def time_range(self, time_base: Fraction) -> str:
        """'12.000-24.000 s' (the end of the last segment is 'end')."""
        end = f"{float(self.end * time_base):.3f}" if self.end is not None else "end"
        return f"{float(self.start * time_base):.3f}-{end} s"


def packet_index(source: str) -> list[tuple[int, bool]]:
    """(pts, is keyframe) of every video packet, in presentation order; demuxed, not decoded. An image sequence's
    frames are each a keyframe, at pts = their number."""
    if is_image_sequence(source):
        return [(number, True) for number in range(len(list_images(source)))]
    with av.open(readable(source)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size and p.pts is not None]
    return sorted(packets)


def plan_segments(index: list[tuple[int, bool]], count: int, warmup_frames: int = 0) -> list[Segment]:
    """Up to `count` segments of about equal frame counts, each starting at a keyframe (fewer if keyframes are few).

    A segment after the first decodes from the last keyframe at least `warmup_frames` before its start (at least the
    keyframe before it): the smoother's scale converges over a few seconds, and the warm-up must cover that.
    """
    if not index:
        return []
    pts = [p for p, _ in index]
    keyframe_positions = [i for i, (_, key) in enumerate(index) if key and i > 0]
    starts = [0]
    for k in range(1, count):
        target = round(k * len(index) / count)
        at = bisect.bisect_left(keyframe_positions, target)
        nearest = min(keyframe_positions[max(at - 1, 0) : at + 1], key=lambda pos: abs(pos - target), default=None)
        if nearest is not None and nearest > starts[-1]:
            starts.append(nearest)
    all_keyframes = [i for i, (_, key) in enumerate(index) if key]
    segments = []
    for number, position in enumerate(starts):
        end_position = starts[number + 1] if number + 1 < len(starts) else len(index)
        before = [k for k in all_keyframes if k <= position - max(warmup_frames, 1)]
        warmup_position = (before[-1] if before else 0) if number > 0 else position
        segments.append(Segment(
            index=number,
            start=pts[position],
            end=pts[end_position] if end_position < len(index) else None,
            warmup_from=pts[warmup_position],
            frames=end_position - position,
        ))
    return segments


def plan_window_segments(index: list[tuple[int, bool]], count: int, warmup_windows: int) -> list[Segment]:
    """A video model's window mode: up to `count` segments of about equal frame counts, each starting where a window
    of a whole run starts making depth final (frames 24, 46, ...: WindowSpan), so that a segment's windows are a whole
    run's windows. Each segment after the first runs `warmup_windows` windows before its own first (fewer where the
    video starts sooner: then it runs from frame 0 and is exact), and window 0 again (its `prefix_end`)."""
    if not index:
        return []
    pts = [p for p, _ in index]
    frames = len(pts)
    # A segment ends after a complete window that the video's frames fill (its successor starts at the next one)
    starts = [0]
    for k in range(1, count):
        window = max(1, round((k * frames / count - first_final(1)) / STEP) + 1)
        if window > starts[-1] and position_in_video(window, INFER_LEN - 1) < frames:
            starts.append(window)
    segments = []
    for number, window in enumerate(starts):
        end_window = starts[number + 1] if number + 1 < len(starts) else None
        span = WindowSpan(max(0, window - warmup_windows) if number else 0, window, end_window)
        end_position = span.write_end if end_window is not None else frames
        segments.append(Segment(
            index=number,
            start=pts[span.write_from],
            end=pts[end_position] if end_position < frames else None,
            warmup_from=pts[span.decode_from],
            frames=end_position - span.write_from,
            prefix_end=pts[INFER_LEN] if span.first > 0 else None,
            windows=span,
            decode_end=pts[span.decode_end] if span.decode_end is not None and span.decode_end < frames else None,
        ))
    return segments


def plan_stream_segments(index: list[tuple[int, bool]], count: int, warmup_frames: int) -> list[Segment]:
    """A video model's streaming mode: `plan_segments`' segments, each after the first also decoding frame 0 first
    (the cache's first entries, which every later frame attends to)."""
    segments = plan_segments(index, count, warmup_frames)
    return [segment if segment.index == 0 else replace(segment, prefix_end=index[1][0]) for segment in segments]


def auto_segment_count(spare_cpus: float, duration_s: float | None, min_seconds: float) -> int:
    """One segment per `min_seconds` of video, at most one per CPU the model actors leave (a stream's decode and
    sink keep about one core busy); short videos, and machines with no core to spare, stay whole."""
    if not duration_s:
        return 1
    return max(1, min(int(spare_cpus), int(duration_s // min_seconds)))


WORK_SUFFIX = ".segments"
LOCK_NAME = "lock"  # held by the run working in the folder (file_lock.py)


def work_folders(output: Path | str) -> list[Path | str]:
    """The segment folders of every run on `output`, live or over: `.NAME.<run>.segments` (and `.NAME.segments`,
    the single folder of earlier versions); an object's one prefix, if anything is under it."""
    if storage.is_remote(output):
        prefix = storage.join(storage.parent(str(output)), f".{storage.name_of(str(output))}{WORK_SUFFIX}")
        return [prefix] if storage.find(prefix) else []
    output = Path(output)
    return sorted(p for p in output.parent.glob(f".{glob.escape(output.name)}*{WORK_SUFFIX}") if p.is_dir())


class SegmentStore:
    """A run's hidden folder beside the output: finished segment files and `manifest.json`, for `--resume`.

    Each run works in a folder of its own (`.NAME.<run>.segments`), locked while the run lives, so two runs on one
    output never see each other's segments: each joins its own, and the last to finish wins, whole. The manifest
    records what the segments were made from (the source's path, size and modification time, the settings that shape
    the output, the segment plan) and, per finished segment, its file, frame count and SHA-256. A segment counts as
    done only if all of that still matches.
    """

    def __init__(self, output: Path, fingerprint: dict, suffix: str = SEGMENT_SUFFIX):
        """`suffix`: of each segment's output (a NUT file; "" for frame folders, one folder per segment)."""
        self.output = output
        self.suffix = suffix
        self.fingerprint = fingerprint
        self.folder: Path | None = None  # chosen by open()
        self._lock: FileLock | None = None
        self.done: dict[int, dict] = {}

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def open(self, resume: bool) -> None:
        """Take the folder of an earlier run that is over and made the same segments (resume), or start a new one.
        Folders of runs that are over and cannot be resumed from are removed; a live run's folder is never touched."""
        for folder in work_folders(self.output):
            lock = FileLock(folder / LOCK_NAME)
            try:
                if not lock.acquire():
                    continue  # a run that is still working
            except OSError:
                continue  # not ours to take (another user's, read-only)
            done = self._finished_in(folder) if resume and self.folder is None else {}
            if done:
                self.folder, self._lock, self.done = folder, lock, done
                continue
            shutil.rmtree(folder, ignore_errors=True)  # superseded by this run, as a fresh run always was
            lock.release()
        if self.folder is None:
            self.folder, self._lock = self._new_folder()
        for leftover in self.folder.glob(".*"):  # partial files (or frame folders) of a killed run
            remove_partial(leftover)
        for unvouched in self.folder.glob(f"segment_*{self.suffix}"):
            if unvouched.name not in {entry["file"] for entry in self.done.values()}:
                remove_partial(unvouched)
        self._write_manifest()

    def _finished_in(self, folder: Path) -> dict[int, dict]:
        """The segments a run that is over finished, if it made them from the same source, plan and settings."""
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(manifest, dict) or manifest.get("fingerprint") != self.fingerprint:
            return {}
        done = {}
        for key, entry in manifest.get("segments", {}).items():
            path = folder / entry["file"]
            if path.exists() and path_digest(path) == entry["sha256"]:
                done[int(key)] = entry
        return done

    def _new_folder(self) -> tuple[Path, FileLock]:
        """A folder of this run's own, locked before it appears under a name other runs look at."""
        name = f".{self.output.name}.{uuid.uuid4().hex[:12]}"
        building = self.output.with_name(name + ".new")
        building.mkdir()
        lock = FileLock(building / LOCK_NAME)
        lock.acquire()
        folder = self.output.with_name(name + WORK_SUFFIX)
        os.replace(building, folder)
        return folder, lock

    def path_of(self, segment: Segment) -> Path:
        return self.folder / f"segment_{segment.index:05d}{self.suffix}"

    def finish(self, segment: Segment, frames: int, missing: int = 0) -> None:
        """Record a finished segment: `frames` written, `missing` that its range should have had but could not be
        decoded (a damaged stretch of the file, reported, not silently skipped)."""
        path = self.path_of(segment)
        self.done[segment.index] = {"file": path.name, "frames": frames, "missing": missing,
                                    "sha256": path_digest(path), "start": segment.start, "end": segment.end}
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps({"fingerprint": self.fingerprint,
                           "segments": {str(k): v for k, v in sorted(self.done.items())}}, indent=1)
        write_whole(self.manifest_path, text)

    def remove(self) -> None:
        """The run is done with its folder (joined, or failed): removed, and its lock let go."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let go of the folder, leaving it for `--resume` (an interrupted run)."""
        if self._lock is not None:
            self._lock.release()


class ObjectSegmentStore:
    """SegmentStore's work for an output in object storage: the hidden prefix `.NAME.segments/` beside the output
    holds each finished segment (uploaded whole by its sink, from whichever node ran it) and `manifest.json`.

    An object store has no locks: one prefix per output, and a rerun with `--resume` (a batch job's always) takes
    the segments whose manifest entry matches the fingerprint and whose object still has the recorded size and ETag.
    Two runs on one object output at once are not kept apart (each would redo the other's segments); the last join
    still writes a whole output.
    """

    def __init__(self, output: str, fingerprint: dict, suffix: str = SEGMENT_SUFFIX):
        self.output = output
        self.suffix = suffix
        self.fingerprint = fingerprint
        self.folder = storage.join(storage.parent(output), f".{storage.name_of(output)}{WORK_SUFFIX}")
        self.done: dict[int, dict] = {}

    @property
    def manifest_path(self) -> str:
        return storage.join(self.folder, "manifest.json")

    def open(self, resume: bool) -> None:
        listing = {storage.name_of(url): (url, details) for url, details in
                   storage.find(self.folder, detail=True).items()}
        manifest = {}
        if resume and "manifest.json" in listing:
            with contextlib.suppress(ValueError):
                manifest = json.loads(storage.read_bytes(self.manifest_path))
        if isinstance(manifest, dict) and manifest.get("fingerprint") == self.fingerprint:
            for key, entry in manifest.get("segments", {}).items():
                found = listing.get(entry.get("file"))
                if found is not None and storage.stamp_of(found[1]) == entry.get("stamp"):
                    self.done[int(key)] = entry
        keep = {entry["file"] for entry in self.done.values()} | {"manifest.json"}
        for name, (url, _) in listing.items():  # another plan's segments, or ones no manifest vouches for
            if name not in keep:
                storage.remove(url)
        self._write_manifest()

    def path_of(self, segment: Segment) -> str:
        return storage.join(self.folder, f"segment_{segment.index:05d}{self.suffix}")

    def finish(self, segment: Segment, frames: int, missing: int = 0) -> None:
        url = self.path_of(segment)
        self.done[segment.index] = {"file": storage.name_of(url), "frames": frames, "missing": missing,
                                    "stamp": storage.input_stamp(url), "start": segment.start, "end": segment.end}
        self._write_manifest()

    def _write_manifest(self) -> None:
        storage.write_bytes(self.manifest_path, json.dumps(
            {"fingerprint": self.fingerprint, "segments": {str(k): v for k, v in sorted(self.done.items())}}, indent=1))

    def remove(self) -> None:
        storage.remove(self.folder, recursive=True)

    def release(self) -> None:
        """Nothing is held: what is finished stays for --resume."""


def segment_store(output: Path | str, fingerprint: dict, suffix: str = SEGMENT_SUFFIX):
    """The store for an output: a locked local folder, or a prefix in object storage."""
    if storage.is_remote(output):
        return ObjectSegmentStore(str(output), fingerprint, suffix)
    return SegmentStore(Path(output), fingerprint, suffix)


def fingerprint(source: str, segments: list[Segment], settings: dict) -> dict:
    """What a finished segment depends on: the source as it is now, the plan, the output settings."""
    return {"source": source if storage.is_remote(source) else str(Path(source).resolve()), **input_stamp(source),
            "segments": [asdict(s) for s in segments], "settings": settings}


def join_segments(files: list[Path | str], output: Path | str, depth_format: str, info: VideoInfo,
                  copy_audio: bool, metadata: dict[str, str], if_absent: bool = False) -> Path | str:
    """The segment files' video packets, in order, into `output` (atomically; an object: uploaded whole, `if_absent`
    with the store's conditional write), with the source's audio copied. Segments in object storage are read in
    place."""
    with av.open(readable(files[0])) as first:
        template = first.streams.video[0]

        def open_writer(path):
            return DepthVideoWriter(path, depth_format, info, (template.height, template.width),
                                    copy_audio_from=info.source if copy_audio else None, metadata=metadata,
                                    video_template=template)

        writer = RemoteOutput(output, open_writer, if_absent) if storage.is_remote(output) else open_writer(output)
    try:
        for path in files:
            with av.open(readable(path)) as segment:
                for packet in segment.demux(segment.streams.video[0]):
                    if packet.size:
                        writer.write_packet(packet)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def check_segmentable(index: list[tuple[int, bool]], source: str) -> None:
    if not index:
        raise PipelineError(f"{source}: no timestamped video packets; it cannot be split into segments")
