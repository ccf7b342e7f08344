"""Depth for downstream tools, end to end on the shared Ray instance: EXR and 16-bit PNG frame folders (values, count,
frame table against the source's own timestamps, CFR and VFR), image folders in (the same depth as the video they
came from), segments and --resume into frame folders, a batch job writing them, metric depth in metres, and bad
sequences refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import run_pipeline
from pipeline.cluster.graph import DepthGraph
from pipeline.jobs.file import process_video
from pipeline.jobs.segments import work_folders
from pipeline.settings import load_settings
from pipeline.stages.sinks.image_sequence_writer import read_exr
from tests.clips import clip, read_video
from tests.test_cli_faults import assert_one_line_error
from tests.test_cli_faults import run_cli as run_failing_cli
from tests.test_pipeline_e2e import FAST


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("output_clips")
    return {
        "cfr": clip(folder, "cfr.mp4", width=96, height=64, frames=12),
        "vfr": clip(folder, "vfr.mkv", width=96, height=64, frames=10, variable_rate=True),
        "long": clip(folder, "long.mp4", width=96, height=64, frames=45, keyframe_interval=15),
    }


def cli(capsys, *argv) -> dict:
    code = run_pipeline.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def frame_table(folder: Path) -> list[tuple[int, int, float]]:
    lines = (folder / "frames.csv").read_text().splitlines()
    assert lines[0] == "frame,pts,time_s"
    return [(int(a), int(b), float(c)) for a, b, c in (line.split(",") for line in lines[1:])]


def exr_frames(folder: Path) -> np.ndarray:
    return np.stack([read_exr(path) for path in sorted(folder.glob("*.exr"))])


def png_frames(folder: Path) -> np.ndarray:
    return np.stack([cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(folder.glob("*.png"))])


def assert_table_matches_source(folder: Path, source: Path) -> None:
    """One row per source frame, in order, at the source's own pts and seconds."""
    wanted = read_video(source)
    table = frame_table(folder)
    assert [row[0] for row in table] == list(range(wanted["count"]))
    assert [row[1] for row in table] == wanted["pts"]
    assert [row[2] for row in table] == pytest.approx(wanted["seconds"], abs=1e-9)


def test_exr_and_png16_folders_hold_the_depth_at_the_source_times(ray_cluster, clips, tmp_path, capsys):
    source = clips["cfr"]
    # (without smoothing: two runs then agree bit for bit; the default smoother's output can differ by a rounding
    # between runs, and the comparison below is of the two formats)
    exr = cli(capsys, source, "-o", tmp_path / "exr_depth/", "--depth-format", "exr", "--smoother", "none", *FAST)
    png = cli(capsys, source, "-o", tmp_path / "png_depth", "--depth-format", "png16", "--smoother", "none", *FAST)
    assert exr["output"] == str(tmp_path / "exr_depth") and exr["frames_out"] == png["frames_out"] == 12
    depth, levels = exr_frames(tmp_path / "exr_depth"), png_frames(tmp_path / "png_depth")
    assert depth.shape == levels.shape == (12, 64, 96) and depth.dtype == np.float32 and levels.dtype == np.uint16
    description = json.loads((tmp_path / "png_depth" / "depth.json").read_text())
    assert description["scale"] == png["depth_scale"] and "relative inverse depth" in description["values"]
    assert description["model"]["variant"] == "vits" and description["source"] == str(source)
    # The same depth: the PNG holds round(depth * scale) of the EXR's float32 values
    assert np.array_equal(levels, np.rint(depth * description["scale"]).astype(np.uint16))
    assert depth.min() >= 0 and levels.max() < 65535 and len(np.unique(levels)) > 100
    for folder in ("exr_depth", "png_depth"):
        assert_table_matches_source(tmp_path / folder, source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exr_depth", "png_depth"], "no temporary left"


def test_variable_rate_and_metric_depth_in_millimetres(ray_cluster, clips, tmp_path, capsys):
    source = clips["vfr"]
    summary = cli(capsys, source, "-o", tmp_path / "metric", "--depth-format", "png16", "--max-depth", "20", *FAST)
    assert summary["model"]["depth"] == "metric" and summary["depth_scale"] == 1000.0
    assert summary["saturated_pixels"] == 0
    assert_table_matches_source(tmp_path / "metric", source)
    millimetres = png_frames(tmp_path / "metric")
    assert len(millimetres) == 10 and millimetres.min() > 0 and millimetres.max() <= 20_000
    description = json.loads((tmp_path / "metric" / "depth.json").read_text())
    assert description["unit"] == "metre" and description["max_depth"] == 20 and description["scale"] == 1000


def test_an_image_folder_gives_the_video_s_depth(ray_cluster, clips, tmp_path, capsys):
    """The video's frames as PNGs (decoded to RGB as the pipeline decodes them with frame_layout rgb24): the same
    depth, bit for bit, and the same times when --fps is the video's rate."""
    source, frames = clips["cfr"], tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(read_video(source)["frames"]):
        cv2.imwrite(str(frames / f"{index:04d}.png"), cv2.cvtColor(frame.to_ndarray(format="rgb24"),
                                                                    cv2.COLOR_RGB2BGR))
    preset = tmp_path / "rgb.yaml"
    preset.write_text("batching: {frame_layout: rgb24}\n")
    common = ["--depth-format", "exr", "--smoother", "none", "--config", preset, *FAST]
    cli(capsys, source, "-o", tmp_path / "from_video", *common)
    # Named by a printf pattern, split into segments (every image is a keyframe); default output: frames_depth/
    summary = cli(capsys, f"{frames}/%04d.png", *common, "--fps", "30000/1001", "--segments", "2")
    assert summary["output"] == str(tmp_path / "frames_depth") and summary["frames_out"] == 12
    assert len(summary["segments"]) == 2
    assert np.array_equal(exr_frames(tmp_path / "frames_depth"), exr_frames(tmp_path / "from_video"))
    video_times = [row[2] for row in frame_table(tmp_path / "from_video")]
    assert [row[2] for row in frame_table(tmp_path / "frames_depth")] == pytest.approx(video_times, abs=1e-9)
    assert json.loads((tmp_path / "frames_depth" / "depth.json").read_text())["frame_rate"] == "30000/1001"


def test_segments_and_resume_write_the_whole_run_s_frames(ray_cluster, clips, tmp_path, monkeypatch):
    import pipeline.cluster.graph

    settings = load_settings(None, {"model.random_weights": "vits", "model.input_size": 70, "smoothing.name": "none",
                                    "batching.batch_size": 3, "output.depth_format": "exr"})
    source = str(clips["long"])
    graph = DepthGraph(settings)
    try:
        process_video(graph, source, str(tmp_path / "whole"))
        # A segmented run stopped (Ctrl-C) while its third segment runs: the finished ones stay for --resume
        original = pipeline.cluster.graph.DepthGraph.run_stream

        def stopped(self, source, output, info, render, **stream):
            if output.endswith("segment_00002"):
                raise KeyboardInterrupt
            return original(self, source, output, info, render, **stream)

        monkeypatch.setattr(pipeline.cluster.graph.DepthGraph, "run_stream", stopped)
        with pytest.raises(KeyboardInterrupt):
            process_video(graph, source, str(tmp_path / "resumed"), segments=3)
        assert not (tmp_path / "resumed").exists() and len(work_folders(tmp_path / "resumed")) == 1
        monkeypatch.setattr(pipeline.cluster.graph.DepthGraph, "run_stream", original)
        resumed = process_video(graph, source, str(tmp_path / "resumed"), segments=3, resume=True)
    finally:
        graph.shutdown()
    assert len(resumed["segments"]) == 3 and resumed["frames_out"] == 45
    assert 1 <= sum(s["reused"] for s in resumed["segments"]) <= 2, "finished segments reused, the rest run"
    # Joined (each segment's frames renamed into the output's numbering): the whole run's frames and table
    assert np.array_equal(exr_frames(tmp_path / "resumed"), exr_frames(tmp_path / "whole"))
    assert frame_table(tmp_path / "resumed") == frame_table(tmp_path / "whole")
    assert json.loads((tmp_path / "resumed" / "depth.json").read_text())["frames"] == 45
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed", "whole"], "segment folders removed"


def test_a_batch_job_writes_a_frame_folder_per_input(ray_cluster, clips, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "shots" / "take1").mkdir(parents=True)
    (inputs / "cfr.mp4").write_bytes(clips["cfr"].read_bytes())
    for index, frame in enumerate(read_video(clips["vfr"])["frames"][:5]):
        cv2.imwrite(str(inputs / "shots" / "take1" / f"{index}.jpg"), frame.to_ndarray(format="bgr24"))
    out = tmp_path / "out"
    command = ["batch", inputs, "--output-dir", out, "--depth-format", "exr", *FAST]
    report = cli(capsys, *command)
    assert report["totals"]["done"] == 2 and report["totals"]["frames"] == 17
    assert len(list((out / "cfr_depth").glob("*.exr"))) == 12
    assert len(list((out / "shots" / "take1_depth").glob("*.exr"))) == 5
    assert [row[1] for row in frame_table(out / "shots" / "take1_depth")] == [0, 1, 2, 3, 4]
    again = cli(capsys, *command)
    assert again["totals"]["skipped"] == 2, "a rerun finds the folders done (not the outputs as new inputs)"


def test_bad_sequences_are_refused_with_one_line_and_nothing_written(ray_cluster, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in (0, 1, 2, 4):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((32, 48, 3), 40 * index, np.uint8))
    code, err = run_failing_cli(capsys, frames, "-o", tmp_path / "out", "--depth-format", "exr", *FAST)
    assert_one_line_error(code, err, f"{frames / '003.png'}: missing from the image sequence")
    cv2.imwrite(str(frames / "003.png"), np.zeros((30, 48, 3), np.uint8))  # the gap filled with a smaller image
    code, err = run_failing_cli(capsys, frames, "-o", tmp_path / "out", "--depth-format", "exr", *FAST)
    assert_one_line_error(code, err, f"{frames / '003.png'}: 48x30, but the sequence is 48x32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"], "no output, no temporary folder"
    code, err = run_failing_cli(capsys, frames, "-o", frames, "--depth-format", "exr", *FAST)
    assert_one_line_error(code, err, "the output would overwrite the input")
