"""The whole graph on a local Ray cluster, driven through the CLI: timing, content, audio, bad inputs."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

import run_pipeline
from model import DepthPredictor, PredictorOptions
from model.random_weights import random_model
from pipeline.stages.pixels import i420_to_rgb
from pipeline.stages.sinks.video_writer import read_depth_scale
from pipeline.stages.sources.video_decoder import VideoDecoder
from tests.clips import assert_same_timing, clip, gray16_frames, read_video, truncate

FAST = ["--random-weights", "vits", "--input-size", "70", "--batch-size", "3"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e_clips")
    return {
        "odd_2997": clip(folder, "odd_2997.mp4", width=642, height=362, frames=14),
        "rotated": clip(folder, "rotated.mp4", width=160, height=96, frames=8, rotation=90),
        "audio": clip(folder, "audio.mp4", width=160, height=96, frames=20, audio=True),
        "vfr": clip(folder, "vfr.mkv", width=160, height=96, frames=13, variable_rate=True, audio=True),
        "offset": clip(folder, "offset.mkv", width=160, height=96, frames=10, rate=Fraction(30), start_s=0.021,
                       audio=True),
        "long": clip(folder, "long.mkv", width=128, height=72, frames=40),
    }


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = run_pipeline.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize(
    "name, depth_format, suffix",
    [("odd_2997", "color", ".mp4"), ("rotated", "gray", ".mp4"), ("audio", "side-by-side", ".mp4"),
     ("vfr", "color", ".mp4"), ("vfr", "gray", ".mkv"), ("offset", "color", ".mov")],
)
def test_output_keeps_frames_timing_and_audio(ray_cluster, clips, tmp_path, capsys, name, depth_format, suffix):
    source = clips[name]
    output = tmp_path / f"depth{suffix}"
    code, summary, err = run_cli(capsys, source, "-o", output, "--depth-format", depth_format, *FAST)
    assert code == 0, err
    expected, result = read_video(source), read_video(output)
    assert summary["frames_in"] == summary["frames_out"] == expected["count"] == result["count"]
    assert summary["dropped"] == 0
    assert_same_timing(source, output, variable_rate=name == "vfr")
    height, width = VideoDecoder(str(source)).info.height, VideoDecoder(str(source)).info.width
    assert result["size"] == (height, 2 * width if depth_format == "side-by-side" else width)
    assert result["has_audio"] == expected["has_audio"]
    if expected["has_audio"]:
        assert result["audio_seconds"] == pytest.approx(expected["audio_seconds"], abs=0.05)
    assert [p.name for p in tmp_path.iterdir()] == [output.name], "no temporary files left behind"


def test_2997_rate_is_exact(clips):
    assert read_video(clips["odd_2997"])["rate"] == Fraction(30000, 1001)


def test_gray16_decodes_back_to_model_depth_with_two_model_actors(ray_cluster, clips, tmp_path, capsys):
    source, output = clips["audio"], tmp_path / "depth16.mkv"
    code, summary, err = run_cli(
        capsys, source, "-o", output, "--depth-format", "gray16", "--smoother", "none", "--model-actors", "2", *FAST
    )
    assert code == 0, err
    written = gray16_frames(output).astype(np.float64) / read_depth_scale(output)
    predictor = DepthPredictor(random_model("vits", seed=0), PredictorOptions(input_size=70))
    frames = np.stack([i420 for _, i420 in VideoDecoder(str(source)).frames()])
    expected = predictor(i420_to_rgb(torch.from_numpy(frames))).numpy()  # the model actor's conversion
    assert written.shape == expected.shape
    # Within half a quantisation step (plus float noise between batchings): also proves frame order
    assert np.abs(written - expected).max() <= 0.5 / summary["depth_scale"] + 1e-4 * expected.max()
    assert summary["saturated_pixels"] == 0


def test_truncated_input_gives_depth_for_every_decodable_frame(ray_cluster, clips, tmp_path, capsys):
    damaged = truncate(clips["long"], tmp_path / "cut.mkv", 0.6)
    output = tmp_path / "cut_depth.mp4"
    code, summary, err = run_cli(capsys, damaged, "-o", output, *FAST)
    assert code == 0, err
    assert 0 < summary["frames_in"] == summary["frames_out"] == read_video(output)["count"] < 40
    assert summary["unreadable_frames"] > 0
    assert "frames could not be read" in err and str(damaged) in err


def bad_input_cases(tmp_path, clips):
    text = tmp_path / "inputs" / "notes.mp4"
    text.parent.mkdir()
    text.write_text("not a video\n" * 50)
    bad_checkpoint = tmp_path / "inputs" / "weights.pth"
    bad_checkpoint.write_bytes(b"\x00garbage" * 100)
    good = str(clips["odd_2997"])
    return {
        "missing input": ([tmp_path / "nope.mp4", *FAST], "input file not found"),
        "not a video": ([text, *FAST], "not a readable video"),
        "missing output dir": ([good, "-o", tmp_path / "out" / "missing" / "x.mp4", *FAST], "does not exist"),
        "bad checkpoint": ([good, "--checkpoint", bad_checkpoint], "not a readable PyTorch checkpoint"),
        "missing checkpoint": ([good, "--checkpoint", tmp_path / "none.pth"], "checkpoint not found"),
        "default model, offline, not cached": ([good], "LiheYoung/depth-anything-small-hf: config.json is not in the "
                                                       "Hugging Face cache"),
        "gray16 in mp4": ([good, "--depth-format", "gray16", *FAST], "use a .mkv"),
        "unknown colormap": ([good, "--colormap", "rainbowz", *FAST], "--colormap must be one of gray, autumn"),
        "output is the input": ([good, "-o", good, *FAST], "would overwrite the input"),
    }


def test_bad_inputs_fail_cleanly(ray_cluster, clips, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for case, (argv, expected_message) in bad_input_cases(tmp_path, clips).items():
        if "-o" not in argv:
            argv = [*argv, "-o", out_dir / "result.mp4"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, case
        lines = err.strip().splitlines()
        assert lines[-1].startswith("error: ") and expected_message in lines[-1], (case, err)
        assert not any(line.startswith("Traceback") for line in lines), case
        assert list(out_dir.iterdir()) == [], f"{case}: left files behind"


def test_unreadable_checkpoint_fails_inside_the_model_actor(ray_cluster, clips, tmp_path, capsys):
    """A checkpoint that exists but is wrong is found by the model actor; its error still arrives as one line."""
    from safetensors.torch import save_file

    wrong = tmp_path / "other_model.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli(capsys, clips["odd_2997"], "-o", out_dir / "x.mp4", "--checkpoint", wrong)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {wrong}: not a Depth-Anything checkpoint")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("width, height", [(1, 48), (2, 2)])
def test_videos_a_few_pixels_in_size(ray_cluster, tmp_path, capsys, width, height):
    """The smoother's motion blur and the encoder's chroma layout must cope with frames of one or two pixels."""
    source = clip(tmp_path, f"tiny_{width}x{height}.mp4", width=width, height=height, frames=6)
    output = tmp_path / "tiny_depth.mp4"
    code, summary, err = run_cli(capsys, source, "-o", output, *FAST)
    assert code == 0, err
    assert summary["frames_out"] == 6 and read_video(output)["size"] == (height, width)


def test_stream_actors_are_kept_for_the_next_video_and_replaced_when_lost(ray_cluster, clips, tmp_path):
    """One decode / sink pair serves video after video (a new pair is a second or two of process start-up); a pair
    lost while idle (its node died between videos) costs a retry on a new pair, not a frame."""
    import ray

    from pipeline.cluster.graph import DepthGraph
    from pipeline.jobs.file import process_video
    from pipeline.settings import load_settings

    settings = load_settings(None, {"model.random_weights": "vits", "model.input_size": 70,
                                    "batching.batch_size": 3})
    graph = DepthGraph(settings)
    try:
        outputs = [tmp_path / f"depth{i}.mp4" for i in range(4)]
        for name, output in zip(("audio", "odd_2997", "audio"), outputs):
            summary = process_video(graph, str(clips[name]), str(output))
            assert summary["frames_out"] == read_video(clips[name])["count"] == read_video(output)["count"]
            assert summary["retried_streams"] == 0
        assert (graph.streams.started, graph.streams.idle) == (1, 1)
        [[(_, idle_sink)]] = graph.streams._idle.values()
        ray.kill(idle_sink)
        summary = process_video(graph, str(clips["long"]), str(outputs[3]))
        assert summary["retried_streams"] == 1 and summary["frames_out"] == read_video(outputs[3])["count"] == 40
        assert (graph.streams.started, graph.streams.idle) == (2, 1)
    finally:
        graph.shutdown()
    assert graph.streams.idle == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in outputs], "no temporary file left"
