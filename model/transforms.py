"""
Input preparation and output handling, batched and on the model's device.

Takes: frames B x H x W x 3 uint8 RGB (a torch tensor on any device).
Gives: `prepare_frames` -> B x 3 x h x w float32, ImageNet-normalised, h and w multiples of 14;
       `resize_depth` -> depth B x h x w resized back to B x H x W.

The sizing rule is the original's (`Resize(..., keep_aspect_ratio=True, ensure_multiple_of=14,
resize_method="lower_bound")`): the short side becomes `short_side` (518), the long side the nearest multiple of 14
of its scaled length, never below `short_side`. Bicubic (a = -0.75, no antialias) matches OpenCV's INTER_CUBIC on the
unclipped float image, as the original resizes. On a CPU the resize *is* OpenCV's INTER_CUBIC on the float image, the
original's own method, one colour plane at a time straight into the output (torch's bicubic on a CPU took 32 ms of
CPU a 720p frame, this takes about 3). `even_grid=True` rounds to multiples of 28 instead, the even patch
grids muggled_dpt uses (and a simpler fusion path on any DPT code).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_input_size(
    frame_hw: tuple[int, int], short_side: int = 518, patch_size: int = 14, even_grid: bool = False
) -> tuple[int, int]:
    """(h, w) the model sees for a frame of `frame_hw`; e.g. (1080, 1920) -> (518, 924), (480, 640) -> (518, 686)."""
    height, width = frame_hw
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size {height}x{width} is empty")
    multiple = 2 * patch_size if even_grid else patch_size
    scale = max(short_side / height, short_side / width)

    def fit(side: int) -> int:
        scaled = scale * side
        rounded = int(np.round(scaled / multiple) * multiple)  # NumPy rounds halves to even, as the original
        return rounded if rounded >= short_side else int(math.ceil(scaled / multiple) * multiple)

    return fit(height), fit(width)


def prepare_frames(frames_bhwc: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB frames B x H x W x 3 -> normalised float32 B x 3 x h x w on the frames' device."""
    if frames_bhwc.ndim != 4 or frames_bhwc.shape[-1] != 3:
        raise ValueError(f"expected frames B x H x W x 3, got {tuple(frames_bhwc.shape)}")
    if frames_bhwc.device.type == "cpu":
        return prepare_frames_opencv(frames_bhwc, input_hw)
    return prepare_frames_torch(frames_bhwc, input_hw)


def prepare_frames_torch(frames_bhwc: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """`prepare_frames` in torch, on any device (a GPU's path)."""
    image_bchw = frames_bhwc.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(image_bchw.shape[-2:]) != tuple(input_hw):
        # Bicubic overshoot is kept (no clamp): the original resizes the float image and does not clip
        image_bchw = F.interpolate(image_bchw, size=input_hw, mode="bicubic", align_corners=False, antialias=False)
    mean, std = _normalisation(image_bchw.device)
    return image_bchw.sub_(mean).div_(std).contiguous()


def prepare_frames_opencv(frames_bhwc: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """`prepare_frames` on the CPU with OpenCV: each colour plane as float32 (0-255: resizing is linear, so the
    division by 255 moves into the normalisation), INTER_CUBIC into its place in the output, then normalised in place.
    Planes, not the packed image: per-channel arithmetic on an H x W x 3 array is several times slower."""
    height, width = input_hw
    image_bchw = torch.empty((len(frames_bhwc), 3, height, width), dtype=torch.float32)
    for frame_hwc, image_chw in zip(frames_bhwc.numpy(), image_bchw.numpy()):
        for channel, (plane, target) in enumerate(zip(cv2.split(np.ascontiguousarray(frame_hwc)), image_chw)):
            plane = plane.astype(np.float32)
            if plane.shape != (height, width):
                cv2.resize(plane, (width, height), dst=target, interpolation=cv2.INTER_CUBIC)
            else:
                target[...] = plane
            # (x / 255 - mean) / std as one multiply and one subtract
            target *= 1.0 / (255.0 * IMAGENET_STD[channel])
            target -= IMAGENET_MEAN[channel] / IMAGENET_STD[channel]
    return image_bchw


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as 1 x 3 x 1 x 1 tensors on `device`, made once: building them per call is a
    host-to-device copy that waits for the GPU."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def resize_depth(depth_bhw: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
    """Depth B x h x w -> B x H x W, bilinear with align_corners=False (the original's post-processing)."""
    if tuple(depth_bhw.shape[-2:]) == tuple(frame_hw):
        return depth_bhw
    return F.interpolate(depth_bhw.unsqueeze(1), size=frame_hw, mode="bilinear", align_corners=False).squeeze(1)
