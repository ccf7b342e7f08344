"""
The URL schemes the pipeline knows, in one place: what it reads from, what starts live mode, what it publishes to.

Takes: a source or destination as the user wrote it.
Gives: `is_url` (a network source PyAV opens by URL, not a path to look for on disk), `is_live_url` (a stream that
never ends: live mode), `is_publish_url` (an RTSP server to publish depth to).
"""

from __future__ import annotations

__all__ = ["is_live_url", "is_publish_url", "is_url"]

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
