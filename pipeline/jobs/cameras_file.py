"""
The cameras file kept in step with the running job: cameras added and removed over the HTTP API are written back, so
that the same command after a restart, a crash or a reboot serves the same cameras (as Frigate writes cameras added
at runtime back to its config).

Takes: the file's path and its entries as read (each camera's mapping, as given), and then each change: an entry
added (as the service checked it: a recording over HTTP as its full path inside the recordings folder), a name
removed.
Gives: the file rewritten after each change, atomically (a temporary file beside it, flushed to disk, renamed over
it: a crash leaves the old file or the new one, never half of one), the copy it replaces kept beside it as
`NAME.bak`; `added` / `removed` say whether the change is in the file. A file that cannot be written (read-only, a
full disk, a folder gone): one warning, the change is not persisted, and the job goes on. `persist=False`
(`--no-persist`): the file is never touched. The rewrite is YAML with the cameras only: comments in the file are in
the `.bak` of the first change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.errors import one_line
from pipeline.stages.sinks.output_files import write_whole

__all__ = ["CamerasFile"]

HEADER = ("# The cameras of `video-depth live`: cameras added and removed over its HTTP API are written here (the\n"
          "# previous version of this file is beside it, as {backup}).\n")


class CamerasFile:
    def __init__(self, path: str | Path, entries: list[dict], persist: bool = True,
                 warn: Callable[[str], None] = lambda line: None):
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        self.entries = [dict(entry) for entry in entries]
        self.persist = persist
        self.warn = warn
        self.problem: str | None = None  # why the last write failed (None: the file holds every change)
        self._warned = False

    def added(self, entry: dict) -> bool:
        """A camera started over HTTP: in the file from now on. Whether the file says so."""
        self.entries = [kept for kept in self.entries if kept.get("name") != entry.get("name")] + [dict(entry)]
        return self._write()

    def removed(self, name: str) -> bool:
        """A camera stopped over HTTP: out of the file. Whether the file says so."""
        self.entries = [kept for kept in self.entries if kept.get("name") != name]
        return self._write()

    def _write(self) -> bool:
        if not self.persist:
            return False
        text = HEADER.format(backup=self.backup.name) + yaml.safe_dump(
            {"cameras": self.entries}, sort_keys=False, allow_unicode=True, default_flow_style=False)
        try:
            if self.path.exists() and (not os.access(self.path, os.W_OK) or not self.path.stat().st_mode & 0o222):
                raise PermissionError("the file is read-only")  # (its owner's wish, kept even by root)
            if self.path.exists():
                write_whole(self.backup, self.path.read_bytes())
            write_whole(self.path, text)
        except OSError as error:
            self.problem = f"{self.path}: cannot be written ({one_line(error)}); changes over HTTP are not persisted"
            if not self._warned:
                self._warned = True
                self.warn(f"cameras file {self.problem}")
            return False
        self.problem = None
        return True

