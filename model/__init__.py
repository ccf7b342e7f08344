"""Depth-Anything v1 (and v2 weights) and Video Depth Anything as plain PyTorch: no video files, no Ray.

    from model import load_model
    net = load_model("depth_anything_vits14.pth", device="cpu")   # or a Hugging Face folder / .safetensors
    depth_bhw = net(image_bchw)                                    # normalised B x 3 x H x W, H, W multiples of 14
"""

from .checkpoint import CheckpointError, check_checkpoint, hf_to_official, load_model
from .config import VARIANTS, DepthAnythingConfig, make_config
from .depth_anything import DepthAnything
from .predictor import PRECISIONS, DepthPredictor, PredictorOptions
from .transforms import model_input_size, prepare_frames, resize_depth
from .video_depth_anything import VideoDepthAnything

__all__ = [
    "CheckpointError",
    "DepthAnything",
    "DepthAnythingConfig",
    "DepthPredictor",
    "PRECISIONS",
    "PredictorOptions",
    "VARIANTS",
    "VideoDepthAnything",
    "check_checkpoint",
    "hf_to_official",
    "load_model",
    "make_config",
    "model_input_size",
    "prepare_frames",
    "resize_depth",
]
