"""The many-camera service as an operator watches it, with real peers on 127.0.0.1: GStreamer RTSP cameras, the job as
a process of its own (with a token), and the dashboard in a real browser (Debian's headless Chromium, over the
DevTools protocol: tests/browser.py).

One job runs the whole story: snapshot and MJPEG previews decoded back (JPEG, the camera's aspect ratio, several
parts, each new); a stalled preview viewer beside a camera that keeps its rate; the flicker figure in /cameras and
/metrics; the dashboard's cards with moving previews (pixels change between two screenshots); a camera added from
the page and one removed there. `DASHBOARD_SCREENSHOT=PATH` keeps the screenshot (docs/dashboard.png is made so).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests import browser, test_live
from tests.live_peers import Camera, control_url
from tests.test_cameras import TOKEN, call, camera_figures
from tests.test_live import MODEL, wait_for

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = [test_live.pytestmark,  # skipped without GStreamer's RTSP server (unless REQUIRE_RTSP)
              pytest.mark.skipif(not browser.available() and not os.environ.get("REQUIRE_BROWSER"),
                                 reason="chromium-headless-shell (Debian's package) not installed")]


def get(base: str, path: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, answer.headers.get("Content-Type"), answer.read()


def mjpeg_parts(base: str, name: str, count: int) -> list[np.ndarray]:
    """`count` pictures of a camera's preview stream, decoded."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as viewer:
        viewer.sendall(f"GET /cameras/{name}/preview.mjpg HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}"
                       f"\r\n\r\n".encode())
        received = b""
        while received.count(b"--depthframe\r\n") <= count:
            chunk = viewer.recv(1 << 16)
            assert chunk, "the preview stream ended"
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"multipart/x-mixed-replace; boundary=depthframe" in head
    parts = [part.partition(b"\r\n\r\n")[2][:-2] for part in body.split(b"--depthframe\r\n")[1:count + 1]]
    return [cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR) for part in parts]


def preview_region(png: bytes, box: dict) -> np.ndarray:
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    x, y, width, height = (int(round(box[key])) for key in ("x", "y", "width", "height"))
    return picture[y:y + height, x:x + width].astype(np.int16)


def test_previews_flicker_and_the_dashboard_in_a_real_browser(tmp_path):
    from tests.test_cli_faults import end_agents, ray_agents

    own_agents: set[int] = set()  # (this job's Ray agents, ended at the end: never another suite's)
    feeds = {"door": Camera(96, 64, 15), "yard": Camera(128, 72, 15), "gate": Camera(96, 64, 15)}
    for feed in feeds.values():
        feed.start()
    file = tmp_path / "cameras.yaml"
    file.write_text(json.dumps({"cameras": [{"name": name, "input": feeds[name].url,
                                             "record": str(tmp_path / f"{name}.mp4")} for name in ("door", "yard")]}))
    token_file, recordings = tmp_path / "token", tmp_path / "recordings"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    process = subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), "live", str(file), "--control",
                                "127.0.0.1:0", *MODEL, "--control-token-file", str(token_file), "--recordings-dir",
                                str(recordings)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        base = control_url(process)
        wait_for(lambda: call(base, "GET", "/readyz", token=None)[0] == 200, 90, "every camera connected")
        own_agents.update(ray_agents(of=process.pid))
        wait_for(lambda: all(camera_figures(base, name).get("frames_out", 0) >= 30 for name in ("door", "yard")),
                 60, "depth of both cameras")
        assert all(camera_figures(base, name)["previews_encoded"] == 0 for name in ("door", "yard"))  # none watched

        # The previews and the page need the token, as the API does
        for path in ("/cameras/door/snapshot.jpg", "/cameras/door/preview.mjpg", "/dashboard.js"):
            assert call(base, "GET", path, token=None)[0] == 401, path
        # snapshot.jpg: a JPEG at the camera's aspect ratio; preview.mjpg: several parts, each a new picture
        status, kind, body = get(base, "/cameras/yard/snapshot.jpg")
        snapshot = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and kind == "image/jpeg" and snapshot.shape == (72, 128, 3)
        pictures = mjpeg_parts(base, "door", 6)
        assert all(picture.shape == (64, 96, 3) for picture in pictures)
        assert len({picture.tobytes() for picture in pictures}) == 6

        # A viewer that stops reading: the camera's depth keeps up with its frames in, and another viewer still gets
        # pictures (judged against what the camera read meanwhile, not against a rate: the machine may be busy)
        before = camera_figures(base, "door")
        host, port = base.removeprefix("http://").split(":")
        stalled = socket.create_connection((host, int(port)))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /cameras/door/preview.mjpg HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                        f"{TOKEN}\r\n\r\n".encode())
        # depth flows on: 10 more frames published (however slowly this machine runs the model), then 40 read
        wait_for(lambda: camera_figures(base, "door")["frames_out"] - before["frames_out"] >= 10, 300,
                 "the camera's depth published on")
        wait_for(lambda: camera_figures(base, "door")["frames_in"] - before["frames_in"] >= 40, 120,
                 "the camera read on")
        assert len(mjpeg_parts(base, "door", 3)) == 3
        figures = camera_figures(base, "door")
        frames_in, frames_out = (figures[key] - before[key] for key in ("frames_in", "frames_out"))
        dropped = figures["dropped"] - before["dropped"]
        # every frame read is published or counted as dropped (a few in flight), and depth went on flowing: a
        # viewer that held the camera back would have stopped it
        assert frames_out + dropped >= frames_in - 8 and frames_out >= 10, (before, figures)
        stalled.close()

        # The flicker figure: per camera in /cameras and in /metrics
        assert all(camera_figures(base, name)["flicker_pct"] is not None for name in ("door", "yard"))
        _, _, metrics = get(base, "/metrics")
        assert b'depth_camera_flicker{camera="door"}' in metrics and b"depth_model_batch_seconds_bucket" in metrics

        # The dashboard in a real browser: the token traded for a cookie, a card a camera, live previews
        with browser.HeadlessChromium() as chromium:
            page = chromium.open(f"{base}/?token={TOKEN}")
            page.wait_for("document.querySelectorAll('.card').length === 2 && [...document.querySelectorAll("
                          "'.card .preview')].every((image) => image.naturalWidth > 0)", 30)
            assert page.evaluate("[...document.querySelectorAll('.card h2')].map((h) => h.textContent).sort()") == \
                ["door", "yard"]
            page.wait_for("[...document.querySelectorAll('.card .state')].every((s) => s.textContent === 'running')")
            box = page.evaluate("JSON.parse(JSON.stringify(document.querySelector('.card .preview')"
                                ".getBoundingClientRect()))")
            first = page.screenshot()
            time.sleep(1.0)
            second = page.screenshot()
            changed = np.abs(preview_region(first, box) - preview_region(second, box)).max(axis=2) > 24
            assert changed.mean() > 0.005, changed.mean()  # the preview moves: fresh depth, not a still
            if os.environ.get("DASHBOARD_SCREENSHOT"):
                Path(os.environ["DASHBOARD_SCREENSHOT"]).write_bytes(second)

            # A camera added from the page's form, as an operator would
            page.evaluate(f"""(() => {{
                const form = document.getElementById('add');
                form.elements.name.value = 'gate';
                form.elements.input.value = {json.dumps(feeds['gate'].url)};
                form.elements.record.value = 'gate.mp4';
                form.querySelector('button').click();
                return true;
            }})()""")
            page.wait_for("document.getElementById('message').textContent.startsWith('gate added')", 30)
            page.wait_for("document.querySelectorAll('.card').length === 3", 30)
            wait_for(lambda: camera_figures(base, "gate").get("frames_out", 0) > 10, 60, "depth of the added camera")
            assert "gate" in [entry["name"] for entry in yaml.safe_load(file.read_text())["cameras"]]  # persisted
            # ... and one removed with its card's button
            page.evaluate("document.querySelector('.card[data-name=\"yard\"] .remove').click() || true")
            page.wait_for("document.querySelectorAll('.card').length === 2 && "
                          "!document.querySelector('.card[data-name=\"yard\"]')", 30)
            assert {c["name"] for c in call(base, "GET", "/cameras")[1]["cameras"]} == {"door", "gate"}
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=90)
        for feed in feeds.values():
            feed.stop()
        end_agents(own_agents)
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert set(summary["cameras"]) == {"door", "yard", "gate"}
