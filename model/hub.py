"""
Released weights by name: `small` or a Hub repo id -> a local folder from the Hugging Face Hub cache.

Takes: a model name (`small`, `base`, `large`, `v2-small`, `v2-base`, `v2-large`, the metric models
`v2-metric-{indoor,outdoor}-{small,base,large}`, and Video Depth Anything's `vda-{small,base,large}` and
`vda-metric-{small,base,large}`), a repo id
(`owner/name`, optionally `owner/name@revision`), or a local path (returned as it is).
Gives: `ResolvedCheckpoint`: the local folder `load_model` reads (`config.json` + `model.safetensors`, nothing else is
fetched; for Video Depth Anything its one release file), and the repo id and commit it came from.

Resolution goes through `huggingface_hub`: its cache (`HF_HOME`, `HF_HUB_CACHE`), `HF_HUB_OFFLINE=1`, `HF_ENDPOINT`
and its progress bars on a terminal. When the Hub cannot be reached (checked with one TCP connection, 3 s at most,
instead of huggingface_hub's 20 s of retries) only the cache is consulted. Anything missing is a one-line
`CheckpointError` that says what is missing and how to get it.

    python -m model.hub small        # prints the folder; exit 2 (with the reason) when it cannot be had
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .checkpoint import CheckpointError

# Depth-Anything v1 is Apache-2.0; of v2, only Small is (Base and Large are CC-BY-NC-4.0: non-commercial). The metric
# models are fine-tuned from them (Hypersim indoor, 20 m; Virtual KITTI 2 outdoor, 80 m): treated the same way
METRIC_SCENES = {"indoor": "Indoor", "outdoor": "Outdoor"}
MODEL_NAMES = {
    "small": "LiheYoung/depth-anything-small-hf",
    "base": "LiheYoung/depth-anything-base-hf",
    "large": "LiheYoung/depth-anything-large-hf",
    "v2-small": "depth-anything/Depth-Anything-V2-Small-hf",
    "v2-base": "depth-anything/Depth-Anything-V2-Base-hf",
    "v2-large": "depth-anything/Depth-Anything-V2-Large-hf",
    **{f"v2-metric-{scene}-{size}": f"depth-anything/Depth-Anything-V2-Metric-{Scene}-{size.title()}-hf"
       for scene, Scene in METRIC_SCENES.items() for size in ("small", "base", "large")},
}
# Video Depth Anything (Chen et al., CVPR 2025): one .pth a repo, relative and metric (metres, by the file's name);
# the Small models are Apache-2.0, Base and Large CC-BY-NC-4.0
_VIDEO_SIZES = (("small", "vits"), ("base", "vitb"), ("large", "vitl"))
VIDEO_MODELS = {
    **{f"vda-{size}": (f"depth-anything/Video-Depth-Anything-{size.title()}", f"video_depth_anything_{variant}.pth")
       for size, variant in _VIDEO_SIZES},
    **{f"vda-metric-{size}": (f"depth-anything/Metric-Video-Depth-Anything-{size.title()}",
                              f"metric_video_depth_anything_{variant}.pth") for size, variant in _VIDEO_SIZES},
}
MODEL_NAMES.update({name: repo for name, (repo, _) in VIDEO_MODELS.items()})
NON_COMMERCIAL = ("v2-base", "v2-large", *(f"v2-metric-{scene}-{size}" for scene in METRIC_SCENES
                                           for size in ("base", "large")),
                  *(f"vda-{kind}{size}" for kind in ("", "metric-") for size in ("base", "large")))
DEFAULT_MODEL = "small"
FILES = ("config.json", "model.safetensors")  # all the model needs
REPO_FILES = {repo: (filename,) for repo, filename in VIDEO_MODELS.values()}  # repos of one release file
_REPO_ID = re.compile(r"^[\w][\w.-]*/[\w][\w.-]*(@[\w.\-/]+)?$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A local checkpoint, and where it came from when it came from the Hub."""

    path: str
    repo_id: str | None = None
    revision: str | None = None  # the commit hash, so that every worker loads exactly the same files

    @property
    def spec(self) -> str:
        """What a worker on another machine resolves (repo@commit), or the path."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else self.path

    def describe(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision} if self.repo_id else {"path": self.path}


def is_hub_reference(text: str) -> bool:
    """`owner/name` or `owner/name@revision` that is not an existing local path."""
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def resolve_checkpoint(spec: str) -> ResolvedCheckpoint:
    """A name, repo id or path -> a local checkpoint; see the module docstring."""
    if spec in MODEL_NAMES:
        spec = MODEL_NAMES[spec]
    elif not is_hub_reference(spec):
        if Path(spec).exists():
            return ResolvedCheckpoint(str(spec))
        if "/" not in spec and not Path(spec).suffix:
            raise CheckpointError(f"unknown model {spec!r}; expected one of {', '.join(MODEL_NAMES)}, "
                                  f"a Hub repo id (owner/name[@revision]) or a checkpoint path")
        raise CheckpointError(f"{spec}: checkpoint not found")
    repo_id, _, revision = spec.partition("@")
    return _download(repo_id, revision or None)


def _download(repo_id: str, revision: str | None) -> ResolvedCheckpoint:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT)
    where = f"{repo_id}@{revision}" if revision else repo_id
    paths = []
    files = REPO_FILES.get(repo_id, FILES)
    for filename in files:
        try:
            paths.append(Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)))
        except LocalEntryNotFoundError:
            reason = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
            raise CheckpointError(
                f"{where}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}; "
                f"download it once with network (hf download {repo_id} {' '.join(files)}"
                f"{' --revision ' + revision if revision else ''}) or pass --checkpoint PATH"
            ) from None
        except RevisionNotFoundError:
            raise CheckpointError(f"{where}: no revision {revision!r} in this repository") from None
        except (RepositoryNotFoundError, GatedRepoError):
            raise CheckpointError(f"{repo_id}: no such repository on the Hub (or it needs a login)") from None
        except HfHubHTTPError as error:
            raise CheckpointError(f"{where}: {filename}: {str(error).splitlines()[0]}") from None
    folder = paths[0].parent  # .../snapshots/<commit>/
    # (a repo of one release file: that file, which load_model reads; else the folder)
    return ResolvedCheckpoint(str(paths[0] if len(paths) == 1 else folder), repo_id, folder.name)


def hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """One TCP connection to the Hub's host: cheap, where huggingface_hub itself retries for about 20 s."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    try:
        print(resolve_checkpoint(argv[0] if argv else DEFAULT_MODEL).path)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    sys.exit(main(sys.argv[1:]))
