"""The many-camera job's HTTP control API (pipeline/jobs/control_api.py) and its policy (jobs/cameras.py), without Ray:
a real HTTP server on 127.0.0.1 over a `CameraService` whose camera pool is a stand-in that keeps what it was asked
(the Ray side, camera_supervisor.py, runs in tests/test_cameras.py with real cameras). Bad requests, malformed HTTP, the
cameras file's errors, and the metrics' format."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import PipelineError
from pipeline.jobs.cameras import CameraService, camera_from_entry, read_cameras_file
from pipeline.jobs.control_api import ControlServer, parse_address
from pipeline.settings import load_settings
from tests.clips import clip


class SupervisorStandIn:
    """What CameraService asks of the graph's camera pool, kept in memory; each camera's figures as a live one's."""

    def __init__(self):
        self.started, self.stopped = [], []
        self.previews = 0  # pictures encoded for viewers

    def start(self, camera):
        self.started.append(camera.name)

    def stats(self):
        return {name: {"state": "running", "frames_in": 30, "frames_out": 29, "dropped": 1, "reconnects": 0,
                       "fps_in": 15.0, "fps_out": 14.5, "latency_ms": {"p50": 40.0, "p95": 61.0},
                       "flicker_pct": 0.42, "queue": 1, "peak_rss_mb": 250.0}
                for name in self.started if name not in self.stopped}

    def preview(self, name, newer_than=0):
        """A camera making a new 64 x 48 picture (a bar at a new place) every 20 ms; none for `dark` yet."""
        if name not in self.started or name in self.stopped:
            raise KeyError(name)
        if name == "dark":
            return None
        number = int(time.monotonic() * 50)
        if number <= newer_than:
            return None
        self.previews += 1
        picture = np.zeros((48, 64, 3), np.uint8)
        picture[:, number % 64] = (255, 128, 0)
        return number, cv2.imencode(".jpg", picture)[1].tobytes()

    def stop(self, name):
        self.stopped.append(name)
        return {"frames_in": 30, "frames_out": 29}

    def stop_all(self, names):
        return {name: self.stop(name) for name in names}

    def batching(self):
        return {"count": 12, "mean_frames": 2.5, "mean_cameras": 2.0,
                "seconds": {"buckets": [0, 0, 0, 2, 9, 12, 12, 12, 12, 12, 12], "sum": 0.9}}


@pytest.fixture()
def api():
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    service.running()  # (the cameras file's cameras are in)
    server = ControlServer("127.0.0.1", 0).start(service)
    host, port = server.server.server_address[:2]
    yield service, host, port
    server.close()


def request(host, port, method, path, body=None, headers=None):
    """One request as a client that is no browser sends it (a body as JSON, unless `headers` say otherwise)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    if data is not None:
        headers = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=data, headers=headers or {})
    answer = connection.getresponse()
    payload = answer.read()
    connection.close()
    kind = answer.getheader("Content-Type", "")
    return answer.status, json.loads(payload) if kind.startswith("application/json") else payload.decode()


CAMERA = {"name": "door", "input": "rtsp://127.0.0.1:9/door", "output": "rtsp://127.0.0.1:9/door-depth"}


def test_cameras_are_added_listed_and_removed(api):
    service, host, port = api
    assert request(host, port, "GET", "/healthz") == (200, {"status": "ok"})
    status, body = request(host, port, "GET", "/readyz")
    assert status == 503 and "model is loading" in body["reason"]
    service.model_loaded = True
    assert request(host, port, "GET", "/readyz")[0] == 200  # no camera yet: nothing to wait for

    status, body = request(host, port, "POST", "/cameras", {**CAMERA, "colormap": "turbo"})
    assert status == 201 and body["name"] == "door" and service.supervisor.started == ["door"]
    status, body = request(host, port, "GET", "/cameras")
    assert status == 200 and [c["name"] for c in body["cameras"]] == ["door"]
    camera = body["cameras"][0]
    assert camera["state"] == "running" and camera["frames_out"] == 29 and camera["latency_ms"]["p95"] == 61.0
    assert request(host, port, "GET", "/cameras/door")[1]["output"] == CAMERA["output"]

    status, body = request(host, port, "DELETE", "/cameras/door")
    assert status == 200 and body["summary"]["frames_out"] == 29
    assert request(host, port, "GET", "/cameras")[1]["cameras"] == []
    # The same name may be used again once the camera is gone
    assert request(host, port, "POST", "/cameras", CAMERA)[0] == 201
    summary = service.stop_all()
    assert set(summary["cameras"]) == {"door"} and summary["model_batches"]["mean_cameras"] == 2.0


@pytest.mark.parametrize("method, path, body, headers, status, says", [
    ("POST", "/cameras", b"{not json", None, 400, "not valid JSON"),
    ("POST", "/cameras", [CAMERA], None, 400, "must be a mapping"),
    ("POST", "/cameras", {**CAMERA, "fps": 30}, None, 400, "unknown key 'fps'"),
    ("POST", "/cameras", {**CAMERA, "colormap": "rainbowish"}, None, 400, "colormap must be one of"),
    ("POST", "/cameras", {**CAMERA, "name": "a/b"}, None, 400, "name must be"),
    ("POST", "/cameras", {**CAMERA, "output": "depth.mp4"}, None, 400, "output must be an rtsp:// URL"),
    ("POST", "/cameras", {"name": "x", "input": "rtsp://h/x"}, None, 400, "needs somewhere to send depth"),
    ("POST", "/cameras", {**CAMERA, "queue": 0}, None, 400, "queue must be from 1 to 64, got 0"),
    ("POST", "/cameras", {**CAMERA, "queue": 10**30}, None, 400, "queue must be from 1 to 64"),
    ("POST", "/cameras", b"{}", {"Content-Length": "\u00b2"}, 400, "Content-Length is not a number"),
    ("POST", "/cameras", b"[" * 60000, None, 400, "nested too deeply"),
    ("POST", "/cameras", {**CAMERA, "input": "/etc/passwd", "realtime": True}, None, 403, "is a local file"),
    ("POST", "/cameras", {**CAMERA, "record": "door.mp4"}, None, 403, "needs a recordings folder"),
    ("POST", "/cameras", b"\xff\xfe", None, 400, "not valid JSON"),
    ("POST", "/cameras", b"0\r\n\r\n", {"Transfer-Encoding": "chunked"}, 411, "Content-Length"),
    ("POST", "/cameras", b"{}", {"Content-Length": "abc"}, 400, "Content-Length"),
    ("POST", "/cameras", b"x" * (65 * 1024), None, 413, "over 65536 bytes"),
    ("DELETE", "/cameras/nobody", None, None, 404, "no camera named 'nobody'"),
    ("GET", "/cameras/nobody", None, None, 404, "no camera named 'nobody'"),
    ("GET", "/nothing-here", None, None, 404, "no such path"),
    ("DELETE", "/healthz", None, None, 405, "not allowed"),
    ("PUT", "/cameras", b"{}", None, 405, "not allowed"),
    ("BREW", "/cameras", None, None, 501, "Unsupported method"),
])
def test_bad_requests_get_a_4xx_with_a_json_error_and_the_job_goes_on(api, method, path, body, headers, status, says):
    service, host, port = api
    request(host, port, "POST", "/cameras", CAMERA)
    got, answer = request(host, port, method, path, body, headers)
    assert got == status and says in answer["error"], answer
    assert request(host, port, "GET", "/cameras")[1]["cameras"][0]["name"] == "door"  # nothing broke
    assert service.supervisor.started == ["door"]


def test_a_name_already_running_or_an_output_taken_is_a_409(api):
    _, host, port = api
    assert request(host, port, "POST", "/cameras", CAMERA)[0] == 201
    status, answer = request(host, port, "POST", "/cameras", CAMERA)
    assert status == 409 and "running already" in answer["error"]
    status, answer = request(host, port, "POST", "/cameras", {**CAMERA, "name": "door2"})
    assert status == 409 and "is camera 'door''s output" in answer["error"]


def test_malformed_http_is_answered_and_the_server_goes_on(api):
    _, host, port = api
    for raw in (b"GARBAGE\r\n\r\n", b"GET /cameras HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, port), timeout=5) as connection:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        status_line = answer.split(b"\r\n")[0].split()
        assert status_line[0] in (b"HTTP/1.0", b"HTTP/1.1") and int(status_line[1]) in (400, 414, 431, 505), answer
        assert answer.endswith(b"}\n") and b'"error"' in answer
    assert request(host, port, "GET", "/healthz")[0] == 200


def test_metrics_are_prometheus_text_with_a_camera_label(api):
    _, host, port = api
    request(host, port, "POST", "/cameras", CAMERA)
    request(host, port, "POST", "/cameras", {**CAMERA, "name": "yard", "output": "rtsp://127.0.0.1:9/yard"})
    status, text = request(host, port, "GET", "/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(text)}
    frames_out = {sample.labels["camera"]: sample.value for sample in families["depth_camera_frames_out"].samples
                  if sample.name.endswith("_total")}
    assert frames_out == {"door": 29.0, "yard": 29.0}
    latency = {(s.labels["camera"], s.labels["quantile"]): s.value for s in families["depth_camera_latency_ms"].samples}
    assert latency[("yard", "0.95")] == 61.0
    assert families["depth_model_batch_mean_cameras"].samples[0].value == 2.0
    # What an operator alerts on: flicker, queue depth, memory, the model's batch time, the job's own process
    for family, value in (("depth_camera_flicker", 0.42), ("depth_camera_queue_frames", 1.0),
                          ("depth_camera_memory_bytes", 250.0 * 2**20)):
        assert {s.labels["camera"]: s.value for s in families[family].samples} == {"door": value, "yard": value}
    histogram = {(s.name, s.labels.get("le")): s.value for s in families["depth_model_batch_seconds"].samples}
    assert histogram[("depth_model_batch_seconds_bucket", "0.05")] == 2 and \
        histogram[("depth_model_batch_seconds_bucket", "+Inf")] == 12 and \
        histogram[("depth_model_batch_seconds_count", None)] == 12
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def test_the_control_address(tmp_path):
    assert parse_address("127.0.0.1:8765") == ("127.0.0.1", 8765) and parse_address(":0") == ("127.0.0.1", 0)
    for bad in ("8765", "host:port", "127.0.0.1:70000"):
        with pytest.raises(PipelineError, match="HOST:PORT"):
            parse_address(bad)
    server = ControlServer("127.0.0.1", 0)
    try:
        with pytest.raises(PipelineError, match="cannot listen there"):
            ControlServer("127.0.0.1", server.server.server_address[1])
    finally:
        server.close()


def write_cameras(tmp_path, cameras) -> str:
    path = tmp_path / "cameras.yaml"
    path.write_text(json.dumps({"cameras": cameras}))  # JSON is YAML
    return str(path)


def test_a_bad_cameras_file_is_one_line_naming_the_camera_and_the_key(tmp_path):
    settings = load_settings(None, {})
    video = clip(tmp_path, "lobby.mp4", width=64, height=48, frames=4)
    good = {"name": "lobby", "input": str(video), "realtime": True, "record": str(tmp_path / "lobby_depth.mp4")}
    assert [c.name for c in read_cameras_file(write_cameras(tmp_path, [good, CAMERA]), settings)] == ["lobby", "door"]
    cases = [
        ([CAMERA, CAMERA], "camera 'door': name door is camera 'door''s too"),
        ([CAMERA, {**CAMERA, "name": "door2"}], "output rtsp://127.0.0.1:9/door-depth is camera 'door''s output"),
        ([{**CAMERA, "depth_format": "gray16"}], "camera 'door': depth_format gray16 cannot be published"),
        ([{**good, "depth_format": "exr"}], "camera 'lobby': depth_format exr writes folders of frames, for files"),
        ([{**CAMERA, "drop": "newest"}], "camera 'door': drop must be one of oldest, every-k"),
        ([{**CAMERA, "smoothing": {"name": "ema", "params": {"alpha": 7}}}], "camera 'door': smoothing"),
        ([{**CAMERA, "smoothing": "blurry"}], "camera 'door': smoothing must be one of"),
        ([{**good, "realtime": False}], "is a file: a file stands in for a camera only with realtime: true"),
        ([{**good, "input": str(tmp_path / "missing.mp4")}], "missing.mp4: file not found"),
        ([{**good, "record": str(video)}], "the recording would overwrite the input"),
        ([{**CAMERA, "realtime": True}], "realtime is for a file input"),
        ([{**CAMERA, "record": "rtsp://127.0.0.1/x"}], "record must be a file"),
    ]
    for cameras, says in cases:
        with pytest.raises(PipelineError) as error:
            read_cameras_file(write_cameras(tmp_path, cameras), settings)
        assert says in str(error.value) and "cameras.yaml" in str(error.value), (says, str(error.value))
        assert "\n" not in str(error.value)
    for text, says in (("cameras: 3", "expected `cameras:` with a list"), ("[1, 2]", "expected `cameras:`"),
                       ("cameras: [a: b", "not valid YAML"), ("cameras:\n  - 5", "a camera must be a mapping")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(PipelineError, match="bad.yaml") as error:
            read_cameras_file(str(tmp_path / "bad.yaml"), settings)
        assert says in str(error.value)
    for empty in ("cameras: []", "cameras:\n# all removed over HTTP\n"):  # a service whose cameras come over HTTP
        (tmp_path / "empty.yaml").write_text(empty)
        assert read_cameras_file(str(tmp_path / "empty.yaml"), settings) == []
    with pytest.raises(PipelineError, match="cameras file not found"):
        read_cameras_file(str(tmp_path / "none.yaml"), settings)
    per_camera = camera_from_entry({**CAMERA, "colormap": "turbo", "drop": "every-k", "keep_every": 3}, settings, "x")
    assert per_camera.settings.output.colormap == "turbo" and per_camera.settings.live.keep_every == 3
    assert settings.output.colormap == "inferno", "a camera's settings are its own"


# ---------------------------------------------------------------------------------------------------------------------
# Locked down: a token, recordings confined to a folder, changes only while the service runs, limits


TOKEN = "a-token-of-the-tests-0123456789"


@pytest.fixture()
def locked_api(tmp_path):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    settings = load_settings(None, {"live.recordings_dir": str(recordings), "live.max_cameras": 3})
    service = CameraService(settings, SupervisorStandIn())
    service.running()
    # (the tests send many wrong tokens on purpose: the limit is tested on a server of its own)
    server = ControlServer("127.0.0.1", 0, token=TOKEN, failed_attempts=1000).start(service)
    host, port = server.server.server_address[:2]
    yield service, host, port, recordings
    server.close()


def bearer(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_with_a_token_every_request_but_the_probes_needs_it(locked_api):
    service, host, port, _ = locked_api
    for path in ("/healthz", "/metrics"):
        assert request(host, port, "GET", path)[0] == 200, path
    assert request(host, port, "GET", "/readyz")[0] == 503  # open too (the model is loading)
    for method, path, body in (("GET", "/cameras", None), ("POST", "/cameras", CAMERA), ("GET", "/cameras/door", None),
                               ("DELETE", "/cameras/door", None), ("GET", "/", None), ("PUT", "/cameras", b"{}"),
                               ("POST", "/metrics", b"{}")):
        for headers in (None, bearer("wrong-token-of-the-same-length-x"), {"Authorization": TOKEN},
                        {"Cookie": f"depth_session_{port}=nope"}, {"Cookie": f"depth_token={TOKEN}"}):
            status, answer = request(host, port, method, path, body, headers)
            assert status == 401 and "token" in answer["error"], (method, path, headers, answer)
    assert service.supervisor.started == [], "nothing ran without the token"
    status, body = request(host, port, "POST", "/cameras", CAMERA, bearer())
    assert status == 201 and service.supervisor.started == ["door"]
    assert request(host, port, "GET", "/cameras", None, bearer())[1]["cameras"][0]["name"] == "door"
    assert request(host, port, "DELETE", "/cameras/door", None, bearer())[0] == 200


def test_wrong_tokens_are_slowed_per_client_and_the_right_one_always_passes():
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    server = ControlServer("127.0.0.1", 0, token=TOKEN, failed_attempts=5).start(service)
    host, port = server.server.server_address[:2]
    try:
        for _ in range(4):
            assert request(host, port, "GET", "/cameras", None, bearer("wrong"))[0] == 401
        status, answer = request(host, port, "GET", "/cameras", None, bearer("wrong"))
        assert status == 429 and "too many wrong tokens" in answer["error"]
        assert request(host, port, "GET", f"/?token=wrong-token-{'x' * 8}")[0] == 429  # the URL's token counts too
        # The operator's own curl, and a dashboard tab with a stale cookie polling meanwhile, still get in
        assert request(host, port, "GET", "/cameras", None, bearer())[0] == 200
        for _ in range(12):
            assert request(host, port, "GET", "/cameras", None, {"Cookie": f"depth_session_{port}=1.stale"})[0] == 401
        assert request(host, port, "GET", "/cameras", None, bearer())[0] == 200
        assert request(host, port, "GET", "/healthz")[0] == 200  # the probes stay open
    finally:
        server.close()


def session_cookie(host, port) -> str:
    """The cookie a browser gets for GET /?token=TOKEN (name=value)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", f"/?token={TOKEN}")
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 303 and answer.getheader("Location") == "/"
    cookie = answer.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=" in cookie
    return cookie.split(";")[0]


def test_a_browser_trades_the_token_for_a_session_of_this_port_never_the_token(locked_api):
    service, host, port, _ = locked_api
    cookie = session_cookie(host, port)
    name, value = cookie.split("=", 1)
    assert name == f"depth_session_{port}" and TOKEN not in value and value.split(".")[0].isdigit()
    assert request(host, port, "GET", "/", None, {"Cookie": cookie})[0] == 200
    assert request(host, port, "GET", "/cameras", None, {"Cookie": f"other=1; {cookie}"})[0] == 200
    assert request(host, port, "GET", "/?token=wrong-token")[0] == 401
    # A second service on the host, with the same token: its cookie has its own name, and this one does not open it
    other = ControlServer("127.0.0.1", 0, token=TOKEN).start(CameraService(load_settings(None, {}),
                                                                           SupervisorStandIn()))
    try:
        other_port = other.server.server_address[1]
        assert request(host, other_port, "GET", "/cameras", None, {"Cookie": cookie})[0] == 401
        assert request(host, other_port, "GET", "/cameras", None,
                       {"Cookie": f"depth_session_{other_port}={value}"})[0] == 401  # (bound to its port)
    finally:
        other.close()
    # Changes with the cookie: only from the dashboard's own origin
    origin = {"Cookie": cookie, "Origin": f"http://{host}:{port}"}
    assert request(host, port, "POST", "/cameras", CAMERA, origin)[0] == 201
    for refused in ({"Cookie": cookie}, {"Cookie": cookie, "Origin": "http://127.0.0.1:1"},
                    {"Cookie": cookie, "Sec-Fetch-Site": "same-site"}):
        status, answer = request(host, port, "DELETE", "/cameras/door", None, refused)
        assert status == 403, (refused, answer)
    assert request(host, port, "DELETE", "/cameras/door", None, {**origin, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert service.supervisor.stopped == ["door"]


def test_recordings_over_http_stay_inside_the_recordings_folder(locked_api, tmp_path):
    service, host, port, recordings = locked_api
    outside = tmp_path / "outside"
    outside.mkdir()
    (recordings / "escape").symlink_to(outside)
    (recordings / "taken.mp4").write_bytes(b"the user's")
    (recordings / "door").mkdir()
    cases = [
        (str(tmp_path / "anywhere.mp4"), 403, "must be a relative name"),
        ("../anywhere.mp4", 403, "must be a relative name"),
        ("door/../../anywhere.mp4", 403, "must be a relative name"),
        ("escape/out.mp4", 403, "leads through a symlink"),
        ("escape/deeper/out.mp4", 403, "leads through a symlink"),
        ("taken.mp4", 409, "exists in the recordings folder"),
        ("", 400, "record must be a file name"),
        (7, 400, "record must be a file name"),
        ("door/today.mp4\n", 400, "no control characters"),
        ("door/to\x1bday.mp4", 400, "no control characters"),
        ({**CAMERA, "record": "x.mp4", "keep_recordings": False}, 400, "keep_recordings is the service's"),
    ]
    for record, status, says in cases:
        entry = record if isinstance(record, dict) else {**CAMERA, "record": record}
        got, answer = request(host, port, "POST", "/cameras", entry, bearer())
        assert got == status and says in answer["error"], (record, answer)
    assert sorted(p.name for p in outside.iterdir()) == [] and (recordings / "taken.mp4").read_bytes() == b"the user's"
    assert service.supervisor.started == []
    status, body = request(host, port, "POST", "/cameras", {**CAMERA, "record": "door/today.mp4"}, bearer())
    assert status == 201 and body["record"] == str((recordings / "door" / "today.mp4").resolve())
    # The docs' own example in a fresh folder: its sub-folders are made inside the recordings folder
    status, body = request(host, port, "POST", "/cameras", {**CAMERA, "name": "gate", "output": "rtsp://h:9/g",
                                                            "record": "gate/2026/today.mp4"}, bearer())
    assert status == 201 and (recordings / "gate" / "2026").is_dir() and not (recordings / "gate").is_symlink()
    # A local file as input is refused over HTTP (the cameras file may name one)
    video = clip(tmp_path, "lobby.mp4", width=64, height=48, frames=4)
    status, answer = request(host, port, "POST", "/cameras", {"name": "lobby", "input": str(video), "realtime": True,
                                                               "output": "rtsp://127.0.0.1:9/l"}, bearer())
    assert status == 403 and "is a local file" in answer["error"]


def test_the_cameras_limit_and_changes_only_while_running(locked_api):
    service, host, port, _ = locked_api
    for index in range(3):
        assert request(host, port, "POST", "/cameras", {**CAMERA, "name": f"c{index}",
                                                        "output": f"rtsp://127.0.0.1:9/{index}"}, bearer())[0] == 201
    status, answer = request(host, port, "POST", "/cameras", {**CAMERA, "name": "c4"}, bearer())
    assert status == 429 and "live.max_cameras" in answer["error"]
    service.stopping()  # SIGTERM: requests from now on are not taken
    for method, path, body in (("POST", "/cameras", {**CAMERA, "name": "late"}), ("DELETE", "/cameras/c0", None)):
        status, answer = request(host, port, method, path, body, bearer())
        assert status == 503 and "stopping" in answer["error"], answer
    assert service.supervisor.started == ["c0", "c1", "c2"] and service.supervisor.stopped == []


def test_changes_wait_until_the_cameras_file_is_in():
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    server = ControlServer("127.0.0.1", 0).start(service)
    host, port = server.server.server_address[:2]
    try:
        status, answer = request(host, port, "POST", "/cameras", CAMERA)
        assert status == 503 and "starting" in answer["error"]
        # the file's camera of that name then starts as it should
        service.add(camera_from_entry(CAMERA, service.settings, "file"))
        service.running()
        assert request(host, port, "POST", "/cameras", {**CAMERA, "name": "other", "output": "rtsp://h/o"})[0] == 201
    finally:
        server.close()
    assert service.supervisor.started == ["door", "other"]


def test_a_recording_never_takes_another_cameras_file_however_spelled(tmp_path, monkeypatch):
    settings = load_settings(None, {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sec").mkdir()
    video = clip(tmp_path / "sec", "door.mp4", width=64, height=48, frames=4)
    door = {"name": "gate", "input": "sec/door.mp4", "realtime": True, "output": "rtsp://127.0.0.1:9/d"}
    for record in ("sec/door.mp4", str(video), "./sec/../sec/door.mp4"):
        with pytest.raises(PipelineError, match="is camera 'gate''s input"):
            read_cameras_file(write_cameras(tmp_path, [door, {**CAMERA, "record": record}]), settings)
    (tmp_path / "hard.mp4").hardlink_to(video)
    with pytest.raises(PipelineError, match="is camera 'gate''s input"):
        read_cameras_file(write_cameras(tmp_path, [door, {**CAMERA, "record": "hard.mp4"}]), settings)
    with pytest.raises(PipelineError, match="is camera 'gate''s recording"):
        read_cameras_file(write_cameras(tmp_path, [{**door, "record": "out.mp4"},
                                                   {**CAMERA, "record": str(tmp_path / "out.mp4")}]), settings)
    # Added later (a camera of the file running): the same rule, a 409
    service = CameraService(settings, SupervisorStandIn())
    service.add(camera_from_entry(door, settings, "file"))
    with pytest.raises(PipelineError, match="is camera 'gate''s input") as error:
        service.add(camera_from_entry({**CAMERA, "record": "./sec/../sec/door.mp4"}, settings, "file"))
    assert error.value.status == 409
    assert video.stat().st_size > 0 and service.supervisor.started == ["gate"]


def test_cameras_that_can_never_work_say_so(tmp_path):
    settings = load_settings(None, {})
    with pytest.raises(PipelineError, match="input /etc/passwd: not a readable video"):
        read_cameras_file(write_cameras(tmp_path, [{**CAMERA, "input": "/etc/passwd", "realtime": True}]), settings)
    with pytest.raises(PipelineError, match="more than live.max_cameras"):
        read_cameras_file(write_cameras(tmp_path, [{**CAMERA, "name": f"c{i}", "output": f"rtsp://h/{i}"}
                                                   for i in range(33)]), settings)


class ErrorPool(SupervisorStandIn):
    def stats(self):
        return {name: {"state": "connecting", "error": "reading rtsp://admin:hunter2@127.0.0.1:9/door: Connection "
                                                       "refused"} for name in self.started}


def test_readyz_names_each_waiting_camera_and_only_the_token_shows_its_error_never_a_password():
    service = CameraService(load_settings(None, {}), ErrorPool())
    service.model_loaded = True
    service.add(camera_from_entry({**CAMERA, "input": "rtsp://admin:hunter2@127.0.0.1:9/door"}, service.settings,
                                  "file"))
    service.running()
    ready, why = service.ready()
    assert not ready and why == "not connected yet: door (connecting: reading rtsp://***@127.0.0.1:9/door: " \
                                "Connection refused)"
    assert service.ready(details=False) == (False, "not connected yet: door (connecting)")
    server = ControlServer("127.0.0.1", 0, token=TOKEN).start(service)
    host, port = server.server.server_address[:2]
    try:
        status, answer = request(host, port, "GET", "/readyz")  # open: names and states only
        assert status == 503 and answer["reason"] == "not connected yet: door (connecting)"
        status, answer = request(host, port, "GET", "/readyz", None, bearer())
        assert "Connection refused" in answer["reason"] and "hunter2" not in answer["reason"]
        status, answer = request(host, port, "GET", "/cameras", None, bearer())
        camera = answer["cameras"][0]
        assert camera["input"] == "rtsp://***@127.0.0.1:9/door" and "hunter2" not in json.dumps(answer)
        assert camera["error"].endswith("Connection refused")
    finally:
        server.close()


def test_an_unknown_length_twice_or_a_client_leaving_early_is_no_traceback(api, capfd):
    _, host, port = api
    raw = (b"POST /cameras HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 5"
           b"\r\n\r\n{}")
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):  # (an error closes the connection: read to its end)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length given twice" in answer
    for _ in range(20):  # a client that sends a request and leaves before the answer
        with socket.create_connection((host, port), timeout=5) as connection:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    with socket.create_connection((host, port), timeout=5) as connection:  # a body promised and never sent
        connection.sendall(b"POST /cameras HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    assert request(host, port, "GET", "/healthz")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_slow_clients_are_bounded_and_let_go(monkeypatch):
    from pipeline.jobs import control_api

    monkeypatch.setattr(control_api.ControlHandler, "timeout", 1.0)
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    server = ControlServer("127.0.0.1", 0, max_connections=4).start(service)
    host, port = server.server.server_address[:2]
    slow = []
    try:
        for _ in range(4):  # each sends half a request line and waits
            connection = socket.create_connection((host, port), timeout=5)
            connection.sendall(b"GET /cam")
            slow.append(connection)
        time.sleep(0.2)
        status, answer = request(host, port, "GET", "/healthz")
        assert status == 503 and "too many connections" in answer["error"]
        time.sleep(1.5)  # past the read timeout: the slow clients are let go, their threads freed
        assert request(host, port, "GET", "/healthz")[0] == 200
        assert threading.active_count() < 20
    finally:
        for connection in slow:
            connection.close()
        server.close()


def test_the_api_listens_on_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    assert parse_address("[::1]:0") == ("::1", 0)
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    try:
        server = ControlServer("::1", 0).start(service)
    except PipelineError as error:
        pytest.skip(f"no IPv6 loopback here ({error})")
    try:
        assert server.url.startswith("http://[::1]:")
        assert request("::1", server.server.server_address[1], "GET", "/healthz")[0] == 200
    finally:
        server.close()


def test_the_token_and_the_address_it_takes(tmp_path, monkeypatch):
    from pipeline.jobs.control_api import is_loopback, read_token

    monkeypatch.delenv("DEPTH_CONTROL_TOKEN", raising=False)
    assert read_token(None) is None
    monkeypatch.setenv("DEPTH_CONTROL_TOKEN", TOKEN)
    assert read_token(None) == TOKEN
    file = tmp_path / "token"
    file.write_text(f"{TOKEN}-file\nsecond line\n")
    file.chmod(0o600)
    warnings = []
    assert read_token(str(file), warnings.append) == f"{TOKEN}-file" and warnings == []
    file.chmod(0o644)
    read_token(str(file), warnings.append)
    assert len(warnings) == 1 and "can be read by other users" in warnings[0]
    file.write_text("short\n")
    with pytest.raises(PipelineError, match="at least 16 printable characters"):
        read_token(str(file))
    with pytest.raises(PipelineError, match="control token file not found"):
        read_token(str(tmp_path / "none"))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("8.8.8.8")


def test_a_source_that_refuses_says_why_while_it_waits():
    """A camera URL that refuses stayed `connecting` with error null for ever: its last error is in its state."""
    from pipeline.stages.sources.live_stream import LiveSource

    source = LiveSource("rtsp://127.0.0.1:9/door", read_timeout_s=1.0, backoff_s=(0.1, 0.2), log=lambda line: None)
    frames = source.frames()
    reader = threading.Thread(target=lambda: next(frames, None), daemon=True)
    reader.start()
    deadline = time.monotonic() + 20
    while source.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    source.stop()
    reader.join(timeout=10)
    assert source.state == "connecting" or source.state == "ended"
    assert source.last_error is not None and "127.0.0.1:9/door" in source.last_error, source.last_error


USERS_FILE = """\
# The lobby's cameras (ask Ana before changing them)
cameras:
    # the front door, over the gate's switch
    - {name: door, input: "rtsp://127.0.0.1:9/door", output: rtsp://127.0.0.1:9/door-depth}  # main
"""


def cameras_service(tmp_path, path, **file_options):
    """A service over the cameras file `path` (its cameras running), with a recordings folder; its API's address."""
    from pipeline.jobs.cameras_file import CamerasFile

    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    settings = load_settings(None, {"live.recordings_dir": str(recordings)})
    cameras = read_cameras_file(str(path), settings)
    service = CameraService(settings, SupervisorStandIn(), cameras_file=CamerasFile(path, **file_options))
    for camera in cameras:
        service.add(camera)
    service.running()
    server = ControlServer("127.0.0.1", 0).start(service)
    return service, server, *server.server.server_address[:2]


def test_changes_over_http_are_written_back_into_the_file_as_its_user_wrote_it(tmp_path):
    """POST and DELETE edit the cameras file's list and nothing else (its comments and style stay, change after
    change); the copy replaced is kept as .bak; what the same command would read after a restart is what runs now."""
    import yaml

    path = tmp_path / "cameras.yaml"
    path.write_text(USERS_FILE)
    path.chmod(0o600)  # (it holds camera passwords)
    warnings = []
    service, server, host, port = cameras_service(tmp_path, path, warn=warnings.append)
    recordings = tmp_path / "recordings"
    try:
        status, body = request(host, port, "POST", "/cameras", {"name": "yard", "input": "rtsp://127.0.0.1:9/yard",
                                                                "record": "yard.mp4", "colormap": "gray"})
        assert status == 201 and body["persisted"] is True
        written = yaml.safe_load(path.read_text())["cameras"]
        assert [c["name"] for c in written] == ["door", "yard"]
        assert written[1] == {"name": "yard", "input": "rtsp://127.0.0.1:9/yard", "colormap": "gray",
                              "record": str((recordings / "yard.mp4").resolve()), "keep_recordings": True}
        assert path.read_text().startswith(USERS_FILE)  # the user's text untouched, the camera after it
        assert (tmp_path / "cameras.yaml.bak").read_text() == USERS_FILE
        for number in range(3):  # change after change, the comments stay in the file itself
            assert request(host, port, "POST", "/cameras", {"name": f"c{number}", "input": "rtsp://127.0.0.1:9/c",
                                                            "output": f"rtsp://127.0.0.1:9/c{number}"})[1]["persisted"]
            assert request(host, port, "DELETE", f"/cameras/c{number}")[1]["persisted"]
        status, body = request(host, port, "DELETE", "/cameras/door")
        assert status == 200 and body["persisted"] is True
        assert "# The lobby's cameras (ask Ana before changing them)" in path.read_text()
        assert [c.name for c in read_cameras_file(str(path), service.settings)] == ["yard"]  # what a restart runs
        assert [c["name"] for c in yaml.safe_load((tmp_path / "cameras.yaml.bak").read_text())["cameras"]] == \
            ["door", "yard"]
        # The file and its backup keep the file's own mode; nothing else is left beside them
        assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()} == {
            "cameras.yaml": 0o600, "cameras.yaml.bak": 0o600}
        assert request(host, port, "GET", "/cameras")[1]["cameras_file"] == {
            "file": str(path), "persist": True, "problem": None}
        assert warnings == []
    finally:
        server.close()


def test_an_edit_made_while_the_job_runs_is_kept_and_a_symlinked_file_stays_a_link(tmp_path):
    import yaml

    real = tmp_path / "config" / "cameras.yaml"
    real.parent.mkdir()
    real.write_text(USERS_FILE)
    link = tmp_path / "cameras.yaml"
    link.symlink_to(real)
    service, server, host, port = cameras_service(tmp_path, link)
    try:
        # The user adds a camera to the file by hand (for the next start) while the job runs
        real.write_text(real.read_text() + "    - name: shed  # added by hand\n      input: rtsp://127.0.0.1:9/shed\n"
                                           "      output: rtsp://127.0.0.1:9/shed-depth\n")
        assert request(host, port, "POST", "/cameras", {"name": "yard", "input": "rtsp://127.0.0.1:9/yard",
                                                        "output": "rtsp://127.0.0.1:9/yard-depth"})[1]["persisted"]
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert [c["name"] for c in yaml.safe_load(real.read_text())["cameras"]] == ["door", "shed", "yard"]
        assert "# added by hand" in real.read_text()
        assert (real.parent / "cameras.yaml.bak").exists() and not (tmp_path / "cameras.yaml.bak").exists()
        # A file the user broke meanwhile is not overwritten: one warning, persisted false
        real.write_text("cameras: [oops\n")
        status, body = request(host, port, "DELETE", "/cameras/door")
        assert status == 200 and body["persisted"] is False and real.read_text() == "cameras: [oops\n"
        assert "not valid YAML" in request(host, port, "GET", "/cameras")[1]["cameras_file"]["problem"] or \
            "cannot be written" in request(host, port, "GET", "/cameras")[1]["cameras_file"]["problem"]
    finally:
        server.close()


def test_a_flow_style_list_is_written_whole_and_the_users_version_kept_once(tmp_path):
    path = tmp_path / "cameras.yaml"
    flow = "# mine\ncameras: [{name: door, input: rtsp://127.0.0.1:9/door, output: rtsp://127.0.0.1:9/d}]\n"
    path.write_text(flow)
    service, server, host, port = cameras_service(tmp_path, path)
    try:
        for name in ("yard", "gate"):
            assert request(host, port, "POST", "/cameras", {"name": name, "input": f"rtsp://127.0.0.1:9/{name}",
                                                            "output": f"rtsp://127.0.0.1:9/{name}-d"})[1]["persisted"]
        assert (tmp_path / "cameras.yaml.orig").read_text() == flow  # kept once: never overwritten
        assert [c.name for c in read_cameras_file(str(path), service.settings)] == ["door", "yard", "gate"]
    finally:
        server.close()


def test_a_file_that_cannot_be_written_is_one_warning_and_the_change_still_runs(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text(USERS_FILE)
    warnings = []
    service, server, host, port = cameras_service(tmp_path, path, warn=warnings.append)
    path.chmod(0o444)
    try:
        for name in ("gate", "shed"):
            status, body = request(host, port, "POST", "/cameras", {"name": name, "input": f"rtsp://127.0.0.1:9/{name}",
                                                                    "output": f"rtsp://127.0.0.1:9/{name}-d"})
            assert status == 201 and body["persisted"] is False
        assert path.read_text() == USERS_FILE and len(warnings) == 1 and "cannot be written" in warnings[0]
        problem = request(host, port, "GET", "/cameras")[1]["cameras_file"]["problem"]
        assert "cameras.yaml: cannot be written (the file is read-only)" in problem
    finally:
        server.close()
        path.chmod(0o644)


def test_no_persist_leaves_the_cameras_file_alone(tmp_path):
    from pipeline.jobs.cameras_file import CamerasFile

    path = tmp_path / "cameras.yaml"
    path.write_text("cameras: []\n")
    service = CameraService(load_settings(None, {}), SupervisorStandIn(),
                            cameras_file=CamerasFile(path, persist=False))
    service.running()
    camera, persisted = service.add_entry(dict(CAMERA))
    assert camera.name == "door" and persisted is False
    assert service.remove("door")[1] is False
    assert path.read_text() == "cameras: []\n" and not (tmp_path / "cameras.yaml.bak").exists()


def test_snapshot_and_mjpeg_previews_are_made_only_while_watched(api):
    """snapshot.jpg: the last picture (404 before the first, or for a camera not running); preview.mjpg: a
    multipart/x-mixed-replace stream of new pictures at live.preview_fps, nothing made while nobody watches, a
    stalled viewer never in another's way; the stream ends when its camera is removed."""
    service, host, port = api
    supervisor = service.supervisor
    request(host, port, "POST", "/cameras", CAMERA)
    request(host, port, "POST", "/cameras", {**CAMERA, "name": "dark", "output": "rtsp://127.0.0.1:9/dark"})
    time.sleep(0.5)
    assert supervisor.previews == 0  # nobody watches: nothing encoded
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", "/cameras/door/snapshot.jpg")
    answer = connection.getresponse()
    picture = cv2.imdecode(np.frombuffer(answer.read(), np.uint8), cv2.IMREAD_COLOR)
    assert answer.status == 200 and answer.getheader("Content-Type") == "image/jpeg" and picture.shape == (48, 64, 3)
    assert request(host, port, "GET", "/cameras/dark/snapshot.jpg")[0] == 404  # no picture yet
    assert request(host, port, "GET", "/cameras/nobody/snapshot.jpg")[0] == 404
    assert request(host, port, "GET", "/cameras/nobody/preview.mjpg")[0] == 404

    # A viewer that never reads (its socket's buffers small) beside one that reads
    stalled = socket.create_connection((host, port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /cameras/door/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reader = socket.create_connection((host, port), timeout=10)
    reader.sendall(b"GET /cameras/door/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    started, received = time.monotonic(), b""
    while received.count(b"--depthframe") < 11 and time.monotonic() - started < 8:
        received += reader.recv(65536)
    seconds = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"200 OK" in head and b"multipart/x-mixed-replace; boundary=depthframe" in head
    parts = [part for part in body.split(b"--depthframe\r\n") if part]
    pictures = [cv2.imdecode(np.frombuffer(part.partition(b"\r\n\r\n")[2].rstrip(b"\r\n"), np.uint8),
                             cv2.IMREAD_COLOR) for part in parts[:10]]
    assert all(p is not None and p.shape == (48, 64, 3) for p in pictures)
    assert len({p.tobytes() for p in pictures}) == 10  # each part a new picture
    assert 1.4 <= seconds <= 4.0, seconds  # 10 more pictures at 5 a second (live.preview_fps), not as they come
    made = supervisor.previews
    assert made <= 2 * 11 + 4  # the viewers share one poller: about one picture a tick, not one a viewer
    # The camera removed: the reader's stream ends
    request(host, port, "DELETE", "/cameras/door")
    reader.settimeout(5)
    while reader.recv(65536):  # (to its end: the server closes it)
        pass
    reader.close()
    stalled.close()
    time.sleep(0.5)
    after = supervisor.previews
    time.sleep(0.6)
    assert supervisor.previews == after  # no viewers: no more pictures made


def test_the_dashboard_is_served_to_a_browser_with_a_strict_policy(api):
    """GET / with a browser's Accept: the page (its script and style from this origin only); a client asking
    for JSON gets the index of paths."""
    _, host, port = api
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", "/", headers={"Accept": "text/html,application/xhtml+xml"})
    answer = connection.getresponse()
    page = answer.read().decode()
    policy = answer.getheader("Content-Security-Policy")
    assert answer.status == 200 and answer.getheader("Content-Type").startswith("text/html")
    assert "default-src 'self'" in policy and "script-src" not in policy.replace("default-src", "")
    assert '<script src="dashboard.js"' in page and "http" not in page.replace('http-equiv', '')
    for path, kind in (("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
        status, text = request(host, port, "GET", path)
        assert status == 200 and "http://" not in text and "https://" not in text, path
    status, index = request(host, port, "GET", "/")
    assert status == 200 and "GET /cameras/NAME/preview.mjpg" in index["paths"]


def test_what_a_web_page_could_send_is_refused_without_a_token(api):
    service, host, port = api
    form = json.dumps(CAMERA).encode()
    for headers, status, says in (
            ({"Content-Type": "text/plain"}, 415, "application/json"),  # a form's body that reads as JSON
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
            ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, 403, "another origin"),
            ({"Content-Type": "application/json", "Origin": "null"}, 403, "another origin"),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403, "another origin")):
        got, answer = request(host, port, "POST", "/cameras", form, headers)
        assert got == status and says in answer["error"], (headers, answer)
    assert service.supervisor.started == []
    assert request(host, port, "POST", "/cameras", CAMERA, {"Origin": f"http://127.0.0.1:{port}"})[0] == 201
    got, answer = request(host, port, "DELETE", "/cameras/door", None, {"Origin": "http://evil.example"})
    assert got == 403 and service.supervisor.stopped == []
    # Reads a page of another origin could embed (an <img>, a script): refused; the page itself may be opened
    for path in ("/cameras", "/cameras/door/snapshot.jpg"):
        assert request(host, port, "GET", path, None, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})[
            0] == 403, path
    assert request(host, port, "GET", "/", None, {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})[0] \
        == 200
    assert request(host, port, "DELETE", "/cameras/door")[0] == 200  # curl: no Origin, no cookie


class FailingPool(SupervisorStandIn):
    def stats(self):
        raise RuntimeError("the pool's look failed\nsecond line")


def test_an_unexpected_failure_is_answered_500_and_told_once():
    lines = []
    service = CameraService(load_settings(None, {}), FailingPool())
    server = ControlServer("127.0.0.1", 0, log=lines.append).start(service)
    host, port = server.server.server_address[:2]
    try:
        status, answer = request(host, port, "GET", "/cameras")
        assert status == 500 and "GET /cameras" in answer["error"] and "RuntimeError" in answer["error"]
        assert lines == ["control API: GET /cameras failed: RuntimeError: the pool's look failed"]
        assert request(host, port, "GET", "/healthz")[0] == 200
    finally:
        server.close()


def test_a_symlink_loop_in_the_recordings_folder_is_a_clear_refusal(locked_api):
    service, host, port, recordings = locked_api
    (recordings / "loop").symlink_to(recordings / "loop")
    status, answer = request(host, port, "POST", "/cameras", {**CAMERA, "record": "loop/x.mp4"}, bearer())
    assert status == 403 and "loop/x.mp4" in answer["error"], answer
    assert service.supervisor.started == []


def test_twenty_posts_at_once_are_each_answered():
    service = CameraService(load_settings(None, {"live.max_cameras": 40}), SupervisorStandIn())
    service.running()
    server = ControlServer("127.0.0.1", 0).start(service)
    host, port = server.server.server_address[:2]
    answers = []

    def post(index):
        answers.append(request(host, port, "POST", "/cameras", {**CAMERA, "name": f"c{index}",
                                                                "output": f"rtsp://127.0.0.1:9/{index}"})[0])

    try:
        threads = [threading.Thread(target=post, args=(index,)) for index in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.close()
    assert answers == [201] * 20 and len(service.supervisor.started) == 20


def test_preview_streams_have_their_own_cap_and_never_starve_the_api(api):
    service, host, port = api
    service.add(camera_from_entry(CAMERA, service.settings, "file"))
    server = ControlServer("127.0.0.1", 0, max_connections=6, max_streams=2).start(service)
    host, port = server.server.server_address[:2]
    viewers = []
    try:
        for _ in range(2):
            viewer = socket.create_connection((host, port), timeout=10)
            viewer.sendall(b"GET /cameras/door/preview.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b" 200 " in viewer.recv(4096).split(b"\r\n")[0]
            viewers.append(viewer)
        status, answer = request(host, port, "GET", "/cameras/door/preview.mjpg")
        assert status == 503 and "preview streams" in answer["error"]
        for _ in range(8):  # more requests than connections: the streams hold none of the API's
            assert request(host, port, "GET", "/cameras")[0] == 200
        # The dashboard's poll: a new picture, then 204 until a newer one exists
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/cameras/door/snapshot.jpg")
        answer = connection.getresponse()
        number = int(answer.getheader("X-Picture"))
        assert answer.status == 200 and answer.read()[:2] == b"\xff\xd8"
        connection.request("GET", f"/cameras/door/snapshot.jpg?after={number + 10**9}")
        answer = connection.getresponse()
        assert answer.status == 204 and answer.read() == b""
        connection.close()
    finally:
        for viewer in viewers:
            viewer.close()
        server.close()


def test_a_recording_over_http_is_never_replaced_after_a_restart(tmp_path):
    """The persisted entry of a recording asked for over HTTP is marked keep_recordings: the next run records beside
    the earlier recording, never over it."""
    settings = load_settings(None, {})
    earlier = tmp_path / "gate.mp4"
    earlier.write_bytes(b"yesterday's recording")
    entry = {"name": "gate", "input": "rtsp://127.0.0.1:9/g", "record": str(earlier), "keep_recordings": True}
    assert camera_from_entry(entry, settings, "file").targets.record == str(tmp_path / "gate-2.mp4")
    (tmp_path / "gate-2.mp4").write_bytes(b"")
    assert camera_from_entry(entry, settings, "file").targets.record == str(tmp_path / "gate-3.mp4")
    # without the mark, the file's own camera records over its file, as a file job does
    plain = camera_from_entry({**entry, "keep_recordings": False}, settings, "file")
    assert plain.targets.record == str(earlier)
    with pytest.raises(PipelineError, match="keep_recordings must be true or false, with a record"):
        camera_from_entry({**CAMERA, "keep_recordings": True}, settings, "file")


def test_a_recording_checks_its_folder_again_before_it_is_created_and_renamed(tmp_path):
    """The recordings folder's sub-folder swapped for a symlink after the request was checked: the writer refuses to
    create, and to rename into place, anything that would land outside."""
    from fractions import Fraction

    from pipeline.stages.frames import VideoInfo
    from pipeline.stages.sinks.video_writer import DepthVideoWriter

    recordings, outside = tmp_path / "recordings", tmp_path / "outside"
    (recordings / "gate").mkdir(parents=True)
    outside.mkdir()
    info = VideoInfo(source="x", width=32, height=32, rate=Fraction(10), time_base=Fraction(1, 10), rotation=0,
                     expected_frames=None, has_audio=False, codec="h264")

    def writer():
        return DepthVideoWriter(recordings / "gate" / "today.mp4", "gray", info, (32, 32), fragmented=True,
                                confined_to=str(recordings))

    recording = writer()
    recording.write(np.zeros((32, 32), np.uint8), 0)
    (recordings / "gate").rename(tmp_path / "moved")
    (recordings / "gate").symlink_to(outside)  # swapped while it records
    with pytest.raises(PipelineError, match="leads out of"):
        recording.close()
    assert list(outside.iterdir()) == []
    with pytest.raises(PipelineError, match="leads out of"):
        writer()
    assert list(outside.iterdir()) == []


def test_a_camera_s_log_lines_name_its_url_once_and_never_its_password():
    from pipeline.stages.live.camera_runner import LiveCamera, LiveCameraOptions, LiveTargets
    from pipeline.stages.sources.live_stream import LiveSource

    lines = []
    source = LiveSource("rtsp://admin:hunter2@127.0.0.1:9/door", read_timeout_s=1.0, backoff_s=(0.05, 0.1))
    LiveCamera(LiveCameraOptions(), source, LiveTargets("rtsp://127.0.0.1:9/out", None), name="door",
               log=lines.append)
    connecting = threading.Thread(target=source._connect, args=("starting",), kwargs={"first": True}, daemon=True)
    connecting.start()
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    source.stop()
    connecting.join(10)
    assert lines, "no log line while the camera refused"
    assert lines[0].startswith("[door] live: rtsp://***@127.0.0.1:9/door: ") and lines[0].count("rtsp://") == 1, lines
    assert "hunter2" not in "".join(lines) and "hunter2" in source.last_error  # (kept inside, shown nowhere)


def test_what_a_killed_run_left_half_written_beside_the_cameras_file_is_removed(tmp_path):
    from pipeline.jobs.cameras_file import CamerasFile

    path = tmp_path / "cameras.yaml"
    path.write_text(USERS_FILE)
    for leftover in (".cameras.yaml.partial", ".cameras.yaml.bak.partial"):
        (tmp_path / leftover).write_text("half")
    CamerasFile(path, persist=False)
    assert len(list(tmp_path.iterdir())) == 3  # --no-persist: nothing touched
    CamerasFile(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.yaml"]
