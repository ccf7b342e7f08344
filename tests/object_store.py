"""
A real S3-compatible server for the tests: moto's standalone server (the S3 protocol over HTTP) on 127.0.0.1.

The session's endpoint and (dummy) credentials are the standard AWS variables, set by conftest.py before any Ray
instance starts, so that every actor and every job subprocess finds them as a node on a cluster would: the
pipeline itself is given nothing else. `ObjectStore` starts the server, makes buckets, puts and gets objects
(through fsspec, as a user's tools would), and can stop the server and start it again on the same port (its
contents are lost with it: moto keeps them in memory).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SESSION_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-0123456789",
                       "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def set_session_environment() -> None:
    """The endpoint on a port of its own, and the credentials, for this test session (and what it starts)."""
    os.environ.setdefault("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in SESSION_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


class ObjectStore:
    def __init__(self, endpoint: str | None = None):
        self.endpoint = endpoint or os.environ["AWS_ENDPOINT_URL"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.process: subprocess.Popen | None = None

    def start(self) -> "ObjectStore":
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"moto's server exited ({self.process.returncode}) on port {self.port}")
                time.sleep(0.2)
        raise RuntimeError(f"moto's server did not answer on {self.endpoint}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    @property
    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """A new empty bucket: its URL."""
        fs = self.fs
        if fs.exists(name):
            fs.rm(name, recursive=True)
        fs.mkdir(name)
        return f"s3://{name}"

    def put(self, local: Path, url: str) -> str:
        self.fs.put_file(str(local), url)
        return url

    def get(self, url: str, local: Path) -> Path:
        self.fs.get_file(url, str(local))
        return local

    def keys(self, prefix: str) -> list[str]:
        """Every object below a prefix (hidden ones too), relative to it."""
        fs = self.fs
        base = prefix.removeprefix("s3://").rstrip("/")
        return sorted(path[len(base) + 1:] for path in fs.find(base)) if fs.exists(base) else []

    def open_uploads(self, bucket: str) -> list[dict]:
        return self.fs.call_s3("list_multipart_uploads", Bucket=bucket.removeprefix("s3://")).get("Uploads", []) or []


class CuttingProxy:
    """A TCP proxy in front of the server that drops the connection of any request whose first bytes match `cut`
    (a bytes regex over the request line, e.g. rb"^PUT /bucket/out/clip"), as a server that goes away mid-upload
    does; every other request passes. `cut = None` lets everything through again."""

    def __init__(self, target_port: int, cut: bytes | None = None, stall: bool = False):
        import re
        import threading

        self.target_port = target_port
        self.cut = re.compile(cut) if cut else None
        self.cuts = 0
        self.stall = stall  # every request held, unanswered (a server that stopped answering)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return

        def back():
            try:
                while data := server.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                client.close()

        self._threading.Thread(target=back, daemon=True).start()
        try:
            while data := client.recv(65536):
                if self.stall:
                    continue  # read and never answered
                if self.cut is not None and any(self.cut.match(line) for line in data.split(b"\r\n")[:1]):
                    self.cuts += 1
                    break
                server.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._listener.close()
