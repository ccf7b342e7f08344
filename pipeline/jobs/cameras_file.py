"""
The cameras file kept in step with the running job: cameras added and removed over the HTTP API are written back, so
that the same command after a restart, a crash or a reboot serves the same cameras (as Frigate writes cameras added
at runtime back to its config), and the file stays the one its user wrote.

Takes: the file's path, then each change: an entry added (as the service checked it: a recording over HTTP as its
full path inside the recordings folder, marked `keep_recordings`), a name removed.
Gives: `added` / `removed`, whether the change is in the file.

Each change reads the file as it is on disk now, so an edit its user made while the job ran is kept and the change
goes on top of it. The change is made to the text itself: a removed camera's lines are cut out, an added camera's
lines are put after the last camera, in the list's own indentation; every other byte (comments, quoting, order,
style) stays as written. The result is read back and must hold exactly the cameras expected; where the text cannot
be edited so (a list written in flow style, `cameras: [...]`), the file is written out whole instead, and the user's
own version is kept once as `NAME.orig`, never overwritten.
The file is rewritten atomically (a temporary file beside it, flushed, renamed over it: a crash leaves the old file
or the new one), with its own permissions from the first byte (it may hold camera passwords), and the copy it
replaces is kept beside it as `NAME.bak` with the same permissions. A symlinked file is written where the link
points (the link stays a link). A file that cannot be written (read-only, a full disk, a folder gone) or that is no
longer a cameras file (the user broke it meanwhile): one warning, the change is not persisted (`"persisted": false`,
the reason in `problem`), and the job goes on. `persist=False` (`--no-persist`): the file is never touched.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.errors import one_line
from pipeline.stages.sinks.output_files import write_whole

__all__ = ["CamerasFile", "edited"]

HEADER = ("# The cameras of `video-depth live`, written back by it after a camera was added or removed over its HTTP\n"
          "# API (this file as its user wrote it is kept as {original}).\n")


class NotACamerasFile(ValueError):
    """The file on disk no longer has a `cameras:` list (edited meanwhile): nothing to put a change into."""


class CannotEditText(ValueError):
    """The list is written in a way whose lines cannot be cut or extended alone (flow style)."""


class CamerasFile:
    def __init__(self, path: str | Path, persist: bool = True, warn: Callable[[str], None] = lambda line: None):
        self.path = Path(path)
        self.persist = persist
        self.warn = warn
        self.problem: str | None = None  # why the last write failed (None: the file holds every change)
        self._warned = False
        if persist:  # what a killed run left half-written beside the file (write_whole's temporary files) goes
            for name in (self.target.name, self.backup.name, self.original.name):
                self.target.with_name(f".{name}.partial").unlink(missing_ok=True)

    @property
    def target(self) -> Path:
        """The file itself: where a symlink leads."""
        return Path(os.path.realpath(self.path))

    @property
    def backup(self) -> Path:
        return self.target.with_name(self.target.name + ".bak")

    @property
    def original(self) -> Path:
        return self.target.with_name(self.target.name + ".orig")

    def added(self, entry: dict) -> bool:
        """A camera started over HTTP: in the file from now on (replacing an entry of its name). Whether the file
        says so."""
        return self._change(entry.get("name"), dict(entry))

    def removed(self, name: str) -> bool:
        """A camera stopped over HTTP: out of the file. Whether the file says so."""
        return self._change(name, None)

    def _change(self, name: str, entry: dict | None) -> bool:
        if not self.persist:
            return False
        target = self.target
        try:
            if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
                raise PermissionError("the file is read-only")  # (its owner's wish, kept even by root)
            before = target.read_text(encoding="utf-8")
            after, as_written = edited(before, name, entry)
            mode = target.stat().st_mode & 0o7777
            if not as_written:
                after = HEADER.format(original=self.original.name) + after
                if not self.original.exists():
                    write_whole(self.original, before, mode=mode)
            write_whole(self.backup, before, mode=mode)
            write_whole(target, after, mode=mode)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, NotACamerasFile) as error:
            self.problem = f"{self.path}: cannot be written ({one_line(error)}); changes over HTTP are not persisted"
            if not self._warned:
                self._warned = True
                self.warn(f"cameras file {self.problem}")
            return False
        self.problem = None
        return True


def cameras_of(document) -> list:
    if not isinstance(document, dict) or set(document) != {"cameras"} or not isinstance(
            document["cameras"], (list, type(None))):
        raise NotACamerasFile("it is no longer a mapping with just a `cameras:` list")
    return document["cameras"] or []


def edited(text: str, name: str, entry: dict | None) -> tuple[str, bool]:
    """The cameras file `text` with the cameras named `name` removed and `entry` (if any) appended: the new text, and
    whether it is the user's text edited in place (False: written out whole)."""
    cameras = cameras_of(yaml.safe_load(text))
    expected = [camera for camera in copy.deepcopy(cameras) if not (isinstance(camera, dict)
                                                                     and camera.get("name") == name)]
    if entry is not None:
        expected.append(entry)
    try:
        candidate = _removed_in_text(text, name)
        if entry is not None:
            candidate = _appended_in_text(candidate, entry)
        if cameras_of(yaml.safe_load(candidate)) == expected:
            return candidate, True
    except (CannotEditText, NotACamerasFile, yaml.YAMLError):
        pass
    return yaml.safe_dump({"cameras": expected}, sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=4096), False


def _list_node(text: str):
    """The `cameras:` key's node and its value's node (a block sequence, or an empty value)."""
    root = yaml.compose(text)
    for key, value in root.value:
        if key.value == "cameras":
            if isinstance(value, yaml.SequenceNode) and value.flow_style:
                raise CannotEditText("a flow-style list")
            if not isinstance(value, (yaml.SequenceNode, yaml.ScalarNode)):
                raise CannotEditText("not a list")
            return key, value
    raise NotACamerasFile("no `cameras:` key")


def _item_lines(lines: list[str], item) -> tuple[int, int]:
    """The first and last line (inclusive) of one block-sequence item: from its `-` to its last line that is not a
    comment or blank (a comment after it belongs to what follows)."""
    first = item.start_mark.line
    prefix = lines[first][:item.start_mark.column]
    if prefix.strip() != "-":
        first -= 1  # (`-` alone on a line, the item below it)
        while first >= 0 and not lines[first].strip():
            first -= 1
        if first < 0 or lines[first].strip() != "-":
            raise CannotEditText("an item whose `-` is not found")
    end = _last_mark(item)
    last = min(end.line if end.column > 0 else end.line - 1, len(lines) - 1)
    while last > first and (not lines[last].strip() or lines[last].lstrip().startswith("#")):
        last -= 1
    return first, last


def _last_mark(node):
    """Where a node's own text ends (a block collection's end mark is the next token's start: its last child's)."""
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.value:
        node = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    return node.end_mark


def _removed_in_text(text: str, name: str) -> str:
    _, node = _list_node(text)
    if isinstance(node, yaml.ScalarNode):
        return text
    lines = text.splitlines(keepends=True)
    spans = []
    for item in node.value:
        if isinstance(item, yaml.MappingNode) and any(key.value == "name" and value.value == name
                                                      for key, value in item.value):
            spans.append(_item_lines(lines, item))
    for first, last in reversed(spans):
        del lines[first:last + 1]
    return "".join(lines)


def _appended_in_text(text: str, entry: dict) -> str:
    key, node = _list_node(text)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if isinstance(node, yaml.SequenceNode) and node.value:
        first, _ = _item_lines(lines, node.value[0])
        _, after = _item_lines(lines, node.value[-1])
        indent = re.match(r"[ ]*", lines[first]).group(0)
    else:  # (an empty list: `cameras:` alone on its line, nothing after it)
        if isinstance(node, yaml.ScalarNode) and node.value not in ("", "~", "null"):
            raise CannotEditText("`cameras:` holds something else")
        after = key.start_mark.line
        if lines[after].split("#")[0].strip() != "cameras:":
            raise CannotEditText("`cameras: []` on its line")
        indent = ""
    block = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, default_flow_style=False, width=4096)
    lines[after + 1:after + 1] = [indent + line for line in block.splitlines(keepends=True)]
    return "".join(lines)
