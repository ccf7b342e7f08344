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


def hide_leading_frames(source: Path, target: Path, frames: int) -> Path:
    """Remux an MP4 with every timestamp moved `frames` earlier: the muxer writes an edit list that hides the
    frames now before zero (what `ffmpeg -ss ... -c copy` gives). Decoders still need them as references."""
    with av.open(str(source)) as original, av.open(str(target), "w", options={"avoid_negative_ts": "disabled"}) as out:
        video_in = original.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        shift = frames * round(1 / (video_in.average_rate * video_in.time_base))
        for packet in original.demux(video_in):
            if packet.dts is None:
                continue
            packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, video_out
            out.mux(packet)
    return target


def output_tick(path: Path) -> Fraction:
    """The smallest step a file's video timestamps can take (Matroska: a millisecond)."""
    with av.open(str(path)) as container:
        return Fraction(container.streams.video[0].time_base)


def assert_same_timing(source: Path, output: Path, variable_rate: bool = False) -> None:
    """Every output frame at its source frame's time, and the file as long as frames / rate.

    Exact, except where a container cannot say it: Matroska stores milliseconds (so half a millisecond), and a
    length of frames / rate that is not a whole number of source ticks (12 frames at 29.97 fps on a ms grid).
    """
    wanted, got = read_video(source), read_video(output)
    assert got["count"] == wanted["count"]
    source_tick, tick = output_tick(source), output_tick(output)
    wanted_s = [p * source_tick for p in wanted["pts"]]
    got_s = [p * tick for p in got["pts"]]
    tolerance = tick / 2 if output.suffix == ".mkv" else 0
    assert max(abs(a - b) for a, b in zip(got_s, wanted_s)) <= tolerance
    if not variable_rate:
        count, rate = wanted["count"], wanted["rate"]
        assert abs(count / got["rate"] - count / rate) <= source_tick
        if (1 / (rate * source_tick)).denominator == 1:  # a frame is a whole number of ticks
            assert got["rate"] == rate
