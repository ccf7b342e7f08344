"""Shared fixtures: seeded random-weight checkpoints written on the fly in both layouts (never committed)."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch.set_num_threads(2)

# No test goes to the network or sees the developer's own Hugging Face cache: an empty cache of the session's own,
# offline (set before huggingface_hub is imported, which reads them once). tests/test_hub.py fills it as it needs.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_home_")
os.environ["HF_HUB_OFFLINE"] = "1"

# The S3 server's endpoint and credentials, the standard AWS variables, set before any Ray instance or job starts, so
# that every actor finds them as a cluster node would (tests/object_store.py); the server starts when a test needs it
from tests.object_store import ObjectStore, set_session_environment  # noqa: E402

set_session_environment()


@dataclass
class RandomCheckpoint:
    variant: str
    version: str
    reference: object  # transformers model, original position rule
    official_path: Path  # depth_anything_vit?14.pth
    hf_folder: Path  # config.json + model.safetensors (legacy names, as save_pretrained writes them)


def write_random_checkpoint(folder: Path, variant: str, version: str = "v1", seed: int = 0,
                            max_depth: float | None = None) -> RandomCheckpoint:
    """`max_depth`: a metric checkpoint (v2), its official file named as the Hypersim (20 m) or Virtual KITTI ones."""
    from model import hf_to_official
    from tests.reference import random_reference

    reference = random_reference(variant, seed=seed, version=version, max_depth=max_depth)
    hf_folder = folder / f"depth-anything-{variant}-{version}{'-metric' if max_depth else ''}-hf"
    reference.save_pretrained(hf_folder)
    official_state, unknown = hf_to_official(reference.state_dict())
    assert not unknown
    stem = f"depth_anything_{variant}14.pth" if version == "v1" else f"depth_anything_v2_{variant}.pth"
    if max_depth:
        stem = f"depth_anything_v2_metric_{'hypersim' if max_depth == 20 else 'vkitti'}_{variant}.pth"
    official_path = folder / stem
    torch.save(official_state, official_path)
    return RandomCheckpoint(variant, version, reference, official_path, hf_folder)


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory) -> RandomCheckpoint:
    return write_random_checkpoint(tmp_path_factory.mktemp("vits"), "vits", seed=1)


@pytest.fixture(scope="session")
def vitb_checkpoint(tmp_path_factory) -> RandomCheckpoint:
    return write_random_checkpoint(tmp_path_factory.mktemp("vitb"), "vitb", seed=2)


@pytest.fixture(scope="session")
def metric_checkpoint(tmp_path_factory) -> RandomCheckpoint:
    """Depth Anything V2 metric, indoor (Hypersim, 20 m), vits, random weights."""
    return write_random_checkpoint(tmp_path_factory.mktemp("vits_metric"), "vits", "v2", seed=4, max_depth=20)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (starting one costs seconds and ~650 MB)."""
    import ray

    from pipeline.cluster.runtime import start_ray

    start_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """A head node of its own with Ray Jobs and Ray Client (tests/ray_head.py), for the session (started on first
    use): a cluster that jobs are submitted to and drivers join, as on Kubernetes."""
    pytest.importorskip("aiohttp", reason="Ray's job server needs ray[default] (the project's [cluster] extra)")
    from tests.ray_head import running_head

    with running_head() as head:
        yield head


@pytest.fixture(scope="session")
def object_store():
    """moto's S3 server on 127.0.0.1, for the session (started on first use)."""
    store = ObjectStore().start()
    yield store
    store.stop()
