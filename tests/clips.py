"""Test clips made with PyAV on the fly, cached per session by their parameters."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.sample_video import make_sample_clip


def clip(folder: Path, name: str, **params) -> Path:
    path = folder / name
    if not path.exists():
        make_sample_clip(path, **params)
    return path


def read_video(path: Path) -> dict:
    """Timing and content summary of a file's first video stream (and whether it has audio)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {
            "pts": [f.pts for f in frames],
            "seconds": [float(f.pts * stream.time_base) for f in frames],
            "rate": Fraction(stream.average_rate),
            "size": (frames[0].height, frames[0].width),
            "count": len(frames),
            "has_audio": bool(container.streams.audio),
            "audio_seconds": _audio_seconds(path),
            "metadata": dict(container.metadata),
            "frames": frames,
        }


def _audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        audio = container.streams.audio[0]
        return sum(float(p.duration * p.time_base) for p in container.demux(audio) if p.duration)


def truncate(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def gray16_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray() for f in container.decode(video=0)])
