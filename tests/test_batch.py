"""Batch jobs: inputs and output names, the status file and reruns, per-video options, failures recorded and the
job going on, and (slow) a three-node Ray cluster losing a worker node mid-job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.jobs.inputs import find_inputs
from tests.clips import assert_same_timing, clip, read_video
from tests.test_cli_faults import run_cli
from tests.test_pipeline_e2e import FAST

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A tree of small clips in nested folders, one corrupt file and one that is not a video."""
    root = tmp_path_factory.mktemp("batch_inputs")
    clip(root / "a" / "b", "one.mp4", width=96, height=64, frames=8)
    clip(root / "a", "two.mkv", width=96, height=64, frames=5, variable_rate=True)
    clip(root, "three.mov", width=64, height=48, frames=6, audio=True)
    (root / "c").mkdir()
    (root / "c" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (root / "c" / "notes.txt").write_text("not a video, and not a manifest of this job\n")
    return root


def test_inputs_from_folders_globs_and_manifests_keep_relative_paths(videos, tmp_path):
    found = find_inputs([str(videos)])
    assert [item.key for item in found] == ["a/b/one.mp4", "a/two.mkv", "c/broken.mp4", "three.mov"]
    assert found[0].output_in(tmp_path, "color") == tmp_path / "a" / "b" / "one_depth.mp4"
    assert found[1].output_in(tmp_path, "gray16") == tmp_path / "a" / "two_depth.mkv"
    globbed = find_inputs([f"{videos}/a/**/*.mp4"])
    assert [item.key for item in globbed] == ["b/one.mp4"]  # below the glob's fixed part
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# two videos\n{videos}/three.mov\n\n{videos}/a/b/one.mp4\n")
    assert {item.source.name for item in find_inputs([str(manifest)])} == {"three.mov", "one.mp4"}
    jsonl = videos / "jobs.jsonl"
    jsonl.write_text(json.dumps({"input": "a/two.mkv", "options": {"output.depth_format": "gray"}}) + "\n")
    [item] = find_inputs([str(jsonl)])
    assert item.key == "a/two.mkv" and item.options == {"output.depth_format": "gray"}
    jsonl.unlink()
    # The same file named twice is one video; two files that would write one output are an error naming both
    assert len(find_inputs([str(videos), f"{videos}/three.mov"])) == 4
    other = tmp_path / "elsewhere" / "a" / "b"
    other.mkdir(parents=True)
    (other / "one.mkv").write_bytes((videos / "a" / "b" / "one.mp4").read_bytes())
    with pytest.raises(PipelineError, match="would both write a/b/one_depth.mp4"):
        find_inputs([str(videos), str(tmp_path / "elsewhere")])
    with pytest.raises(PipelineError, match="no such file, folder or manifest"):
        find_inputs([str(tmp_path / "missing")])
    with pytest.raises(PipelineError, match="no video files found"):
        find_inputs([str(tmp_path / "*.webm")])


def test_batch_job_records_failures_goes_on_and_a_rerun_touches_nothing(ray_cluster, videos, tmp_path, capsys):
    out = tmp_path / "depth"
    code, err = run_cli(capsys, "batch", videos, "--output-dir", out, *FAST)
    assert code == 3, err  # some failed
    report = json.loads((out / "batch_report.json").read_text())
    rows = {row["video"]: row for row in report["videos"]}
    assert rows["c/broken.mp4"]["status"] == "failed" and "c/broken.mp4" in rows["c/broken.mp4"]["reason"]
    for key, frames in (("a/b/one.mp4", 8), ("a/two.mkv", 5), ("three.mov", 6)):
        assert rows[key]["status"] == "done" and rows[key]["frames"] == frames
    assert report["totals"] == {**report["totals"], "videos": 4, "done": 3, "failed": 1, "frames": 19}
    assert_same_timing(videos / "a" / "b" / "one.mp4", out / "a" / "b" / "one_depth.mp4")
    assert_same_timing(videos / "a" / "two.mkv", out / "a" / "two_depth.mp4", variable_rate=True)
    assert read_video(out / "three_depth.mp4")["has_audio"]
    assert "failed   c/broken.mp4" in err and "3 done" in err
    assert not list(out.rglob(".*partial*"))

    outputs = sorted(p for p in out.rglob("*_depth.mp4"))
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in outputs}
    code, err = run_cli(capsys, "batch", videos, "--output-dir", out, *FAST)
    assert code == 3 and "3 already done, 1 to do" in err  # the failed one is tried again
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in outputs} == before
    status = [json.loads(line) for line in (out / "batch_status.jsonl").read_text().splitlines()]
    assert sorted(r["video"] for r in status if r["status"] == "done") == ["a/b/one.mp4", "a/two.mkv", "three.mov"]

    # Changed settings redo the videos; --force redoes them whatever the status says
    code, err = run_cli(capsys, "batch", f"{videos}/three.mov", "--output-dir", out, *FAST, "--colormap", "turbo")
    assert code == 0 and "0 already done, 1 to do" in err
    code, err = run_cli(capsys, "batch", f"{videos}/three.mov", "--output-dir", out, *FAST, "--colormap", "turbo",
                        "--force")
    assert code == 0 and "0 already done, 1 to do" in err


def test_manifest_options_apply_to_their_video_only(ray_cluster, videos, tmp_path, capsys):
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"input": str(videos / "a" / "b" / "one.mp4"), "options": {"output.depth_format": "gray16"}}),
        json.dumps({"input": str(videos / "three.mov")}),
    ]) + "\n")
    out = tmp_path / "depth"
    code, err = run_cli(capsys, "batch", manifest, "--output-dir", out, *FAST)
    assert code == 0, err
    gray16 = next(out.rglob("one_depth.mkv"))
    assert read_video(gray16)["frames"][0].format.name == "gray16le"
    assert next(out.rglob("three_depth.mp4")).exists()

    manifest.write_text(json.dumps({"input": str(videos / "three.mov"), "options": {"model.input_size": 140}}) + "\n")
    code, err = run_cli(capsys, "batch", manifest, "--output-dir", out, *FAST)
    assert code == 2 and "cannot differ per video" in err

    # An image sequence with a gap fails alone (exit 3), as a broken video does: it aborted the whole job (exit 2)
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    for number in (0, 1, 3):
        cv2.imwrite(str(frames / f"{number:04d}.png"), np.full((48, 64, 3), 40 * number, np.uint8))
    listing = tmp_path / "jobs.txt"
    listing.write_text(f"{frames}/%04d.png\n{videos / 'three.mov'}\n")
    code, err = run_cli(capsys, "batch", listing, "--output-dir", tmp_path / "depth2", *FAST)
    report = json.loads((tmp_path / "depth2" / "batch_report.json").read_text())
    rows = {row["video"]: row for row in report["videos"]}
    assert code == 3, err
    assert [row["status"] for row in rows.values()].count("done") == 1
    [failed] = [row for row in rows.values() if row["status"] == "failed"]
    assert "0002.png: missing from the sequence" in failed["reason"]


@pytest.mark.slow
def test_three_node_cluster_loses_a_worker_node_mid_job(tmp_path):
    """Head without CPUs, two 1-CPU workers; the worker with the model actor is killed after the first video."""
    root = tmp_path / "in"
    for index in range(4):
        clip(root / f"set{index % 2}" / f"part{index}", f"clip{index}.mp4", width=64, height=48, frames=24)
    clip(root / "long", "film.mp4", width=64, height=48, frames=120, keyframe_interval=12)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    manifest = root / "job.jsonl"
    lines = [json.dumps({"input": str(p.relative_to(root))}) for p in sorted(root.rglob("*.mp4"))
             if p.name != "film.mp4"]
    lines.append(json.dumps({"input": "long/film.mp4", "options": {"segments.count": 3}}))
    manifest.write_text("\n".join(lines) + "\n")
    out, result_path = tmp_path / "out", tmp_path / "result.json"
    helper = [sys.executable, str(PROJECT / "tests" / "multinode_batch.py"), str(manifest), str(out), str(result_path)]
    subprocess.run([*helper, *FAST], cwd=PROJECT, check=True, timeout=600)
    result = json.loads(result_path.read_text())
    assert result["exit_status"] == 3, result["stderr"][-3000:]
    assert result.get("removed_node"), "the job ended before a node could be removed"
    report = json.loads((out / "batch_report.json").read_text())
    rows = {row["video"]: row for row in report["videos"]}
    assert rows["corrupt.mp4"]["status"] == "failed" and "not a readable video" in rows["corrupt.mp4"]["reason"]
    for index in range(4):
        key = f"set{index % 2}/part{index}/clip{index}.mp4"
        assert rows[key]["status"] == "done", rows[key]
        assert_same_timing(root / key, out / f"set{index % 2}" / f"part{index}" / f"clip{index}_depth.mp4")
    assert rows["long/film.mp4"]["status"] == "done" and rows["long/film.mp4"]["frames"] == 120
    assert_same_timing(root / "long" / "film.mp4", out / "long" / "film_depth.mp4")
    status = [json.loads(line) for line in (out / "batch_status.jsonl").read_text().splitlines()]
    done = [r["video"] for r in status if r["status"] == "done"]
    assert len(done) == len(set(done)) == 5  # each video finished, and was written, once
    assert not list(out.rglob(".*partial*")) and not list(out.rglob(".*.segments"))

    # A rerun on the (rebuilt) cluster is a no-op for every finished video: no output touched
    outputs = sorted(out.rglob("*_depth.mp4"))
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in outputs}
    subprocess.run([*helper, "--kill-after-videos", "999", *FAST], cwd=PROJECT, check=True, timeout=600)
    again = json.loads(result_path.read_text())
    assert again["exit_status"] == 3 and "5 already done, 1 to do" in again["stderr"], again["stderr"][-2000:]
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in outputs} == before
    print(json.dumps({k: result[k] for k in ("removed_after_s", "done_when_removed", "seconds",
                                             "removed_model_actor_node")}), report["totals"])


@pytest.mark.slow
def test_a_model_actor_with_no_room_to_restart_is_dropped_and_the_job_goes_on(tmp_path):
    """Two model actors fill both 1-CPU workers; one worker dies, so its actor has nowhere to restart. It must not
    hang the job: once Ray has noticed (heartbeats, about 15 s here), it is dropped after ray.restart_timeout_s and
    its streams run again on the other. Every stream ran beside a model actor on its own node (no byte crossed)."""
    root = tmp_path / "in"
    for index in range(8):
        clip(root, f"clip{index}.mp4", width=64, height=48, frames=40)
    settings = tmp_path / "quick.yaml"
    settings.write_text("ray:\n  restart_timeout_s: 5\n")
    out, result_path = tmp_path / "out", tmp_path / "result.json"
    subprocess.run([sys.executable, str(PROJECT / "tests" / "multinode_batch.py"), str(root), str(out),
                    str(result_path), *FAST, "--model-actors", "2", "--config", str(settings)],
                   cwd=PROJECT, check=True, timeout=600)
    result = json.loads(result_path.read_text())
    assert result["exit_status"] == 0, result["stderr"][-3000:]
    assert result.get("removed_model_actor_node"), result
    assert "could not be restarted within 5 s" in result["stderr"] and "going on with 1" in result["stderr"]
    report = json.loads((out / "batch_report.json").read_text())
    assert report["totals"]["done"] == 8 and report["totals"]["frames"] == 320
    # Each node has (had) a model actor: every stream's decode, sink and model actor shared a node, before the loss
    # and after it (a frame or depth map that crossed would be counted here)
    assert all(row["bytes_across_nodes"] == 0 and row["nodes"] for row in report["videos"]), report["videos"]
    for index in range(8):
        assert_same_timing(root / f"clip{index}.mp4", out / f"clip{index}_depth.mp4")
    assert not list(out.rglob(".*partial*"))


def test_stream_actor_errors_name_the_node_on_a_multi_node_cluster(monkeypatch, tmp_path):
    """On a cluster another machine may not see a path the driver sees: the error says which node it was."""
    import ray

    from pipeline.cluster.ray_calls import naming_the_node

    class Reader:
        @naming_the_node
        def read(self, path):
            raise PipelineError(f"{path}: input file not found")

    nodes = [{"Alive": True}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    with pytest.raises(PipelineError, match=r"^/data/x.mp4: input file not found$"):
        Reader().read("/data/x.mp4")  # one node: the path alone
    nodes.append({"Alive": True})
    with pytest.raises(PipelineError, match=r"^/data/x.mp4: input file not found \(on node .+, [0-9.]+\)$"):
        Reader().read("/data/x.mp4")
