"""Released weights by name from a Hugging Face Hub cache, offline: names, repo ids, revisions, errors, workers.

The cache is laid out the way huggingface_hub writes it (blobs named by their hash, snapshot folders of relative
symlinks, refs/main holding the commit), filled with seeded random weights in the transformers layout, in the
session's own empty HF_HOME (conftest.py sets it, with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import run_pipeline
from model import CheckpointError, load_model
from model.hub import MODEL_NAMES, resolve_checkpoint
from pipeline.stages.inference.depth_worker import ModelSource
from tests.clips import clip, gray16_frames

COMMIT = hashlib.sha1(b"a release").hexdigest()
SMALL_REPO = MODEL_NAMES["small"]
MODEL_ARGS = ["--input-size", "70", "--batch-size", "3", "--smoother", "none", "--depth-format", "gray16"]


def write_hub_cache(repo_id: str, files: list[Path], commit: str, cache: Path | None = None) -> Path:
    """A repo snapshot in the Hub cache (this process's, or `cache`: HF_HOME/hub of another), as huggingface_hub lays
    it out; returns the snapshot folder."""
    from huggingface_hub import constants

    repo = Path(cache or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for source in files:
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / source.name
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def cached_small(vits_checkpoint, tmp_path_factory) -> Path:
    """This module's own Hub cache (other tests see the session's empty one) holding `small`."""
    from huggingface_hub import constants

    session_cache, constants.HF_HUB_CACHE = constants.HF_HUB_CACHE, str(tmp_path_factory.mktemp("hub_cache"))
    folder = vits_checkpoint.hf_folder
    yield write_hub_cache(SMALL_REPO, [folder / "config.json", folder / "model.safetensors"], COMMIT)
    constants.HF_HUB_CACHE = session_cache


@pytest.mark.parametrize("spec", ["small", SMALL_REPO, f"{SMALL_REPO}@{COMMIT}", f"{SMALL_REPO}@main"])
def test_names_and_repo_ids_resolve_to_the_cached_snapshot(cached_small, vits_checkpoint, spec):
    resolved = resolve_checkpoint(spec)
    assert Path(resolved.path) == cached_small
    assert (resolved.repo_id, resolved.revision) == (SMALL_REPO, COMMIT)
    assert sorted(p.name for p in Path(resolved.path).iterdir()) == ["config.json", "model.safetensors"]
    image = torch.randn(1, 3, 70, 98)
    with torch.inference_mode():
        assert torch.equal(load_model(resolved.path)(image), load_model(vits_checkpoint.hf_folder)(image))


def test_a_local_path_is_taken_as_it_is(vits_checkpoint):
    resolved = resolve_checkpoint(str(vits_checkpoint.official_path))
    assert resolved.path == str(vits_checkpoint.official_path) and resolved.repo_id is None


@pytest.mark.parametrize("spec, message", [
    ("base", "LiheYoung/depth-anything-base-hf: config.json is not in the Hugging Face cache"),
    (f"{SMALL_REPO}@v9", f"{SMALL_REPO}@v9: config.json is not in the Hugging Face cache"),
    ("someone/nothing-here", "someone/nothing-here: config.json is not in the Hugging Face cache"),
    ("tiny", "unknown model 'tiny'; expected one of small, base, large, v2-small, v2-base, v2-large"),
])
def test_what_is_missing_is_one_line_that_says_how_to_get_it(cached_small, spec, message):
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(spec)
    text = str(caught.value)
    assert message in text and "\n" not in text
    if "cache" in message:
        assert "hf download" in text and "--checkpoint PATH" in text and "HF_HUB_OFFLINE=1" in text


def test_a_worker_without_the_path_resolves_in_its_own_cache_or_says_so(cached_small, vits_checkpoint):
    """On another machine the driver's snapshot path does not exist: the worker resolves repo@commit itself."""
    elsewhere = "/nonexistent/snapshots/" + COMMIT
    net = ModelSource(elsewhere, hub_reference=f"{SMALL_REPO}@{COMMIT}").load(torch.device("cpu"))
    assert net.config.variant == "vits"
    with pytest.raises(CheckpointError, match=r"model actor on .+: LiheYoung/depth-anything-base-hf@.+ is not in"):
        ModelSource(elsewhere, hub_reference=f"{MODEL_NAMES['base']}@{COMMIT}").load(torch.device("cpu"))


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = run_pipeline.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_model_by_name_and_by_repo_id_give_the_folders_output(ray_cluster, cached_small, vits_checkpoint, tmp_path,
                                                               capsys):
    import json

    source = clip(tmp_path, "clip.mp4", width=96, height=64, frames=6)
    outputs = {}
    for name, choice in (("name", ["--model", "small"]), ("repo", ["--checkpoint", SMALL_REPO]),
                         ("folder", ["--checkpoint", vits_checkpoint.hf_folder])):
        outputs[name] = tmp_path / f"{name}.mkv"
        code, out, err = cli(capsys, source, "-o", outputs[name], *MODEL_ARGS, *choice)
        assert code == 0, err
        model = json.loads(out)["model"]
        if name == "folder":
            assert model["path"] == str(vits_checkpoint.hf_folder)
        else:
            assert (model["repo_id"], model["revision"]) == (SMALL_REPO, COMMIT)
        assert (model["variant"], model["version"]) == ("vits", "v1")
    frames = {name: gray16_frames(path) for name, path in outputs.items()}
    assert np.array_equal(frames["name"], frames["folder"]) and np.array_equal(frames["repo"], frames["folder"])


def test_cli_errors_for_names(cached_small, capsys, tmp_path):
    source = clip(tmp_path, "clip.mp4", width=96, height=64, frames=3)
    code, _, err = cli(capsys, source, "-o", tmp_path / "x.mkv", *MODEL_ARGS, "--model", "tiny")
    assert code == 2 and "argument --model: invalid choice: 'tiny'" in err and "v2-large" in err
    code, _, err = cli(capsys, source, "-o", tmp_path / "x.mkv", *MODEL_ARGS, "--model", "large")
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: LiheYoung/depth-anything-large-hf: config.json is not in the Hugging Face cache")
    code, _, err = cli(capsys, source, "-o", tmp_path / "x.mkv", *MODEL_ARGS, "--model", "small",
                       "--checkpoint", "x.pth")
    assert code == 2 and "a model name and a checkpoint were both given" in err
    assert not list(tmp_path.glob("*.mkv"))


def test_a_metric_model_by_name_loads_as_metric(cached_small, metric_checkpoint):
    """`v2-metric-indoor-small` from the cache: the metric head and its range come with the checkpoint's config."""
    folder = metric_checkpoint.hf_folder
    repo = MODEL_NAMES["v2-metric-indoor-small"]
    snapshot = write_hub_cache(repo, [folder / "config.json", folder / "model.safetensors"], COMMIT)
    resolved = resolve_checkpoint("v2-metric-indoor-small")
    assert Path(resolved.path) == snapshot and resolved.repo_id == repo
    net = load_model(resolved.path)
    assert net.config.max_depth == 20 and net.config.version == "v2"
    with torch.inference_mode():
        depth = net(torch.randn(1, 3, 70, 98))
    assert 0 < depth.min() and depth.max() <= 20
