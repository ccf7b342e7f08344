"""
Whether a path may be written: the one place every job (one video, segments, batch, live recording) asks, before Ray
starts.

Takes: an output path and its depth format, the job's inputs (`InputFiles`), and whether an existing file may be
replaced (`--no-overwrite`); or an output folder.
Gives: the path, checked, or a one-line `PipelineError` that names the output (and the input it would replace).

What is refused: an output that is one of the job's inputs, however spelled (relative, `..`, a symlink, a hard
link); an existing output under `--no-overwrite`; a folder that is missing under a read-only parent, read-only, or a
file; a name the format cannot be written to. What is not a question here: two runs on one output. Each writes
its own temporary file (and its own segment folder), locked while it lives, and the last to finish wins, whole
(stages/sinks/video_writer.py, jobs/segments.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.formats import output_suffix
from pipeline import storage
from pipeline.stages.sinks.video_writer import check_output_name, check_output_path
from pipeline.stages.sources.image_sequence import is_image_sequence, sequence_folder
from pipeline.storage import is_remote
from pipeline.urls import is_url

__all__ = ["InputFiles", "check_output", "check_output_folder", "check_summary_path", "depth_output_name"]


def depth_output_name(source: str | Path, depth_format: str) -> Path:
    """The output a run writes when none is named: beside the input, `NAME_depth` with the format's ending (a video
    `clip.mp4` -> `clip_depth.mp4`; an image folder `shot/` -> `shot_depth.mp4`; a frame folder for exr / png16)."""
    if is_remote(source):  # an object: beside it, under the same prefix (a sequence: beside its prefix)
        if is_image_sequence(str(source)):
            folder = sequence_folder(str(source))
            return storage.join(storage.parent(folder), f"{storage.name_of(folder)}_depth{output_suffix(depth_format)}")
        name = storage.name_of(str(source))
        return storage.join(storage.parent(str(source)), f"{Path(name).stem}_depth{output_suffix(depth_format)}")
    if is_image_sequence(str(source)):
        folder = Path(os.path.abspath(sequence_folder(str(source))))  # (a name for '.' and '..' too)
        return folder.with_name(f"{folder.name}_depth{output_suffix(depth_format)}")
    path = Path(source)
    return path.with_name(f"{path.stem}_depth{output_suffix(depth_format)}")


class InputFiles:
    """A job's input files, recognised by identity (device and inode) and by resolved path."""

    def __init__(self, sources: Iterable[str | Path]):
        self._by_identity: dict[tuple[int, int], str] = {}
        self._by_path: dict[Path, str] = {}
        self._objects: set[str] = set()
        for source in sources:
            if source is not None and is_remote(source):
                self._objects.add(str(source).rstrip("/"))
            if source is None or is_url(str(source)) or is_remote(source):
                continue
            if is_image_sequence(str(source)):
                source = sequence_folder(str(source))  # its images' folder: no output may be written there
            self._by_path[Path(source).resolve()] = str(source)
            try:
                stat = os.stat(source)
                self._by_identity[(stat.st_dev, stat.st_ino)] = str(source)
            except OSError:
                pass

    def find(self, path: str | Path) -> str | None:
        """The input `path` is (the same file), or None."""
        if is_remote(path):
            return str(path) if str(path).rstrip("/") in self._objects else None
        try:
            stat = os.stat(path)
            found = self._by_identity.get((stat.st_dev, stat.st_ino))
            if found is not None:
                return found
        except OSError:
            pass
        return self._by_path.get(Path(path).resolve())


def check_output(output: str | Path, depth_format: str, inputs: InputFiles, no_overwrite: bool = False,
                 what: str = "output", folder_made_later: bool = False) -> Path | str:
    """An output file that may be written (a Path, or an object URL as text), or a one-line error naming it (`what`:
    output, recording, ...). `folder_made_later`: a batch job's output, whose folders are made when it starts (see
    check_output_folder); an object's prefix is checked once, by the job."""
    source = inputs.find(output)
    if source is not None:
        same = "" if str(source) == str(output) else f" {source}"
        raise PipelineError(f"{output}: the {what} would overwrite the input{same}; choose another name")
    if is_remote(output):
        output = str(output).rstrip("/")  # (a frame folder's prefix: its objects go below it)
        check_output_name(output, depth_format)
        if not folder_made_later:
            storage.check_writable(storage.parent(output), what)
        if no_overwrite and storage.exists(output):
            raise PipelineError(f"{output}: {what} exists and --no-overwrite was given")
        return output
    output = check_output_path(output, depth_format, folder_made_later)
    if no_overwrite and output.exists():
        raise PipelineError(f"{output}: {what} exists and --no-overwrite was given")
    return output


def check_output_folder(folder: str | Path, flag: str = "--output-dir") -> Path:
    """A folder outputs can be written under: an existing writable folder, or a missing one whose nearest existing
    parent is a writable folder (it is made when the job starts); or an object prefix in a bucket that exists and
    takes writes (returned as text)."""
    if is_remote(folder):
        folder = str(folder).rstrip("/")
        storage.check_writable(folder, flag)
        return folder
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise PipelineError(f"{folder}: {flag} exists and is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PipelineError(f"{folder}: {flag} is not writable")
        return folder
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PipelineError(f"{folder}: {flag} does not exist and cannot be made ({parent} is not writable)")
    return folder


def check_summary_path(path: str | None) -> None:
    if path is None:
        return
    if is_remote(path):  # an object: its bucket must exist and take writes
        storage.check_writable(storage.parent(path), "summary")
        return
    folder = Path(path).parent
    if Path(path).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise PipelineError(f"{path}: cannot write the summary there (missing or read-only directory, or a directory)")
