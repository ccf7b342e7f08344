"""The model against the reference (transformers with the original position rule), both checkpoint layouts."""

from __future__ import annotations

import pytest
import torch

from model import load_model
from tests.reference import random_reference, reference_depth

# (H, W): odd 37x37 grid (table used as stored), 16:9 video (37x66), portrait (66x37), even 36x36, small odd 19x27
SIZES = [(518, 518), (518, 924), (924, 518), (504, 504), (266, 378)]


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.double() - reference.double()).norm() / reference.double().norm()).item()


def random_images(batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_vits_matches_reference(vits_checkpoint, size):
    net = load_model(vits_checkpoint.official_path)
    images = random_images(2, size)
    with torch.inference_mode():
        ours = net(images)
    expected = reference_depth(vits_checkpoint.reference, images)
    assert ours.shape == (2, *size)
    assert expected.abs().max() > 0
    assert relative_error(ours, expected) < 1e-5


# vitb: the odd 37x37 grid at full size; landscape and portrait at a small size (vits runs every size at full scale;
# vitb's 16:9 pair at 518 x 924 cost 50 s of the suite for the same code paths)
@pytest.mark.parametrize("size", [(518, 518), (266, 378), (378, 266)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_vitb_matches_reference(vitb_checkpoint, size):
    net = load_model(vitb_checkpoint.hf_folder)
    assert net.config.variant == "vitb"
    images = random_images(2, size, seed=3)
    with torch.inference_mode():
        ours = net(images)
    assert relative_error(ours, reference_depth(vitb_checkpoint.reference, images)) < 1e-5


def test_both_layouts_load_the_same_weights(vits_checkpoint, tmp_path):
    from_official = load_model(vits_checkpoint.official_path)
    from_folder = load_model(vits_checkpoint.hf_folder)
    # A lone .safetensors with transformers 5.x in-memory names (q_proj, ...), not the legacy on-disk names
    from safetensors.torch import save_file

    single_file = tmp_path / "renamed.safetensors"
    save_file({k: v.contiguous() for k, v in vits_checkpoint.reference.state_dict().items()}, str(single_file))
    from_file = load_model(single_file)
    official_state = from_official.state_dict()
    for other in (from_folder, from_file):
        for key, value in other.state_dict().items():
            assert torch.equal(value, official_state[key]), key
    assert from_official.config == from_folder.config == from_file.config


def test_official_file_has_the_released_key_layout(vits_checkpoint):
    state = torch.load(vits_checkpoint.official_path, weights_only=True)
    assert len(state) == 239  # spec, section a
    assert state["pretrained.pos_embed"].shape == (1, 1370, 384)
    assert state["pretrained.blocks.0.attn.qkv.weight"].shape == (1152, 384)
    assert state["depth_head.scratch.layer4_rn.weight"].shape == (64, 384, 3, 3)
    assert state["depth_head.resize_layers.0.weight"].shape == (48, 48, 4, 4)
    assert "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight" in state  # unused but present in releases


def test_stock_transformers_differs_off_the_base_grid(vits_checkpoint):
    """Guards the reference: without the original position rule the gap is far above rounding (spec, g)."""
    stock = random_reference("vits", seed=1, original_positions=False)
    images = random_images(1, (266, 378))
    patched = reference_depth(vits_checkpoint.reference, images)
    assert relative_error(reference_depth(stock, images), patched) > 1e-3
    square = random_images(1, (518, 518))
    assert relative_error(reference_depth(stock, square), reference_depth(vits_checkpoint.reference, square)) < 1e-5


def test_v2_taps_detected_from_hf_config_and_file_name(tmp_path):
    from tests.conftest import write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path, "vits", version="v2", seed=4)
    from_folder = load_model(checkpoint.hf_folder)
    from_file = load_model(checkpoint.official_path)  # depth_anything_v2_vits.pth
    assert from_folder.config.tap_blocks == from_file.config.tap_blocks == (2, 5, 8, 11)
    assert load_model(checkpoint.official_path, version="v1").config.tap_blocks == (8, 9, 10, 11)
    images = random_images(1, (266, 378))
    with torch.inference_mode():
        ours = from_file(images)
    assert relative_error(ours, reference_depth(checkpoint.reference, images)) < 1e-5


def test_position_table_cache_follows_weight_changes(vits_checkpoint):
    net = load_model(vits_checkpoint.official_path)
    images = random_images(1, (266, 378))
    with torch.inference_mode():
        first = net(images)
        assert len(net.patch_embed._table_cache) == 1
        again = net(images)
    assert torch.equal(first, again)
    with torch.no_grad():
        net.patch_embed.position_table.mul_(0.5)
    with torch.inference_mode():
        changed = net(images)
    assert not torch.allclose(changed, first)
    with torch.no_grad():
        net.patch_embed.position_table.mul_(2.0)
    with torch.inference_mode():
        assert relative_error(net(images), first) < 1e-6
