"""The many-camera job's HTTP control API (pipeline/jobs/control_api.py) and its policy (jobs/cameras.py), without Ray:
a real HTTP server on 127.0.0.1 over a `CameraService` whose camera pool is a stand-in that keeps what it was asked
(the Ray side, camera_pool.py, runs in tests/test_cameras.py with real cameras). Bad requests, malformed HTTP, the
cameras file's errors, and the metrics' format."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.jobs.cameras import CameraService, camera_from_entry, read_cameras_file
from pipeline.jobs.control_api import ControlServer, parse_address
from pipeline.settings import load_settings
from pipeline.stages.frames import PipelineError
from tests.clips import clip


class PoolStandIn:
    """What CameraService asks of the graph's camera pool, kept in memory; each camera's figures as a live one's."""

    def __init__(self):
        self.started, self.stopped = [], []

    def start(self, camera):
        self.started.append(camera.name)

    def stats(self):
        return {name: {"state": "running", "frames_in": 30, "frames_out": 29, "dropped": 1, "reconnects": 0,
                       "fps_in": 15.0, "fps_out": 14.5, "latency_ms": {"p50": 40.0, "p95": 61.0}}
                for name in self.started if name not in self.stopped}

    def stop(self, name):
        self.stopped.append(name)
        return {"frames_in": 30, "frames_out": 29}

    def stop_all(self, names):
        return {name: self.stop(name) for name in names}

    def batching(self):
        return {"count": 12, "mean_frames": 2.5, "mean_cameras": 2.0}


@pytest.fixture()
def api():
    service = CameraService(load_settings(None, {}), PoolStandIn())
    server = ControlServer("127.0.0.1", 0).start(service)
    host, port = server.server.server_address[:2]
    yield service, host, port
    server.close()


def request(host, port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
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
    assert status == 201 and body["name"] == "door" and service.pool.started == ["door"]
    status, body = request(host, port, "GET", "/cameras")
    assert status == 200 and [c["name"] for c in body["cameras"]] == ["door"]
    camera = body["cameras"][0]
    assert camera["state"] == "running" and camera["frames_out"] == 29 and camera["latency_ms"]["p95"] == 61.0
    assert request(host, port, "GET", "/cameras/door")[1]["output"] == CAMERA["output"]

    status, body = request(host, port, "DELETE", "/cameras/door")
    assert status == 200 and body["summary"]["frames_out"] == 29
    assert request(host, port, "GET", "/cameras")[1] == {"cameras": []}
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
    ("POST", "/cameras", {**CAMERA, "queue": 0}, None, 400, "queue must be >= 1"),
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
    assert service.pool.started == ["door"]


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
        ([CAMERA, {**CAMERA, "name": "door2"}], "output rtsp://127.0.0.1:9/door-depth is camera 'door''s too"),
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
    for text, says in (("cameras: []", "expected `cameras:` with a list"), ("[1, 2]", "expected `cameras:`"),
                       ("cameras: [a: b", "not valid YAML"), ("cameras:\n  - 5", "a camera must be a mapping")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(PipelineError, match="bad.yaml") as error:
            read_cameras_file(str(tmp_path / "bad.yaml"), settings)
        assert says in str(error.value)
    with pytest.raises(PipelineError, match="cameras file not found"):
        read_cameras_file(str(tmp_path / "none.yaml"), settings)
    per_camera = camera_from_entry({**CAMERA, "colormap": "turbo", "drop": "every-k", "keep_every": 3}, settings, "x")
    assert per_camera.settings.output.colormap == "turbo" and per_camera.settings.live.keep_every == 3
    assert settings.output.colormap == "inferno", "a camera's settings are its own"
