"""Each job checks what it was asked before Ray starts (jobs/file.py, jobs/live.py, jobs/cameras_job.py), in-process and
without Ray: one line naming the flag, file or URL; nothing written; and a request that passes gives what the run
needs (the output it may write, the source's timing, the targets)."""

from __future__ import annotations

import socket
from fractions import Fraction

import pytest

from pipeline.errors import PipelineError
from pipeline.jobs.cameras_job import CamerasJob, CamerasRequest
from pipeline.jobs.file import FileRequest, check_file_run, file_warnings
from pipeline.jobs.live import LiveJob, LiveRequest
from pipeline.settings import load_settings
from tests.clips import clip


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return clip(tmp_path_factory.mktemp("in"), "clip.mp4", width=64, height=48, frames=6)


def settings_with(**overrides):
    return load_settings(None, overrides)


@pytest.mark.parametrize("request_of, says", [
    (lambda v: FileRequest(str(v), record="rec.mp4"), "--record rec.mp4: a recording is for live mode"),
    (lambda v: FileRequest(str(v), fps=24), "--fps 24: the frame rate is for image sequences"),
    (lambda v: FileRequest("https://example.com/a.mp4"), "an input URL needs an output name"),
    (lambda v: FileRequest(str(v), output=str(v)), "would overwrite the input"),
    (lambda v: FileRequest(str(v.with_name("missing.mp4")), output=str(v.with_name("o.mp4"))), "missing.mp4"),
])
def test_a_file_run_is_refused_before_ray_naming_the_problem(video, request_of, says):
    with pytest.raises(PipelineError) as raised:
        check_file_run(settings_with(), request_of(video))
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_a_file_run_that_passes_gives_its_output_and_timing(video):
    run = check_file_run(settings_with(**{"output.depth_format": "gray16"}), FileRequest(str(video)))
    assert run.output == video.with_name("clip_depth.mkv") and not run.output.exists()
    assert (run.info.width, run.info.height, run.info.expected_frames) == (64, 48, 6)
    assert run.info.rate == Fraction(30000, 1001)
    assert file_warnings({"repaired_timestamps": 2}, run) == [
        f"{video}: 2 frames repeated or went back on the previous frame's timestamp; each was moved one tick past it"]


@pytest.mark.parametrize("settings, request_of, says", [
    ({}, lambda v: LiveRequest(None, "rtsp://127.0.0.1:1/d", None), "live mode needs an input"),
    ({}, lambda v: LiveRequest(str(v), "rtsp://127.0.0.1:1/d", None, True, file_flags=("--resume",)),
     "--resume is for files"),
    ({"output.depth_format": "exr"}, lambda v: LiveRequest(str(v), None, "r.mp4", True), "writes folders of frames"),
    ({"output.depth_format": "gray16"}, lambda v: LiveRequest(str(v), "rtsp://127.0.0.1:1/d", None, True),
     "gray16 cannot be published over RTSP"),
    ({}, lambda v: LiveRequest(str(v), "a.mp4", "b.mp4", True), "live mode records to one file"),
    ({}, lambda v: LiveRequest(str(v), None, None, True), "live mode needs somewhere to send depth"),
    ({}, lambda v: LiveRequest(str(v), None, str(v), True), "would overwrite the input"),
    ({"model.vda_mode": "window"}, lambda v: LiveRequest(str(v), None, "r.mp4", True),
     "--vda-mode window is for files"),
])
def test_a_live_run_is_refused_before_ray_naming_the_problem(video, settings, request_of, says):
    with pytest.raises(PipelineError) as raised:
        LiveJob.from_request(settings_with(**settings), request_of(video))
    assert says in str(raised.value)


def test_a_live_run_that_passes_knows_its_targets(video, tmp_path):
    job = LiveJob.from_request(settings_with(), LiveRequest(str(video), None, str(tmp_path / "rec.mp4"), True))
    assert job.targets.record == str(tmp_path / "rec.mp4") and job.targets.publish is None
    assert not (tmp_path / "rec.mp4").exists()


def test_a_cameras_run_is_refused_before_ray_and_binds_its_port_last(tmp_path, video):
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text(f"cameras:\n  - name: door\n    input: {video}\n    realtime: true\n"
                       f"    record: {tmp_path / 'door.mp4'}\n")
    with pytest.raises(PipelineError, match="--segments is for files"):
        CamerasJob.from_request(settings_with(),
                                CamerasRequest(str(cameras), "127.0.0.1:0", file_flags=("--segments",)))
    with pytest.raises(PipelineError, match="needs a token"):
        CamerasJob.from_request(settings_with(), CamerasRequest(str(cameras), "0.0.0.0:0"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PipelineError, match=f"--control 127.0.0.1:{port}: cannot listen there"):
            CamerasJob.from_request(settings_with(), CamerasRequest(str(cameras), f"127.0.0.1:{port}"))
    job = CamerasJob.from_request(settings_with(), CamerasRequest(str(cameras), "127.0.0.1:0"))
    try:
        assert [camera.name for camera in job.cameras] == ["door"] and not job.server.token_required
    finally:
        job.close()
