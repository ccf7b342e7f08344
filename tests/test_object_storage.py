"""s3:// in and out of the jobs, against a real S3 server (moto's, on 127.0.0.1): the same output as local files,
written whole, resumable, and one line for every fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import run_pipeline
from pipeline import storage
from tests.clips import assert_same_timing, clip, read_video
from tests.object_store import CuttingProxy, ObjectStore, free_port

PROJECT = Path(__file__).resolve().parents[1]
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
    code, summary, err = run_cli(capsys, source, "-o", f"{bucket}/out/depth{suffix}", *FAST,
                                 "--summary", f"{bucket}/runs/summary.json")
    assert code == 0, err
    assert summary["output"] == f"{bucket}/out/depth{suffix}"
    assert object_store.keys(f"{bucket}/out") == [f"depth{suffix}"], "nothing but the output under the prefix"
    assert json.loads(object_store.fs.cat_file(f"{bucket}/runs/summary.json")) == summary
    fetched = object_store.get(f"{bucket}/out/depth{suffix}", tmp_path / f"fetched{suffix}")
    remote, local = read_video(fetched), read_video(local_output)
    assert summary["frames_out"] == local_summary["frames_out"] == remote["count"] == local["count"]
    assert_same_timing(clips[name], fetched, variable_rate=name == "vfr")
    assert remote["has_audio"] and remote["audio_seconds"] == pytest.approx(local["audio_seconds"], abs=1e-3)
    assert remote["pts"] == local["pts"] and remote["metadata"] == local["metadata"]
    for ours, theirs in zip(remote["frames"], local["frames"]):
        assert np.array_equal(ours.to_ndarray(), theirs.to_ndarray()), "the same pictures as the local run"


def test_segments_of_an_object_are_read_with_ranged_reads_and_joined_into_the_bucket(ray_cluster, object_store,
                                                                                    tmp_path, capsys):
    long = clip(tmp_path, "long.mkv", width=128, height=72, frames=45, audio=True, keyframe_interval=10)
    bucket = object_store.bucket("segments")
    source = object_store.put(long, f"{bucket}/in/long.mkv")
    code, local_summary, err = run_cli(capsys, long, "-o", tmp_path / "local.mp4", "--segments", "3", *FAST)
    assert code == 0, err
    code, summary, err = run_cli(capsys, source, "--segments", "3", *FAST)  # the default output: beside the input
    assert code == 0, err
    assert summary["output"] == f"{bucket}/in/long_depth.mp4" and len(summary["segments"]) == 3
    assert object_store.keys(f"{bucket}/in") == ["long.mkv", "long_depth.mp4"], "the segments' work is removed"
    remote = read_video(object_store.get(summary["output"], tmp_path / "fetched.mp4"))
    local = read_video(tmp_path / "local.mp4")
    assert remote["pts"] == local["pts"] and remote["count"] == 45
    for ours, theirs in zip(remote["frames"], local["frames"]):
        assert np.array_equal(ours.to_ndarray(), theirs.to_ndarray())
    assert remote["audio_seconds"] == pytest.approx(local["audio_seconds"], abs=1e-3)


def test_a_batch_from_a_prefix_to_a_prefix_keeps_keys_records_each_video_and_a_rerun_touches_nothing(
        ray_cluster, object_store, tmp_path, capsys):
    bucket = object_store.bucket("batch")
    one = clip(tmp_path, "one.mp4", width=96, height=64, frames=8)
    two = clip(tmp_path, "two.mkv", width=96, height=64, frames=5, variable_rate=True, audio=True)
    object_store.put(one, f"{bucket}/videos/a/b/one.mp4")
    object_store.put(two, f"{bucket}/videos/a/two.mkv")
    object_store.put(one, f"{bucket}/videos/.hidden/skipped.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    object_store.put(tmp_path / "broken.mp4", f"{bucket}/videos/c/broken.mp4")
    # What a run killed mid-upload leaves: a multipart upload to an output, open (invisible, its parts billed)
    object_store.fs.call_s3("create_multipart_upload", Bucket="batch", Key="depth/a/b/one_depth.mp4")
    assert len(object_store.open_uploads(bucket)) == 1
    code, err = run_batch(capsys, f"{bucket}/videos/", "--output-dir", f"{bucket}/depth", *FAST)
    assert code == 3, err  # the broken one failed alone
    assert "s3://batch/videos/c/broken.mp4" in err
    assert not object_store.open_uploads(bucket), "the killed run's upload is aborted"
    keys = object_store.keys(f"{bucket}/depth")
    assert [k for k in keys if not k.startswith("batch_status/")] == \
        ["a/b/one_depth.mp4", "a/two_depth.mp4", "batch_report.json"], "whole outputs only, keys kept"
    assert len([k for k in keys if k.startswith("batch_status/")]) == 3, "one ledger object per video"
    report = json.loads(object_store.fs.cat_file(f"{bucket}/depth/batch_report.json"))
    rows = {row["video"]: row for row in report["videos"]}
    assert rows["a/b/one.mp4"]["frames"] == 8 and rows["a/two.mkv"]["frames"] == 5
    assert rows["c/broken.mp4"]["status"] == "failed"
    fetched = object_store.get(f"{bucket}/depth/a/two_depth.mp4", tmp_path / "two_depth.mp4")
    assert_same_timing(two, fetched, variable_rate=True)
    assert read_video(fetched)["has_audio"]

    before = {k: object_store.fs.info(f"{bucket}/depth/{k}")["ETag"] for k in ("a/b/one_depth.mp4", "a/two_depth.mp4")}
    stamps = {k: object_store.fs.info(f"{bucket}/depth/{k}")["LastModified"] for k in before}
    code, err = run_batch(capsys, f"{bucket}/videos/", "--output-dir", f"{bucket}/depth", *FAST)
    assert code == 3 and "2 already done, 1 to do" in err, err
    assert {k: object_store.fs.info(f"{bucket}/depth/{k}")["LastModified"] for k in before} == stamps
    assert not object_store.open_uploads(bucket)


def run_batch(capsys, *argv) -> tuple[int, str]:
    code = run_pipeline.main(["batch", *[str(a) for a in argv]])
    return code, capsys.readouterr().err


def test_a_server_gone_mid_upload_leaves_no_object_and_the_same_command_then_succeeds(ray_cluster, object_store,
                                                                                       clips, capsys):
    bucket = object_store.bucket("cut")
    source = object_store.put(clips["audio"], f"{bucket}/in/audio.mp4")
    proxy = CuttingProxy(object_store.port, cut=rb"^PUT /cut/out/depth\.mp4")
    try:
        via_proxy = ["--storage-option", f"endpoint_url={proxy.endpoint}"]
        code, summary, err = run_cli(capsys, source, "-o", f"{bucket}/out/depth.mp4", *via_proxy, *FAST)
        assert code != 0 and proxy.cuts >= 2, "retried before giving up"
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: s3://cut/out/depth.mp4: ") and "uploading" in last, err
        assert object_store.keys(f"{bucket}/out") == [] and not object_store.open_uploads(bucket)
        proxy.cut = None  # the server is back
        code, summary, err = run_cli(capsys, source, "-o", f"{bucket}/out/depth.mp4", *via_proxy, *FAST)
        assert code == 0, err
        assert object_store.keys(f"{bucket}/out") == ["depth.mp4"]
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_multi_node_batch_with_everything_in_the_bucket_survives_a_killed_driver(object_store, tmp_path):
    """A head without CPUs and two 1-CPU workers; inputs (and the manifest) only in the bucket, outputs only there;
    the driver is SIGKILLed once two videos are recorded, and the same command run again finishes the rest."""
    bucket = object_store.bucket("cluster")
    lines = []
    for index in range(4):
        path = clip(tmp_path, f"clip{index}.mp4", width=64, height=48, frames=24)
        object_store.put(path, f"{bucket}/videos/set{index % 2}/clip{index}.mp4")
        lines.append(json.dumps({"input": f"set{index % 2}/clip{index}.mp4"}))
    film = clip(tmp_path, "film.mp4", width=64, height=48, frames=120, keyframe_interval=12)
    object_store.put(film, f"{bucket}/videos/long/film.mp4")
    lines.append(json.dumps({"input": "long/film.mp4", "options": {"segments.count": 3}}))
    object_store.fs.pipe_file(f"{bucket}/videos/job.jsonl", ("\n".join(lines) + "\n").encode())
    result_path = tmp_path / "result.json"
    helper = [sys.executable, str(PROJECT / "tests" / "multinode_batch.py"), f"{bucket}/videos/job.jsonl",
              f"{bucket}/depth", str(result_path), "--sigkill-driver-after-videos", "2"]
    subprocess.run([*helper, *FAST], cwd=PROJECT, check=True, timeout=900)
    result = json.loads(result_path.read_text())
    assert result["killed_driver"], "the job ended before it could be killed"
    assert result["exit_status"] == 0, result["stderr"][-3000:]
    done_before = result["done_when_killed"]
    assert f"{done_before} already done, {5 - done_before} to do" in result["stderr"], result["stderr"][-2000:]
    report = json.loads(object_store.fs.cat_file(f"{bucket}/depth/batch_report.json"))
    assert report["totals"]["done"] + report["totals"]["skipped"] == 5 and report["totals"]["failed"] == 0
    keys = object_store.keys(f"{bucket}/depth")
    assert [k for k in keys if not k.startswith("batch_status/")] == [
        "batch_report.json", "long/film_depth.mp4", *(f"set{i % 2}/clip{i}_depth.mp4" for i in (0, 2, 1, 3))], keys
    assert len([k for k in keys if k.startswith("batch_status/")]) == 5
    for index in range(4):
        fetched = object_store.get(f"{bucket}/depth/set{index % 2}/clip{index}_depth.mp4", tmp_path / "x.mp4")
        assert_same_timing(tmp_path / f"clip{index}.mp4", fetched)
    fetched = object_store.get(f"{bucket}/depth/long/film_depth.mp4", tmp_path / "film_depth.mp4")
    assert_same_timing(film, fetched)
    assert not object_store.open_uploads(bucket)
    assert not any(key.startswith(".") for key in object_store.keys(f"{bucket}/depth/long")), "segment work removed"
    dead_spools = [p for p in Path(tempfile.gettempdir()).glob("video-depth-spool-*")
                   if not Path(f"/proc/{p.name.split('-')[3]}").exists()]
    assert not dead_spools, "a killed sink's spool is removed by the next one on its machine"


def test_bad_places_and_refusing_servers_are_one_line_naming_the_url_before_any_work(object_store, clips, capsys,
                                                                                      monkeypatch):
    bucket = object_store.bucket("faults")
    source = object_store.put(clips["audio"], f"{bucket}/in/audio.mp4")
    strict = ObjectStore(f"http://127.0.0.1:{free_port()}")  # a server that knows no key of ours
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")
    strict.start()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    silent = CuttingProxy(object_store.port, stall=True)  # takes every request and never answers
    try:
        for argv, expected in [
            ([f"{bucket}/in/missing.mp4", "-o", f"{bucket}/out/x.mp4"], f"{bucket}/in/missing.mp4: no such object"),
            (["s3://no-such-bucket/in/a.mp4", "-o", f"{bucket}/out/x.mp4"],
             "s3://no-such-bucket/in/a.mp4: the bucket does not exist"),
            ([f"{bucket}/in", "-o", f"{bucket}/out/x.mp4"], f"{bucket}/in: a prefix (a folder of objects), not an object"),
            ([source, "-o", "s3://no-such-bucket/out/x.mp4"], "s3://no-such-bucket/out: the bucket does not exist"),
            ([source, "-o", f"{bucket}/out/x.avi"], "unsupported output extension"),
            ([source, "-o", f"{bucket}/out/x.mp4", "--storage-option", f"endpoint_url={strict.endpoint}"],
             f"{bucket}/out: the credentials were refused"),
            ([source, "-o", f"{bucket}/out/x.mp4", "--storage-option", f"endpoint_url={dead}"],
             f"{bucket}/out: the storage server could not be reached"),
            ([source, "-o", f"{bucket}/out/x.mp4", "--storage-option", f"endpoint_url={silent.endpoint}",
              "--storage-option", "config_kwargs.read_timeout=1"],
             f"{bucket}/out: the storage server could not be reached or stopped answering"),
            ([source, "--storage-option", "secret=abc"], "'secret' is a secret"),
            (["gs://bucket/in/a.mp4", "-o", "x.mp4"], "gs://bucket/in/a.mp4: reading gs:// needs gcsfs: pip install "
                                                    "'video-depth[gcs]'"),
        ]:
            code = run_pipeline.main([str(a) for a in argv] + FAST)
            err = capsys.readouterr().err.strip()
            assert code == 2, (argv, err)
            assert len(err.splitlines()) <= 2 and expected in err.splitlines()[-1], (argv, err)
            assert "testing-secret" not in err
    finally:
        strict.stop()
        silent.close()
    assert object_store.keys(f"{bucket}/out") == []


def test_no_overwrite_uploads_with_the_stores_conditional_write(object_store, tmp_path, capsys):
    """An object that appears while a --no-overwrite run works (another run finishing first) is never replaced: the
    upload is conditional (If-None-Match: *), and the run fails with one line naming it."""
    from fractions import Fraction

    from pipeline.errors import PipelineError
    from pipeline.stages.frames import VideoInfo
    from pipeline.stages.sinks.remote_output import RemoteOutput
    from pipeline.stages.sinks.video_writer import DepthVideoWriter

    bucket = object_store.bucket("conditional")
    info = VideoInfo("x.mp4", 32, 32, Fraction(25), Fraction(1, 25), 0, 3, False, "h264")
    url = f"{bucket}/out/depth.mp4"

    def writer(path):
        return DepthVideoWriter(path, "gray", info, (32, 32))

    first, second = RemoteOutput(url, writer, if_absent=True), RemoteOutput(url, writer, if_absent=True)
    for output in (first, second):
        for index in range(3):
            output.write(np.full((32, 32), 40 * index, np.uint8), index)
    assert first.close() == url
    theirs = object_store.fs.info(url)["ETag"]
    with pytest.raises(PipelineError, match=r"^s3://conditional/out/depth\.mp4: exists already"):
        second.close()
    assert object_store.fs.info(url)["ETag"] == theirs
    assert not list(Path(tempfile.gettempdir()).glob(f"video-depth-spool-{os.getpid()}-*")), "spools removed"


def test_a_connection_cut_while_reading_one_video_fails_that_video_alone(ray_cluster, object_store, clips, tmp_path,
                                                                         capsys):
    bucket = object_store.bucket("cut-read")
    for name in ("a", "b"):
        object_store.put(clips["audio"], f"{bucket}/videos/{name}.mp4")
    proxy = CuttingProxy(object_store.port, cut=rb"^GET /cut-read/videos/b\.mp4")  # (its HEAD passes: it is there)
    try:
        code, err = run_batch(capsys, f"{bucket}/videos/", "--output-dir", f"{bucket}/depth", *FAST,
                              "--storage-option", f"endpoint_url={proxy.endpoint}")
    finally:
        proxy.close()
    assert code == 3, err
    report = json.loads(object_store.fs.cat_file(f"{bucket}/depth/batch_report.json"))
    rows = {row["video"]: row for row in report["videos"]}
    assert rows["a.mp4"]["status"] == "done" and rows["b.mp4"]["status"] == "failed"
    assert rows["b.mp4"]["reason"].startswith("s3://cut-read/videos/b.mp4: ") and proxy.cuts >= 2, rows["b.mp4"]
    assert [k for k in object_store.keys(f"{bucket}/depth") if not k.startswith("batch_status/")] == \
        ["a_depth.mp4", "batch_report.json"]


def test_a_frame_folder_to_a_prefix_arrives_with_its_description_last(ray_cluster, object_store, clips, tmp_path,
                                                                      capsys):
    bucket = object_store.bucket("frames")
    source = object_store.put(clips["vfr"], f"{bucket}/in/vfr.mkv")
    code, summary, err = run_cli(capsys, source, "-o", f"{bucket}/out/vfr_depth/", "--depth-format", "png16", *FAST)
    assert code == 0, err
    keys = object_store.keys(f"{bucket}/out/vfr_depth")
    assert len([k for k in keys if k.endswith(".png")]) == 13 and "depth.json" in keys and "frames.csv" in keys
    modified = {k: object_store.fs.info(f"{bucket}/out/vfr_depth/{k}")["LastModified"] for k in keys}
    assert modified["depth.json"] == max(modified.values()), "the description is uploaded last"
    description = json.loads(object_store.fs.cat_file(f"{bucket}/out/vfr_depth/depth.json"))
    assert description["frames"] == 13


def test_an_image_sequence_under_a_prefix_is_read_in_place_as_the_same_folder_would_be(ray_cluster, object_store,
                                                                                        tmp_path, capsys):
    import cv2

    bucket = object_store.bucket("sequence")
    folder = tmp_path / "shot"
    folder.mkdir()
    for index in range(7):
        image = np.full((48, 64, 3), (30 * index, 90, 200 - 20 * index), np.uint8)
        cv2.imwrite(str(folder / f"frame_{index + 1:03d}.png"), image)
        object_store.put(folder / f"frame_{index + 1:03d}.png", f"{bucket}/shots/shot/frame_{index + 1:03d}.png")
    code, local_summary, err = run_cli(capsys, folder, "-o", tmp_path / "local.mp4", "--fps", "24", *FAST)
    assert code == 0, err
    for spec in (f"{bucket}/shots/shot/", f"{bucket}/shots/shot/frame_%03d.png"):
        code, summary, err = run_cli(capsys, spec, "--fps", "24", *FAST)  # beside the prefix: shots/shot_depth.mp4
        assert code == 0, err
        assert summary["output"] == f"{bucket}/shots/shot_depth.mp4" and summary["frames_out"] == 7
        remote = read_video(object_store.get(summary["output"], tmp_path / "fetched.mp4"))
        local = read_video(tmp_path / "local.mp4")
        assert remote["pts"] == local["pts"] and remote["rate"] == 24
        for ours, theirs in zip(remote["frames"], local["frames"]):
            assert np.array_equal(ours.to_ndarray(), theirs.to_ndarray())
    object_store.fs.rm(f"{bucket}/shots/shot/frame_004.png")
    code, summary, err = run_cli(capsys, f"{bucket}/shots/shot/", *FAST)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {bucket}/shots/shot/frame_004.png: missing from the image sequence (after "
        f"{bucket}/shots/shot/frame_003.png)"), err


def test_live_recordings_are_local_files(clips, capsys):
    """A live recording is written fragment by fragment (playable up to a crash): not to an object, said in one line
    before anything starts."""
    code = run_pipeline.main([str(clips["audio"]), "--realtime", "--record", "s3://bucket/live.mp4", *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: s3://bucket/live.mp4: a live recording is a local file"), err


def test_uploads_to_a_server_that_never_answers_end_even_after_the_client_is_made_again(object_store):
    """botocore's `Expect: 100-continue` made aiohttp wait for an answer with no timeout at all: the header is left
    out of uploads, also on a client s3fs makes again (on a credential refresh)."""
    import threading

    from pipeline.errors import PipelineError

    silent = CuttingProxy(object_store.port, stall=True)
    outcome: list = []

    def upload():
        try:
            storage.write_bytes("s3://anywhere/key.json", b"{}")
        except PipelineError as error:
            outcome.append(str(error))

    try:
        storage.configure({"endpoint_url": silent.endpoint, "config_kwargs": {"read_timeout": 1}})
        fs, _ = storage.filesystem("s3://anywhere/key.json")
        fs.connect(refresh=True)  # what s3fs does when credentials expire: a new client, with botocore's handlers
        worker = threading.Thread(target=upload, daemon=True)
        worker.start()
        worker.join(180)
        assert not worker.is_alive(), "the upload waited on a silent server with no end"
        assert outcome and "stopped answering" in outcome[0], outcome
    finally:
        storage.configure({})
        silent.close()
