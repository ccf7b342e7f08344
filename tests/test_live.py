"""Live mode with real peers on 127.0.0.1: a GStreamer RTSP camera (PLAY), FFmpeg's RTSP listen mode as the server
that takes the published depth stream (ANNOUNCE / RECORD), and the CLI as a process of its own, stopped by SIGTERM.

The camera runs under the system Python (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0, which .ci/run
installs; without them these tests are skipped, unless REQUIRE_RTSP=1 says they must run, as in CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.clips import clip, read_video
from tests.live_peers import SYSTEM_PYTHON, Camera, Receiver

PROJECT = Path(__file__).resolve().parents[1]
MODEL = ["--random-weights", "vits", "--input-size", "70", "--batch-size", "1"]


def gstreamer_ready() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return Path(SYSTEM_PYTHON).exists() and subprocess.run([SYSTEM_PYTHON, "-c", probe],
                                                           capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not gstreamer_ready() and not os.environ.get("REQUIRE_RTSP"),
                                reason="GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) not installed")


def start_pipeline(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), *map(str, argv), *MODEL], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_pipeline(process: subprocess.Popen) -> tuple[dict, str]:
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def moving(frames: list[np.ndarray]) -> bool:
    """Consecutive pictures differ (fresh depth of a moving scene, not the same frame repeated)."""
    return sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])) >= len(frames) // 2


@pytest.fixture()
def camera():
    camera = Camera()
    camera.start()
    yield camera
    if camera.process.poll() is None:
        camera.stop()


def test_camera_to_server_end_to_end_and_survives_a_camera_restart(camera):
    receiver = Receiver().start()
    process = start_pipeline(camera.url, "-o", receiver.url)
    try:
        wait_for(lambda: len(receiver.frames) >= 30, 60, "depth frames at the server")
        first = [picture for _, picture in receiver.frames[:30]]
        assert first[0].shape == (96, 160) and moving(first)  # the camera's size, changing content
        # The camera goes away for a while (until the output has been kept alive with filler frames for a while)
        # and comes back on the same URL
        camera.stop()
        stopped = time.monotonic()
        wait_for(lambda: sum(t > stopped + 1.5 for t, _ in receiver.frames) >= 3, 60, "filler frames meanwhile")
        camera.start()
        restarted = time.monotonic()
        wait_for(lambda: sum(t > restarted for t, _ in receiver.frames) >= 40, 60, "frames after the restart")
    finally:
        summary, stderr = stop_pipeline(process)
        receiver.stop()
    after = [picture for t, picture in receiver.frames if t > restarted][-20:]
    assert moving(after), "fresh depth flows again by itself (not the filler frame repeated)"
    assert summary["reconnects"] >= 1 and "reconnecting" in stderr
    assert summary["filler_frames"] > 0  # the output was kept alive while the camera was away
    # ... on the live clock: the stream's clock moved on through the gap as the wall clock did (however many filler
    # frames a busy machine managed to send)
    gap = [(t, s) for (t, _), s in zip(receiver.frames, receiver.stream_seconds) if stopped + 1.5 < t < restarted]
    assert len(gap) >= 3, gap
    (t_first, s_first), (t_last, s_last) = gap[0], gap[-1]
    assert s_last - s_first >= 0.5 * (t_last - t_first) - 0.2, gap
    assert set(summary) >= {"frames_in", "frames_out", "dropped", "reconnects", "latency_ms"}
    assert set(summary["latency_ms"]) == {"p50", "p95", "max"} and summary["latency_ms"]["p50"] > 0
    assert summary["frames_out"] + summary["dropped"] <= summary["frames_in"] + 1
    assert "live: in" in stderr  # the periodic line with fps, latency, drops, reconnects


def test_publisher_survives_the_server_restarting(camera):
    receiver = Receiver().start()
    process = start_pipeline(camera.url, "-o", receiver.url)
    try:
        wait_for(lambda: len(receiver.frames) >= 15, 60, "depth frames at the server")
        receiver.stop()  # the server goes away: its session ends after the next frame
        time.sleep(2)
        second = Receiver()
        second.url = receiver.url  # the same address, a new server process would listen there
        second.start()
        wait_for(lambda: len(second.frames) >= 15, 60, "depth frames at the restarted server")
    finally:
        summary, stderr = stop_pipeline(process)
        second.stop()
    assert summary["republished"] >= 1 and "publishing to" in stderr


def test_a_source_faster_than_the_model_drops_frames_and_latency_stays_bounded(tmp_path):
    fast = Camera(width=320, height=192, fps=30)
    fast.start()
    receiver = Receiver().start()
    heavy = ["--input-size", "196"]  # about 10 frames per second on these 2 cores: a third of the camera's rate
    process = subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), fast.url, "-o", receiver.url,
                                *MODEL, *heavy], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: len(receiver.frames) >= 60, 90, "depth frames at the server")
    finally:
        summary, _ = stop_pipeline(process)
        receiver.stop()
        fast.stop()
    latency, model = summary["latency_ms"], summary["model_ms"]
    assert summary["dropped"] > 0.3 * summary["frames_in"], summary
    # A backlog would grow by two thirds of a second every second: after ~10 s the latest frames would be seconds
    # old. Dropping the oldest keeps every frame within a few of the model's own turnarounds of its arrival
    # (measured in this run: a busy machine makes both longer, not the one against the other)
    assert latency["p95"] <= 4 * model["p95"] + 300, summary


def test_a_file_played_in_real_time_gives_every_frame_and_a_recording(tmp_path):
    source = clip(tmp_path, "camera.mp4", width=96, height=64, frames=30, rate=30)
    recording = tmp_path / "live_depth.mp4"
    process = start_pipeline(source, "--realtime", "--record", recording)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["frames_in"] == 30 and summary["frames_out"] + summary["dropped"] == 30
    assert summary["seconds"] >= 0.9  # 30 frames at 30 fps take a second in real time
    video = read_video(recording)
    assert video["count"] == summary["frames_out"]
    # The recording starts at its first frame: not after the seconds of start-up before it
    assert video["seconds"][0] == 0.0 and video["seconds"][-1] < 2.0


def test_a_camera_that_refuses_or_a_missing_destination_is_one_line_and_exit_2(capsys, camera):
    from tests.test_cli_faults import assert_one_line_error, run_cli

    refused = f"rtsp://127.0.0.1:{camera.port + 1}/camera"  # nothing listens there
    code, err = run_cli(capsys, refused, "-o", "rtsp://127.0.0.1:9/depth", *MODEL)
    assert_one_line_error(code, err, refused)
    code, err = run_cli(capsys, camera.url, *MODEL)
    assert_one_line_error(code, err, "live mode needs somewhere to send depth")


def test_a_one_shot_listener_receives_the_live_output(tmp_path):
    """ffplay -rtsp_flags listen (and FFmpeg's listen mode) takes the first connection as its one publisher: a probe
    connection before the real session ended it, and the run then published to nobody, 'trying again' for ever."""
    receiver = Receiver(once=True).start()
    time.sleep(0.5)  # listening
    source = clip(tmp_path, "camera.mp4", width=96, height=64, frames=45, rate=15)
    process = start_pipeline(source, "--realtime", "-o", receiver.url)
    stdout, stderr = process.communicate(timeout=120)
    receiver.stop()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert receiver.sessions == 1 and receiver.error is None, receiver.error
    assert summary["republished"] == 0 and "trying again" not in stderr
    assert len(receiver.frames) >= summary["frames_out"] - 2 > 20  # (the last frames may be cut by the TEARDOWN)


def test_a_destination_that_refuses_the_first_session_is_one_line_and_exit_2(tmp_path):
    source = clip(tmp_path, "camera.mp4", width=96, height=64, frames=30, rate=15)
    recording = tmp_path / "depth.mp4"
    refused = "rtsp://127.0.0.1:9/depth"  # nothing listens there
    process = start_pipeline(source, "--realtime", "-o", refused, "--record", recording)
    _, stderr = process.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and len(errors) == 1 and refused in errors[0], stderr[-3000:]
    assert "cannot publish there" in errors[0] and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.mp4"], "no partial recording left"


def frames_in_whole_fragments(recording: Path | None, scratch: Path) -> int:
    """Frames a fragmented MP4 being written holds in its complete fragments (what a kill now would keep)."""
    from pipeline.stages.sinks.output_files import complete_fragments_length

    if recording is None or not recording.exists():
        return 0
    whole = complete_fragments_length(recording)
    if not whole:
        return 0
    copy = scratch / "whole_fragments.mp4"
    with open(recording, "rb") as source:
        copy.write_bytes(source.read(whole))
    return read_video(copy)["count"]


def test_a_killed_live_run_keeps_what_it_recorded(tmp_path):
    """A SIGKILL (or the kernel's OOM killer) left an unplayable '.NAME.<id>.partial.mp4' that nothing cleaned, and
    the whole recording was lost: recordings are fragmented MP4 (a fragment a second, each playable once written),
    and the next run keeps a killed run's recording beside its own."""
    from tests.test_cli_faults import end_agents, ray_agents

    # 60 s in real time: the kill comes long before its end at any speed (a 10 s clip could end first, or drop to
    # under a size asked for, on a busy machine)
    source = clip(tmp_path, "camera.mp4", width=96, height=64, frames=1800, rate=30)
    recording = tmp_path / "live_depth.mp4"
    first = start_pipeline(source, "--realtime", "--record", recording)
    partial = lambda: next(tmp_path.glob(".live_depth.*.partial.mp4"), None)  # noqa: E731
    wait_for(lambda: frames_in_whole_fragments(partial(), tmp_path) >= 30, 300, "30 frames in whole fragments")
    own_agents = ray_agents(of=first.pid)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert partial() is not None

    short = clip(tmp_path, "short.mp4", width=96, height=64, frames=15, rate=30)
    second = start_pipeline(short, "--realtime", "--record", recording)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr[-3000:]
    [recovered] = tmp_path.glob("live_depth.recovered-*.mp4")
    assert "kept what a killed run recorded" in stderr and str(recovered) in stderr
    assert read_video(recovered)["count"] >= 30, "the whole fragments written before the kill play"
    assert read_video(recording)["count"] == json.loads(stdout)["frames_out"] > 0
    assert not list(tmp_path.glob(".live_depth.*")), "no leftover"
    end_agents(own_agents)
