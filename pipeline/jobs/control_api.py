"""
The many-camera job's HTTP control API, served by the job's own process (bound to 127.0.0.1 unless told otherwise).

Takes: a `CameraService` (jobs/cameras.py) and an address to listen on.
Gives:
- `GET /cameras`: each running camera with its state, frames_in, frames_out, dropped, reconnects, fps_in, fps_out,
  latency_ms p50 / p95 (JSON); `GET /cameras/NAME`: one;
- `POST /cameras` (a JSON body with a cameras-file entry's fields): starts a camera, 201 with it;
- `DELETE /cameras/NAME`: stops it and closes its outputs, 200 with its summary;
- `GET /healthz`: 200 while the process answers; `GET /readyz`: 200 once the model is loaded and every camera is
  connected or reconnecting, else 503 with the reason;
- `GET /metrics`: Prometheus' text format (prometheus_client), per-camera series labelled `camera`.
A bad request is a 4xx with `{"error": "..."}` (invalid JSON or entry: 400, a name already running: 409, an unknown
name or path: 404, a method a path does not take: 405, no or too long a body: 411 / 413); nothing in the job breaks.
Each request runs on a thread of its own (ThreadingHTTPServer), so a slow client holds up no one.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..stages.frames import PipelineError, one_line
from .cameras import CameraConflict, CameraService

MAX_BODY_BYTES = 64 * 1024
DEFAULT_CONTROL = "127.0.0.1:8765"


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or :PORT, for 127.0.0.1) -> (host, port); a one-line error for anything else."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PipelineError(f"--control {text}: expected HOST:PORT, e.g. 127.0.0.1:8765 (port 0: any free port)")
    return host, int(port)


class CameraMetrics:
    """The service's figures as Prometheus metric families, read when /metrics is asked (a custom collector: no
    counters of our own to keep in step)."""

    def __init__(self, service: CameraService):
        self.service = service

    def collect(self):
        cameras = self.service.cameras()
        counters = {"frames_in": "frames read from the camera", "frames_out": "depth frames published or recorded",
                    "dropped": "frames dropped (the model behind, or a failed model call)",
                    "reconnects": "times the camera was reconnected"}
        for key, text in counters.items():
            family = CounterMetricFamily(f"depth_camera_{key}", text, labels=["camera"])
            for name, camera in cameras.items():
                family.add_metric([name], camera.get(key) or 0)
            yield family
        gauges = {"fps_in": "frames per second read, last seconds", "fps_out": "frames per second out, last seconds"}
        for key, text in gauges.items():
            family = GaugeMetricFamily(f"depth_camera_{key}", text, labels=["camera"])
            for name, camera in cameras.items():
                if camera.get(key) is not None:
                    family.add_metric([name], camera[key])
            yield family
        latency = GaugeMetricFamily("depth_camera_latency_ms", "arrival to publication, last frames",
                                    labels=["camera", "quantile"])
        for name, camera in cameras.items():
            for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
                value = (camera.get("latency_ms") or {}).get(key)
                if value is not None:
                    latency.add_metric([name, quantile], value)
        yield latency
        up = GaugeMetricFamily("depth_camera_up", "1 while the camera's frames flow (state running)",
                               labels=["camera", "state"])
        for name, camera in cameras.items():
            up.add_metric([name, camera.get("state", "unknown")], 1 if camera.get("state") == "running" else 0)
        yield up
        batches = self.service.batching()
        yield CounterMetricFamily("depth_model_batches", "network batches of the cameras' frames",
                                  value=batches["count"])
        for key, text in (("mean_frames", "frames per network batch"), ("mean_cameras", "cameras per network batch")):
            if batches[key] is not None:
                yield GaugeMetricFamily(f"depth_model_batch_{key}", text, value=batches[key])


class ControlServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8765):
        """Binds at once, so that a port in use is an error before anything starts; serves from `start`."""
        self._handler = type("Handler", (ControlHandler,), {})
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler)
        except OSError as error:
            raise PipelineError(f"--control {host}:{port}: cannot listen there ({error.strerror or error})") from None
        self.server.daemon_threads = True
        # (the poll interval is how long `close` waits for the serving thread to notice)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True,
                                        name="control-api")

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, service: CameraService) -> "ControlServer":
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CameraMetrics(service))
        self._handler.service, self._handler.registry = service, registry
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class ControlHandler(BaseHTTPRequestHandler):
    service: CameraService
    registry: CollectorRegistry
    server_version = "video-depth"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # requests are not logged: /metrics is scraped every few seconds

    # Routes ..........................................................................................................

    def do_GET(self):
        path = self._path()
        if path == "/healthz":
            return self._json(HTTPStatus.OK, {"status": "ok"})
        if path == "/readyz":
            ready, why = self.service.ready()
            return self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                              {"ready": ready, "reason": why})
        if path == "/cameras":
            return self._json(HTTPStatus.OK, {"cameras": list(self.service.cameras().values())})
        if path == "/metrics":
            return self._send(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path.startswith("/cameras/"):
            name = unquote(path[len("/cameras/"):])
            camera = self.service.cameras().get(name)
            if camera is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
            return self._json(HTTPStatus.OK, camera)
        return self._not_found(path)

    def do_POST(self):
        path = self._path()
        if path != "/cameras":
            return self._wrong_method(path, "POST")
        body = self._body()
        if body is None:
            return None
        try:
            entry = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            return self._error(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({one_line(error)})")
        try:
            camera = self.service.add_entry(entry)
        except CameraConflict as error:
            return self._error(HTTPStatus.CONFLICT, str(error))
        except PipelineError as error:
            return self._error(HTTPStatus.BAD_REQUEST, one_line(error))
        return self._json(HTTPStatus.CREATED, {"name": camera.name, "input": camera.input,
                                               "output": camera.targets.publish, "record": camera.targets.record,
                                               "state": "starting"})

    def do_DELETE(self):
        path = self._path()
        if not path.startswith("/cameras/"):
            return self._wrong_method(path, "DELETE")
        name = unquote(path[len("/cameras/"):])
        try:
            summary = self.service.remove(name)
        except KeyError:
            return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
        return self._json(HTTPStatus.OK, {"name": name, "summary": summary})

    def do_PUT(self):
        return self._wrong_method(self._path(), "PUT")

    do_PATCH = do_PUT

    # Helpers .........................................................................................................

    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "a JSON body with a Content-Length is required")
            return None
        if not length.isdigit():
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number: {length!r}")
            return None
        if int(length) > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return None
        return self.rfile.read(int(length))

    def _wrong_method(self, path: str, method: str):
        allowed = {"/cameras": "GET, POST", "/healthz": "GET", "/readyz": "GET", "/metrics": "GET"}
        if path in allowed or path.startswith("/cameras/"):
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path} is not allowed",
                               {"Allow": allowed.get(path, "GET, DELETE")})
        return self._not_found(path)

    def _not_found(self, path: str):
        return self._error(HTTPStatus.NOT_FOUND, f"no such path: {path} (try /cameras, /healthz, /readyz, /metrics)")

    def _error(self, status: HTTPStatus, message: str, headers: dict | None = None):
        self.close_connection = True  # a body left unread must not be taken for the next request
        return self._json(status, {"error": message}, headers)

    def send_error(self, code, message=None, explain=None):
        """The base class's own errors (a malformed request line or header, an unknown method): JSON too."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        if self.request_version == "HTTP/0.9":  # (a request line it could not read: answer with a status line)
            self.request_version = "HTTP/1.0"
        self._error(status, message or status.phrase)

    def _json(self, status: HTTPStatus, payload, headers: dict | None = None):
        return self._send(status, (json.dumps(payload, default=str) + "\n").encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
