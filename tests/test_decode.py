"""The decode stage without Ray: timestamps, rotation, sizes, batches and every bad input."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.sample_video import make_sample_clip, sample_frame
from pipeline.stages.sources.video_decoder import VideoDecoder
from tests.clips import clip, hide_leading_frames, read_video, truncate


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode_clips")
    return {
        "odd": clip(folder, "odd.mp4", width=642, height=362, frames=12),
        "rotated": clip(folder, "rotated.mp4", width=160, height=96, frames=6, rotation=90),
        "vfr": clip(folder, "vfr.mkv", width=160, height=96, frames=12, variable_rate=True),
        "long_mkv": clip(folder, "long.mkv", width=160, height=96, frames=60),
        "faststart": clip(folder, "faststart.mp4", width=160, height=96, frames=60, fast_start=True),
    }


def test_frames_keep_exact_timestamps_and_rate(clips):
    decoder = VideoDecoder(str(clips["odd"]))
    assert decoder.info.rate == Fraction(30000, 1001)
    assert (decoder.info.width, decoder.info.height) == (642, 362)
    frames = list(decoder.frames())
    assert [pts for pts, _ in frames] == read_video(clips["odd"])["pts"]
    assert all(i420.shape == (543, 642) and i420.dtype == np.uint8 for _, i420 in frames)
    assert decoder.unreadable_frames == 0


def test_rotation_metadata_is_applied(clips):
    decoder = VideoDecoder(str(clips["rotated"]), layout="rgb24")
    assert decoder.info.rotation == 90
    assert (decoder.info.width, decoder.info.height) == (96, 160)
    _, upright = next(iter(decoder.frames()))
    stored = sample_frame(0, 160, 96).astype(np.float32)
    # Counter-clockwise quarter turn matches; the opposite turn does not
    right_error = np.abs(upright - np.rot90(stored, 1)).mean()
    wrong_error = np.abs(upright - np.rot90(stored, -1)).mean()
    assert right_error < 6 < wrong_error


def test_variable_frame_rate_timestamps(clips):
    decoder = VideoDecoder(str(clips["vfr"]))
    pts = [p for p, _ in decoder.frames()]
    steps = np.diff(pts)
    assert len(set(steps.tolist())) > 1, "durations alternate in a VFR clip"
    assert pts == read_video(clips["vfr"])["pts"]
    assert decoder.unreadable_frames == 0


def test_batches_cover_every_frame_once(clips):
    decoder = VideoDecoder(str(clips["odd"]))
    batches = list(decoder.batches(batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [b.first_index for b in batches] == [0, 5, 10]
    assert batches[0].layout == "yuv420p" and batches[0].pixels.shape == (5, 362 * 3 // 2, 642)
    rgb_batches = list(VideoDecoder(str(clips["odd"]), layout="rgb24").batches(batch_size=5))
    assert rgb_batches[0].layout == "rgb24" and rgb_batches[0].pixels.shape == (5, 362, 642, 3)


@pytest.mark.parametrize("name, layout", [("odd", "auto"), ("odd", "rgb24"), ("rotated", "auto")])
def test_batches_hold_the_same_pixels_as_single_frames(clips, name, layout):
    """Batches are filled in place (I420 planes copied straight from the decoder's buffers, whose rows are wider
    than 642 pixels): the same pixels, frame for frame, as decoding one frame at a time."""
    single = np.stack([pixels for _, pixels in VideoDecoder(str(clips[name]), layout=layout).frames()])
    batched = np.concatenate([b.pixels for b in VideoDecoder(str(clips[name]), layout=layout).batches(4)])
    np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("name", ["long_mkv", "faststart"])
def test_truncated_file_yields_decodable_frames_and_counts_the_rest(clips, tmp_path, name):
    source = clips[name]
    damaged = truncate(source, tmp_path / f"cut{source.suffix}", 0.6)
    decoder = VideoDecoder(str(damaged))
    decoded = len(list(decoder.frames()))
    assert 0 < decoded < 60
    assert decoder.unreadable_frames == pytest.approx(60 - decoded, abs=2)


def test_valid_files_are_not_called_damaged(tmp_path):
    """Audio that runs past the video (Matroska), and leading frames hidden by an MP4 edit list, are not losses."""
    long_audio = make_sample_clip(tmp_path / "long_audio.mkv", width=64, height=48, frames=10, audio=True,
                                  audio_seconds=2.0)
    hidden = hide_leading_frames(make_sample_clip(tmp_path / "base.mp4", width=64, height=48, frames=12),
                                 tmp_path / "edit_list.mp4", 3)
    for path, frames in ((long_audio, 10), (hidden, 9)):
        decoder = VideoDecoder(str(path))
        assert len(list(decoder.frames())) == frames
        assert decoder.unreadable_frames == 0, path.name


def test_repeated_timestamps_are_moved_one_tick_on_and_counted(tmp_path):
    source = make_sample_clip(tmp_path / "plain.mkv", width=64, height=48, frames=8)
    repeated = tmp_path / "repeated.mkv"
    with av.open(str(source)) as original, av.open(str(repeated), "w") as out:
        video_out = out.add_stream_from_template(original.streams.video[0])
        previous = None
        for number, packet in enumerate(p for p in original.demux(video=0) if p.dts is not None):
            if number == 5:
                packet.pts = packet.dts = previous  # the muxer takes it; a depth video written so would not
            previous, packet.stream = packet.pts, video_out
            out.mux(packet)
    decoder = VideoDecoder(str(repeated))
    pts = [p for p, _ in decoder.frames()]
    assert read_video(repeated)["pts"][4] == read_video(repeated)["pts"][5], "the input really repeats"
    assert all(b > a for a, b in zip(pts, pts[1:])) and pts[5] == pts[4] + 1
    assert decoder.repaired_timestamps == 1


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="input file not found"):
        VideoDecoder(str(tmp_path / "missing.mp4"))


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(PipelineError, match=f"{text}: not a readable video"):
        VideoDecoder(str(text))


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(PipelineError, match="input file is empty"):
        VideoDecoder(str(empty))


def test_audio_only_file(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(PipelineError, match="has no video stream"):
        VideoDecoder(str(path))


def test_zero_decodable_frames(clips, tmp_path):
    header_only = truncate(clips["long_mkv"], tmp_path / "header.mkv", 0.02)
    with pytest.raises(PipelineError, match="no decodable video frames|not a readable video"):
        VideoDecoder(str(header_only))


def test_odd_pixel_sizes(tmp_path):
    path = make_sample_clip(tmp_path / "odd_pixels.mp4", width=161, height=97, frames=3)
    frames = list(VideoDecoder(str(path)).frames())
    assert len(frames) == 3 and frames[0][1].shape == (97, 161, 3)
