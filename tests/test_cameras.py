"""Many cameras in one job, with real peers on 127.0.0.1: GStreamer RTSP cameras of different sizes (tests/
rtsp_camera.py), FFmpeg's RTSP listen mode as the servers the depth is published to, a camera file played in real
time with a recording, the HTTP control API, and the CLI as a process of its own, stopped by SIGTERM.

One job runs through the whole story (a Ray start and a model load cost more than each step): three cameras of
three sizes; a camera added and one removed over HTTP; a camera's process killed (restarted); one camera stopped
and started again at another size while the others keep flowing; bad requests; SIGTERM and the summary. A bad cameras file fails before anything starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import test_live
from tests.clips import clip, read_video
from tests.live_peers import Camera, Receiver, control_url
from tests.test_live import MODEL, moving, wait_for

PROJECT = Path(__file__).resolve().parents[1]
needs_rtsp = test_live.pytestmark  # skipped without GStreamer's RTSP server (unless REQUIRE_RTSP)


TOKEN = "the-cameras-test-token-0123456789"


def call(base: str, method: str, path: str, body=None, token: str | None = TOKEN) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null") if path != "/metrics" else answer.read()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def camera_figures(base: str, name: str) -> dict:
    return next(camera for camera in call(base, "GET", "/cameras")[1]["cameras"] if camera["name"] == name)


def frames_since(receiver: Receiver, moment: float) -> int:
    return sum(arrived > moment for arrived, _ in receiver.frames)


def sizes_since(receiver: Receiver, moment: float) -> set:
    return {picture.shape for arrived, picture in receiver.frames if arrived > moment}


@needs_rtsp
def test_three_cameras_added_removed_restarted_at_another_size_and_stopped(tmp_path):
    cameras = {"wide": Camera(160, 96, 15), "small": Camera(96, 64, 15)}
    for camera in cameras.values():
        camera.start()
    receivers = {name: Receiver().start() for name in ("wide", "small", "added")}
    played = clip(tmp_path, "lobby.mp4", width=64, height=48, frames=600, rate=15)  # 40 s in real time
    recording = tmp_path / "lobby_depth.mp4"
    file = tmp_path / "cameras.yaml"
    file.write_text(json.dumps({"cameras": [
        {"name": "wide", "input": cameras["wide"].url, "output": receivers["wide"].url},
        {"name": "small", "input": cameras["small"].url, "output": receivers["small"].url, "colormap": "turbo"},
        {"name": "lobby", "input": str(played), "realtime": True, "record": str(recording), "depth_format": "gray"},
    ]}))
    # Batches wait for other cameras' frames up to 60 ms (15 fps cameras: a frame every 67 ms each)
    preset = tmp_path / "live.yaml"
    preset.write_text("live:\n  batch_wait_ms: 60\n")
    token_file, recordings = tmp_path / "token", tmp_path / "recordings"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    process = subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), "live", str(file), "--control",
                                "127.0.0.1:0", "--config", str(preset), *MODEL, "--batch-size", "4",
                                "--control-token-file", token_file, "--recordings-dir", recordings], cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    added = Camera(128, 80, 15)
    try:
        base = control_url(process)
        # At once, while the file's cameras are being added: a POST with a file camera's name (and recording) once
        # ended the whole job with exit 2; now it is answered (503 while starting) and the job goes on
        status, _ = call(base, "POST", "/cameras", {"name": "lobby", "input": cameras["wide"].url,
                                                    "record": "lobby_depth.mp4"})
        assert status in (503, 409), status
        assert call(base, "GET", "/healthz", token=None)[0] == 200  # the probes need no token
        assert call(base, "GET", "/cameras", token=None)[0] == 401
        assert call(base, "GET", "/cameras", token="not-the-token-of-this-job-000")[0] == 401
        wait_for(lambda: call(base, "GET", "/readyz")[0] == 200, 90, "every camera connected")
        wait_for(lambda: all(len(receivers[n].frames) >= 12 for n in ("wide", "small")), 60, "depth at both servers")
        # Each camera's depth at its own size, fresh (moving), from one job
        assert sizes_since(receivers["wide"], 0) == {(96, 160)} and sizes_since(receivers["small"], 0) == {(64, 96)}
        assert moving([picture for _, picture in receivers["small"].frames[-10:]])
        status, listed = call(base, "GET", "/cameras")
        assert status == 200 and {c["name"] for c in listed["cameras"]} == {"wide", "small", "lobby"}
        for camera in listed["cameras"]:
            assert camera["state"] == "running" and camera["frames_out"] > 0 and camera["fps_in"] > 5, camera

        # A camera added over HTTP while the job runs; one removed
        added.start()
        assert call(base, "POST", "/cameras", {"name": "added", "input": added.url, "record": "../added.mp4"})[0] == 403
        assert call(base, "POST", "/cameras", {"name": "added", "input": str(played), "realtime": True,
                                               "record": "added.mp4"})[0] == 403  # a local file over HTTP
        status, body = call(base, "POST", "/cameras", {"name": "added", "input": added.url,
                                                       "output": receivers["added"].url, "record": "added.mp4"})
        assert status == 201 and body["name"] == "added" and body["record"] == str(recordings / "added.mp4")
        wait_for(lambda: len(receivers["added"].frames) >= 10, 60, "depth of the added camera")
        assert sizes_since(receivers["added"], 0) == {(80, 128)}
        # The added camera's process dies: Ray starts it again, the pool runs it again, its depth flows again
        killed = time.monotonic()
        os.kill(camera_figures(base, "added")["pid"], signal.SIGKILL)
        wait_for(lambda: camera_figures(base, "added").get("restarts", 0) >= 1, 60, "the camera restarted")
        wait_for(lambda: frames_since(receivers["added"], killed + 1) >= 10, 60, "depth again after the restart")
        status, body = call(base, "DELETE", "/cameras/small")
        assert status == 200 and body["summary"]["frames_out"] > 0 and body["summary"]["output"]
        removed = time.monotonic()
        time.sleep(1.0)
        assert frames_since(receivers["small"], removed + 0.5) == 0, "a removed camera publishes no more"

        # Bad requests: answered, and nothing in the job breaks
        assert call(base, "POST", "/cameras", b"{oops")[0] == 400
        assert call(base, "POST", "/cameras", {"name": "wide", "input": added.url, "output": "rtsp://127.0.0.1:9/x"}) \
            [0] == 409
        assert call(base, "POST", "/cameras", {"name": "n", "input": added.url, "output": "x", "zoom": 2})[0] == 400
        assert call(base, "DELETE", "/cameras/small")[0] == 404

        # One camera goes away and comes back at another size; the others keep flowing meanwhile
        cameras["wide"].stop()
        outage = time.monotonic()
        # (counted, not timed: a busy machine may take longer, and the camera stays away until restarted below)
        wait_for(lambda: frames_since(receivers["added"], outage + 0.5) >= 15, 60,
                 "the other cameras' frames going on during the outage")
        wait_for(lambda: {c["name"]: c["state"] for c in call(base, "GET", "/cameras")[1]["cameras"]}["wide"]
                 == "reconnecting", 30, "the camera that went away reconnecting")
        status, listed = call(base, "GET", "/cameras")
        states = {c["name"]: c["state"] for c in listed["cameras"]}
        assert states["wide"] == "reconnecting" and states["added"] == "running", states
        cameras["wide"].size = (112, 64, 15)  # the same URL, another resolution
        cameras["wide"].start()
        returned = time.monotonic()
        wait_for(lambda: (64, 112) in sizes_since(receivers["wide"], returned), 60, "depth at the camera's new size")
        # The new size's pictures (the old session's last filler frames can still arrive, flushed as it closes)
        resized = lambda: [picture for arrived, picture in receivers["wide"].frames  # noqa: E731
                           if arrived > returned and picture.shape == (64, 112)]
        wait_for(lambda: len(resized()) >= 20, 30, "frames after the return")
        assert moving(resized()[-10:])
        status, metrics = call(base, "GET", "/metrics")
        assert status == 200 and b'depth_camera_frames_out_total{camera="added"}' in metrics
        assert b'depth_camera_up{camera="wide",state="running"} 1.0' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=90)
        for receiver in receivers.values():
            receiver.stop()
        for camera in [*cameras.values(), added]:
            if camera.process is not None and camera.process.poll() is None:
                camera.stop()
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert set(summary["cameras"]) == {"wide", "small", "lobby", "added"}  # every camera that ran, removed or not
    wide = summary["cameras"]["wide"]
    assert wide["reconnects"] >= 1 and wide["size_changes"] >= 1 and wide["frames_out"] > 40, wide
    for name, camera in summary["cameras"].items():
        assert camera["frames_out"] > 0 and camera["frames_out"] + camera["dropped"] <= camera["frames_in"] + 1, name
        assert set(camera["latency_ms"]) == {"p50", "p95", "max"}
    batches = summary["model_batches"]
    # Frames of several cameras shared passes (1.0 would mean never: each camera alone through the network)
    assert batches["count"] > 0 and batches["mean_frames"] > 1 and batches["mean_cameras"] > 1.05, batches
    # The recording was closed cleanly: a whole file with every frame it wrote
    assert read_video(recording)["count"] == summary["cameras"]["lobby"]["frames_out"]
    # The camera added over HTTP recorded inside the recordings folder, and nowhere else
    assert (recordings / "added.mp4").exists() and not (tmp_path / "added.mp4").exists()


def test_a_bad_cameras_file_fails_before_anything_starts(tmp_path, capsys, monkeypatch):
    import pipeline.cluster.runtime
    from tests.test_cli_faults import assert_one_line_error, run_cli

    monkeypatch.setattr(pipeline.cluster.runtime, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    file = tmp_path / "cameras.yaml"
    file.write_text("cameras:\n  - {name: door, input: rtsp://127.0.0.1:9/x, output: rtsp://127.0.0.1:9/y, "
                    "colormap: nope}\n")
    code, err = run_cli(capsys, "live", str(file), *MODEL)
    assert_one_line_error(code, err, "camera 'door': colormap must be one of")
    code, err = run_cli(capsys, "live", str(tmp_path / "missing.yaml"), *MODEL)
    assert_one_line_error(code, err, "missing.yaml: cameras file not found")
    file.write_text("cameras:\n  - {name: door, input: rtsp://127.0.0.1:9/x, output: rtsp://127.0.0.1:9/y}\n")
    code, err = run_cli(capsys, "live", str(file), "--control", "localhost", *MODEL)
    assert_one_line_error(code, err, "--control localhost: expected HOST:PORT")


@needs_rtsp
def test_cameras_changed_over_http_survive_a_sigkill_and_a_sigterm(tmp_path):
    """The same command after a crash or a restart serves the cameras as they were changed over HTTP: a camera added
    and one removed, then the job SIGKILLed (the cameras file rewritten at each change, atomically: nothing to
    flush); another added, then SIGTERM. Real GStreamer cameras; each run records."""
    from tests.test_cli_faults import end_agents, ray_agents

    own_agents = set()
    feeds = {name: Camera(96, 64, 15) for name in ("door", "yard", "gate")}
    for feed in feeds.values():
        feed.start()
    recordings = tmp_path / "recordings"
    file = tmp_path / "cameras.yaml"
    file.write_text(json.dumps({"cameras": [{"name": "door", "input": feeds["door"].url,
                                             "record": str(tmp_path / "door.mp4")}]}))
    command = [sys.executable, str(PROJECT / "run_pipeline.py"), "live", str(file), "--control", "127.0.0.1:0",
               *MODEL, "--recordings-dir", str(recordings)]
    processes = []

    def start() -> str:
        processes.append(subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        base = control_url(processes[-1])
        wait_for(lambda: call(base, "GET", "/readyz", token=None)[0] == 200, 90, "every camera connected")
        own_agents.update(ray_agents(of=processes[-1].pid))
        return base

    def flowing(base: str) -> dict:
        cameras = call(base, "GET", "/cameras", token=None)[1]["cameras"]
        wait_for(lambda: all(camera_figures(base, c["name"]).get("frames_out", 0) >= 5 for c in cameras), 60, "depth")
        return {camera["name"]: camera for camera in call(base, "GET", "/cameras", token=None)[1]["cameras"]}

    try:
        base = start()
        status, body = call(base, "POST", "/cameras", {"name": "yard", "input": feeds["yard"].url,
                                                       "record": "yard.mp4"}, token=None)
        assert status == 201 and body["persisted"] is True
        status, body = call(base, "DELETE", "/cameras/door", token=None)
        assert status == 200 and body["persisted"] is True
        assert set(flowing(base)) == {"yard"}
        partial = lambda: next(recordings.glob(".yard.*.partial.mp4"), None)  # noqa: E731
        wait_for(lambda: partial() is not None and partial().stat().st_size > 5_000, 60, "a fragment recorded")
        processes[-1].send_signal(signal.SIGKILL)  # a crash: no chance to save anything
        processes[-1].communicate(timeout=30)

        base = start()  # the same command
        assert set(flowing(base)) == {"yard"}
        status, body = call(base, "POST", "/cameras", {"name": "gate", "input": feeds["gate"].url,
                                                       "record": "gate.mp4"}, token=None)
        assert status == 201 and body["persisted"] is True
        assert set(flowing(base)) == {"yard", "gate"}
        processes[-1].send_signal(signal.SIGTERM)
        stdout, stderr = processes[-1].communicate(timeout=90)
        assert processes[-1].returncode == 0, stderr[-3000:]
        assert set(json.loads(stdout)["cameras"]) == {"yard", "gate"}

        finished = {name: (recordings / f"{name}.mp4").read_bytes() for name in ("yard", "gate")}
        base = start()  # and again, after a clean stop
        assert set(flowing(base)) == {"yard", "gate"}
        # (the killed run's recording was kept by the next run; the file's previous version beside it)
        assert (tmp_path / "cameras.yaml.bak").exists() and list(recordings.glob("yard.recovered-*.mp4"))
        # Recordings asked for over HTTP are never replaced, across restarts too: this run records beside them
        assert {name: (recordings / f"{name}.mp4").read_bytes() for name in ("yard", "gate")} == finished
        wait_for(lambda: list(recordings.glob(".yard-2.*.partial.mp4")) and list(
            recordings.glob(".gate-2.*.partial.mp4")), 60, "this run's own recordings")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=90)
        for feed in feeds.values():
            feed.stop()
        end_agents(own_agents)
