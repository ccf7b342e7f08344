"""The control API against a web page in the operator's own browser, and the dashboard with many cameras, in a real
headless Chromium (tests/browser.py) over the API with its stand-in camera pool (no Ray, no RTSP: what is tested
here is what the browser sends and what the service lets through; tests/test_dashboard.py runs real cameras).

- A page on another port of the same host (the same *site* to a browser) auto-submits a text/plain form, sends
  no-cors POSTs, a DELETE and image requests at the API: without a token, and with the operator's session cookie in
  the browser: nothing is added or removed.
- DNS rebinding (a page's own name resolved to 127.0.0.1): the Host header is refused.
- The dashboard with more cameras than a browser has connections to a host: every card on screen shows moving
  pictures, and Add and Remove go out.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.jobs.cameras import CameraService
from pipeline.jobs.control_api import ControlServer
from pipeline.settings import load_settings
from tests import browser
from tests.test_control_api import CAMERA, TOKEN, SupervisorStandIn, bearer, request

pytestmark = pytest.mark.skipif(not browser.available() and not os.environ.get("REQUIRE_BROWSER"),
                                reason="chromium-headless-shell (Debian's package) not installed")


def served_page(html: str):
    """A web page of another origin: http://127.0.0.1:PORT/ serving `html` (a server of its own, on a thread)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the base class's name
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def attack_page(api: str) -> str:
    """What a page may make a browser send to the API: fetches whose answers it cannot read (no-cors), images, a
    DELETE (which needs a preflight), and at last a form posted as text/plain whose body reads as JSON."""
    evil = json.dumps({"name": "evil", "input": "rtsp://127.0.0.1:9/evil", "output": "rtsp://127.0.0.1:9/e"})
    field, value = evil[:-2] + ', "x": "', '"}'  # the form's body: NAME=VALUE, which is the JSON above
    return f"""<!doctype html><body>
<form id="f" method="POST" enctype="text/plain" action="{api}/cameras">
  <input type="hidden" name='{field}' value='{value}'></form>
<img src="{api}/cameras/door/snapshot.jpg"><img src="{api}/cameras/door/preview.mjpg">
<script>
(async () => {{
  const tries = [
    fetch("{api}/cameras", {{method: "POST", mode: "no-cors", credentials: "include",
                             headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(evil)}}}),
    fetch("{api}/cameras", {{method: "POST", mode: "no-cors", credentials: "include", body: new URLSearchParams(
      {{name: "evil2", input: "rtsp://127.0.0.1:9/x", output: "rtsp://127.0.0.1:9/y"}})}}),
    fetch("{api}/cameras/door", {{method: "DELETE", credentials: "include"}}),
    fetch("{api}/cameras", {{credentials: "include"}}).then((answer) => answer.text()),
  ];
  for (const attempt of tries) {{
    try {{ await attempt; }} catch (error) {{}}
  }}
  document.title = "sent";
  document.getElementById("f").submit();
}})();
</script></body>"""


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no token", "session cookie"])
def test_a_page_of_another_origin_changes_nothing(token):
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    service.running()
    server = ControlServer("127.0.0.1", 0, token=token).start(service)
    api = server.url
    assert request(*server.server.server_address[:2], "POST", "/cameras", CAMERA, bearer() if token else None)[0] == 201
    page = served_page(attack_page(api))
    try:
        with browser.HeadlessChromium() as chromium:
            if token:  # the operator opened the dashboard: the browser holds the session cookie
                dashboard = chromium.open(f"{api}/?token={TOKEN}")
                dashboard.wait_for("document.querySelectorAll('.card').length === 1", 30)
            visited = chromium.open(f"http://127.0.0.1:{page.server_address[1]}/")
            # the form posted: the browser is on the API's answer to it
            visited.wait_for(f"location.href.startsWith({json.dumps(api + '/cameras')})", 30)
            answer = json.loads(visited.evaluate("document.body.innerText"))
            assert "error" in answer and answer["error"], answer
        assert service.supervisor.started == ["door"] and service.supervisor.stopped == []
        assert list(service.cameras()) == ["door"]
    finally:
        page.shutdown()
        server.close()


def test_a_rebound_name_is_refused_and_loopback_names_are_not():
    service = CameraService(load_settings(None, {}), SupervisorStandIn())
    service.running()
    server = ControlServer("127.0.0.1", 0, host_names=("depth.example.org",)).start(service)
    host, port = server.server.server_address[:2]
    try:
        for name in ("attacker.example", "attacker.example:80", "127.0.0.1.nip.io", "[::2]"):
            status, answer = request(host, port, "GET", "/cameras", None, {"Host": name})
            assert status == 421 and "not this service's address" in answer["error"], (name, answer)
            assert request(host, port, "POST", "/cameras", CAMERA, {"Host": name})[0] == 421
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.2",
                     "depth.example.org", "app.localhost"):
            assert request(host, port, "GET", "/cameras", None, {"Host": name})[0] == 200, name
        assert service.supervisor.started == []
    finally:
        server.close()


def test_the_dashboard_works_with_more_cameras_than_a_browser_has_connections():
    service = CameraService(load_settings(None, {"live.preview_fps": 10}), SupervisorStandIn())
    service.running()
    server = ControlServer("127.0.0.1", 0, token=TOKEN).start(service)
    host, port = server.server.server_address[:2]
    names = [f"cam{index}" for index in range(8)]
    for index, name in enumerate(names):
        assert request(host, port, "POST", "/cameras", {**CAMERA, "name": name, "output": f"rtsp://h:9/{index}"},
                       bearer())[0] == 201
    try:
        with browser.HeadlessChromium(1280, 1400) as chromium:
            page = chromium.open(f"{server.url}/?token={TOKEN}")
            page.wait_for("document.querySelectorAll('.card').length === 8", 30)
            on_screen = ("[...document.querySelectorAll('.card')].filter((card) => card.getBoundingClientRect().bottom"
                         " <= innerHeight).map((card) => card.querySelector('.preview'))")
            page.wait_for(f"{on_screen}.length >= 8", 30)
            page.wait_for(f"{on_screen}.every((image) => image.naturalWidth === 64)", 30)
            first = page.evaluate(f"{on_screen}.map((image) => image.src)")
            page.wait_for(f"{on_screen}.every((image, i) => image.src !== {json.dumps(first)}[i])", 30)  # moving

            # Remove and Add go out while every preview runs
            page.evaluate("document.querySelector('.card[data-name=\"cam3\"] .remove').click() || true")
            page.wait_for("!document.querySelector('.card[data-name=\"cam3\"]')", 30)
            assert service.supervisor.stopped == ["cam3"]
            page.evaluate("""(() => {
                const form = document.getElementById('add');
                form.elements.name.value = 'cam8';
                form.elements.input.value = 'rtsp://127.0.0.1:9/cam8';
                form.elements.output.value = 'rtsp://127.0.0.1:9/cam8-depth';
                form.querySelector('button').click();
                return true;
            })()""")
            page.wait_for("document.getElementById('message').textContent.startsWith('cam8 added')", 30)
            page.wait_for("document.querySelectorAll('.card').length === 8", 30)
            assert service.supervisor.started[-1] == "cam8"
    finally:
        server.close()
