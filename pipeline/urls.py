"""
The URL schemes the pipeline knows, in one place: what it reads from, what starts live mode, what it publishes to.

Takes: a source or destination as the user wrote it.
Gives: `is_url` (a network source PyAV opens by URL, not a path to look for on disk), `is_live_url` (a stream that
never ends: live mode), `is_publish_url` (an RTSP server to publish depth to), and `redact` / `redact_all`: text (or
a JSON-like value) with the user and password of every URL in it shown as `***` (camera URLs carry passwords: a log
line, an error, a summary or an HTTP answer shows where, never with what).
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "is_live_url", "is_publish_url", "is_url", "redact", "redact_all"]

REDACTED = "***"
# scheme://USERINFO@ (userinfo: anything up to the first '@' that comes before a '/', a space or a quote)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"'<>]+@")

PUBLISH_SCHEMES = ("rtsp://", "rtsps://")
# Streams: read as they come, reconnected when they go away (http(s) may be a file as well: --live says a stream)
LIVE_SCHEMES = (*PUBLISH_SCHEMES, "rtmp://", "srt://", "udp://", "tcp://")
URL_SCHEMES = (*LIVE_SCHEMES, "http://", "https://")


def is_url(source) -> bool:
    """A network source PyAV opens by URL (not a path to check on disk)."""
    return str(source).startswith(URL_SCHEMES)


def is_live_url(source) -> bool:
    return str(source).startswith(LIVE_SCHEMES)


def is_publish_url(destination) -> bool:
    return str(destination).startswith(PUBLISH_SCHEMES)


def redact(text: str) -> str:
    """`text` with every URL's userinfo (`user:password@`) shown as `***@`."""
    return _USERINFO.sub(lambda match: f"{match.group(1)}{REDACTED}@", text) if "@" in text else text


def redact_all(value):
    """A JSON-like value (dicts, lists, strings, numbers) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_all(key): redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(item) for item in value]
    return value
