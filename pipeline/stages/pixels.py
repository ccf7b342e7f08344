"""
Pixel layouts of decoded frames, and the conversions the other stages need.

Takes / gives one of two layouts of uint8 frames:
- `rgb24`: B x H x W x 3, packed RGB (the model's input);
- `yuv420p`: B x (H * 3 / 2) x W, I420: the full-size Y plane, then the U and V planes at half width and height, each
  stored flat (the layout FFmpeg decodes most video to, `VideoFrame.to_ndarray(format="yuv420p")` gives and
  OpenCV's `COLOR_YUV2RGB_I420` reads).

Why I420 travels between decode and the model: it is half the bytes of RGB through the object store, and the
decoder skips its YUV -> RGB conversion (the largest part of its cost). The model actor converts on its own device
(a GPU does it in microseconds), the sink's smoother takes its luma straight from the Y plane, and only the
side-by-side view converts on the host. The conversion is BT.601 with limited range, what FFmpeg's own YUV -> RGB
gave before (within a level or two: chroma is upsampled by repetition here, by interpolation in swscale).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = [
    "colour_sample", "frame_height", "i420_planes", "i420_to_rgb", "i420_to_rgb_torch", "luma_at", "resized",
    "to_rgb",
]

RGB24, YUV420P = "rgb24", "yuv420p"

# BT.601, limited range ("studio swing": Y in 16-235, U and V in 16-240)
_Y_SCALE, _C_SCALE = 255.0 / 219.0, 255.0 / 224.0
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def frame_height(pixels_hw: np.ndarray, layout: str) -> int:
    """The picture's height in rows, from one frame's array in `layout`."""
    return pixels_hw.shape[0] * 2 // 3 if layout == YUV420P else pixels_hw.shape[0]


def i420_planes(packed, height: int):
    """I420 frames (... x H * 3 / 2 x W, numpy or torch, any leading batch dimensions) -> views of their Y
    (... x H x W), U and V (... x H/2 x W/2) planes."""
    lead, width = tuple(packed.shape[:-2]), packed.shape[-1]
    flat = packed.reshape(*lead, -1)
    luma, quarter = height * width, (height // 2) * (width // 2)
    return (flat[..., :luma].reshape(*lead, height, width),
            flat[..., luma : luma + quarter].reshape(*lead, height // 2, width // 2),
            flat[..., luma + quarter : luma + 2 * quarter].reshape(*lead, height // 2, width // 2))


def _yuv_to_rgb_float(y, u, v):
    """BT.601 limited-range Y, U, V (same shape, floats) -> R, G, B on the 0-255 scale, unclamped."""
    y = (y - 16.0) * _Y_SCALE
    u = (u - 128.0) * _C_SCALE
    v = (v - 128.0) * _C_SCALE
    red = y + 2.0 * (1.0 - _KR) * v
    blue = y + 2.0 * (1.0 - _KB) * u
    green = (y - _KR * red - _KB * blue) / _KG
    return red, green, blue


def i420_to_rgb(packed_bhw: torch.Tensor) -> torch.Tensor:
    """I420 frames B x (H * 3 / 2) x W uint8 -> RGB B x H x W x 3 uint8, on the frames' device (the model actor's).

    On a CPU, OpenCV (SIMD, about 1 ms a 720p frame: some 30 times faster than torch's elementwise passes there);
    on a GPU, `i420_to_rgb_torch`. The two agree to a level (rounding).
    """
    if packed_bhw.device.type != "cpu":
        return i420_to_rgb_torch(packed_bhw)
    return torch.from_numpy(np.stack([to_rgb(frame, YUV420P) for frame in packed_bhw.numpy()]))


def i420_to_rgb_torch(packed_bhw: torch.Tensor) -> torch.Tensor:
    """`i420_to_rgb` in torch, for any device: chroma repeated to full size, BT.601 limited range, rounded."""
    y, u, v = i420_planes(packed_bhw, packed_bhw.shape[1] * 2 // 3)

    def full_size(plane: torch.Tensor) -> torch.Tensor:  # chroma repeated to the luma's size
        return plane.float().repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

    red, green, blue = _yuv_to_rgb_float(y.float(), full_size(u), full_size(v))
    return torch.stack([red, green, blue], dim=-1).round_().clamp_(0, 255).to(torch.uint8)


def to_rgb(pixels_hw: np.ndarray, layout: str) -> np.ndarray:
    """One frame on the host -> H x W x 3 uint8 RGB (a no-op for rgb24)."""
    if layout == RGB24:
        return pixels_hw
    return cv2.cvtColor(np.ascontiguousarray(pixels_hw), cv2.COLOR_YUV2RGB_I420)


def luma_at(pixels_hw: np.ndarray, layout: str, size_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """One frame -> its luma at `size_hw` (bilinear) as H x W uint8, and the full-range grey levels (0-255) one step
    of it is worth: 255/219 for the Y plane of I420, taken as it is (limited range, no arithmetic on it), 1 for grey
    made from RGB (BT.601 weights)."""
    if layout == YUV420P:
        y, _, _ = i420_planes(pixels_hw, frame_height(pixels_hw, layout))
        return resized(y, size_hw), _Y_SCALE
    return cv2.cvtColor(resized(pixels_hw, size_hw), cv2.COLOR_RGB2GRAY), 1.0


def resized(image: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """`image` at `size_hw` (as it is for None or its own size), bilinear with half-pixel centres (OpenCV's area
    average is several times slower at the non-integer ratios of model to frame size)."""
    if size_hw is None or tuple(image.shape[:2]) == tuple(size_hw):
        return image
    return cv2.resize(image, tuple(size_hw)[::-1], interpolation=cv2.INTER_LINEAR)


def colour_sample(pixels_hw: np.ndarray, layout: str, count: int = 20_000) -> np.ndarray:
    """About `count` of the frame's pixels on a regular grid, as N x 3 uint8 RGB."""
    height = frame_height(pixels_hw, layout)
    width = pixels_hw.shape[1]
    step = max(1, int((height * width / count) ** 0.5))
    if layout == RGB24:
        return pixels_hw[::step, ::step].reshape(-1, 3)
    y, u, v = i420_planes(pixels_hw, height)
    step = max(1, step // 2)  # on the half-size chroma planes
    u, v = u[::step, ::step], v[::step, ::step]
    y = y[::2 * step, ::2 * step][: u.shape[0], : u.shape[1]]
    red, green, blue = _yuv_to_rgb_float(y.astype(np.float32), u.astype(np.float32), v.astype(np.float32))
    return np.clip(np.stack([red, green, blue], axis=-1).round(), 0, 255).astype(np.uint8).reshape(-1, 3)
