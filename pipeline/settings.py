"""
Typed settings: dataclasses, filled from a YAML preset and then from command-line overrides.

Takes: a YAML file (sections model / input / batching / smoothing / output / segments / ray / live / storage) and a dict
of overrides
(`{"model.batch_size": 8}` style dotted keys, or section dicts).
Gives: a frozen `PipelineSettings`. An unknown section or key, a value of the wrong type or out of range, is a
one-line `PipelineError` that names the file (or command-line flag), the key and the values allowed, raised while
the settings are read: before any model, video or Ray work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model import PRECISIONS, VARIANTS
from model.checkpoint import MAX_DEPTH_RANGE_M
from model.hub import MODEL_NAMES
from pipeline.errors import PipelineError
from pipeline.formats import DEPTH_FORMATS
from pipeline.stages.live.camera_runner import LiveCameraOptions
from pipeline.stages.render.colorize import colormap_id, colormap_names
from pipeline.stages.render.smoothing import SMOOTHER_NAMES, make_smoother
from pipeline.stages.sinks.depth_sink import RenderOptions
from pipeline.stages.sinks.video_writer import X264_PRESETS
from pipeline.stages.sources.image_sequence import frame_rate
from pipeline.storage import configure as configure_storage
from pipeline.storage import option_problem

__all__ = ["PipelineSettings", "check_combination", "live_camera_options", "load_settings", "merge"]


@dataclass(frozen=True)
class ModelSettings:
    name: str | None = None  # released weights by name (small, base, large, v2-...), from the Hugging Face Hub
    checkpoint: str | None = None  # a path, or a Hub repo id (owner/name[@revision])
    random_weights: str | None = None  # variant name; for plumbing tests and demos only
    version: str | None = None  # v1 / v2; None: from the checkpoint
    input_size: int = 518  # the short side the model sees
    even_grid: bool = False
    precision: str = "auto"  # auto (float16 on a GPU, float32 on a CPU) | float32 | bfloat16 | float16 (GPU)
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads per model actor; 0: the actor's CPU share
    # A metric checkpoint's range in metres, for an official .pth whose name does not say it (20 indoor, 80 outdoor);
    # a Hugging Face checkpoint's config says it itself
    max_depth: float | None = None
    # A video model (Video Depth Anything): window (the files' default: 32-frame windows, each aligned to the last)
    # or stream (one frame at a time through a cache of earlier ones: always, for live cameras); auto: as said
    vda_mode: str = "auto"
    # What runs the network: torch (eager PyTorch), onnxruntime (the network exported to ONNX once, into
    # onnx_cache, and run by ONNX Runtime: its CPU provider, or CUDA's on a GPU), tensorrt (ONNX Runtime's TensorRT
    # provider, float16 engines); auto: onnxruntime for an .onnx checkpoint, torch otherwise
    runtime: str = "auto"
    onnx_cache: str | None = None  # where exported files are kept; None: $XDG_CACHE_HOME/video-depth/onnx


@dataclass(frozen=True)
class BatchingSettings:
    batch_size: int = 0  # frames that travel together between actors; 0: 8 on a GPU, 4 on a CPU
    # Frames per pass through the network; 0: the whole batch on a GPU, 1 on a CPU (one frame at a time measured ~8%
    # faster than four there at 518 px: four frames' attention matrices overflow the caches), while batches still
    # travel 4 at a time (each hand-over between actors has a fixed cost of about a millisecond)
    network_batch: int = 0
    max_in_flight: int = 4  # batches decoded but not yet written: bounds memory
    # How frames travel from decode to the model: auto = I420 (YUV 4:2:0, half the bytes, no conversion in the
    # decoder) for 8-bit 4:2:0 video of even size, packed RGB otherwise; rgb24 forces RGB
    frame_layout: str = "auto"


@dataclass(frozen=True)
class SmoothingSettings:
    name: str = "default"
    params: dict = field(default_factory=dict)
    device: str = "auto"  # auto: the CPU (depth arrives at the model's resolution); cuda: the sink holds a GPU share


@dataclass(frozen=True)
class InputSettings:
    # Image sequences (a folder, glob or printf pattern) have no timestamps: frame i is at i / fps seconds. A number
    # or a fraction ("30000/1001"); videos keep their own timestamps
    fps: float | str = 30


# The output section is exactly what the sink takes
OutputSettings = RenderOptions


@dataclass(frozen=True)
class SegmentSettings:
    count: int | str = "auto"  # segments of one video, at keyframes; auto: one per min_seconds, at most one per spare CPU
    min_seconds: float = 60.0  # "auto" leaves videos shorter than two of these whole
    retries: int = 2  # a stream whose worker or node died is run again this many times
    warmup_seconds: float = 5.0  # decoded before a segment's start (from a keyframe), smoothed, not written


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # an existing cluster ("auto" or host:port); None starts a local one
    model_actors: int = 0  # 0: one per GPU, or one on a CPU-only machine
    num_cpus: int | None = None  # for a local cluster; None: all cores
    placement_timeout_s: float = 60.0  # an actor the cluster cannot place within this long is an error, not a hang
    restart_timeout_s: float = 60.0  # a lost model actor not running again within this long is dropped from the router
    max_streams: int = 0  # streams (videos, segments) open at once in a job; 0: from the cluster's CPUs and memory
    # A model actor's share of a GPU (0.25: four a GPU, this job's or other jobs'); 0: from the count (one GPU each)
    gpus_per_model_actor: float = 0.0
    # GPUs the job waits for before it plans its model actors: an autoscaling cluster (KubeRay's) starts without
    # its GPU workers, and the plan is made from the GPUs present. Asked of Ray's autoscaler at once; after
    # gpu_wait_s the job plans with what is there, saying so (and --device cuda with none is an error)
    wait_for_gpus: int = 0
    gpu_wait_s: float = 900.0


@dataclass(frozen=True)
class LiveSettings:
    transport: str = "tcp"  # RTSP in and out: tcp (no losses, one connection) or udp
    read_timeout_s: float = 5.0  # a source silent this long is taken as gone: reconnect
    backoff_max_s: float = 8.0  # reconnect / re-publish waits double from 0.5 s up to this
    queue: int = 2  # frames waiting for the model at most; a new one pushes the oldest out (counted)
    drop: str = "oldest"  # oldest | every-k (only every keep_every-th frame goes to the model)
    keep_every: int = 2
    log_every_s: float = 5.0  # the stderr line with fps, latency, drops, reconnects
    metrics: bool = False  # also export them with ray.util.metrics (Prometheus format)
    # Many cameras in one job: their frames go through the network together; a batch leaves when it holds
    # batching.batch_size frames or when its oldest frame has waited this long
    batch_wait_ms: float = 10.0
    # Batches of one camera at the model at once: 2 keeps the model busy while the camera publishes; 1: least latency
    in_flight: int = 2
    # Cameras one job runs at most (each is a process of about 250 MB, and a share of the model's batches)
    max_cameras: int = 32
    # Where recordings asked for over HTTP go: `record` in a POST is a new file's name inside this folder (None:
    # refused). The cameras file, written by whoever runs the job, may record anywhere
    recordings_dir: str | None = None
    # The dashboard's live previews (GET /cameras/NAME/preview.mjpg): pictures a second, made only while watched
    preview_fps: float = 5.0
    # Host names the control API answers to besides loopback names and the address it is bound to (a bound 0.0.0.0
    # also answers to IP addresses and this machine's own names): a DNS name or proxy in front of it, e.g.
    # [depth.example.org]. Any other Host header is refused (a web page that rebinds its name to this address)
    control_hosts: tuple = ()


@dataclass(frozen=True)
class StorageSettings:
    # What the object store's filesystem takes besides credentials (s3fs, gcsfs: fsspec's options), for every URL of
    # the job: {endpoint_url: http://127.0.0.1:9000}, {anon: true}, {client_kwargs: {region_name: eu-west-1}}. Never
    # a secret: credentials come from the environment's standard chain on each node (storage.py)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSettings:
    model: ModelSettings = ModelSettings()
    input: InputSettings = InputSettings()
    batching: BatchingSettings = BatchingSettings()
    smoothing: SmoothingSettings = SmoothingSettings()
    output: OutputSettings = OutputSettings()
    segments: SegmentSettings = SegmentSettings()
    ray: RaySettings = RaySettings()
    live: LiveSettings = LiveSettings()
    storage: StorageSettings = StorageSettings()


# ---------------------------------------------------------------------------------------------------------------------
# What each setting accepts: a check returns None for a good value, or what is wrong with it (the message's tail)

Check = Callable[[Any], "str | None"]


def integer(minimum: int | None = None, maximum: int | None = None, multiple_of: int | None = None) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number, got {value!r}"
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            return f"must be {bounds}, got {value}"
        if multiple_of and value % multiple_of:
            return f"must be a multiple of {multiple_of}, got {value}"
        return None

    return check


def number(minimum: float | None = None, above: float | None = None, maximum: float | None = None) -> Check:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):  # YAML's .nan / .inf: no duration, scale or rate means that
            return f"must be a finite number, got {value}"
        if minimum is not None and value < minimum:
            return f"must be >= {minimum}, got {value}"
        if above is not None and value <= above:
            return f"must be > {above}, got {value}"
        if maximum is not None and value > maximum:
            return f"must be <= {maximum:g}, got {value}"
        return None

    return check


def one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"


def of_type(kind: type, name: str) -> Check:
    return lambda value: None if isinstance(value, kind) else f"must be {name}, got {value!r}"


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def rate_problem(value) -> str | None:
    """What is wrong with a frame rate (None: nothing): a number or fraction from 0.001 to 1000."""
    problem = f"must be a frame rate from 0.001 to 1000 (a number, or a fraction like 30000/1001), got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return problem
    try:
        frame_rate(value)
    except (PipelineError, OverflowError, ValueError):
        return problem
    return None


def host_names(value) -> str | None:
    if isinstance(value, (list, tuple)) and all(
            isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", name) for name in value):
        return None
    return f"must be a list of host names (e.g. [depth.example.org]), got {value!r}"


def device_name(value) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return None
    return f"must be auto, cpu, cuda or cuda:N; got {value!r}"


def colormap_name(value) -> str | None:
    try:
        colormap_id(value)
    except ValueError:
        return f"must be one of {', '.join(colormap_names())}; got {value!r}"
    return None


RULES: dict[str, dict[str, Check]] = {
    "model": {
        "name": optional(one_of(*MODEL_NAMES)),
        "checkpoint": optional(of_type(str, "a path or a Hub repo id")),
        "random_weights": optional(one_of(*VARIANTS)),
        "version": optional(one_of("v1", "v2")),
        "input_size": integer(14, multiple_of=14),
        "even_grid": of_type(bool, "true or false"),
        "precision": one_of("auto", *PRECISIONS),
        "compile": of_type(bool, "true or false"),
        "device": device_name,
        "threads": integer(0),
        "max_depth": optional(number(MAX_DEPTH_RANGE_M[0], maximum=MAX_DEPTH_RANGE_M[1])),
        "vda_mode": one_of("auto", "window", "stream"),
        "runtime": one_of("auto", "torch", "onnxruntime", "tensorrt"),
        "onnx_cache": optional(of_type(str, "a folder")),
    },
    "input": {"fps": rate_problem},
    "batching": {"batch_size": integer(0), "network_batch": integer(0), "max_in_flight": integer(1),
                 "frame_layout": one_of("auto", "rgb24")},
    "smoothing": {"name": one_of(*SMOOTHER_NAMES), "params": of_type(dict, "a mapping"), "device": device_name},
    "output": {
        "depth_format": one_of(*DEPTH_FORMATS),
        "colormap": colormap_name,
        "preset": one_of(*X264_PRESETS),
        "qp": integer(0, 51),
        "crf": optional(integer(0, 51)),
        "depth_scale": optional(number(above=0)),
        "copy_audio": of_type(bool, "true or false"),
        "encoder_thread": of_type(bool, "true or false"),
        "no_overwrite": of_type(bool, "true or false"),
    },
    "live": {
        "transport": one_of("tcp", "udp"),
        "read_timeout_s": number(above=0),
        "backoff_max_s": number(above=0),
        "queue": integer(1, 64),  # frames held per camera: memory, and latency, grow with it
        "drop": one_of("oldest", "every-k"),
        "keep_every": integer(1, 1000),
        "log_every_s": number(above=0),
        "metrics": of_type(bool, "true or false"),
        "batch_wait_ms": number(0),
        "in_flight": integer(1, 16),
        "max_cameras": integer(1, 1000),
        "recordings_dir": optional(of_type(str, "a folder")),
        "preview_fps": number(0.2, maximum=30),
        "control_hosts": host_names,
    },
    "segments": {
        "count": lambda value: None if value == "auto" else (integer(1)(value) and f"{integer(1)(value)} (or auto)"),
        "min_seconds": number(above=0),
        "retries": integer(0),
        "warmup_seconds": number(0),
    },
    "storage": {"options": option_problem},
    "ray": {
        "address": optional(of_type(str, "an address (auto or host:port)")),
        "model_actors": integer(0),
        "num_cpus": optional(integer(1)),
        "placement_timeout_s": number(above=0),
        "restart_timeout_s": number(above=0),
        "max_streams": integer(0),
        "wait_for_gpus": integer(0),
        "gpu_wait_s": number(above=0),
        "gpus_per_model_actor": lambda value: number(0)(value) or (
            None if value <= 1 else f"must be a share of one GPU (0 to 1), got {value}"),
    },
}


def _apply(section, values: dict, where: str, section_name: str, labels: dict[str, str]):
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if not isinstance(key, str):
            raise PipelineError(f"{where} [{section_name}]: a setting name must be text, got {key!r}")
        if key not in known:
            raise PipelineError(f"{where} [{section_name}]: unknown setting {key!r}; expected one of {', '.join(known)}")
        problem = RULES[section_name][key](value)
        if problem:
            name = labels.get(f"{section_name}.{key}", f"{section_name}.{key}")
            raise PipelineError(f"{where}: {name} {problem}")
    return dataclasses.replace(section, **values)


def check_combination(settings: PipelineSettings, where: str = "settings") -> PipelineSettings:
    """What single values cannot show: settings that contradict each other, smoother parameters. `where` names the
    source in errors (a manifest line)."""
    model = settings.model
    given = [what for what, value in (("a model name", model.name), ("a checkpoint", model.checkpoint),
                                      ("random weights", model.random_weights)) if value]
    if len(given) > 1:
        raise PipelineError(f"{where}: {' and '.join(given)} were both given; choose one")
    if model.precision == "float16" and model.device == "cpu":
        raise PipelineError(f"{where}: float16 needs a CUDA device; use bfloat16 or float32 on the CPU")
    if model.runtime in ("onnxruntime", "tensorrt") and model.compile:
        raise PipelineError(f"{where}: model.compile is torch.compile's: runtime {model.runtime} compiles the graph "
                            f"itself; leave compile off or use --runtime torch")
    if model.runtime == "onnxruntime" and model.precision not in ("auto", "float32"):
        raise PipelineError(f"{where}: runtime onnxruntime runs the float32 file; precision {model.precision} is "
                            f"torch's (--runtime torch) or TensorRT's float16 (--runtime tensorrt)")
    if model.runtime == "tensorrt" and (model.precision not in ("auto", "float16") or model.device == "cpu"):
        raise PipelineError(f"{where}: runtime tensorrt builds float16 engines on an NVIDIA GPU; precision "
                            f"{model.precision} on device {model.device} is not one of its ways")
    smoothing = settings.smoothing
    try:
        make_smoother(smoothing.name, device="cpu", **smoothing.params)
    except (ValueError, TypeError) as error:
        raise PipelineError(f"{where}: smoothing.params: {error}") from None
    return settings


def merge(settings: PipelineSettings, overrides: dict[str, Any], where: str,
          labels: dict[str, str] | None = None) -> PipelineSettings:
    """Apply {"section": {...}} or {"section.key": value} overrides, each value checked against `RULES`.

    `where` names the source in errors; `labels` may name a key the way the user wrote it (a command-line flag).
    """
    sections = {f.name for f in dataclasses.fields(settings)}
    grouped: dict[str, dict] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise PipelineError(f"{where}: a setting name must be text, got {key!r}")
        section, _, name = key.partition(".")
        if section not in sections:
            owners = [s for s in sorted(sections) if key in {f.name for f in dataclasses.fields(getattr(settings, s))}]
            hint = f" ({key!r} is a setting of the {owners[0]} section: {owners[0]}.{key})" if owners else ""
            raise PipelineError(f"{where}: unknown section {section!r}; expected one of "
                                f"{', '.join(sorted(sections))}{hint}")
        if name:
            grouped.setdefault(section, {})[name] = value
        elif isinstance(value, dict):
            grouped.setdefault(section, {}).update(value)
        else:
            raise PipelineError(f"{where}: section {section!r} must be a mapping")
    changes = {s: _apply(getattr(settings, s), v, where, s, labels or {}) for s, v in grouped.items()}
    return dataclasses.replace(settings, **changes)


PRESETS = Path(__file__).resolve().parent / "presets"  # installed with the package: cpu, gpu, default, high-quality


def preset_path(preset: str | Path) -> Path:
    """A preset's file: a YAML file that exists, else one of the packaged presets by its name (`cpu`, `cpu.yaml`,
    or `configs/cpu.yaml` as earlier versions had them beside the code)."""
    path = Path(preset)
    if path.is_file():
        return path
    packaged = PRESETS / (path.stem + ".yaml")
    if path.suffix in ("", ".yaml") and path.parent.name in ("", "configs", "presets") and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise PipelineError(f"{path}: config file not found (a YAML file, or a preset: {names})")


def load_settings(preset: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  labels: dict[str, str] | None = None) -> PipelineSettings:
    """Defaults, then the YAML preset (a file, or a packaged preset's name), then the overrides (None values
    skipped); every value checked."""
    settings = PipelineSettings()
    if preset is not None:
        path = preset_path(preset)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise PipelineError(f"{path}: not a UTF-8 text file (a YAML preset is expected)") from None
        except yaml.YAMLError as error:
            raise PipelineError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: expected a mapping of sections at the top level")
        settings = merge(settings, data, str(path))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "storage.options" in overrides and isinstance(overrides["storage.options"], dict):  # flags add to the file's
        overrides["storage.options"] = {**settings.storage.options, **overrides["storage.options"]}
    settings = check_combination(merge(settings, overrides, "command line", labels))
    configure_storage(settings.storage.options)  # this process's: the checks before any actor open URLs
    return settings


def live_camera_options(settings: PipelineSettings) -> LiveCameraOptions:
    """What one live camera's loop takes of the job's settings (stages/live/camera_runner.py reads no settings)."""
    live = settings.live
    return LiveCameraOptions(render=settings.output, smoother=settings.smoothing.name,
                             smoother_params=dict(settings.smoothing.params), queue=live.queue, drop=live.drop,
                             keep_every=live.keep_every, in_flight=live.in_flight, transport=live.transport,
                             log_every_s=live.log_every_s)
