"""A real browser for the dashboard's tests: Debian's headless Chromium (`chromium-headless-shell`, installed by
.ci/run), driven over the Chrome DevTools Protocol through a pipe (`--remote-debugging-pipe`: JSON messages ended by
NUL on file descriptors 3 and 4), so no websocket client and no driver package is needed.

    with HeadlessChromium() as browser:
        page = browser.open("http://127.0.0.1:8765/")
        page.evaluate("document.title"); page.screenshot() -> PNG bytes
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

BINARY = "chromium-headless-shell"


def available() -> bool:
    return shutil.which(BINARY) is not None


class Page:
    def __init__(self, browser: HeadlessChromium, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str):
        """A JavaScript expression's value (awaited if it is a promise), as JSON."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0):
        """Until the expression is truthy in the page: its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true in {timeout_s:g} s: {expression}")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])


class HeadlessChromium:
    def __init__(self, width: int = 1280, height: int = 800):
        self.size = (width, height)
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._next_id = 0
        self._pending = b""

    def __enter__(self) -> HeadlessChromium:
        to_browser, from_us = os.pipe()
        to_us, from_browser = os.pipe()

        def descriptors():  # (in the child: the pipe ends as fds 3 and 4, inherited by the browser)
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [BINARY, "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={self._profile}", f"--window-size={self.size[0]},{self.size[1]}"],
            preexec_fn=descriptors, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._out = os.fdopen(from_us, "wb", buffering=0)
        self._in = os.fdopen(to_us, "rb", buffering=0)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()
        self._in.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One DevTools command: its result (events that come meanwhile are passed over)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._pending:
                chunk = self._in.read(1 << 16)
                if not chunk:
                    raise RuntimeError(f"{method}: the browser closed the pipe")
                self._pending += chunk
            line, self._pending = self._pending.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": url, "width": self.size[0], "height": self.size[1]})
        session = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        return page
