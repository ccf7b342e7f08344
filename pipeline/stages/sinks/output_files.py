"""
Output files while they are written: every output is written under a hidden temporary name beside it (on the same
filesystem) and renamed into place when complete, so it appears whole or not at all; what a killed run leaves is
found here, and removed, or kept when it is a recording worth keeping.

Takes: an output path (a video file, or a folder of frames).
Gives: `temporary_path(output, tag)`, the name a writer of `output` writes under; `abandoned_partials(output)`, the
temporary files and folders of `output` that no live writer holds (a writer holds a lock on its file, or on
`LOCK_NAME` inside its folder: file_lock.py); `remove_partial(path)`; `recover_recordings(output)`, a killed live
run's fragmented recordings kept beside the output, trimmed to their last whole fragment; `write_whole(path, data)`,
a small file (a manifest, a report, a cameras file) replaced whole or not at all (with the mode it had, or `mode`);
`check_confined(path, folder)`: that a file about to be created or renamed into place is still inside `folder` (a
recording asked for over HTTP: checked again right before each step, since a folder may be swapped for a symlink
meanwhile); `free_name(path)`: `path`, or the first of NAME-2.EXT, NAME-3.EXT, ... that does not exist.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stages.sinks.file_lock import is_held_elsewhere

__all__ = ["LOCK_NAME", "abandoned_partials", "check_confined", "free_name", "recover_recordings", "remove_partial",
           "temporary_path", "write_whole"]

LOCK_NAME = ".lock"  # held inside the temporary folder while a writer lives (see file_lock.py)


def write_whole(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """`path` holds `data`, whole, or is as it was (a crash or a full disk at any moment): written beside it as
    `.NAME.partial`, flushed to disk, renamed over it, the rename itself flushed too. The file keeps its permissions
    (or takes `mode`), and so does the temporary file from its first byte: a file of secrets is never readable by
    others, not even for a moment."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    if mode is None and path.exists():
        mode = path.stat().st_mode & 0o7777
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o600 if mode is None else mode & 0o600)
        with open(descriptor, "wb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        else:  # (a new file: as the umask says)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def check_confined(path: Path, folder: str | Path | None, what: str = "recording") -> None:
    """A PipelineError unless `path` lies inside `folder` (None: anywhere) through no symlink out: its folder's
    real path inside the folder's, and `path` itself no symlink."""
    if folder is None:
        return
    path = Path(path)
    try:
        inside = Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(folder))
        link = path.is_symlink()
    except (OSError, RuntimeError) as error:
        raise PipelineError(f"{path}: the {what} cannot be followed inside {folder} ({error})") from None
    if not inside or link:
        raise PipelineError(f"{path}: the {what} now leads out of {folder} (a symlink put in its way); not written")


def free_name(path: Path) -> Path:
    """`path` if nothing is there, else the first NAME-N.EXT (N = 2, 3, ...) with nothing there."""
    path, number = Path(path), 2
    candidate = path
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def temporary_path(output: Path, tag: str) -> Path:
    """Where a writer of `output` writes until it is complete: hidden, beside it, on the same filesystem."""
    return output.with_name(f".{output.stem}.{tag}.partial{output.suffix}")


def remove_partial(path: Path) -> None:
    """A temporary output, a file or a folder, gone (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def abandoned_partials(output: Path, older_than: float | None = None) -> list[Path]:
    """The temporary files and folders of `output` (see `temporary_path`) that no live writer holds: a killed run's
    (or those of them last changed before `older_than`, a time.time())."""
    found = []
    for leftover in output.parent.glob(f".{glob.escape(output.stem)}.*.partial{glob.escape(output.suffix)}"):
        lock = leftover / LOCK_NAME if leftover.is_dir() else leftover  # (a folder's writer locks a file inside it)
        try:
            if (older_than is None or leftover.stat().st_mtime < older_than) and not is_held_elsewhere(lock):
                found.append(leftover)
        except OSError:
            pass  # gone meanwhile
    return found


def complete_fragments_length(path: Path) -> int:
    """Bytes of a fragmented MP4 up to its last complete fragment (`moof` + `mdat`), 0 if it has none: a file cut
    short by a kill ends mid-fragment, and a decoder reading it fails there."""
    whole = offset = 0
    size_of_file = path.stat().st_size
    with open(path, "rb") as file:
        while offset + 8 <= size_of_file:
            file.seek(offset)
            header = file.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if size == 1 and len(header) == 16:  # a 64-bit size follows the type
                size = int.from_bytes(header[8:16], "big")
            if size < 8 or offset + size > size_of_file:
                break  # the box the kill cut short (or nonsense): what came before is what is whole
            offset += size
            if kind == b"mdat":
                whole = offset
    return whole


def recover_recordings(output: Path) -> list[Path]:
    """What killed runs recorded to `output` (fragmented MP4, Matroska: playable up to the kill), kept beside it as
    NAME.recovered-YYYYmmdd-HHMMSS.EXT; an empty leftover is removed. The files kept, for the caller to say."""
    kept = []
    for leftover in abandoned_partials(output):
        if leftover.is_dir() or leftover.stat().st_size == 0:
            remove_partial(leftover)
            continue
        if leftover.suffix.lower() in (".mp4", ".mov"):
            whole = complete_fragments_length(leftover)  # the fragment the kill cut short is dropped
            if not whole:
                remove_partial(leftover)
                continue
            os.truncate(leftover, whole)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(leftover.stat().st_mtime))
        target = output.with_name(f"{output.stem}.recovered-{stamp}{output.suffix}")
        number = 1
        while target.exists():
            number += 1
            target = output.with_name(f"{output.stem}.recovered-{stamp}-{number}{output.suffix}")
        os.replace(leftover, target)
        kept.append(target)
    return kept
