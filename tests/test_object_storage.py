"""s3:// in and out of the jobs, against a real S3 server (moto's, on 127.0.0.1): the same output as local files,
written whole, resumable, and one line for every fault."""

from __future__ import annotations

import json

import numpy as np
import pytest

import run_pipeline
from pipeline import storage
from tests.clips import assert_same_timing, clip, read_video

FAST = ["--random-weights", "vits", "--input-size", "70", "--batch-size", "3"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3_clips")
    return {"audio": clip(folder, "audio.mp4", width=160, height=96, frames=20, audio=True),
            "vfr": clip(folder, "vfr.mkv", width=160, height=96, frames=13, variable_rate=True, audio=True)}


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = run_pipeline.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("name, suffix", [("audio", ".mp4"), ("vfr", ".mkv")])
def test_a_video_from_and_to_s3_matches_the_same_run_on_local_files(ray_cluster, object_store, clips, tmp_path,
                                                                     capsys, name, suffix):
    bucket = object_store.bucket(f"single-{name}")
    source = object_store.put(clips[name], f"{bucket}/in/{clips[name].name}")
    local_output = tmp_path / f"local{suffix}"
    code, local_summary, err = run_cli(capsys, clips[name], "-o", local_output, *FAST)
    assert code == 0, err
    code, summary, err = run_cli(capsys, source, "-o", f"{bucket}/out/depth{suffix}", *FAST)
    assert code == 0, err
    assert summary["output"] == f"{bucket}/out/depth{suffix}"
    assert object_store.keys(f"{bucket}/out") == [f"depth{suffix}"], "nothing but the output under the prefix"
    fetched = object_store.get(f"{bucket}/out/depth{suffix}", tmp_path / f"fetched{suffix}")
    remote, local = read_video(fetched), read_video(local_output)
    assert summary["frames_out"] == local_summary["frames_out"] == remote["count"] == local["count"]
    assert_same_timing(clips[name], fetched, variable_rate=name == "vfr")
    assert remote["has_audio"] and remote["audio_seconds"] == pytest.approx(local["audio_seconds"], abs=1e-3)
    assert remote["pts"] == local["pts"] and remote["metadata"] == local["metadata"]
    for ours, theirs in zip(remote["frames"], local["frames"]):
        assert np.array_equal(ours.to_ndarray(), theirs.to_ndarray()), "the same pictures as the local run"
