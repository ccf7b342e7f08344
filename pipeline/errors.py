"""
The user's errors: what every layer raises when the input, the output or the settings are wrong, and how they read.

Takes: a message, or any exception and the output it concerns. Gives: a `PipelineError` whose message is one line
naming the file, URL or key (the CLI prints it and exits non-zero), or an exception's message as one line.
"""

from __future__ import annotations

import errno
import os
import shutil

__all__ = ["PipelineError", "one_line", "write_failed"]


class PipelineError(RuntimeError):
    """A problem with the user's input, output or settings; the message is one line that names the file or URL."""


def write_failed(output, error: BaseException) -> PipelineError:
    """A failed write of `output` as one line: a full disk said so, naming the disk (the mount point) whatever the
    writer reported (EXR's RuntimeError, OpenCV's False, FFmpeg's error), else the writer's own reason."""
    folder = os.path.dirname(os.path.abspath(str(output)))
    while folder != os.path.dirname(folder) and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    mount = folder
    while mount != os.path.dirname(mount) and not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    try:
        full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        full = False
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error) or full:
        return PipelineError(f"{output}: cannot write the output: the disk is full (no space left on {mount})")
    reason = getattr(error, "strerror", None) or one_line(error)
    return PipelineError(f"{output}: cannot write the output ({reason})")


def one_line(error: BaseException) -> str:
    """An error's message as one line (its first), for messages that must stay one line."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
