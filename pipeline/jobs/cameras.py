"""
Many cameras, one job: a cameras file (or HTTP requests) in, each camera's depth stream out, one shared model.

Takes: the cameras (`read_cameras_file`: a YAML file with a `cameras:` list; `camera_from_entry`: one entry, from the
file or a POST), the job's settings, and a `DepthGraph`, whose camera pool runs each camera on a worker of its own
(graph side: camera_pool.py) and whose model actors batch the cameras' frames together.
Gives: `CameraService`: add and remove cameras while it runs, each camera's state and figures (`cameras()`),
readiness, and at the end the job's summary: `cameras` (each camera that ran, by name: the single-camera summary's
fields) and `model_batches` (count, mean_frames: frames per network batch, mean_cameras: cameras per batch).

Policy only: what a camera entry may say and what it means, names unique, outputs that are not another camera's or an
input, and that no camera's failure ends the job (its worker reconnects, re-publishes, and is restarted by Ray if
its process dies). Ray itself is the graph's business.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..settings import PipelineSettings, check_combination, merge
from ..stages.decode import is_url
from ..stages.frames import PipelineError
from ..stages.live_camera import LiveTargets
from ..stages.sequence_writer import is_sequence_format
from .outputs import InputFiles, check_output

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PUBLISH_SCHEMES = ("rtsp://", "rtsps://")
# A camera entry's own settings: its key -> the job setting it overrides for this camera
CAMERA_SETTINGS = {
    "colormap": "output.colormap",
    "depth_format": "output.depth_format",
    "drop": "live.drop",
    "keep_every": "live.keep_every",
    "queue": "live.queue",
    "transport": "live.transport",
    "smoothing": "smoothing.name",  # a name, or {name: ..., params: {...}}
}
CAMERA_KEYS = ("name", "input", "output", "record", "realtime", *CAMERA_SETTINGS)


@dataclass(frozen=True)
class Camera:
    """One camera of the job: where its frames come from, where its depth goes, and its own settings."""

    name: str
    input: str
    targets: LiveTargets
    realtime: bool
    settings: PipelineSettings
    entry: dict  # as given (for GET /cameras)


class CameraConflict(PipelineError):
    """A camera that clashes with one running (its name, or an output another camera writes)."""


def live_depth_format_problem(depth_format: str) -> str | None:
    """Why live mode cannot write a depth format (None when it can): it publishes and records videos."""
    if is_sequence_format(depth_format):
        return (f"depth_format {depth_format} writes folders of frames, for files; live mode publishes and records "
                f"videos (color, gray, side-by-side; gray16 for a recording)")
    return None


def camera_from_entry(entry, settings: PipelineSettings, where: str, no_overwrite: bool = False) -> Camera:
    """One entry (a mapping) checked: every problem is one line naming `where`, the camera and the key."""
    if not isinstance(entry, dict):
        raise PipelineError(f"{where}: a camera must be a mapping with name, input and output or record; got "
                            f"{type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PipelineError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-' (it is used in URLs and "
                            f"metric labels), got {name!r}")
    where = f"{where} camera {name!r}"
    for key in entry:
        if key not in CAMERA_KEYS:
            raise PipelineError(f"{where}: unknown key {key!r}; expected one of {', '.join(CAMERA_KEYS)}")
    source = entry.get("input")
    if not isinstance(source, str) or not source.strip():
        raise PipelineError(f"{where}: input must be a camera URL (rtsp, rtmp, srt, udp, tcp, http) or a file, "
                            f"got {source!r}")
    realtime = entry.get("realtime", False)
    if not isinstance(realtime, bool):
        raise PipelineError(f"{where}: realtime must be true or false, got {realtime!r}")
    if not is_url(source):
        if not realtime:
            raise PipelineError(f"{where}: input {source} is a file: a file stands in for a camera only with "
                                f"realtime: true (played at its own rate)")
        if not Path(source).is_file():
            raise PipelineError(f"{where}: input {source}: file not found")
    elif realtime:
        raise PipelineError(f"{where}: realtime is for a file input; {source} is a live stream already")
    publish, record = entry.get("output"), entry.get("record")
    if publish is not None and (not isinstance(publish, str) or not publish.startswith(PUBLISH_SCHEMES)):
        raise PipelineError(f"{where}: output must be an rtsp:// URL to publish to, got {publish!r} (a file goes in "
                            f"record)")
    if record is not None and (not isinstance(record, str) or not record.strip() or is_url(record)):
        raise PipelineError(f"{where}: record must be a file to record to, got {record!r}")
    if publish is None and record is None:
        raise PipelineError(f"{where}: needs somewhere to send depth: output (an rtsp:// URL) and/or record (a file)")
    overrides, labels = {}, {}
    for key, setting in CAMERA_SETTINGS.items():
        if key not in entry:
            continue
        value = entry[key]
        if key == "smoothing" and isinstance(value, dict):
            unknown = set(value) - {"name", "params"}
            if unknown:
                raise PipelineError(f"{where}: smoothing takes name and params, not {', '.join(sorted(unknown))}")
            overrides["smoothing"] = value
        else:
            overrides[setting] = value
        labels[setting] = key
    try:
        camera_settings = check_combination(merge(settings, overrides, where, labels), where)
    except PipelineError as error:
        raise PipelineError(str(error).replace(f"{where}: smoothing.", f"{where}: smoothing ")) from None
    live_format_problem = live_depth_format_problem(camera_settings.output.depth_format)
    if live_format_problem:
        raise PipelineError(f"{where}: {live_format_problem}")
    if publish and camera_settings.output.depth_format == "gray16":
        raise PipelineError(f"{where}: depth_format gray16 cannot be published over RTSP (8-bit H.264); record it "
                            f"to a file instead")
    if record:
        try:
            record = str(check_output(record, camera_settings.output.depth_format, InputFiles([source]),
                                      no_overwrite, "recording"))
        except PipelineError as error:
            raise PipelineError(f"{where}: {error}") from None
    return Camera(name, source, LiveTargets(publish, record), realtime, camera_settings, dict(entry))


def read_cameras_file(path: str, settings: PipelineSettings, no_overwrite: bool = False) -> list[Camera]:
    """The cameras of a YAML file: `cameras:` a list of entries. Every problem is one line naming the file, and the
    camera and key where there is one; nothing starts before the whole file is good."""
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"{path}: cameras file not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not a UTF-8 text file (a YAML cameras file is expected)") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) != {"cameras"} or not isinstance(data["cameras"], list) \
            or not data["cameras"]:
        raise PipelineError(f"{path}: expected `cameras:` with a list of cameras (name, input, output and/or "
                            f"record, and their own settings)")
    cameras = [camera_from_entry(entry, settings, f"{path}: camera {index + 1}", no_overwrite)
               for index, entry in enumerate(data["cameras"])]
    taken: dict[str, str] = {}
    for camera in cameras:
        for kind, value in (("name", camera.name), ("output", camera.targets.publish),
                            ("record", camera.targets.record)):
            if value is None:
                continue
            key = (kind if kind == "name" else "target", value)
            if key in taken:
                raise PipelineError(f"{path}: camera {camera.name!r}: {kind} {value} is camera {taken[key]!r}'s too")
            taken[key] = camera.name
    return cameras


class CameraService:
    """The cameras of a running job: add, remove, look, and the summary at the end. Thread-safe (the HTTP API's
    threads and the main thread share it)."""

    def __init__(self, settings: PipelineSettings, pool, no_overwrite: bool = False):
        """`pool`: the graph's camera pool (camera_pool.CameraPool)."""
        self.settings = settings
        self.pool = pool
        self.no_overwrite = no_overwrite
        self.model_loaded = False
        self.started = time.monotonic()
        self._cameras: dict[str, Camera] = {}
        self._finished: dict[str, dict] = {}  # summaries of cameras removed while the job ran
        self._lock = threading.Lock()

    def add(self, camera: Camera) -> None:
        with self._lock:
            if camera.name in self._cameras:
                raise CameraConflict(f"camera {camera.name!r} is running already")
            for other in self._cameras.values():
                clash = ({camera.targets.publish, camera.targets.record} - {None}) & \
                        ({other.targets.publish, other.targets.record} - {None})
                if clash:
                    raise CameraConflict(f"camera {camera.name!r}: {clash.pop()} is camera {other.name!r}'s output")
            self._cameras[camera.name] = camera
            self._finished.pop(camera.name, None)  # a name used again: its earlier run's summary is replaced
        try:
            self.pool.start(camera)
        except BaseException:
            with self._lock:
                self._cameras.pop(camera.name, None)
            raise

    def add_entry(self, entry) -> Camera:
        """A camera from a request's JSON body: checked as a file entry is, then started."""
        camera = camera_from_entry(entry, self.settings, "POST /cameras:", self.no_overwrite)
        self.add(camera)
        return camera

    def remove(self, name: str) -> dict:
        """Stop a camera and close its outputs cleanly: its summary. KeyError for a name not running."""
        with self._lock:
            if name not in self._cameras:
                raise KeyError(name)
        summary = self.pool.stop(name)
        with self._lock:
            self._cameras.pop(name, None)
            self._finished[name] = summary
        return summary

    def cameras(self) -> dict[str, dict]:
        """Each running camera: its state and figures (from the pool's last look, at most a second old)."""
        with self._lock:
            running = dict(self._cameras)
        figures = self.pool.stats()
        return {name: {"name": name, "input": camera.input, "output": camera.targets.publish,
                       "record": camera.targets.record, **figures.get(name, {"state": "starting"})}
                for name, camera in running.items()}

    def ready(self) -> tuple[bool, str]:
        """Ready once the model is loaded and every camera is connected or reconnecting; (ready, why not)."""
        if not self.model_loaded:
            return False, "the model is loading"
        # (a file played in real time that has ended is done, not waited for)
        waiting = [name for name, camera in self.cameras().items()
                   if camera["state"] not in ("running", "reconnecting", "ended")]
        return (not waiting), (f"not connected yet: {', '.join(sorted(waiting))}" if waiting else "ready")

    def stop_all(self) -> dict:
        """Every camera stopped, its outputs closed: the job's summary."""
        with self._lock:
            names = list(self._cameras)
        summaries = self.pool.stop_all(names)
        with self._lock:
            self._finished.update(summaries)
            self._cameras.clear()
            cameras = dict(self._finished)
        return {"cameras": cameras, "model_batches": self.pool.batching(),
                "seconds": round(time.monotonic() - self.started, 3)}

    def batching(self) -> dict:
        return self.pool.batching()
