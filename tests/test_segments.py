"""Long videos in segments: the plan, seams (bit-identical without smoothing, within a tolerance with it), exact
timestamps and audio across joins, B-frames and open GOPs, resume after a killed run, retries, clean-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import run_pipeline
from benchmarks.pipeline_ceiling import build_instant_depth
from pipeline.cluster.graph import DepthGraph
from pipeline.jobs.file import process_video
from pipeline.jobs.segments import auto_segment_count, packet_index, plan_segments, work_folders
from pipeline.settings import load_settings
from pipeline.stages.sinks.video_writer import read_depth_scale
from tests.clips import assert_same_timing, clip, gray16_frames, read_video
from tests.test_cli_faults import end_agents, ray_agents, wait_for

PROJECT = Path(__file__).resolve().parents[1]
EXACT = ["--random-weights", "vits", "--input-size", "70", "--batch-size", "1", "--smoother", "none",
         "--depth-format", "gray16"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segment_clips")
    return {
        # B-frames with open GOPs (leading B-frames refer across keyframes), audio, a keyframe every 15 frames
        "open_gop": clip(folder, "open_gop.mp4", width=128, height=72, frames=90, audio=True, keyframe_interval=15,
                         b_frames=True, open_gop=True),
        "vfr": clip(folder, "vfr.mkv", width=96, height=64, frames=60, variable_rate=True, keyframe_interval=12),
        "smooth": clip(folder, "smooth.mp4", width=128, height=72, frames=300, keyframe_interval=30),
    }


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = run_pipeline.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_plan_covers_every_frame_once_from_keyframes(clips):
    index = packet_index(str(clips["open_gop"]))
    keyframes = {pts for pts, key in index if key}
    segments = plan_segments(index, 4, warmup_frames=20)
    assert len(segments) == 4
    assert segments[0].start == index[0][0] and segments[-1].end is None
    assert all(a.end == b.start for a, b in zip(segments, segments[1:])), "contiguous"
    assert sum(s.frames for s in segments) == len(index) == 90
    assert all(s.start in keyframes and s.warmup_from in keyframes for s in segments)
    positions = [p for p, _ in index]
    for segment in segments[1:]:  # 20 frames of warm-up, or all there are before the start
        start = positions.index(segment.start)
        assert start - positions.index(segment.warmup_from) >= min(20, start)
    assert len(plan_segments(index, 50)) == 6, "no more segments than keyframes"


# EXACT's settings, for runs made through the graph rather than the command line
EXACT_SETTINGS = {"model.random_weights": "vits", "model.input_size": 70, "batching.batch_size": 1,
                  "smoothing.name": "none", "output.depth_format": "gray16"}


@pytest.fixture(scope="module")
def whole_run(ray_cluster, clips, tmp_path_factory) -> Path:
    """The open-GOP clip in one piece with EXACT's settings: what every segmented, resumed or disturbed run of it must
    write, bit for bit (made once for the module)."""
    output = tmp_path_factory.mktemp("whole") / "whole.mkv"
    graph = DepthGraph(load_settings(None, EXACT_SETTINGS))
    try:
        process_video(graph, str(clips["open_gop"]), str(output), segments=1)
    finally:
        graph.shutdown()
    return output


def test_no_smoothing_four_segments_equal_one_bit_for_bit(ray_cluster, clips, tmp_path, capsys, whole_run):
    """Open GOPs, B-frames, audio: 4 segments give the 16-bit output of 1, with every timestamp and the audio."""
    source = clips["open_gop"]
    output = tmp_path / "depth_4.mkv"
    code, summary, err = cli(capsys, source, "-o", output, *EXACT, "--segments", 4)
    assert code == 0, err
    assert summary["frames_in"] == summary["frames_out"] == 90
    assert len(summary["segments"]) == 4 and [s["frames"] for s in summary["segments"]] == [15, 30, 30, 15]
    assert np.array_equal(gray16_frames(whole_run), gray16_frames(output))
    assert read_depth_scale(whole_run) == read_depth_scale(output)
    assert_same_timing(source, output)
    result = read_video(output)
    assert result["has_audio"] and result["audio_seconds"] == pytest.approx(read_video(source)["audio_seconds"],
                                                                           abs=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth_4.mkv"], "no segment files left"


@pytest.mark.parametrize("name, suffix", [("open_gop", ".mp4"), ("vfr", ".mov")])
def test_h264_segments_join_with_exact_timestamps(ray_cluster, clips, tmp_path, capsys, name, suffix):
    output = tmp_path / f"depth{suffix}"
    code, summary, err = cli(capsys, clips[name], "-o", output, "--random-weights", "vits", "--input-size", "70",
                             "--segments", 3)
    assert code == 0, err
    assert len(summary["segments"]) == 3
    assert_same_timing(clips[name], output, variable_rate=name == "vfr")


def test_default_smoother_seams_within_tolerance(ray_cluster, clips, tmp_path):
    """With a depth-like stand-in model (a blurred luminance), 4 segments against 1, default 5 s warm-up: every
    frame within 1.5% of the depth range (mean absolute difference; measured 0.5-1%: see the README)."""
    settings = load_settings(None, {"model.input_size": 70, "output.depth_format": "gray16", "model.device": "cpu"})
    graph = DepthGraph(settings, builder=build_instant_depth)
    try:
        outputs = {n: tmp_path / f"smooth_{n}.mkv" for n in (1, 4)}
        for count, output in outputs.items():
            process_video(graph, str(clips["smooth"]), str(output), segments=count)
    finally:
        graph.shutdown()
    whole, split = (gray16_frames(outputs[n]) / read_depth_scale(outputs[n]) for n in (1, 4))
    depth_range = np.percentile(whole, 99) - np.percentile(whole, 1)
    per_frame = np.abs(whole - split).reshape(len(whole), -1).mean(axis=1) / depth_range
    assert per_frame.max() < 0.015
    assert per_frame[:75].max() == 0, "the first segment has no warm-up to differ by"


def start_cli(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)


def finished_segments(output: Path) -> int:
    """Segments finished by the runs on `output` (each run works in a folder of its own)."""
    count = 0
    for folder in work_folders(output):
        try:
            count += len(json.loads((folder / "manifest.json").read_text())["segments"])
        except (OSError, ValueError, KeyError):
            pass
    return count


def test_killed_run_resumes_without_redoing_finished_segments(ray_cluster, clips, tmp_path, capsys, whole_run):
    source, output = clips["open_gop"], tmp_path / "depth.mkv"
    first = start_cli(source, "-o", output, *EXACT, "--segments", 4)
    wait_for(lambda: finished_segments(output) >= 1 or first.poll() is not None, timeout_s=120)
    own_agents = ray_agents(of=first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not output.exists(), "a killed run leaves nothing under the output's name"
    kept = finished_segments(output)
    assert kept >= 1

    # The second run in this process, on the session's Ray (the first was a process of its own, killed)
    code, summary, err = cli(capsys, source, "-o", output, *EXACT, "--segments", 4, "--resume")
    assert code == 0, err
    assert sum(s["reused"] for s in summary["segments"]) >= kept
    assert summary["frames_out"] == 90
    assert np.array_equal(gray16_frames(output), gray16_frames(whole_run))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.mkv"]
    end_agents(own_agents)


def test_a_damaged_stretch_in_the_middle_is_reported_with_its_segment(ray_cluster, tmp_path, capsys):
    source = clip(tmp_path, "whole.mp4", width=128, height=72, frames=90, keyframe_interval=15, fast_start=True)
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    code, summary, err = cli(capsys, damaged, "-o", tmp_path / "depth.mp4", "--random-weights", "vits",
                             "--input-size", "70", "--segments", 3)
    assert code == 0, err
    assert summary["unreadable_frames"] > 0
    assert summary["frames_out"] + summary["unreadable_frames"] == 90
    hit = [s for s in summary["segments"] if s["unreadable_frames"]]
    assert hit and all(s["index"] > 0 for s in hit), "the damage is in the middle, not the first segment"
    assert f"frames could not be read (damaged or truncated file; segment {hit[0]['index']} (" in err
    assert read_video(tmp_path / "depth.mp4")["count"] == summary["frames_out"]


def test_a_segment_that_keeps_failing_is_named_and_nothing_is_left(ray_cluster, clips, tmp_path, capsys,
                                                                    monkeypatch):
    """Errors that are not a lost worker are not retried; the message names the segment and its time range."""
    import pipeline.cluster.graph

    original = pipeline.cluster.graph.DepthGraph.run_stream

    def failing(self, source, output, info, render, **stream):
        if output.endswith("segment_00002.nut"):
            raise pipeline.cluster.graph.PipelineError(f"{output}: cannot write the output (No space left on device)")
        return original(self, source, output, info, render, **stream)

    monkeypatch.setattr(pipeline.cluster.graph.DepthGraph, "run_stream", failing)
    output = tmp_path / "depth.mkv"
    code, _, err = cli(capsys, clips["open_gop"], "-o", output, *EXACT, "--segments", 4)
    assert code == 2
    assert "error: segment 2 (1.502-2.502 s): " in err and "No space left on device" in err
    assert list(tmp_path.iterdir()) == [], "segment files and manifest removed on a clean error"


@pytest.mark.parametrize("victim", ["model", "sink"])
def test_a_worker_killed_mid_run_costs_only_its_work(ray_cluster, clips, tmp_path, victim, whole_run):
    """A model actor's process killed mid-run is restarted by Ray and its calls sent again; a segment whose sink
    dies is run again. Either way every frame is written once, as an undisturbed run writes it."""
    import ray

    from pipeline.cluster import graph as graph_module

    graph = DepthGraph(load_settings(None, EXACT_SETTINGS))
    sinks = []
    original_sink = graph_module.SinkActor

    class RecordingSink:  # the sinks the graph makes, so that the test can kill one
        @staticmethod
        def options(**kwargs):
            maker = original_sink.options(**kwargs)

            class Make:
                @staticmethod
                def remote(*args):
                    sinks.append(maker.remote(*args))
                    return sinks[-1]
            return Make

    written = []

    def kill_once(count: int) -> None:
        written.append(count)
        if len(written) == 5:
            target = graph.model_actors[0] if victim == "model" else sinks[-1]
            ray.kill(target, no_restart=False)

    try:
        graph_module.SinkActor = RecordingSink
        output = tmp_path / "depth.mkv"
        summary = process_video(graph, str(clips["open_gop"]), str(output), on_progress=kill_once, segments=3)
    finally:
        graph_module.SinkActor = original_sink
        graph.shutdown()
    assert summary["frames_out"] == 90 and len(written) >= 5
    assert np.array_equal(gray16_frames(output), gray16_frames(whole_run)), "as an undisturbed run writes it"


@pytest.mark.parametrize("spare_cpus, seconds, expected", [(1, 600, 1), (15, 600, 10), (15, 100, 1), (0, 600, 1),
                                                           (4, None, 1), (4, 7200, 4)])
def test_auto_splits_long_videos_on_machines_with_cores_to_spare(spare_cpus, seconds, expected):
    assert auto_segment_count(spare_cpus, seconds, min_seconds=60) == expected
