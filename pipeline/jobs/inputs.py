"""
What a batch job works on: input specs -> the list of videos, each with the output path it gets.

Takes: the command line's INPUTS: directories (searched recursively for video files, and for image sequences: a
folder holding images and no videos is one input, its images in name order), printf patterns of images
(`shot/%06d.png`), globs (`clips/**/*.mp4`,
quoted so the shell leaves them alone), video files, and manifests: a `.txt` / `.lst` file with one path per line
(`#` comments), or a `.jsonl` file with one object per line, `{"input": PATH, "options": {...}}`, where options are
setting keys (`output.depth_format`, `smoothing.name`, ...) for that video alone. Relative paths in a manifest are
relative to the manifest's folder. Any of these may be in object storage (`s3://bucket/videos/`, a glob over keys,
a manifest object whose lines are URLs or keys relative to its prefix): searched the same way (storage.py).
Gives: `BatchItem`s in a stable order, each with its path relative to where it was found; the output keeps that
relative path under the output folder (`a/b/clip.mp4` -> `DIR/a/b/clip_depth.mp4`), so names never collide. Two
inputs that would still give one output (the same file named twice is listed once) are an error naming both.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import av

from pipeline import storage
from pipeline.errors import PipelineError
from pipeline.formats import output_suffix
from pipeline.jobs.status import BatchStatus
from pipeline.stages.sinks.image_sequence_writer import DESCRIPTION, WRITTEN_BY, written_by_this_pipeline
from pipeline.stages.sources.image_sequence import IMAGE_SUFFIXES, is_image_sequence, sequence_folder

__all__ = ["BatchItem", "find_inputs"]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                            ".flv", ".wmv", ".nut", ".3gp", ".ogv", ".y4m"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".jsonl"})


@dataclass(frozen=True)
class BatchItem:
    source: Path | str  # as found (absolute; an object's URL as text)
    relative: Path  # where it sits below the folder, glob root or manifest it came from
    options: dict = field(default_factory=dict)  # per-video setting overrides (from a JSONL manifest)
    where: str = ""  # the manifest line it came from ("jobs.jsonl:3"), for errors about its options
    searched: bool = False  # found by searching a folder or a glob (not named by the user)
    sequence: bool = False  # an image sequence: `source` is its folder or printf pattern, `relative` its folder's

    def output_in(self, folder: Path | str, depth_format: str) -> Path | str:
        # An image sequence's relative path is its folder's: `shots/a/` -> `DIR/shots/a_depth.mp4` (or a_depth/)
        name = self.relative.name if self.sequence else self.relative.stem
        return storage.join(folder, self.relative.parent.as_posix(), f"{name}_depth{output_suffix(depth_format)}")

    @property
    def key(self) -> str:
        """The name the status file and the report know this video by: its relative path."""
        return self.relative.as_posix()


def find_inputs(specs: list[str], output_folder: Path | str | None = None) -> list[BatchItem]:
    """Every video the specs name, once each; a spec that names nothing is an error that says which."""
    items: dict[Path | str, BatchItem] = {}
    for spec in specs:
        found = _expand_objects(spec, output_folder) if storage.is_remote(spec) else _expand(spec, output_folder)
        if not found:
            raise PipelineError(f"{spec}: no video files found there")
        for item in found:
            items.setdefault(item.source, item)
    if output_folder is not None and not storage.is_remote(output_folder):
        items = _without_our_outputs(items, output_folder)
    ordered = sorted(items.values(), key=lambda item: item.key)
    seen: dict[str, BatchItem] = {}
    for item in ordered:
        name = item.output_in(Path("."), "color").as_posix()
        if name in seen:
            raise PipelineError(f"{seen[name].source} and {item.source} would both write {name}: give them "
                                f"different folders or names")
        seen[name] = item
    return ordered


def _without_our_outputs(items: dict[Path, BatchItem], folder: Path) -> dict[Path, BatchItem]:
    """Drop the depth videos an earlier run of this job wrote, where a search found them (an output folder that is
    the input folder). Only files the folder's status file records as written, or that carry this pipeline's depth
    tag (Matroska keeps it): a user's own file that happens to have an output's name stays an input, and the job
    then refuses to overwrite it."""
    outputs = {item.output_in(folder, fmt).resolve(): item for item in items.values() for fmt in ("color", "gray16")
               if not storage.is_remote(item.source)}
    written = {(folder / record["output"]).resolve() for record in BatchStatus(folder).last.values()
               if record.get("status") == "done" and isinstance(record.get("output"), str)}
    kept = {}
    for source, item in items.items():
        if item.searched and source in outputs and outputs[source] is not item and (
                source in written or _is_depth_video(source)):
            continue
        kept[source] = item
    return kept


def _is_depth_video(path: Path) -> bool:
    try:
        with av.open(str(path)) as container:
            return "DEPTH_MODEL" in container.metadata
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return False


def _expand(spec: str, output_folder: Path | None) -> list[BatchItem]:
    path = Path(spec)
    if glob.has_magic(spec):
        root = _glob_root(spec)
        pattern = _glob_regex(Path(spec).relative_to(root).as_posix() if root != Path(".") else spec)
        return [BatchItem(p.resolve(), p.relative_to(root), searched=True, sequence=p.is_dir())
                for p in _search(root, output_folder) if pattern.fullmatch(p.relative_to(root).as_posix())]
    if is_image_sequence(spec) and not path.is_dir():  # a printf pattern: one sequence
        return [_sequence_item(spec)]
    if path.is_dir():
        return [BatchItem(p.resolve(), p.relative_to(path) if p != path else Path(p.resolve().name), searched=True,
                          sequence=p.is_dir()) for p in _search(path, output_folder)]
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return _read_manifest(path)
    if path.is_file():
        return [BatchItem(path.resolve(), Path(path.name))]
    raise PipelineError(f"{spec}: no such file, folder or manifest")


def _sequence_item(spec: str, **fields) -> BatchItem:
    """A folder or printf pattern of images named as one input; its outputs are named after its folder. Its listing
    (gaps, a file that does not fit) is checked when its turn comes: a bad sequence fails that item alone, as a bad
    video does, not the whole job."""
    folder = sequence_folder(spec)
    if not folder.is_dir():
        raise PipelineError(f"{spec}: folder {folder} does not exist")
    source = Path(spec).resolve() if Path(spec).is_dir() else folder.resolve() / Path(spec).name
    return BatchItem(source, Path(folder.resolve().name), sequence=True, **fields)


def _holds_sequence(folder: Path, files: list[str]) -> bool:
    """A folder that is an image sequence in a batch's search: images and no videos in it, and not a frame folder
    this pipeline wrote (an exr / png16 output)."""
    suffixes = {Path(name).suffix.lower() for name in files if not name.startswith(".")}
    return bool(suffixes & IMAGE_SUFFIXES) and not suffixes & VIDEO_SUFFIXES and not written_by_this_pipeline(folder)


def _search(root: Path, output_folder: Path | None) -> list[Path]:
    """Video files below `root`, sorted: hidden files and folders skipped (a run's `.X.segments/` work), symbolic
    links to folders not followed (a link to `.` or `..` would loop), and the output folder left out when it lies
    inside (this job's own outputs), but not when it is `root` itself."""
    resolved_root = root.resolve()
    skip = output_folder.resolve() if output_folder is not None else None
    found = []
    for folder, subfolders, files in os.walk(root):  # followlinks=False: linked folders are not entered
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and not (skip is not None and skip != resolved_root
                                        and (Path(folder) / name).resolve() == skip))
        if _holds_sequence(Path(folder), files):
            found.append(Path(folder))  # one input: the folder's images, in order
            subfolders[:] = []
            continue
        found += [Path(folder) / name for name in sorted(files) if not name.startswith(".")
                  and _is_video(Path(folder) / name)]
    return found


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob (`*`, `?`, `[...]`, `**` for any depth) as a regular expression over `/`-separated relative paths."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            parts.append("[" + ("^" + body[1:] if body[0] == "!" else body) + "]")
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def _glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard: outputs keep the path below it."""
    parts = Path(pattern).parts
    fixed = [part for part in parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))]]
    return Path(*fixed) if fixed else Path(".")


def _expand_objects(spec: str, output_folder: Path | str | None) -> list[BatchItem]:
    """A spec in object storage: a prefix (searched as a folder is, hidden keys and the output prefix left out), a
    glob over keys, one object, or a manifest object."""
    if is_image_sequence(spec) and not spec.endswith("/") and not glob.has_magic(spec):  # a printf pattern
        folder = sequence_folder(spec)
        return [BatchItem(spec, Path(storage.name_of(folder)), sequence=True)]
    if glob.has_magic(spec):
        root = spec[: spec.rfind("/", 0, min(spec.find(c) for c in "*?[" if c in spec))]
        pattern = _glob_regex(spec[len(root) + 1:])
        return [BatchItem(url, Path(url[len(root) + 1:]), searched=True)
                for url in _search_objects(root, output_folder) if pattern.fullmatch(url[len(root) + 1:])]
    if not spec.endswith("/") and storage.is_object(spec):
        if Path(storage.name_of(spec)).suffix.lower() in MANIFEST_SUFFIXES:
            return _read_manifest(spec)
        return [BatchItem(spec, Path(storage.name_of(spec)))]
    root = spec.rstrip("/")
    if not storage.is_prefix(root):
        raise PipelineError(f"{spec}: no such object or prefix")
    return [BatchItem(url, Path(url[len(root) + 1:].rstrip("/")), searched=True, sequence=url.endswith("/"))
            for url in _search_objects(root, output_folder)]


def _search_objects(root: str, output_folder: Path | str | None) -> list[str]:
    """Video objects below a prefix, as `_search` finds files: hidden keys (a run's `.X.segments/` work) and the
    output prefix when it lies inside (not when it is the root itself) left out; a prefix holding images and no
    videos is one image sequence (its URL, ending in /), as a folder is."""
    skip = str(output_folder).rstrip("/") + "/" if output_folder is not None else None
    videos, images, holds_videos = [], set(), set()
    for url in storage.find(root):
        relative = url[len(root) + 1:]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if skip is not None and skip != root + "/" and url.startswith(skip):
            continue
        suffix = Path(relative).suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            videos.append(url)
            holds_videos.add(storage.parent(url))
        elif suffix in IMAGE_SUFFIXES and storage.name_of(url) != DESCRIPTION:
            images.add(storage.parent(url))
    sequences = [prefix + "/" for prefix in images - holds_videos
                 if not any(prefix == other or prefix.startswith(other + "/") for other in _written_folders(images))]
    return sorted(videos + sequences)


def _written_folders(prefixes: set[str]) -> set[str]:
    """Prefixes that are frame folders this pipeline wrote (their depth.json says so): outputs, not inputs."""
    found = set()
    for prefix in prefixes:
        try:
            if json.loads(storage.read_bytes(storage.join(prefix, DESCRIPTION))).get("written_by") == WRITTEN_BY:
                found.add(prefix)
        except (PipelineError, ValueError, AttributeError):
            continue
    return found


MANIFEST_KEYS = ("input", "options")


def _read_manifest(manifest: Path | str) -> list[BatchItem]:
    """A manifest file or object: each line a path or URL, relative ones from the manifest's folder (prefix)."""
    remote = storage.is_remote(manifest)
    folder = storage.parent(manifest) if remote else manifest.parent
    suffix = Path(storage.name_of(manifest) if remote else manifest.name).suffix.lower()
    try:
        text = storage.read_bytes(manifest).decode() if remote else manifest.read_text()
    except UnicodeDecodeError:
        raise PipelineError(f"{manifest}: not a UTF-8 text manifest") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        text = line.strip()
        where = f"{manifest}:{number}"
        if not text or text.startswith("#"):
            continue
        options: dict = {}
        if suffix == ".jsonl":
            try:
                entry = json.loads(text)
            except ValueError:
                raise PipelineError(f"{where}: not valid JSON; expected {{\"input\": PATH, \"options\": {{...}}}}, got "
                                    f"{text[:80]!r}") from None
            if not isinstance(entry, dict) or "input" not in entry:
                raise PipelineError(f"{where}: expected {{\"input\": PATH, \"options\": {{...}}}}, got {text[:80]!r}")
            unknown = [key for key in entry if key not in MANIFEST_KEYS]
            if unknown:
                raise PipelineError(f"{where}: unknown key {unknown[0]!r}; a line has {' and '.join(MANIFEST_KEYS)}")
            name, options = entry["input"], entry.get("options", {})
            if not isinstance(options, dict):
                raise PipelineError(f"{where}: options must be a mapping of setting keys, got {options!r}")
        else:
            name = text
        if not isinstance(name, str) or not name.strip():
            raise PipelineError(f"{where}: input must be a path to a video file, got {name!r}")
        if storage.is_remote(name) or remote:
            items.append(_manifest_object(name, folder if remote else None, where, options))
            continue
        path = Path(name) if Path(name).is_absolute() else folder / name
        if is_image_sequence(str(path)):
            items.append(_sequence_item(str(path), options=options, where=where))
            continue
        if not path.is_file():
            what = "a folder (a manifest names video files)" if path.is_dir() else "no such file"
            raise PipelineError(f"{where}: {name}: {what}")
        resolved = path.resolve()
        # Below the manifest's folder: the path from there; elsewhere: the whole path (without its root)
        relative = resolved.relative_to(folder.resolve()) if folder.resolve() in resolved.parents \
            else Path(*resolved.parts[1:])
        items.append(BatchItem(resolved, relative, options, where))
    return items


def _manifest_object(name: str, folder: str | None, where: str, options: dict) -> BatchItem:
    """A manifest line naming an object (a URL, or a key relative to a manifest object's prefix), or an image
    sequence there."""
    url = name if storage.is_remote(name) else storage.join(folder, name) + ("/" if name.endswith("/") else "")
    if is_image_sequence(url):
        return BatchItem(url, Path(storage.name_of(sequence_folder(url))), options, where, sequence=True)
    try:
        storage.check_readable(url)
    except PipelineError as error:
        raise PipelineError(f"{where}: {error}") from None
    # Below the manifest's prefix: the key from there; elsewhere: bucket and key
    relative = url[len(folder) + 1:] if folder and url.startswith(folder + "/") else url.split("://", 1)[1]
    return BatchItem(url, Path(relative), options, where)
