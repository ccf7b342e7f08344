"""Ray Data's door (pipeline/cluster/ray_data.py, video_frames.py, examples/ray_data_depth.py): `map_batches` with
DepthEstimator gives the CLI's depth (`--smoother none --depth-format exr`) for the same pixels within 1e-4, images of
several sizes in one batch; the video-frames datasource gives every frame once with the source's exact timestamps,
split at keyframes; the example writes every depth map; bad input is one line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import run_pipeline
from pipeline.errors import PipelineError
from pipeline.stages.sinks.image_sequence_writer import read_exr
from tests.clips import clip, read_video

ROOT = Path(__file__).resolve().parents[1]
SIZE = ["--input-size", "70"]
TOLERANCE = 1e-4


def write_images(folder: Path, count: int, size_hw: tuple[int, int], seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img{index}.png"
        # (smooth shapes rather than noise: the depth has structure to disagree about)
        base = cv2.resize(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), size_hw[::-1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(path), base)
        paths.append(path)
    return paths


def cli_depth(source: Path, output: Path, checkpoint: Path) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """The CLI's float32 depth for every frame of `source` (EXR frames, no smoothing), and (frame, pts) of each."""
    code = run_pipeline.main([str(source), "-o", str(output), "--depth-format", "exr", "--smoother", "none",
                              "--checkpoint", str(checkpoint), *SIZE])
    assert code == 0
    with open(output / "frames.csv") as table:
        rows = [(int(row["frame"]), int(row["pts"])) for row in csv.DictReader(table)]
    return [read_exr(output / f"{frame:06d}.exr") for frame, _ in rows], rows


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, vits_checkpoint, ray_cluster):
    """Two image folders of different sizes (one odd), a variable-rate video with keyframes every 4 frames, and the
    CLI's depth for each."""
    folder = tmp_path_factory.mktemp("ray_data")
    wide = write_images(folder / "wide", 3, (60, 80), seed=1)
    odd = write_images(folder / "odd", 2, (45, 101), seed=2)
    video = clip(folder, "vfr.mkv", width=160, height=96, frames=13, variable_rate=True, keyframe_interval=4)
    checkpoint = vits_checkpoint.official_path
    expected = {}
    for images in (wide, odd):
        depth, _ = cli_depth(images[0].parent, folder / f"{images[0].parent.name}_depth", checkpoint)
        expected.update({str(path): plane for path, plane in zip(images, depth)})
    video_depth, video_rows = cli_depth(video, folder / "vfr_depth", checkpoint)
    return {"folder": folder, "images": wide + odd, "video": video, "checkpoint": checkpoint, "expected": expected,
            "video_depth": video_depth, "video_rows": video_rows}


def test_map_batches_gives_the_clis_depth_for_images_of_two_sizes_in_one_batch(inputs):
    import ray

    from pipeline.cluster.ray_data import DepthEstimator

    folders = sorted({str(path.parent) for path in inputs["images"]})
    # One block, one batch of 5: the two sizes go through the model in one call
    dataset = ray.data.read_images(folders, include_paths=True, override_num_blocks=1)
    rows = dataset.map_batches(DepthEstimator, fn_constructor_kwargs={"checkpoint": str(inputs["checkpoint"]),
                                                                       "input_size": 70},
                               batch_size=5, concurrency=1).take_all()
    # (Ray Data gives a local file's path without its leading slash)
    assert sorted("/" + row["path"].lstrip("/") for row in rows) == sorted(map(str, inputs["images"]))
    for row in rows:
        expected = inputs["expected"]["/" + row["path"].lstrip("/")]
        assert row["depth"].dtype == np.float32 and row["depth"].shape == row["image"].shape[:2] == expected.shape
        assert np.abs(row["depth"] - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def test_video_frames_come_once_each_with_exact_timestamps_and_the_clis_depth(inputs):
    from pipeline.cluster.ray_data import DepthEstimator
    from pipeline.jobs.video_frames import frame_ranges, read_video_frames

    source = inputs["video"]
    parts = frame_ranges(str(source), parts_per_video=3)
    assert len(parts) == 3, "split at keyframes into three read tasks"
    assert [part.first_index for part in parts] == [0, parts[0].frames, parts[0].frames + parts[1].frames]
    dataset = read_video_frames(str(source), parts_per_video=3)
    rows = dataset.map_batches(DepthEstimator, fn_constructor_kwargs={"checkpoint": str(inputs["checkpoint"]),
                                                                       "input_size": 70, "column": "frame"},
                               batch_size=4, concurrency=1).take_all()
    rows.sort(key=lambda row: row["frame_index"])
    truth = read_video(source)
    assert [row["frame_index"] for row in rows] == list(range(truth["count"])), "every frame once, none lost"
    assert [row["pts"] for row in rows] == truth["pts"] == [pts for _, pts in inputs["video_rows"]]
    time_base = Fraction(rows[0]["time_base"])
    assert [row["time_s"] for row in rows] == [float(pts * time_base) for pts in truth["pts"]]
    assert len({round(b - a, 6) for a, b in zip(truth["seconds"], truth["seconds"][1:])}) > 1, "a variable rate"
    for row, expected in zip(rows, inputs["video_depth"]):
        assert row["frame"].shape == (96, 160, 3) and row["depth"].shape == (96, 160)
        assert np.abs(row["depth"] - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def test_the_example_writes_every_depth_map_for_images_and_videos(inputs, tmp_path):
    import ray

    environment = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    common = [sys.executable, str(ROOT / "examples" / "ray_data_depth.py"), "--checkpoint", str(inputs["checkpoint"]),
              *SIZE, "--batch-size", "2"]
    images = tmp_path / "images_depth"
    result = subprocess.run([*common, str(inputs["folder"] / "wide"), "-o", str(images)], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 depth maps written" in result.stdout
    for path in inputs["images"][:3]:
        written = np.load(images / f"{path.stem}.npy")
        assert np.abs(written - inputs["expected"][str(path)]).max() <= TOLERANCE
    videos = tmp_path / "video_depth"
    result = subprocess.run([*common, str(inputs["video"]), "--videos", "--parts-per-video", "2", "-o", str(videos)],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(videos / "vfr" / "frames.csv") as table:
        rows = [(int(row["frame"]), int(row["pts"])) for row in csv.DictReader(table)]
    assert rows == inputs["video_rows"]
    for (frame, _), expected in zip(rows, inputs["video_depth"]):
        assert np.abs(np.load(videos / "vfr" / f"{frame:06d}.npy") - expected).max() <= TOLERANCE
    assert sorted(p.name for p in (videos / "vfr").iterdir()) == sorted(
        [f"{frame:06d}.npy" for frame, _ in rows] + ["frames.csv"]), "nothing half-written left"


def test_the_example_refuses_inputs_it_would_write_to_one_place_and_missing_ones_in_one_line(tmp_path):
    for folder in ("a", "b"):
        clip(tmp_path / folder, "take.mp4", width=64, height=48, frames=2)
    example = [sys.executable, str(ROOT / "examples" / "ray_data_depth.py"), "--random-weights", "vits", "--videos"]
    clash = subprocess.run([*example, str(tmp_path), "-o", str(tmp_path / "out")],  # (a/take.mp4 and b/take.mp4)
                           capture_output=True, text=True, timeout=120)
    assert clash.returncode == 1 and clash.stderr.strip().endswith("would both be written to take/ in " +
                                                                   str(tmp_path / "out"))
    missing = subprocess.run([*example, str(tmp_path / "nowhere.mp4"), "-o", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "nowhere.mp4" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# Without Ray: the class itself, as a Ray Data actor holds it ......................................................

@pytest.fixture(scope="module")
def estimator(vits_checkpoint):
    from pipeline.cluster.ray_data import DepthEstimator

    return DepthEstimator(checkpoint=str(vits_checkpoint.official_path), input_size=70)


def test_pandas_batches_grey_and_rgba_images_and_other_columns_kept(estimator):
    import pandas as pd

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    as_numpy = estimator({"image": rgb, "id": np.array([7, 8])})
    assert as_numpy["depth"].shape == (2, 40, 56) and as_numpy["depth"].dtype == np.float32
    assert list(as_numpy["id"]) == [7, 8] and as_numpy["image"] is rgb
    grey = rgb[0].mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([rgb[1], np.full((40, 56, 1), 255, np.uint8)], axis=2)
    frame = pd.DataFrame({"image": [grey, rgba, rgb[1][:33]], "name": ["grey", "rgba", "cropped"]})
    result = estimator(frame)
    assert list(result["name"]) == ["grey", "rgba", "cropped"]
    assert [plane.shape for plane in result["depth"]] == [(40, 56), (40, 56), (33, 56)]
    assert np.array_equal(result["depth"][1], as_numpy["depth"][1]), "RGBA: its alpha left out"
    alone = estimator.depth_of([np.repeat(grey[..., None], 3, axis=2)])[0]
    assert np.array_equal(result["depth"][0], alone), "a batch of several sizes: each as if alone"


def test_bad_batches_and_a_video_model_are_one_line(estimator, tmp_path):
    from model.random_weights import random_video_model
    from pipeline.cluster.ray_data import DepthEstimator
    from tests.test_video_depth_anything import official_layout

    with pytest.raises(PipelineError, match=r"no column 'image' \(it has frame, path\); pass column="):
        estimator({"frame": np.zeros((1, 8, 8, 3), np.uint8), "path": np.array(["a"])})
    with pytest.raises(PipelineError, match="holds uint16 images; it takes uint8 RGB"):
        estimator({"image": np.zeros((1, 8, 8, 3), np.uint16)})
    with pytest.raises(PipelineError, match=r"an image of shape \(8, 8, 2\)"):
        estimator({"image": np.zeros((1, 8, 8, 2), np.uint8)})
    import torch

    video_checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save(official_layout(random_video_model("vits")), video_checkpoint)
    with pytest.raises(PipelineError, match="video model .* needs a video's frames in order"):
        DepthEstimator(checkpoint=str(video_checkpoint))
    with pytest.raises(Exception, match="checkpoint not found"):
        DepthEstimator(checkpoint=str(tmp_path / "missing.pth"))


def test_the_datasource_refuses_what_it_cannot_read_in_one_line(tmp_path):
    from pipeline.jobs.video_frames import frame_ranges

    with pytest.raises(PipelineError, match="missing.mp4"):
        frame_ranges(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="empty: no video files found there"):
        frame_ranges(str(tmp_path / "empty"))
    with pytest.raises(PipelineError, match="parts_per_video must be 1 or more"):
        frame_ranges(str(tmp_path), parts_per_video=0)
