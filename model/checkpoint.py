"""
Checkpoint loading: the official release files and the Hugging Face layout, to our own module names.

Takes: a path to
  (a) an official release file, `depth_anything_vit{s,b,l}14.pth` (keys `pretrained.*`, `depth_head.*`), or a
      Depth-Anything v2 file of the same layout (`depth_anything_v2_vit{s,b,l}.pth`);
  (b) a Hugging Face folder (`config.json` + `model.safetensors`, the `depth-anything-{small,base,large}-hf` layout)
      or a `.safetensors` file in that layout (legacy on-disk names or transformers 5.x in-memory names).
Gives: `DepthAnything` (or `VideoDepthAnything` for its released files, `video_depth_anything_vit?.pth` and
`metric_video_depth_anything_vit?.pth`, recognised by their motion modules) in eval mode with every weight loaded, the
variant read off the weight shapes, and its head: relative inverse depth, or metric depth in metres for Depth Anything
V2's metric models (`_metric_max_depth`) and the metric video models (`_video_metric_range`).

Everything goes through one path: HF keys -> official keys -> our keys, then a strict check against the model.
Anything that is not a complete Depth-Anything checkpoint raises `CheckpointError` with a one-line message that
names the file and what is wrong; nothing is ever half loaded. Files are read safely (weights_only / safetensors).
"""

from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import replace
from pathlib import Path

import torch

from .config import DepthAnythingConfig, default_tap_blocks, variant_name
from .depth_anything import DepthAnything
from .video_depth_anything import VideoDepthAnything


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line naming the file and the problem."""


# Official tensors that inference never uses (spec, section a): accepted in a file, not loaded
UNUSED_OFFICIAL_KEYS = re.compile(r"^pretrained\.mask_token$|^depth_head\.scratch\.refinenet4\.resConfUnit1\.")

# ---------------------------------------------------------------------------------------------------------------------
# Key conversion

_HF_TO_OFFICIAL = [
    (r"^backbone\.embeddings\.cls_token$", "pretrained.cls_token"),
    (r"^backbone\.embeddings\.mask_token$", "pretrained.mask_token"),
    (r"^backbone\.embeddings\.position_embeddings$", "pretrained.pos_embed"),
    (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.norm([12])\.", r"pretrained.blocks.\1.norm\2."),
    (r"^backbone\.encoder\.layer\.(\d+)\.attention\.(output\.dense|o_proj)\.", r"pretrained.blocks.\1.attn.proj."),
    (r"^backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"pretrained.blocks.\1.mlp.\2."),
    (r"^backbone\.layernorm\.", "pretrained.norm."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
    (r"^neck\.convs\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
    # HF orders fusion blocks deepest first: its layer j is the official refinenet 4 - j
    (
        r"^neck\.fusion_stage\.layers\.(\d)\.(projection|residual_layer1|residual_layer2)\.(?:convolution([12])\.)?",
        lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}."
        + {"projection": "out_conv.", "residual_layer1": "resConfUnit1.", "residual_layer2": "resConfUnit2."}[m[2]]
        + (f"conv{m[3]}." if m[3] else ""),
    ),
    (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
    (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
    (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
]
_HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")

_OFFICIAL_TO_OURS = [
    (r"^pretrained\.cls_token$", "patch_embed.cls_token"),
    (r"^pretrained\.pos_embed$", "patch_embed.position_table"),
    (r"^pretrained\.patch_embed\.proj\.", "patch_embed.proj."),
    (r"^pretrained\.blocks\.(\d+)\.norm1\.", r"image_encoder.blocks.\1.attn_norm."),
    (r"^pretrained\.blocks\.(\d+)\.attn\.(qkv|proj)\.", r"image_encoder.blocks.\1.attn.\2."),
    (r"^pretrained\.blocks\.(\d+)\.ls1\.gamma$", r"image_encoder.blocks.\1.attn_scale"),
    (r"^pretrained\.blocks\.(\d+)\.norm2\.", r"image_encoder.blocks.\1.mlp_norm."),
    (r"^pretrained\.blocks\.(\d+)\.mlp\.(fc[12])\.", r"image_encoder.blocks.\1.mlp.\2."),
    (r"^pretrained\.blocks\.(\d+)\.ls2\.gamma$", r"image_encoder.blocks.\1.mlp_scale"),
    (r"^pretrained\.norm\.", "image_encoder.output_norm."),
    (r"^depth_head\.projects\.(\d)\.", r"reassembly.stages.\1.project."),
    (r"^depth_head\.resize_layers\.(\d)\.", r"reassembly.stages.\1.resample."),
    (r"^depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"reassembly.stages.{int(m[1]) - 1}.to_fusion_width."),
    (
        r"^depth_head\.scratch\.refinenet(\d)\.(out_conv|resConfUnit1|resConfUnit2)\.",
        lambda m: f"fusion.blocks.{int(m[1]) - 1}."
        + {"out_conv": "out_proj.", "resConfUnit1": "skip_refine.", "resConfUnit2": "fused_refine."}[m[2]],
    ),
    (r"^depth_head\.scratch\.output_conv1\.", "head.halve_width."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.hidden_conv."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.proj_1ch."),
]


# Video Depth Anything's files (`video_depth_anything_vit?.pth`, `metric_video_depth_anything_vit?.pth`): the same
# encoder and DPT keys under `head.` instead of `depth_head.`, and four motion modules
_VDA_MOTION = r"^head\.motion_modules\.(\d)\.temporal_transformer\."
_VDA_BLOCK = _VDA_MOTION + r"transformer_blocks\.0\."
_VDA_MOTION_TO_OURS = [
    (_VDA_MOTION + r"(norm|proj_in|proj_out)\.", r"motion_modules.\1.\2."),
    (_VDA_BLOCK + r"attention_blocks\.(\d)\.(to_q|to_k|to_v)\.", r"motion_modules.\1.attentions.\2.\3."),
    (_VDA_BLOCK + r"attention_blocks\.(\d)\.to_out\.0\.", r"motion_modules.\1.attentions.\2.to_out."),
    (_VDA_BLOCK + r"attention_blocks\.(\d)\.pos_encoder\.pe$", r"motion_modules.\1.attentions.\2.position_table"),
    (_VDA_BLOCK + r"norms\.(\d)\.", r"motion_modules.\1.attention_norms.\2."),
    (_VDA_BLOCK + r"ff\.net\.0\.proj\.", r"motion_modules.\1.feed_forward.proj_in."),
    (_VDA_BLOCK + r"ff\.net\.2\.", r"motion_modules.\1.feed_forward.proj_out."),
    (_VDA_BLOCK + r"ff_norm\.", r"motion_modules.\1.feed_forward_norm."),
]


def is_video_checkpoint(keys) -> bool:
    """Video Depth Anything's layout: motion modules in the head."""
    return any(key.startswith("head.motion_modules.") for key in keys)


def split_video_state(vda_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                   list[str]]:
    """Video Depth Anything's layout -> (the image model's official layout, the motion modules under our names,
    motion-module keys not recognised)."""
    official, motion, unknown = {}, {}, []
    for key, tensor in vda_state.items():
        if key.startswith("head.motion_modules."):
            renamed = _rename(key, _VDA_MOTION_TO_OURS)
            if renamed is None:
                unknown.append(key)
            else:
                motion[renamed] = tensor
        else:
            official["depth_head." + key[len("head."):] if key.startswith("head.") else key] = tensor
    return official, motion, unknown


def our_name(released_key: str) -> str | None:
    """Our name for one key of a released file (Depth-Anything's official layout or Video Depth Anything's), or
    None for a key inference does not use or that is not known."""
    image_part, motion, _ = split_video_state({released_key: None}) if released_key.startswith("head.") else (
        {released_key: None}, {}, [])
    return next(iter(motion), None) or next(iter(official_to_ours(image_part)[0]), None)


def _rename(key: str, rules) -> str | None:
    for pattern, replacement in rules:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return None


def hf_to_official(hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF layout (either spelling) -> (official layout, keys not recognised); q, k, v are stacked into one qkv."""
    official, qkv_parts, unknown = {}, {}, []
    for key, tensor in hf_state.items():
        qkv_match = _HF_QKV.match(key)
        if qkv_match:
            block, part, kind = qkv_match.groups()
            qkv_parts.setdefault((block, kind), {})[part[0]] = tensor  # 'q', 'k' or 'v'
            continue
        renamed = _rename(key, _HF_TO_OFFICIAL)
        if renamed is None:
            unknown.append(key)
        else:
            official[renamed] = tensor
    for (block, kind), parts in qkv_parts.items():
        if set(parts) == {"q", "k", "v"}:
            official[f"pretrained.blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:
            unknown.append(f"backbone.encoder.layer.{block}.attention (only {''.join(sorted(parts))} of q,k,v)")
    return official, unknown


def official_to_ours(official_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official layout -> our module names; also returns the keys it did not recognise."""
    ours, unexpected = {}, []
    for key, tensor in official_state.items():
        if UNUSED_OFFICIAL_KEYS.search(key):
            continue
        renamed = _rename(key, _OFFICIAL_TO_OURS)
        if renamed is None:
            unexpected.append(key)
        else:
            ours[renamed] = tensor
    return ours, unexpected


# ---------------------------------------------------------------------------------------------------------------------
# Reading files


def _read_tensors(path: Path, shapes_only: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(tensors, HF config dict or None) from a folder, a .safetensors file or a torch file.

    `shapes_only`: tensors without their data (safetensors: the header only, as meta tensors; torch files: memory-
    mapped, so nothing is read that is not touched), for checking a checkpoint in about a second.
    """
    hf_config = None
    if path.is_dir():
        config_path = path / "config.json"
        if config_path.is_file():
            try:
                hf_config = json.loads(config_path.read_text())
            except (OSError, ValueError) as error:
                raise CheckpointError(f"{config_path}: unreadable config.json ({error})") from None
        weight_files = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not weight_files:
            raise CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin")
        path = weight_files[0]

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            if shapes_only:
                with safe_open(str(path), framework="pt") as handle:
                    return {key: torch.empty(handle.get_slice(key).get_shape(), device="meta")
                            for key in handle.keys()}, hf_config
            return load_file(str(path)), hf_config
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None

    try:
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=shapes_only)
        except RuntimeError:
            if not shapes_only:
                raise
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)  # the legacy format cannot mmap
    except pickle.UnpicklingError as error:
        if "can still be loaded" not in str(error):  # not a pickle of tensors at all (garbage, a damaged file)
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged, or another kind of file)") \
                from None
        # weights_only refused an object: what torch then advises (weights_only=False) would run its code
        raise CheckpointError(f"{path}: holds Python objects besides tensors, which loading could run as code: "
                              f"refused. Convert it to .safetensors from a copy you trust (its publisher's), on a "
                              f"machine you trust, and load that") from None
    except Exception as error:  # torch raises several types for truncated zips and foreign pickles
        reason = _first_line(error)
        if "zip archive" in reason or "central directory" in reason:  # (torch's text speaks of its zip library)
            reason = "its zip archive is incomplete: truncated, or a download that did not finish"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    # Training scripts often wrap the weights; accept the common wrappers
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a dictionary of weight tensors")
    return {key.removeprefix("module."): value for key, value in loaded.items()}, hf_config


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Config inference


def _detect_version(path: Path, hf_config: dict | None, num_blocks: int) -> str:
    if hf_config is not None:
        out_indices = (hf_config.get("backbone_config") or {}).get("out_indices")
        if out_indices:
            for version in ("v1", "v2"):
                if [tap + 1 for tap in default_tap_blocks(num_blocks, version)] == list(out_indices):
                    return version
    name = path.resolve().name.lower().replace("-", "_")
    return "v2" if re.search(r"(^|_)v2(_|$|\.)", name) else "v1"


def infer_config(official_state: dict[str, torch.Tensor], version: str, source: str) -> DepthAnythingConfig:
    """Read every width off the tensor shapes (spec, section b)."""
    required = ["pretrained.patch_embed.proj.weight", "pretrained.pos_embed"] + [
        f"depth_head.scratch.layer{k}_rn.weight" for k in range(1, 5)
    ]
    missing = [key for key in required if key not in official_state]
    if missing:
        sample = ", ".join(sorted(official_state)[:3])
        raise CheckpointError(
            f"{source}: not a Depth-Anything checkpoint: missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} (it has e.g. {sample or 'no tensors'})"
        )
    patch_weight = official_state["pretrained.patch_embed.proj.weight"]
    embed_dim = patch_weight.shape[0]
    block_indices = {int(m[1]) for k in official_state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))}
    if not block_indices or embed_dim % 64:
        raise CheckpointError(f"{source}: not a Depth-Anything checkpoint: no transformer blocks of 64-wide heads")
    num_blocks = max(block_indices) + 1
    rn_weights = [official_state[f"depth_head.scratch.layer{k}_rn.weight"] for k in range(1, 5)]
    num_positions = official_state["pretrained.pos_embed"].shape[1] - 1
    base_grid = round(num_positions**0.5)
    if base_grid * base_grid != num_positions:
        raise CheckpointError(f"{source}: position table of {num_positions} patches is not a square grid")
    try:
        tap_blocks = default_tap_blocks(num_blocks, version)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    return DepthAnythingConfig(
        embed_dim=embed_dim,
        num_blocks=num_blocks,
        num_heads=embed_dim // 64,
        fusion_width=rn_weights[0].shape[0],
        reassembly_widths=tuple(w.shape[1] for w in rn_weights),
        tap_blocks=tap_blocks,
        patch_size=patch_weight.shape[-1],
        base_grid=base_grid,
        variant=variant_name(embed_dim),
        version=version,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The head: relative or metric

# The official metric files (`depth_anything_v2_metric_{hypersim,vkitti}_vit?.pth`) carry no config: the dataset in
# their name gives their range, as the original's `--max-depth` does (20 m indoor, 80 m outdoor)
METRIC_DATASETS = {"hypersim": 20.0, "vkitti": 80.0}
# A metric head's range that a checkpoint or --max-depth may give: a room to a city, in metres (1e-300 or 1e308 is a
# typing slip, not a depth)
MAX_DEPTH_RANGE_M = (0.1, 1000.0)
# The released relative files' names: their head is relative, whatever --max-depth says
_RELATIVE_FILE_NAME = re.compile(r"depth_anything_(vit[sbl]14|v2_vit[sbg])\.(pth|pt|safetensors)")
# transformers' config fields that change what the network computes, with the only values this project runs: a
# checkpoint that sets another is refused, never run as if it had not
_FAITHFUL_HF_FIELDS = {"head_in_index": -1, "reassemble_factors": [4, 2, 1, 0.5]}
_FAITHFUL_BACKBONE_FIELDS = {"hidden_act": "gelu", "use_swiglu_ffn": False, "apply_layernorm": True}


def _metric_max_depth(path: Path, hf_config: dict | None, given: float | None, version: str = "v2") -> float | None:
    """None for a relative head, or the metric head's maximum in metres: from the HF config
    (`depth_estimation_type: metric`, `max_depth`), from an official file's name, or `given` (`--max-depth`)."""
    low, high = MAX_DEPTH_RANGE_M
    if given is not None and not (isinstance(given, (int, float)) and math.isfinite(given) and low <= given <= high):
        raise CheckpointError(f"{path}: max depth must be from {low:g} to {high:g} metres, got {given!r}")
    if given is not None and version == "v1":
        raise CheckpointError(f"{path}: a Depth Anything v1 checkpoint, whose head is relative: --max-depth is for "
                              f"metric (v2) checkpoints; never run with another head")
    if hf_config is None:
        name = path.name.lower()
        dataset = next((dataset for dataset in METRIC_DATASETS if dataset in name), None)
        if given is not None:
            if _RELATIVE_FILE_NAME.fullmatch(name):
                raise CheckpointError(f"{path}: a released relative-depth checkpoint (by its name): --max-depth is for "
                                      f"metric checkpoints; never run with another head")
            if dataset is not None and not _same_depth(given, METRIC_DATASETS[dataset]):
                raise CheckpointError(f"{path}: its name says a {dataset} model, {METRIC_DATASETS[dataset]:g} m; "
                                      f"--max-depth {given!r} contradicts it")
            return float(given)
        if "metric" in name:
            if dataset is None:
                raise CheckpointError(f"{path}: a metric checkpoint (by its name) of unknown range: give --max-depth "
                                      f"METRES (20 for the Hypersim indoor models, 80 for the Virtual KITTI outdoor)")
            return METRIC_DATASETS[dataset]
        return None  # an official-layout file named otherwise holds no sign of a metric head
    _check_runs_faithfully(path, hf_config)
    kind = hf_config.get("depth_estimation_type", "relative")
    configured = hf_config.get("max_depth", 1)
    if kind not in ("relative", "metric"):
        raise CheckpointError(f"{path}: depth_estimation_type {kind!r} is not a head this project runs (relative or "
                              f"metric); refused rather than run with another head")
    if isinstance(configured, bool) or not isinstance(configured, (int, float)) or not math.isfinite(configured) \
            or configured <= 0 or (kind == "metric" and not low <= configured <= high):
        raise CheckpointError(f"{path}: max_depth {configured!r} in config.json is not a number of metres from "
                              f"{low:g} to {high:g}")
    if kind == "relative":
        if configured != 1:
            raise CheckpointError(f"{path}: a relative head scaled by max_depth {configured:g} is not one this project "
                                  f"runs (relative checkpoints have max_depth 1)")
        if given is not None:
            raise CheckpointError(f"{path}: a relative-depth checkpoint (depth_estimation_type relative): --max-depth "
                                  f"is for metric checkpoints")
        return None
    if given is not None and not _same_depth(given, configured):
        raise CheckpointError(f"{path}: the checkpoint's config gives max_depth {configured!r} m; --max-depth "
                              f"{given!r} contradicts it")
    return float(configured)


# Video Depth Anything's metric files (`metric_video_depth_anything_vit?.pth`) have the relative files' keys and a
# ReLU head without a maximum: their name says they give metres. Trained on Virtual KITTI (depth capped at 80 m) and
# IRS (indoor): 80 m is the range their outputs are laid out for (the 16-bit scale); farther pixels are counted as
# saturated there, and --max-depth widens it
VIDEO_METRIC_RANGE_M = 80.0
_RELATIVE_VIDEO_FILE_NAME = re.compile(r"video_depth_anything_vit[sbl]\.(pth|pt|safetensors)")


def _video_metric_range(path: Path, given: float | None) -> float | None:
    """None for a relative Video Depth Anything file; the metres its outputs are laid out for, for a metric one (by
    its name, or any file but a released relative one given --max-depth)."""
    low, high = MAX_DEPTH_RANGE_M
    if given is not None and not (isinstance(given, (int, float)) and math.isfinite(given) and low <= given <= high):
        raise CheckpointError(f"{path}: max depth must be from {low:g} to {high:g} metres, got {given!r}")
    name = path.name.lower()
    if name.startswith("metric_"):
        return VIDEO_METRIC_RANGE_M if given is None else float(given)
    if given is not None and _RELATIVE_VIDEO_FILE_NAME.fullmatch(name):
        raise CheckpointError(f"{path}: a released relative-depth Video Depth Anything checkpoint (by its name): "
                              f"--max-depth is for metric checkpoints; never run with another head")
    return None if given is None else float(given)


def _same_depth(given: float, expected: float) -> bool:
    """The same range, up to a decimal's rounding (20.000001 is 20 m given with too many digits, not 80 m)."""
    return math.isclose(float(given), float(expected), rel_tol=1e-6)


def _check_runs_faithfully(path: Path, hf_config: dict) -> None:
    backbone = hf_config.get("backbone_config") or {}
    for fields, config in ((_FAITHFUL_HF_FIELDS, hf_config), (_FAITHFUL_BACKBONE_FIELDS, backbone)):
        for key, expected in fields.items():
            if key in config and config[key] != expected:
                raise CheckpointError(f"{path}: config.json sets {key} = {config[key]!r}; this project runs only "
                                      f"{expected!r}, so the checkpoint is refused rather than run unfaithfully")


# ---------------------------------------------------------------------------------------------------------------------
# Public entry point


def load_model(path: str | Path, device: str | torch.device = "cpu", version: str | None = None,
               max_depth: float | None = None) -> DepthAnything | VideoDepthAnything:
    """Build the model a checkpoint describes and load it strictly; see the module docstring for accepted layouts.
    `max_depth`: metres, for an official-layout metric file whose name does not say its range (see
    `_metric_max_depth`)."""
    model, our_state = _checked_model_and_state(Path(path), version, shapes_only=False, max_depth=max_depth)
    model.load_state_dict({key: value.float() for key, value in our_state.items()}, strict=True)
    return model.eval().to(device)


def check_checkpoint(path: str | Path, version: str | None = None,
                     max_depth: float | None = None) -> DepthAnythingConfig:
    """Everything `load_model` checks, without reading the weights (about a second even for vitl): the config, or
    a `CheckpointError`. For failing early, before workers are started to load the file."""
    model, _ = _checked_model_and_state(Path(path), version, shapes_only=True, max_depth=max_depth)
    return model.config


def _checked_model_and_state(path: Path, version: str | None, shapes_only: bool, max_depth: float | None = None):
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if version not in (None, "v1", "v2"):
        raise CheckpointError(f"{path}: unknown version {version!r}; expected 'v1' or 'v2'")
    tensors, hf_config = _read_tensors(path, shapes_only)
    video = is_video_checkpoint(tensors)
    motion_state = {}
    if video:  # (v2's taps: the video models are built on Depth Anything V2)
        official_state, motion_state, unknown_hf_keys = split_video_state(tensors)
        if version == "v1":
            raise CheckpointError(f"{path}: a Video Depth Anything checkpoint, built on Depth-Anything V2 (its taps "
                                  f"2, 5, 8, 11 for vits): --version v1 contradicts it; leave --version out")
        version = "v2"
    else:
        is_hf_layout = any(key.startswith("backbone.") for key in tensors)
        official_state, unknown_hf_keys = hf_to_official(tensors) if is_hf_layout else (tensors, [])

    block_count = len({k.split(".")[2] for k in official_state if k.startswith("pretrained.blocks.")})
    version = version or _detect_version(path, hf_config, max(block_count, 1))
    config = infer_config(official_state, version, str(path))
    named = re.findall(r"vit([sblg])(?:14)?(?=[._-]|$)", path.name.lower())
    if named and config.variant != "custom" and f"vit{named[-1]}" != config.variant:
        raise CheckpointError(f"{path}: its name says vit{named[-1]}, but its weights are {config.variant}'s; "
                              f"rename the file or check that it is the one you meant")
    if video:
        config = replace(config, temporal=True, max_depth=_video_metric_range(path, max_depth))
    else:
        config = replace(config, max_depth=_metric_max_depth(path, hf_config, max_depth, version))
    our_state, unexpected = official_to_ours(official_state)
    our_state.update(motion_state)
    unexpected += unknown_hf_keys

    with torch.device("meta" if shapes_only else "cpu"):
        model = VideoDepthAnything(config) if video else DepthAnything(config)
    expected = model.state_dict()
    missing = [key for key in expected if key not in our_state]
    wrong_shapes = [
        f"{key} {tuple(our_state[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in our_state and our_state[key].shape != expected[key].shape
    ]
    for problem, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong_shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            raise CheckpointError(
                f"{path}: not a complete {config.variant} {'Video Depth Anything' if video else 'Depth-Anything'} "
                f"checkpoint: {problem}: "
                f"{', '.join(items[:3])}{more}"
            )
    return model, our_state
