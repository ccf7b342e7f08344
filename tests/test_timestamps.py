"""Every output frame at its input frame's time: CFR, VFR, start offsets, B-frames, edit lists, into every container.

The writer is driven directly with decoded frames (fast); `test_pipeline_e2e.py` checks the same through the CLI.
Matroska stores milliseconds, so there a timestamp can only agree to half a millisecond; MP4 and MOV agree exactly.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline.stages.sinks.video_writer import DepthVideoWriter
from pipeline.stages.sources.video_decoder import VideoDecoder
from tests.clips import assert_same_timing, clip, hide_leading_frames

INPUTS = {
    "cfr_2997.mp4": dict(frames=12),
    "cfr_2997.mkv": dict(frames=12),
    "vfr.mp4": dict(frames=13, variable_rate=True),
    "vfr.mkv": dict(frames=13, variable_rate=True),
    "offset_30.mkv": dict(frames=12, rate=Fraction(30), start_s=0.021),
    "offset_2997.mp4": dict(frames=12, start_s=1.5),
    "bframes.mp4": dict(frames=16, b_frames=True),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timestamp_clips")
    made = {name: clip(folder, name, width=64, height=48, **params) for name, params in INPUTS.items()}
    made["editlist.mp4"] = hide_leading_frames(clip(folder, "base.mp4", width=64, height=48, frames=15,
                                                    b_frames=True), folder / "editlist.mp4", 3)
    return made


def source_seconds(path) -> list[Fraction]:
    decoder = VideoDecoder(str(path))
    return [pts * decoder.info.time_base for pts, _ in decoder.frames()]


def test_inputs_are_what_they_claim(inputs):
    steps = np.diff([float(s) for s in source_seconds(inputs["vfr.mp4"])])
    assert len(set(np.round(steps, 6))) > 1
    assert source_seconds(inputs["offset_30.mkv"])[0] == Fraction(21, 1000)
    assert len(source_seconds(inputs["editlist.mp4"])) == 12, "the edit list hides three of 15 frames"
    assert VideoDecoder(str(inputs["editlist.mp4"])).info.expected_frames == 15


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
@pytest.mark.parametrize("name", [*INPUTS, "editlist.mp4"])
@pytest.mark.parametrize("preset", ["ultrafast", "veryfast"], ids=["no-bframes-out", "bframes-out"])
def test_every_frame_keeps_its_timestamp(inputs, tmp_path, name, suffix, preset):
    decoder = VideoDecoder(str(inputs[name]), layout="rgb24")
    frames = list(decoder.frames())
    output = tmp_path / f"out{suffix}"
    writer = DepthVideoWriter(output, "color", decoder.info, (48, 64), preset=preset)
    for pts, rgb in frames:
        writer.write(rgb, pts)
    writer.close()

    assert_same_timing(inputs[name], output, variable_rate="vfr" in name)
    assert decoder.unreadable_frames == 0, "no false 'damaged' warning"
