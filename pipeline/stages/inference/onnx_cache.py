"""
The export cache: a checkpoint's network exported to ONNX once per machine, then reused by every model actor.

Takes: what the weights are (a checkpoint's SHA-256, or a random-weights recipe) and a way to build the network.
Gives: the path of an exported .onnx file in the cache folder (default `$XDG_CACHE_HOME/video-depth/onnx`, i.e.
`~/.cache/video-depth/onnx`), named `VARIANT-VERSION-KEY.onnx`, where KEY covers the weights, the torch that exports
and the file format: a new checkpoint, a torch upgrade or a change of format gives a new file.

Several model actors (or several jobs) starting at once on one machine export it once: the first takes an exclusive
lock (flock on KEY.lock, dropped by the kernel if its process dies) and exports to a temporary file that is renamed
into place whole; the others wait for the lock, then find the file. A file left half-written by a killed export is a
temporary that nobody takes for the export.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from model.onnx_export import FORMAT_VERSION, export_onnx

__all__ = ["default_cache_folder", "exported_file"]


def default_cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "video-depth" / "onnx"


def exported_file(weights_key: str, build: Callable[[], torch.nn.Module], folder: str | Path | None = None,
                  source_digest: str = "", mode: str = "window") -> Path:
    """The exported file for these weights, exported now (`build()` gives the float32 network) unless the cache has
    it. `weights_key`: what identifies the weights (a checkpoint's digest, a random-weights recipe) and, for a video
    model, its mode (`mode`: window or stream, what the export makes)."""
    folder = Path(folder) if folder else default_cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{weights_key}|torch {torch.__version__}|format {FORMAT_VERSION}".encode()).hexdigest()[:20]
    lock_path = folder / f"{key}.lock"
    found = _cached(folder, key)
    if found:
        return found
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # waits while another process exports these weights
        found = _cached(folder, key)
        if found:
            return found
        net = build()
        config = net.config
        kind = f"-video-{mode}" if config.temporal else ""
        path = folder / f"{config.variant}-{config.version}{kind}-{key}.onnx"
        return export_onnx(net, path, source_digest=source_digest, mode=mode)
    finally:
        os.close(descriptor)  # (the lock goes with it)


def _cached(folder: Path, key: str) -> Path | None:
    return next(iter(sorted(folder.glob(f"*-{key}.onnx"))), None)
