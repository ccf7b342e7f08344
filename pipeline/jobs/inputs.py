"""
What a batch job works on: input specs -> the list of videos, each with the output path it gets.

Takes: the command line's INPUTS: directories (searched recursively for video files), globs (`clips/**/*.mp4`,
quoted so the shell leaves them alone), video files, and manifests: a `.txt` / `.lst` file with one path per line
(`#` comments), or a `.jsonl` file with one object per line, `{"input": PATH, "options": {...}}`, where options are
setting keys (`output.depth_format`, `smoothing.name`, ...) for that video alone. Relative paths in a manifest are
relative to the manifest's folder.
Gives: `BatchItem`s in a stable order, each with its path relative to where it was found; the output keeps that
relative path under the output folder (`a/b/clip.mp4` -> `DIR/a/b/clip_depth.mp4`), so names never collide. Two
inputs that would still give one output (the same file named twice is listed once) are an error naming both.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..stages.frames import PipelineError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                            ".flv", ".wmv", ".nut", ".3gp", ".ogv", ".y4m"})
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".jsonl"})


@dataclass(frozen=True)
class BatchItem:
    source: Path  # as found (absolute)
    relative: Path  # where it sits below the folder, glob root or manifest it came from
    options: dict = field(default_factory=dict)  # per-video setting overrides (from a JSONL manifest)

    def output_in(self, folder: Path, depth_format: str) -> Path:
        suffix = ".mkv" if depth_format == "gray16" else ".mp4"
        return folder / self.relative.parent / f"{self.relative.stem}_depth{suffix}"

    @property
    def key(self) -> str:
        """The name the status file and the report know this video by: its relative path."""
        return self.relative.as_posix()


def find_inputs(specs: list[str], output_folder: Path | None = None) -> list[BatchItem]:
    """Every video the specs name, once each; a spec that names nothing is an error that says which."""
    items: dict[Path, BatchItem] = {}
    for spec in specs:
        found = _expand(spec, output_folder)
        if not found:
            raise PipelineError(f"{spec}: no video files found there")
        for item in found:
            items.setdefault(item.source, item)
    ordered = sorted(items.values(), key=lambda item: item.key)
    seen: dict[str, BatchItem] = {}
    for item in ordered:
        name = item.output_in(Path("."), "color").as_posix()
        if name in seen:
            raise PipelineError(f"{seen[name].source} and {item.source} would both write {name}: give them "
                                f"different folders or names")
        seen[name] = item
    return ordered


def _expand(spec: str, output_folder: Path | None) -> list[BatchItem]:
    path = Path(spec)
    if glob.has_magic(spec):
        root = _glob_root(spec)
        return [BatchItem(p.resolve(), p.relative_to(root)) for p in map(Path, glob.glob(spec, recursive=True))
                if _is_video(p)]
    if path.is_dir():
        resolved_output = output_folder.resolve() if output_folder else None
        return [BatchItem(p.resolve(), p.relative_to(path)) for p in sorted(path.rglob("*"))
                if _is_video(p) and not p.name.startswith(".")
                and not (resolved_output and resolved_output in p.resolve().parents)]  # not our own outputs
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return _read_manifest(path)
    if path.is_file():
        return [BatchItem(path.resolve(), Path(path.name))]
    raise PipelineError(f"{spec}: no such file, folder or manifest")


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def _glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard: outputs keep the path below it."""
    parts = Path(pattern).parts
    fixed = [part for part in parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))]]
    return Path(*fixed) if fixed else Path(".")


def _read_manifest(manifest: Path) -> list[BatchItem]:
    folder = manifest.parent
    items = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        options: dict = {}
        if manifest.suffix.lower() == ".jsonl":
            try:
                entry = json.loads(text)
                name, options = entry["input"], entry.get("options", {})
            except (ValueError, KeyError, TypeError):
                raise PipelineError(f"{manifest}:{number}: expected {{\"input\": PATH, \"options\": {{...}}}}, got "
                                    f"{text[:80]!r}") from None
            if not isinstance(options, dict):
                raise PipelineError(f"{manifest}:{number}: options must be a mapping of setting keys")
        else:
            name = text
        path = Path(name) if Path(name).is_absolute() else folder / name
        resolved = path.resolve()
        # Below the manifest's folder: the path from there; elsewhere: the whole path (without its root)
        relative = resolved.relative_to(folder.resolve()) if folder.resolve() in resolved.parents \
            else Path(*resolved.parts[1:])
        items.append(BatchItem(resolved, relative, options))
    return items
