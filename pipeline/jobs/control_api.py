"""
The many-camera job's HTTP control API, served by the job's own process (bound to 127.0.0.1 unless told otherwise).

Takes: a `CameraService` (jobs/cameras.py), an address to listen on, and the access token (None: no token, which
only a loopback address may run without).
Gives:
- `GET /cameras`: each running camera with its state, frames_in, frames_out, dropped, reconnects, fps_in, fps_out,
  latency_ms p50 / p95, and its last error (JSON); `GET /cameras/NAME`: one;
- `POST /cameras` (a JSON body with a cameras-file entry's fields; `input` a URL, `record` a name inside the
  recordings folder): starts a camera, 201 with it and `persisted` (whether the cameras file now has it:
  cameras_file.py);
- `DELETE /cameras/NAME`: stops it and closes its outputs, 200 with its summary and `persisted`;
- `GET /healthz`: 200 while the process answers; `GET /readyz`: 200 once the model is loaded and every camera is
  connected or reconnecting, else 503 with the reason (each waiting camera's last error);
- `GET /metrics`: Prometheus' text format (prometheus_client), per-camera series labelled `camera`;
- `GET /cameras/NAME/snapshot.jpg` (`?after=N`: 204 unless a picture newer than number N exists; the number in
  `X-Picture`), `GET /cameras/NAME/preview.mjpg`: its depth pictures (the dashboard polls snapshots: a browser has 6
  connections to a host, and a stream per card would hold them all);
- `GET /`: the dashboard (an index of the above for a client that is no browser); `GET /?token=TOKEN` gives the
  browser a session cookie (below) and redirects to `/`.
With a token, every request but `GET /healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer TOKEN` or the
session cookie: 401 otherwise, compared in constant time. A correct token is always let through; a client address
that sent `FAILED_ATTEMPTS` wrong tokens in `FAILED_WINDOW_S` gets its further wrong ones answered 429, slowly (behind
a proxy every client shares the proxy's address: only wrong tokens are slowed, never the right one).
The browser's session cookie is `depth_session_PORT` (one per service on a host), HttpOnly, SameSite=Strict: an
expiry and an HMAC of it keyed by the token, never the token itself (a cookie reaches every port of the host).

What a web page in the operator's own browser could try is refused (browser_guard.py): a Host header that is not
this service's address (DNS rebinding) 421; a change (POST, DELETE) from another origin, a cross-site fetch, or, for
a request that a cookie or no token lets in, a POST that is not `application/json` (an HTML form's) 403 / 415.
A bad request is a 4xx with `{"error": "..."}` (invalid JSON or entry: 400, a name already running or a file taken:
409, an unknown name or path: 404, a method a path does not take: 405, no or too long a body: 411 / 413, a path
outside the recordings folder: 403, live.max_cameras reached: 429); while the file's cameras are being added, and
once the job is stopping, changes are answered 503; an unexpected failure in a handler is 500 and one log line.
Nothing in the job breaks. Each connection runs on a thread of its own (at most `MAX_CONNECTIONS` at once, and at
most `MAX_PREVIEW_STREAMS` of them preview streams: more are answered 503 and closed; the listen backlog as deep),
and a client silent for `READ_TIMEOUT_S` is let go. URLs in every answer show `***` for a user and password.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import json
import os
import re
import socket
import stat
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.errors import PipelineError, one_line
from pipeline.jobs.browser_guard import BrowserSessions, HostCheck, change_refusal, fetch_refusal
from pipeline.jobs.cameras import CameraService, RequestRefused
from pipeline.jobs.previews import PreviewHub
from pipeline.stages.inference.cross_stream_batcher import BATCH_SECONDS_BUCKETS
from pipeline.urls import redact, redact_all

__all__ = ["ControlServer", "DEFAULT_CONTROL", "TOKEN_ENVIRONMENT", "is_loopback", "parse_address", "read_token"]

MAX_BODY_BYTES = 64 * 1024
DEFAULT_CONTROL = "127.0.0.1:8765"
TOKEN_ENVIRONMENT = "DEPTH_CONTROL_TOKEN"
TOKEN_MIN_CHARS = 16
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: no token (they say nothing a camera sees)
FAILED_ATTEMPTS, FAILED_WINDOW_S = 10, 60.0  # wrong tokens a client may send per window before it gets 429
LOCKED_ANSWER_DELAY_S = 0.5  # a wrong token from a client past its limit waits this long for its 429
MAX_CONNECTIONS = 64  # connections served at once; more are answered 503 at once (a thread each)
MAX_PREVIEW_STREAMS = 16  # of them, MJPEG streams (held open while watched): the API keeps the rest
CHANGES = ("POST", "DELETE", "PUT", "PATCH")
READ_TIMEOUT_S = 10.0  # a client silent this long (a slow or idle one) is let go: its thread is freed
STATIC = Path(__file__).resolve().parent / "static"
DASHBOARD_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
                   "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
MJPEG_BOUNDARY = "depthframe"


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT (or :PORT, for 127.0.0.1) -> (host, port); a one-line error for anything else."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not colon or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PipelineError(f"--control {text}: expected HOST:PORT, e.g. 127.0.0.1:8765 or [::1]:8765 (port 0: any "
                            f"free port)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback (127.0.0.0/8, ::1): reachable from here only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def read_token(path: str | None, warn=None) -> str | None:
    """The access token: the first line of `path` (--control-token-file), else $DEPTH_CONTROL_TOKEN, else None.
    A token file that other users can read is a warning (`warn`); a missing, empty or short token an error."""
    if path is None:
        token, where = os.environ.get(TOKEN_ENVIRONMENT), f"${TOKEN_ENVIRONMENT}"
        if token is None:
            return None
    else:
        where = path
        try:
            with open(path, encoding="utf-8") as file:
                token = file.readline()
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise PipelineError(f"{path}: control token file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise PipelineError(f"{path}: cannot read the control token ({one_line(error)})") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH) and warn is not None:
            warn(f"{path}: the control token file can be read by other users (chmod 600 {path})")
    token = token.strip()
    if len(token) < TOKEN_MIN_CHARS or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise PipelineError(f"{where}: the control token must be at least {TOKEN_MIN_CHARS} printable characters "
                            f"without spaces (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


class FailedAttempts:
    """Wrong tokens per client address over a sliding window: past `limit`, the client waits out the window."""

    def __init__(self, limit: int = FAILED_ATTEMPTS, window_s: float = FAILED_WINDOW_S, max_clients: int = 4096):
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return 0.0
            while failures and now - failures[0] >= self.window_s:
                failures.popleft()
            if not failures:
                del self._failures[client]
                return 0.0
            return self.window_s - (now - failures[0]) if len(failures) >= self.limit else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                # Memory stays bounded under a flood from many addresses: the oldest records go
                for stale in sorted(self._failures, key=lambda c: self._failures[c][-1])[: self.max_clients // 4]:
                    del self._failures[stale]
            self._failures.setdefault(client, deque(maxlen=self.limit)).append(now)


class CameraMetrics:
    """The service's figures as Prometheus metric families, read when /metrics is asked (a custom collector: no
    counters of our own to keep in step)."""

    def __init__(self, service: CameraService):
        self.service = service

    def collect(self):
        cameras = self.service.cameras()
        counters = {"frames_in": "frames read from the camera", "frames_out": "depth frames published or recorded",
                    "dropped": "frames dropped (the model behind, or a failed model call)",
                    "reconnects": "times the camera was reconnected",
                    "faulty_depth_frames": "depth frames that held NaN or infinity (a fault of the model)"}
        for key, text in counters.items():
            family = CounterMetricFamily(f"depth_camera_{key}", text, labels=["camera"])
            for name, camera in cameras.items():
                family.add_metric([name], camera.get(key) or 0)
            yield family
        gauges = {"fps_in": "frames per second read, last seconds", "fps_out": "frames per second out, last seconds",
                  "flicker": "depth change between frames where the picture is still, in percent of the depth's "
                             "range, last 50 frames (stages/render/flicker.py)",
                  "queue_frames": "frames waiting for the model now",
                  "memory_bytes": "the camera's process: peak resident memory"}
        values = {"flicker": lambda camera: camera.get("flicker_pct"),
                  "queue_frames": lambda camera: camera.get("queue"),
                  "memory_bytes": lambda camera: camera["peak_rss_mb"] * 2**20 if camera.get("peak_rss_mb") else None}
        for key, text in gauges.items():
            family = GaugeMetricFamily(f"depth_camera_{key}", text, labels=["camera"])
            for name, camera in cameras.items():
                value = values[key](camera) if key in values else camera.get(key)
                if value is not None:
                    family.add_metric([name], value)
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
        seconds = batches.get("seconds")
        if seconds is not None:
            bounds = [*(f"{bound:g}" for bound in BATCH_SECONDS_BUCKETS), "+Inf"]
            yield HistogramMetricFamily("depth_model_batch_seconds", "a network batch's time in the model actor",
                                        buckets=list(zip(bounds, seconds["buckets"])), sum_value=seconds["sum"])


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once: one more is answered 503 and closed at once
    (unbounded, 750 slow clients would hold 780 threads), and nothing it does reaches stderr as a traceback. The
    listen backlog is as deep as the limit (socketserver's 5 reset 2 of 20 concurrent clients unanswered). A
    connection that turns into a preview stream moves from the general slots to one of `max_streams` of its own, so
    that viewers never starve the API."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int = MAX_CONNECTIONS,
                 max_streams: int = MAX_PREVIEW_STREAMS):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_queue_size = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stream_slots = threading.BoundedSemaphore(max_streams)
        self._streaming = threading.local()  # whether this connection's thread holds a stream slot instead
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refuse(request, b"too many connections; try again")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    @staticmethod
    def refuse(request, why: bytes) -> None:
        body = b'{"error": "%s"}\n' % why
        try:
            request.settimeout(1.0)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            pass

    def to_stream(self) -> bool:
        """This connection (its last request) becomes a long-lived stream: whether a stream slot was free (its
        general slot is then given back)."""
        if not self._stream_slots.acquire(blocking=False):
            return False
        self._streaming.held = True
        self._slots.release()
        return True

    def process_request_thread(self, request, client_address):
        self._streaming.held = False
        try:
            super().process_request_thread(request, client_address)
        finally:
            (self._stream_slots if self._streaming.held else self._slots).release()

    def handle_error(self, request, client_address):
        pass  # a client that left early, or sent nonsense: its connection is closed, and the service goes on


class ControlServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 max_connections: int = MAX_CONNECTIONS, failed_attempts: int = FAILED_ATTEMPTS,
                 host_names: tuple[str, ...] = (), max_streams: int = MAX_PREVIEW_STREAMS,
                 log=lambda line: None):
        """Binds at once, so that a port in use is an error before anything starts; serves from `start`.
        `host_names`: names the API answers to besides loopback and its bound address (live.control_hosts);
        `log`: where an unexpected failure in a handler is told (one line)."""
        self.token_required = token is not None
        self._handler = type("Handler", (ControlHandler,), {"token": token,
                                                            "attempts": FailedAttempts(failed_attempts),
                                                            "hosts": HostCheck(host, host_names),
                                                            "log_failure": staticmethod(log)})
        try:
            self.server = BoundedHTTPServer((host, port), self._handler, max_connections, max_streams)
        except OSError as error:
            raise PipelineError(f"--control {host}:{port}: cannot listen there ({error.strerror or error})") from None
        self._handler.sessions = BrowserSessions(token, self.server.server_address[1]) if token else None
        # (the poll interval is how long `close` waits for the serving thread to notice)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True,
                                        name="control-api")

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, service: CameraService) -> "ControlServer":
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CameraMetrics(service))
        ProcessCollector(registry=registry)  # the job's own process: memory, CPU, open files (process_*)
        self.previews = PreviewHub(service.preview, service.settings.live.preview_fps)
        self._handler.service, self._handler.registry, self._handler.previews = service, registry, self.previews
        self._thread.start()
        return self

    def close(self) -> None:
        if getattr(self, "previews", None) is not None:
            self.previews.close()  # (the preview streams end: their threads are free)
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class ControlHandler(BaseHTTPRequestHandler):
    service: CameraService
    registry: CollectorRegistry
    previews: PreviewHub
    token: str | None
    attempts: FailedAttempts
    hosts: HostCheck
    sessions: BrowserSessions | None
    log_failure: object
    server_version = "video-depth"
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT_S  # (socketserver sets it on the connection: reads and writes give up after it)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # requests are not logged: /metrics is scraped every few seconds

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            pass  # the client left early, or was silent too long: nothing to answer

    def handle_one_request(self):
        """One request; whatever fails unexpectedly in its handler is answered 500 (unless an answer had begun) and
        told in one log line, and the connection is closed: a client is never left without an answer."""
        self._answering = False
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            raise
        except Exception as error:  # noqa: BLE001 - any failure: an answer and a line, never a silent close
            what = f"{getattr(self, 'command', '?')} {redact(urlsplit(getattr(self, 'path', '')).path)}"
            self.log_failure(f"control API: {what} failed: {type(error).__name__}: {redact(one_line(error))}")
            self.close_connection = True
            if not self._answering:
                try:
                    self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{what}: the service failed to answer "
                                                                  f"({type(error).__name__}); it goes on")
                except OSError:
                    pass

    def send_response(self, code, message=None):
        self._answering = True
        super().send_response(code, message)

    # Routes ..........................................................................................................

    def do_GET(self):
        path = self._path()
        if not self._host_allowed():
            return None
        if path == "/" and "token" in parse_qs(urlsplit(self.path).query):
            return self._token_to_session()
        if not self._authorised(path):
            return None
        if path == "/healthz":
            return self._json(HTTPStatus.OK, {"status": "ok"})
        if path == "/readyz":  # (open: without the token, names and states only, never a camera's error)
            ready, why = self.service.ready(details=self.token is None or self._credentials() is not None)
            return self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                              {"ready": ready, "reason": why})
        if path == "/cameras":
            return self._json(HTTPStatus.OK, {"cameras": list(self.service.cameras().values()),
                                              "cameras_file": self.service.persistence,
                                              "preview_fps": self.previews.fps})
        if path == "/metrics":
            return self._send(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/" and "text/html" not in self.headers.get("Accept", ""):
            return self._json(HTTPStatus.OK, {"service": "video-depth live", "paths": {
                "GET /": "the dashboard (for a browser)", "GET /cameras": "every camera's state and figures",
                "POST /cameras": "add a camera (JSON entry)", "GET /cameras/NAME": "one camera",
                "GET /cameras/NAME/snapshot.jpg": "its last depth picture",
                "GET /cameras/NAME/preview.mjpg": "its depth pictures, live (MJPEG)",
                "DELETE /cameras/NAME": "stop a camera", "GET /healthz": "liveness", "GET /readyz": "readiness",
                "GET /metrics": "Prometheus text"}})
        if path in DASHBOARD_FILES:
            return self._dashboard_file(path)
        if path.startswith("/cameras/") and path.endswith(("/snapshot.jpg", "/preview.mjpg")):
            name, _, picture = unquote(path[len("/cameras/"):]).rpartition("/")
            return self._snapshot(name) if picture == "snapshot.jpg" else self._preview_stream(name)
        if path.startswith("/cameras/"):
            name = unquote(path[len("/cameras/"):])
            camera = self.service.cameras().get(name)
            if camera is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
            return self._json(HTTPStatus.OK, camera)
        return self._not_found(path)

    def _dashboard_file(self, path: str):
        """The dashboard's page, script and style (pipeline/jobs/static/): nothing fetched from elsewhere, and the
        browser told so (a Content-Security-Policy of this origin only)."""
        name, content_type = DASHBOARD_FILES[path]
        body = (STATIC / name).read_bytes()
        return self._send(HTTPStatus.OK, body, content_type, {
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    def _snapshot(self, name: str):
        """The camera's newest depth picture (PreviewHub.latest: asked of the camera at most preview_fps times a
        second however many poll); `?after=N`: 204 while there is none newer than number N (the dashboard's poll)."""
        after = parse_qs(urlsplit(self.path).query).get("after", ["0"])[0]
        if not re.fullmatch(r"[0-9]{1,18}", after):
            return self._error(HTTPStatus.BAD_REQUEST, f"after must be a picture number, got {after!r}")
        try:
            picture = self.previews.latest(name, int(after))
        except KeyError:
            return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
        if picture is None and int(after):
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/jpeg", {"Cache-Control": "no-store"})
        if picture is None:
            return self._error(HTTPStatus.NOT_FOUND, f"camera {name!r} has no depth picture yet")
        return self._send(HTTPStatus.OK, picture[1], "image/jpeg",
                          {"Cache-Control": "no-store", "X-Picture": str(picture[0])})

    def _preview_stream(self, name: str):
        """MJPEG (multipart/x-mixed-replace): the camera's newest depth picture at live.preview_fps, until the
        viewer leaves, the camera is removed or the job stops (PreviewHub: made only while watched; a slow viewer
        misses pictures, and after READ_TIMEOUT_S of not reading is let go)."""
        try:
            pictures = self.previews.watch(name)
            first = next(pictures, None)  # (a KeyError here: no such camera)
        except KeyError:
            return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
        if not self.server.to_stream():
            pictures.close()
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_PREVIEW_STREAMS} preview streams are open "
                                                               f"already; try again later (or snapshot.jpg)",
                               {"Retry-After": "5"})
        self.close_connection = True  # (a response without a length ends with its connection)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for jpeg in itertools.chain([first] if first is not None else [], pictures):
                self.wfile.write(b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (
                    MJPEG_BOUNDARY.encode(), len(jpeg), jpeg))
                self.wfile.flush()
        except (ConnectionError, TimeoutError, OSError):
            pass  # the viewer left, or stopped reading
        finally:
            pictures.close()

    def do_POST(self):
        path = self._path()
        if not self._host_allowed() or not self._authorised(path):
            return None
        if path != "/cameras":
            return self._wrong_method(path, "POST")
        body = self._body()
        if body is None:
            return None
        try:
            entry = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            return self._error(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({one_line(error)})")
        except RecursionError:
            return self._error(HTTPStatus.BAD_REQUEST, "the body is not valid JSON (nested too deeply)")
        try:
            camera, persisted = self.service.add_entry(entry)
        except RequestRefused as error:
            return self._error(HTTPStatus(error.status), str(error), error.headers)
        except PipelineError as error:
            return self._error(HTTPStatus.BAD_REQUEST, one_line(error))
        return self._json(HTTPStatus.CREATED, {"name": camera.name, "input": camera.input,
                                               "output": camera.targets.publish, "record": camera.targets.record,
                                               "state": "starting", "persisted": persisted})

    def do_DELETE(self):
        path = self._path()
        if not self._host_allowed() or not self._authorised(path):
            return None
        if not path.startswith("/cameras/"):
            return self._wrong_method(path, "DELETE")
        name = unquote(path[len("/cameras/"):])
        try:
            summary, persisted = self.service.remove(name)
        except RequestRefused as error:
            return self._error(HTTPStatus(error.status), str(error), error.headers)
        except KeyError:
            return self._error(HTTPStatus.NOT_FOUND, f"no camera named {name!r} is running")
        return self._json(HTTPStatus.OK, {"name": name, "summary": summary, "persisted": persisted})

    def do_PUT(self):
        path = self._path()
        if self._host_allowed() and self._authorised(path):
            self._wrong_method(path, self.command)

    do_PATCH = do_PUT

    # Access ..........................................................................................................

    def _host_allowed(self) -> bool:
        """Whether the Host header names this service (not a web page's own name rebound to this address); if not,
        it has been answered 421."""
        host = self.headers.get("Host")
        if self.hosts.allows(host):
            return True
        self._error(HTTPStatus.MISDIRECTED_REQUEST, f"Host {host!r} is not this service's address; a name that "
                                                    f"reaches it through DNS or a proxy goes in live.control_hosts")
        return False

    def _credentials(self) -> str | None:
        """How the request proves the token: "bearer", "cookie", or None (neither, or a wrong one)."""
        given = self._bearer()
        if given is not None:
            return "bearer" if self._token_matches(given) else None
        cookie = self._cookie(self.sessions.name) if self.sessions else None
        return "cookie" if cookie is not None and self.sessions.valid(cookie) else None

    def _authorised(self, path: str) -> bool:
        """Whether the request may go on; if not, it has been answered (401, 429 for a wrong token past the limit,
        403 / 415 for what a web page would send). A correct token is always let through."""
        if self.token is None:
            how = "none"
        elif self.command == "GET" and path in OPEN_PATHS:
            return True
        else:
            how = self._credentials()
            if how is None:
                if self._bearer() is not None:
                    return self._wrong_token()
                self._error(HTTPStatus.UNAUTHORIZED, "a valid token is required: Authorization: Bearer TOKEN",
                            {"WWW-Authenticate": 'Bearer realm="video-depth"'})
                return False
        # A browser sends ambient credentials (the cookie), or none where none are needed: what a page of another
        # origin could make it send is refused
        browser_made = how in ("cookie", "none")
        refusal = (change_refusal(self.command, self.headers, browser_made) if self.command in CHANGES
                   else fetch_refusal(self.headers, browser_made))
        if refusal is not None:
            self._error(*refusal)
            return False
        return True

    def _wrong_token(self) -> bool:
        """A wrong token: 401, or 429 (answered after a pause) once this address sent too many lately."""
        client = self.client_address[0]
        self.attempts.failed(client)
        wait_s = self.attempts.wait_s(client)
        if wait_s > 0:
            time.sleep(LOCKED_ANSWER_DELAY_S)
            self._error(HTTPStatus.TOO_MANY_REQUESTS, f"too many wrong tokens from {client}; a wrong one is answered "
                                                      f"429 for {wait_s:.0f} s more",
                        {"Retry-After": str(int(wait_s) + 1)})
        else:
            self._error(HTTPStatus.UNAUTHORIZED, "the token is not valid",
                        {"WWW-Authenticate": 'Bearer realm="video-depth"'})
        return False

    def _bearer(self) -> str | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def _cookie(self, wanted: str) -> str | None:
        for header in self.headers.get_all("Cookie") or []:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == wanted and value:
                    return value
        return None

    def _token_matches(self, given: str | None) -> bool:
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def _token_to_session(self):
        """GET /?token=TOKEN (a browser's first visit): a session cookie derived from the token, then the page
        without the token in the URL."""
        headers = {"Location": "/", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        if self.token is not None:
            given = parse_qs(urlsplit(self.path).query).get("token", [""])[0]
            if not self._token_matches(given):
                return self._wrong_token()
            headers["Set-Cookie"] = self.sessions.cookie()
        return self._json(HTTPStatus.SEE_OTHER, {"see": "/"}, headers)

    # Helpers .........................................................................................................

    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self) -> bytes | None:
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or not lengths:
            self._error(HTTPStatus.LENGTH_REQUIRED, "a JSON body with a Content-Length is required")
            return None
        if len({length.strip() for length in lengths}) > 1:
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Length given twice with different values: {lengths}")
            return None
        length = lengths[0].strip()
        if not re.fullmatch(r"[0-9]{1,12}", length):  # (str.isdigit takes '²', which int() refuses)
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number: {length!r}")
            return None
        if int(length) > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
            return None
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            self.close_connection = True  # the client left (or went silent) before the whole body: no answer
            return None
        return body

    def _wrong_method(self, path: str, method: str):
        allowed = {"/cameras": "GET, POST", "/healthz": "GET", "/readyz": "GET", "/metrics": "GET", "/": "GET"}
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
        text = json.dumps(redact_all(payload), default=lambda value: redact(str(value)))
        return self._send(status, (text + "\n").encode(), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
