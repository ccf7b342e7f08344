"""
The many-camera job: the cameras file's cameras, then whatever the HTTP control API adds or removes, until stopped.

Takes: what the command asked (`CamerasRequest`: the cameras file, the control address and token, flags given),
checked by `CamerasJob.from_request` before Ray starts (the control port is bound then, so a port in use fails
first); then a `DepthGraph`, whose camera supervisor runs each camera on an actor of its own.
Gives: from `run`, when `stop()` is called (Ctrl-C, SIGTERM), the summary of every camera and the API's address.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, one_line
from pipeline.jobs.cameras import Camera, CameraService, read_cameras_file
from pipeline.jobs.cameras_file import CamerasFile
from pipeline.jobs.control_api import ControlServer, is_loopback, parse_address, read_token
from pipeline.jobs.outputs import check_output_folder
from pipeline.settings import PipelineSettings

__all__ = ["CamerasJob", "CamerasRequest"]


@dataclass(frozen=True)
class CamerasRequest:
    """A many-camera run as the command line gave it."""

    cameras_file: str
    control: str  # HOST:PORT of the HTTP control API
    token_file: str | None = None  # None: $DEPTH_CONTROL_TOKEN, or no token (loopback only)
    no_overwrite: bool = False
    file_flags: tuple[str, ...] = ()  # flags given that are for files only (--segments)
    persist: bool = True  # changes over HTTP written back to the cameras file (--no-persist: never)


class CamerasJob:
    def __init__(self, settings: PipelineSettings, cameras: list[Camera], server: ControlServer,
                 no_overwrite: bool = False, cameras_file: CamerasFile | None = None):
        self.settings, self.cameras, self.server, self.no_overwrite = settings, cameras, server, no_overwrite
        self.cameras_file = cameras_file
        self.service: CameraService | None = None
        self._stopping = threading.Event()

    @classmethod
    def from_request(cls, settings: PipelineSettings, request: CamerasRequest,
                     warn: Callable[[str], None] = lambda line: None) -> CamerasJob:
        """Every check that needs no Ray, each a one-line PipelineError naming the flag, file or key."""
        for flag in request.file_flags:
            raise PipelineError(f"{flag} is for files; a camera is one stream, run as it comes")
        if settings.model.vda_mode == "window":
            raise PipelineError("--vda-mode window is for files: a camera runs a video model in its streaming mode "
                                "(one frame at a time)")
        host, port = parse_address(request.control)
        token = read_token(request.token_file, warn=warn)
        if token is None and not is_loopback(host):
            raise PipelineError(f"--control {request.control}: an address other machines can reach needs a token "
                                f"(--control-token-file PATH, or $DEPTH_CONTROL_TOKEN): anyone who reaches the port "
                                f"could add cameras")
        if settings.live.recordings_dir is not None:
            check_output_folder(settings.live.recordings_dir, "--recordings-dir")
            Path(settings.live.recordings_dir).mkdir(parents=True, exist_ok=True)
        cameras = read_cameras_file(request.cameras_file, settings, request.no_overwrite)
        file = CamerasFile(request.cameras_file, request.persist, warn)
        server = ControlServer(host, port, token, host_names=tuple(settings.live.control_hosts), log=warn)
        return cls(settings, cameras, server, request.no_overwrite, file)

    def stop(self) -> None:
        """End the job (safe from a signal handler): requests from now on are answered 503, never taken."""
        self._stopping.set()
        if self.service is not None:
            self.service.stopping()

    def run(self, graph, log: Callable[[str], None] = lambda line: None,
            shielded: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
        """Until `stop()`: the summary. `shielded()` wraps the final stop of every camera (the CLI holds signals
        there, so that the outputs are closed whole)."""
        self.service = CameraService(self.settings, graph.camera_supervisor(), self.no_overwrite, self.cameras_file)
        self.server.start(self.service)  # changes answered 503 until the file's cameras are in
        log(f"live: {len(self.cameras)} cameras; control API at {self.server.url} (GET /cameras, /healthz, /readyz, "
            f"/metrics; POST /cameras; DELETE /cameras/NAME){'; token required' if self.server.token_required else ''}")
        _ = graph.model_info  # loaded before the cameras start, so start-up is not counted as latency
        self.service.model_loaded = True
        for camera in self.cameras:
            if self._stopping.is_set():
                break
            try:
                self.service.add(camera)
            except PipelineError as error:  # that camera's error, never the job's
                self.service.fail(camera, error)
                log(f"warning: camera {camera.name!r} not started: {one_line(error)}")
        self.service.running()
        while not self._stopping.wait(0.5):  # (a timed wait: signal handlers run between its rounds)
            pass
        with shielded():
            summary = self.service.stop_all()
        return {**summary, "control": self.server.url, "model": graph.model_info}

    def close(self) -> None:
        self.server.close()
