"""
Synthetic sample clips, made with PyAV: the demo's input when none is given, and the tests' videos.

Takes: size, frame count, exact rate, and options (audio, rotation metadata, variable frame rate, fast start).
Gives: a real H.264 file (MP4/MKV by extension) of a sliding gradient "floor" with shapes moving across it.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["make_sample_clip", "sample_frame"]


def sample_frame(index: int, width: int, height: int) -> np.ndarray:
    """A H x W x 3 uint8 RGB frame: vertical gradient, a drifting disc and a sweeping bar, with a little texture."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.empty((height, width, 3), np.float32)
    frame[..., 0] = 40 + 150 * ys / max(height - 1, 1)
    frame[..., 1] = 60 + 80 * np.sin(xs / 23.0 + index * 0.05) ** 2
    frame[..., 2] = 200 - 120 * ys / max(height - 1, 1)
    centre_x = (0.2 + 0.6 * ((index * 0.013) % 1.0)) * width
    disc = (xs - centre_x) ** 2 + (ys - 0.55 * height) ** 2 < (0.18 * min(width, height)) ** 2
    frame[disc] = (230, 200, 60)
    bar_x = int((index * 7) % max(width, 1))
    frame[:, bar_x : bar_x + max(2, width // 20)] = (30, 30, 30)
    frame += (np.sin(xs * 1.7) * np.cos(ys * 1.3) * 6)[..., None]
    return np.clip(frame, 0, 255).astype(np.uint8)


def make_sample_clip(
    path: str | Path,
    width: int = 640,
    height: int = 360,
    frames: int = 48,
    rate: Fraction = Fraction(30000, 1001),
    audio: bool = False,
    rotation: int = 0,
    variable_rate: bool = False,
    fast_start: bool = False,
    start_s: float = 0.0,
    b_frames: bool = False,
    audio_seconds: float | None = None,
    keyframe_interval: int | None = None,
    open_gop: bool = False,
) -> Path:
    """Write a clip and return its path.

    `variable_rate`: frame durations alternate between 1 and 2 ticks; `start_s`: the first frame's timestamp;
    `b_frames`: x264 with B-frames (decode order differs from presentation order); `audio_seconds`: audio length
    (default: the video's); `keyframe_interval`: frames per GOP; `open_gop`: B-frames before a keyframe (in
    presentation order) may refer across it (x264's open GOP).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if fast_start else {}
    with av.open(str(path), mode="w", options=options) as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p" if width % 2 == 0 == height % 2 else "yuv444p"
        video.time_base = video.codec_context.time_base = (
            Fraction(1, 90000) if variable_rate or start_s else 1 / Fraction(rate))
        video.options = {"preset": "veryfast", "bf": "3", "crf": "20"} if b_frames else {"preset": "ultrafast", "crf": "20"}
        if keyframe_interval or open_gop:
            params = [f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"] if keyframe_interval else []
            video.options["x264-params"] = ":".join(params + (["open-gop=1"] if open_gop else []))
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "mono"

        tick = 1 / Fraction(rate)
        pts_seconds = Fraction(start_s)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(sample_frame(index, width, height), format="rgb24")
            frame.pts = int(pts_seconds / video.time_base)
            frame.time_base = video.time_base
            container.mux(video.encode(frame))
            pts_seconds += tick * (1 + index % 2) if variable_rate else tick
        container.mux(video.encode())

        if sound is not None:
            samples_per_chunk, sample_rate = 1024, 48000
            total = int((audio_seconds if audio_seconds is not None else float(pts_seconds)) * sample_rate)
            for start in range(0, total, samples_per_chunk):
                t = (np.arange(start, min(start + samples_per_chunk, total)) / sample_rate).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * t))[None], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path
