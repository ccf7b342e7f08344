"""Every kind of wrong checkpoint gets a one-line CheckpointError naming the file; nothing is half loaded."""

from __future__ import annotations

import argparse

import pytest
import torch

from model import CheckpointError, check_checkpoint, load_model


def load_error(path, **kwargs) -> str:
    """The one-line error of loading, which the shapes-only check (run before any worker starts) gives too."""
    with pytest.raises(CheckpointError) as caught:
        load_model(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    with pytest.raises(CheckpointError) as checked:
        check_checkpoint(path, **kwargs)
    assert str(checked.value) == message
    return message


def test_missing_file(tmp_path):
    assert "not found" in load_error(tmp_path / "nope.pth")


def test_truncated_pth(vits_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(vits_checkpoint.official_path.read_bytes()[:100_000])
    message = load_error(truncated)
    assert "not a readable PyTorch checkpoint (its zip archive is incomplete: truncated" in message
    assert "miniz" not in message and "internal" not in message  # (torch's text about its own zip library)


def test_text_file_named_pth(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("hello, I am not a checkpoint\n")
    assert "not a readable PyTorch checkpoint" in load_error(bogus)


def test_arbitrary_pickle_is_refused_safely(tmp_path):
    # A pickle that would call a function when loaded: weights_only loading must refuse it
    evil = tmp_path / "evil.pth"
    torch.save({"x": argparse.Namespace(command="rm -rf /")}, evil)
    message = load_error(evil)
    assert "holds Python objects besides tensors" in message and "Convert it to .safetensors" in message
    assert "weights_only" not in message, "torch's advice (weights_only=False) would run the code"


def test_plain_tensor_instead_of_dict(tmp_path):
    lone = tmp_path / "lone.pth"
    torch.save(torch.zeros(3), lone)
    assert "not a dictionary of weight tensors" in load_error(lone)


def test_safetensors_of_another_model(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, str(other))
    message = load_error(other)
    assert "not a Depth-Anything checkpoint" in message and "pretrained.patch_embed.proj.weight" in message


def test_truncated_safetensors(vits_checkpoint, tmp_path):
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes((vits_checkpoint.hf_folder / "model.safetensors").read_bytes()[:50_000])
    assert "not a readable safetensors file" in load_error(truncated)


def edited_checkpoint(checkpoint, folder, edit) -> str:
    """A copy of the official file with `edit(state)` applied."""
    state = torch.load(checkpoint.official_path, weights_only=True)
    edit(state)
    path = folder / "edited.pth"
    torch.save(state, path)
    return load_error(path)


def test_missing_block_weights(vits_checkpoint, tmp_path):
    message = edited_checkpoint(vits_checkpoint, tmp_path, lambda s: s.pop("pretrained.blocks.5.mlp.fc1.weight"))
    assert "missing" in message and "blocks.5.mlp.fc1.weight" in message


def test_wrong_shapes(vits_checkpoint, tmp_path):
    def shrink(state):
        state["depth_head.scratch.output_conv1.weight"] = torch.zeros(16, 64, 3, 3)

    message = edited_checkpoint(vits_checkpoint, tmp_path, shrink)
    assert "wrong shapes" in message and "(16, 64, 3, 3)" in message


def test_extra_unknown_tensors(vits_checkpoint, tmp_path):
    message = edited_checkpoint(vits_checkpoint, tmp_path, lambda s: s.update({"depth_head.extra.weight": torch.zeros(3)}))
    assert "unexpected: depth_head.extra.weight" in message


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "no model.safetensors" in load_error(tmp_path)


def test_wrapped_state_dict_is_accepted(vits_checkpoint, tmp_path):
    state = torch.load(vits_checkpoint.official_path, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert load_model(wrapped).config.variant == "vits"
    assert check_checkpoint(wrapped).variant == "vits"


@pytest.mark.parametrize("layout", ["official", "hf"])
def test_check_without_loading_reads_the_config(vits_checkpoint, layout):
    path = vits_checkpoint.official_path if layout == "official" else vits_checkpoint.hf_folder
    assert check_checkpoint(path) == load_model(path).config
