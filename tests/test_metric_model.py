"""Depth Anything V2's metric models: the network against transformers' metric model (random weights, float64
reference, the original position rule), both checkpoint layouts, the range, and checkpoints refused rather than run
with the wrong head."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model import CheckpointError, check_checkpoint, load_model
from model.hub import MODEL_NAMES, NON_COMMERCIAL
from tests.test_model_reference import random_images, relative_error

# Odd and even grids, landscape and portrait (19x27, 18x26, 27x19): the head is what differs from the relative model,
# whose tests run the position table at every size (float64 reference at full size would add a minute to the suite)
SIZES = [(266, 378), (252, 364), (378, 266)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_metric_network_matches_transformers_metric_model(metric_checkpoint, size):
    net = load_model(metric_checkpoint.hf_folder)
    assert net.config.max_depth == 20 and net.config.version == "v2"
    images = random_images(2, size, seed=5)
    with torch.inference_mode():
        ours = net(images)
        reference = metric_checkpoint.reference.double()(pixel_values=images.double()).predicted_depth
    metric_checkpoint.reference.float()
    assert ours.shape == (2, *size)
    assert relative_error(ours, reference) < 3e-5
    # Metres within the model's range: (0, max_depth]
    assert ours.min() > 0 and ours.max() <= 20


def test_official_metric_file_is_read_as_metric_by_its_name(metric_checkpoint, tmp_path):
    from_folder = load_model(metric_checkpoint.hf_folder)
    from_official = load_model(metric_checkpoint.official_path)  # depth_anything_v2_metric_hypersim_vits.pth
    assert from_official.config == from_folder.config
    images = random_images(1, (266, 266), seed=6)
    with torch.inference_mode():
        assert torch.equal(from_official(images), from_folder(images))
    # The same weights named as an outdoor (Virtual KITTI) file: 80 m; and a lone .safetensors in transformers'
    # in-memory names (no config beside it), read by its name the same way
    outdoor = tmp_path / "depth_anything_v2_metric_vkitti_vits.pth"
    shutil.copy(metric_checkpoint.official_path, outdoor)
    assert load_model(outdoor).config.max_depth == 80
    from safetensors.torch import save_file

    lone = tmp_path / "depth_anything_v2_metric_hypersim_vits.safetensors"
    save_file({k: v.contiguous() for k, v in metric_checkpoint.reference.state_dict().items()}, str(lone))
    assert load_model(lone).config == from_folder.config
    # A metric file whose name does not give its range: refused until --max-depth says it
    unnamed = tmp_path / "depth_anything_v2_metric_mine_vits.pth"
    shutil.copy(metric_checkpoint.official_path, unnamed)
    with pytest.raises(CheckpointError, match="metric checkpoint .* of unknown range: give --max-depth"):
        load_model(unnamed)
    assert load_model(unnamed, max_depth=10).config.max_depth == 10


def rewritten_config(source, folder, **changes):
    """A copy of an HF checkpoint folder with its config.json changed."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("backbone_config."):
            config["backbone_config"][key.partition(".")[2]] = value
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"depth_estimation_type": "disparity"}, "depth_estimation_type 'disparity' is not a head this project runs"),
    ({"head_in_index": 0}, "config.json sets head_in_index = 0; this project runs only -1"),
    ({"reassemble_factors": [4, 2, 1, 1]}, "config.json sets reassemble_factors"),
    ({"backbone_config.use_swiglu_ffn": True}, "config.json sets use_swiglu_ffn = True"),
    ({"max_depth": -5}, "max_depth -5 in config.json is not a number of metres from 0.1 to 1000"),
    ({"max_depth": 1e308}, "max_depth 1e.308 in config.json is not a number of metres from 0.1 to 1000"),
])
def test_checkpoints_that_cannot_run_faithfully_are_refused(metric_checkpoint, tmp_path, changes, message):
    folder = rewritten_config(metric_checkpoint.hf_folder, tmp_path / "changed", **changes)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[")) as error:
        load_model(folder)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_max_depth_that_contradicts_the_checkpoint_is_refused(metric_checkpoint, vits_checkpoint):
    with pytest.raises(CheckpointError, match="config gives max_depth 20 m; --max-depth 80 contradicts it"):
        load_model(metric_checkpoint.hf_folder, max_depth=80)
    assert load_model(metric_checkpoint.hf_folder, max_depth=20).config.max_depth == 20
    # 20 m given with too many digits is still 20 m (it was refused as "20 contradicts 20")
    assert load_model(metric_checkpoint.hf_folder, max_depth=20.000001).config.max_depth == 20
    with pytest.raises(CheckpointError, match="head is relative: --max-depth is for metric"):
        load_model(vits_checkpoint.hf_folder, max_depth=20)


def test_max_depth_against_an_official_files_name_and_head(metric_checkpoint, vits_checkpoint, tmp_path):
    """An indoor (Hypersim, 20 m) file run at --max-depth 80 gave 4x the metres; a v1 or a released relative v2 file
    ran a metric head when --max-depth was given."""
    with pytest.raises(CheckpointError, match="its name says a hypersim model, 20 m; --max-depth 80 contradicts it"):
        load_model(metric_checkpoint.official_path, max_depth=80)
    assert load_model(metric_checkpoint.official_path, max_depth=20.0).config.max_depth == 20
    with pytest.raises(CheckpointError, match="Depth Anything v1 checkpoint, whose head is relative"):
        check_checkpoint(vits_checkpoint.official_path, max_depth=20)  # depth_anything_vits14.pth
    relative_v2 = tmp_path / "depth_anything_v2_vits.pth"
    shutil.copy(metric_checkpoint.official_path, relative_v2)  # (the same tensors: the name is what says relative)
    with pytest.raises(CheckpointError, match="a released relative-depth checkpoint \\(by its name\\)"):
        check_checkpoint(relative_v2, max_depth=20)
    for bad in (1e-300, 1e308, 0.0):
        with pytest.raises(CheckpointError, match="max depth must be from 0.1 to 1000 metres"):
            check_checkpoint(metric_checkpoint.official_path, max_depth=bad)


def test_metric_model_names():
    assert MODEL_NAMES["v2-metric-indoor-small"] == "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf"
    assert MODEL_NAMES["v2-metric-outdoor-large"] == "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf"
    assert len([name for name in MODEL_NAMES if name.startswith("v2-metric-")]) == 6
    assert "v2-metric-indoor-base" in NON_COMMERCIAL and "v2-metric-indoor-small" not in NON_COMMERCIAL
