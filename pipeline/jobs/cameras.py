"""
Many cameras, one job: a cameras file (or HTTP requests) in, each camera's depth stream out, one shared model.

Takes: the cameras (`read_cameras_file`: a YAML file with a `cameras:` list; `camera_from_entry`: one entry, from the
file or a POST), the job's settings, and a `DepthGraph`, whose camera supervisor runs each camera on a worker of its own
(graph side: camera_supervisor.py) and whose model actors batch the cameras' frames together.
Gives: `CameraService`: add and remove cameras while it runs, each camera's state and figures (`cameras()`),
readiness, and at the end the job's summary: `cameras` (each camera that ran, by name: the single-camera summary's
fields) and `model_batches` (count, mean_frames: frames per network batch, mean_cameras: cameras per batch).

Policy only: what a camera entry may say and what it means, names unique, outputs that are no other camera's input or
output (the same file however spelled: by device and inode, and by resolved path), what a request over HTTP may do
(`input` a URL; `record` a new file inside the recordings folder: the cameras file is trusted, a request is not), at
most `live.max_cameras` cameras, and that no camera's failure ends the job (its worker reconnects, re-publishes, and
is restarted by Ray if its process dies; a camera of the file that cannot start is that camera's error). Ray itself
is the graph's business.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath

import yaml

from pipeline.errors import PipelineError, one_line
from pipeline.jobs.cameras_file import CamerasFile
from pipeline.jobs.live import live_depth_format_problem
from pipeline.jobs.outputs import InputFiles, check_output
from pipeline.stages.sinks.output_files import free_name
from pipeline.settings import PipelineSettings, check_combination, merge
from pipeline.stages.live.camera_runner import LiveTargets
from pipeline.stages.sources.video_decoder import open_video
from pipeline.storage import is_remote
from pipeline.urls import is_publish_url, is_url, redact

__all__ = ["CameraService", "RequestRefused", "camera_from_entry", "read_cameras_file"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
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
# keep_recordings: true (written for a recording asked for over HTTP): a recording already there from an earlier run
# is kept, and this run records to NAME-2.EXT, NAME-3.EXT, ... (the first free name)
CAMERA_KEYS = ("name", "input", "output", "record", "keep_recordings", "realtime", *CAMERA_SETTINGS)


@dataclass(frozen=True)
class Camera:
    """One camera of the job: where its frames come from, where its depth goes, and its own settings."""

    name: str
    input: str
    targets: LiveTargets
    realtime: bool
    settings: PipelineSettings
    entry: dict  # as given (for GET /cameras)


class RequestRefused(PipelineError):
    """A request the service refuses, with the HTTP status that says why (the message is the answer's error)."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, status: HTTPStatus | None = None, headers: dict | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = headers or {}


class CameraConflict(RequestRefused):
    """A camera that clashes with one running (its name, or a file or stream another camera reads or writes)."""

    status = HTTPStatus.CONFLICT


def clash(camera: Camera, other: Camera) -> str | None:
    """What of `camera` is also `other`'s (None: nothing): a publish URL both send to, or a file one records to that
    the other reads or records to (the same file however spelled)."""
    if camera.targets.publish is not None and camera.targets.publish == other.targets.publish:
        return f"output {camera.targets.publish} is camera {other.name!r}'s output"
    if camera.targets.record is not None:
        for what, path in (("input", other.input), ("recording", other.targets.record)):
            if path is not None and InputFiles([path]).find(camera.targets.record) is not None:
                return f"record {camera.targets.record} is camera {other.name!r}'s {what}"
    if other.targets.record is not None and InputFiles([camera.input]).find(other.targets.record) is not None:
        return f"input {camera.input} is camera {other.name!r}'s recording"
    return None


def recording_inside(record, folder: str | None, where: str) -> str:
    """A `record` sent over HTTP, confined: a relative name for a new file inside the recordings folder (`folder`),
    as its full path; its sub-folders are made there (`gate/today.mp4`), each one a real folder, never a symlink.
    Refused (a `RequestRefused`): no recordings folder, an absolute path or `..`, a control character, a path through
    a symlink, and any existing file."""
    if folder is None:
        raise RequestRefused(f"{where}: record over HTTP needs a recordings folder: start the job with "
                             f"--recordings-dir DIR (live.recordings_dir), and send a name inside it",
                             HTTPStatus.FORBIDDEN)
    if not isinstance(record, str) or not record.strip() or CONTROL_CHARACTERS.search(record):
        raise RequestRefused(f"{where}: record must be a file name inside the recordings folder (no control "
                             f"characters), got {record!r}")
    parts = PurePosixPath(record).parts
    if PurePosixPath(record).is_absolute() or ".." in parts or record.startswith("~"):
        raise RequestRefused(f"{where}: record {record} must be a relative name inside the recordings folder (no "
                             f"absolute path, no '..')", HTTPStatus.FORBIDDEN)
    root = Path(os.path.realpath(folder))
    try:
        parent = make_folders_inside(root, parts[:-1])
    except (OSError, RuntimeError) as error:
        raise RequestRefused(f"{where}: record {record} leads through a symlink or cannot be made inside the "
                             f"recordings folder ({one_line(error)})", HTTPStatus.FORBIDDEN) from None
    path = parent / parts[-1]
    if os.path.lexists(path):
        raise CameraConflict(f"{where}: record {record} exists in the recordings folder; recordings over HTTP are "
                             f"never replaced: choose a new name")
    return str(path)


def make_folders_inside(root: Path, names: tuple[str, ...]) -> Path:
    """root/names[0]/names[1]/..., each made if missing, each opened without following a symlink (an OSError for a
    symlink in the way: ELOOP or ENOTDIR)."""
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            if name in ("", "."):
                continue
            try:
                os.mkdir(name, 0o755, dir_fd=descriptor)
            except FileExistsError:
                pass
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
    finally:
        os.close(descriptor)
    return root.joinpath(*(name for name in names if name not in ("", ".")))


def camera_from_entry(entry, settings: PipelineSettings, where: str, no_overwrite: bool = False,
                      record_confined_to: str | None = None) -> Camera:
    """One entry (a mapping) checked: every problem is one line naming `where`, the camera and the key.
    `record_confined_to`: the folder its recording must stay inside (one asked for over HTTP)."""
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
        try:  # a file that is no video is known at once: never a camera left `connecting` for ever
            open_video(source)[0].close()
        except PipelineError as error:
            raise PipelineError(f"{where}: input {error}") from None
    elif realtime:
        raise PipelineError(f"{where}: realtime is for a file input; {source} is a live stream already")
    publish, record = entry.get("output"), entry.get("record")
    if publish is not None and (not isinstance(publish, str) or not is_publish_url(publish)):
        raise PipelineError(f"{where}: output must be an rtsp:// URL to publish to, got {publish!r} (a file goes in "
                            f"record)")
    if record is not None and (not isinstance(record, str) or not record.strip() or is_url(record)
                               or is_remote(record) or CONTROL_CHARACTERS.search(record)):
        raise PipelineError(f"{where}: record must be a file to record to on this machine, got {record!r}")
    keep_recordings = entry.get("keep_recordings", False)
    if not isinstance(keep_recordings, bool) or keep_recordings and record is None:
        raise PipelineError(f"{where}: keep_recordings must be true or false, with a record, got {keep_recordings!r}")
    if keep_recordings:
        record = str(free_name(Path(record)))
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
    live_format_problem = live_depth_format_problem(camera_settings.output.depth_format, publish=bool(publish))
    if live_format_problem:
        raise PipelineError(f"{where}: {live_format_problem}")
    if record:
        try:
            record = str(check_output(record, camera_settings.output.depth_format, InputFiles([source]),
                                      no_overwrite, "recording"))
        except PipelineError as error:
            raise PipelineError(f"{where}: {error}") from None
    return Camera(name, source, LiveTargets(publish, record, record_confined_to if record else None), realtime,
                  camera_settings, dict(entry))


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
    if not isinstance(data, dict) or set(data) != {"cameras"} or not isinstance(data["cameras"], (list, type(None))):
        raise PipelineError(f"{path}: expected `cameras:` with a list of cameras (name, input, output and/or "
                            f"record, and their own settings; an empty list: cameras come over HTTP)")
    data["cameras"] = data["cameras"] or []
    if len(data["cameras"]) > settings.live.max_cameras:
        raise PipelineError(f"{path}: {len(data['cameras'])} cameras, more than live.max_cameras "
                            f"({settings.live.max_cameras}; each camera is a process of about 250 MB)")
    cameras = [camera_from_entry(entry, settings, f"{path}: camera {index + 1}", no_overwrite)
               for index, entry in enumerate(data["cameras"])]
    for index, camera in enumerate(cameras):
        for other in cameras[:index]:
            if camera.name == other.name:
                raise PipelineError(f"{path}: camera {camera.name!r}: name {camera.name} is camera {other.name!r}'s "
                                    f"too")
            problem = clash(camera, other)  # (both ways: what one writes, the other reads or writes)
            if problem:
                raise PipelineError(f"{path}: camera {camera.name!r}: {problem}")
    return cameras


class CameraService:
    """The cameras of a running job: add, remove, look, and the summary at the end. Thread-safe (the HTTP API's
    threads and the main thread share it).

    Changes (add, remove) are taken only while it runs: `starting` until the cameras file's cameras are in (the
    caller says `running()`), `stopping` from `stopping()` on; meanwhile a request is answered 503."""

    def __init__(self, settings: PipelineSettings, supervisor, no_overwrite: bool = False,
                 cameras_file: CamerasFile | None = None):
        """`supervisor`: the graph's camera supervisor (cluster/camera_supervisor.py), or a stand-in.
        `cameras_file`: where changes over HTTP are written back (None: nowhere)."""
        self.settings = settings
        self.supervisor = supervisor
        self.no_overwrite = no_overwrite
        self.cameras_file = cameras_file
        self.model_loaded = False
        self.started = time.monotonic()
        self.phase = "starting"  # -> running -> stopping
        self._cameras: dict[str, Camera] = {}
        self._finished: dict[str, dict] = {}  # summaries of cameras removed while the job ran
        self._lock = threading.Lock()  # the tables above
        self._changes = threading.Lock()  # one add / remove / stop at a time, each with its supervisor call

    def running(self) -> None:
        """The cameras file's cameras are in: requests may add and remove from now on."""
        with self._lock:
            if self.phase == "starting":
                self.phase = "running"

    def stopping(self) -> None:
        """The job is stopping (Ctrl-C, SIGTERM): no more changes; safe to call from a signal handler."""
        self.phase = "stopping"

    def _refuse_changes(self, what: str) -> None:
        if self.phase == "starting":
            raise RequestRefused(f"{what}: the service is starting (the cameras file's cameras are being added); "
                                 f"try again in a moment", HTTPStatus.SERVICE_UNAVAILABLE, {"Retry-After": "2"})
        if self.phase == "stopping":
            raise RequestRefused(f"{what}: the service is stopping", HTTPStatus.SERVICE_UNAVAILABLE)

    def add(self, camera: Camera, request: bool = False) -> bool:
        """Start a camera; a `CameraConflict` if its name is running or a file or stream it uses is another camera's
        (`request`: it came over HTTP, and is refused unless the service is running; it then goes into the cameras
        file). Whether the cameras file holds it."""
        with self._changes:
            with self._lock:
                if request:
                    self._refuse_changes("POST /cameras")
                elif self.phase == "stopping":
                    raise PipelineError(f"camera {camera.name!r}: not started, the job is stopping")
                if camera.name in self._cameras:
                    raise CameraConflict(f"camera {camera.name!r} is running already")
                if len(self._cameras) >= self.settings.live.max_cameras:
                    raise RequestRefused(f"camera {camera.name!r}: the job runs its most cameras already "
                                         f"({self.settings.live.max_cameras}, live.max_cameras); remove one first",
                                         HTTPStatus.TOO_MANY_REQUESTS)
                for other in self._cameras.values():
                    problem = clash(camera, other)
                    if problem:
                        raise CameraConflict(f"camera {camera.name!r}: {problem}")
                self._cameras[camera.name] = camera
                self._finished.pop(camera.name, None)  # a name used again: its earlier run's summary is replaced
            try:
                self.supervisor.start(camera)
            except BaseException:
                with self._lock:
                    self._cameras.pop(camera.name, None)
                raise
            return request and self._persist(lambda file: file.added(camera.entry))

    def _persist(self, change) -> bool:
        """A change over HTTP into the cameras file (under the change lock): whether the file holds it."""
        return change(self.cameras_file) if self.cameras_file is not None else False

    @property
    def persistence(self) -> dict:
        """Whether changes over HTTP reach the cameras file, and why not (GET /cameras)."""
        file = self.cameras_file
        return {"file": str(file.path) if file else None, "persist": bool(file and file.persist),
                "problem": file.problem if file else None}

    def add_entry(self, entry) -> tuple[Camera, bool]:
        """A camera from a request's JSON body: checked as a file entry is, and as a request must be (its input a URL,
        its recording a new file inside the recordings folder), then started: it, and whether the cameras file holds
        it."""
        where = "POST /cameras"
        self._refuse_changes("POST /cameras")
        if isinstance(entry, dict):
            source = entry.get("input")
            if isinstance(source, str) and source.strip() and not is_url(source):
                raise RequestRefused(f"{where}: input {source} is a local file; over HTTP a camera's input is a URL "
                                     f"(rtsp, rtmp, srt, udp, tcp, http): file cameras go in the cameras file",
                                     HTTPStatus.FORBIDDEN)
            if "keep_recordings" in entry:
                raise RequestRefused(f"{where}: keep_recordings is the service's to set (a recording over HTTP "
                                     f"never replaces a file)")
            if entry.get("record") is not None:
                # (written back to the cameras file by its full path, marked so that a restart keeps this recording)
                entry = {**entry, "record": recording_inside(entry["record"], self.settings.live.recordings_dir,
                                                             where), "keep_recordings": True}
        camera = camera_from_entry(entry, self.settings, where, self.no_overwrite,
                                   record_confined_to=self.settings.live.recordings_dir)
        return camera, self.add(camera, request=True)

    def fail(self, camera: Camera, error: BaseException) -> None:
        """A camera that could not start (a cameras-file camera that clashes): its error in the summary, not the
        job's."""
        with self._lock:
            self._finished[camera.name] = {"input": camera.input, "output": camera.targets.publish,
                                           "record": camera.targets.record, "frames_in": 0, "frames_out": 0,
                                           "error": one_line(error)}

    def remove(self, name: str) -> tuple[dict, bool]:
        """Stop a camera and close its outputs cleanly: its summary, and whether the cameras file no longer has it.
        KeyError for a name not running."""
        with self._changes:
            with self._lock:
                self._refuse_changes(f"DELETE /cameras/{name}")
                if name not in self._cameras:
                    raise KeyError(name)
            summary = self.supervisor.stop(name)
            with self._lock:
                self._cameras.pop(name, None)
                self._finished[name] = summary
            persisted = self._persist(lambda file: file.removed(name))
        return summary, persisted

    def cameras(self) -> dict[str, dict]:
        """Each running camera: its state and figures (from the camera supervisor's last look, at most a second old)."""
        with self._lock:
            running = dict(self._cameras)
        figures = self.supervisor.stats()
        return {name: {"name": name, "input": camera.input, "output": camera.targets.publish,
                       "record": camera.targets.record, "error": None, **figures.get(name, {"state": "starting"})}
                for name, camera in running.items()}

    def preview(self, name: str, newer_than: int = 0) -> tuple[int, bytes] | None:
        """A running camera's last depth picture as JPEG with its number, if newer than `newer_than` (None: none yet).
        KeyError: no camera of that name is running."""
        with self._lock:
            if name not in self._cameras:
                raise KeyError(name)
        return self.supervisor.preview(name, newer_than)

    def ready(self, details: bool = True) -> tuple[bool, str]:
        """Ready once the model is loaded and every camera is connected or reconnecting; (ready, why not: each
        waiting camera with its last error, or without `details` its name and state only)."""
        if not self.model_loaded:
            return False, "the model is loading"
        if self.phase != "running":
            return False, f"the service is {self.phase}"
        # (a file played in real time that has ended is done, not waited for)
        waiting = {name: (camera["state"], camera.get("error")) for name, camera in self.cameras().items()
                   if camera["state"] not in ("running", "reconnecting", "ended")}
        if not waiting:
            return True, "ready"
        return False, "not connected yet: " + "; ".join(
            f"{name} ({state}: {redact(error)})" if error and details else f"{name} ({state})"
            for name, (state, error) in sorted(waiting.items()))

    def stop_all(self) -> dict:
        """Every camera stopped, its outputs closed: the job's summary."""
        self.stopping()
        with self._changes:
            with self._lock:
                names = list(self._cameras)
            summaries = self.supervisor.stop_all(names)
            with self._lock:
                self._finished.update(summaries)
                self._cameras.clear()
                cameras = dict(self._finished)
        return {"cameras": cameras, "model_batches": self.supervisor.batching(),
                "seconds": round(time.monotonic() - self.started, 3)}

    def batching(self) -> dict:
        return self.supervisor.batching()
