"""
An exported network (`onnx_export.py`) run by ONNX Runtime, in the place of the PyTorch module.

Takes: what the PyTorch network takes, a float32 torch tensor on the network's device (B x 3 x H x W; a video
model's window B x T x 3 x H x W).
Gives: what it gives, float32 depth B x H x W (B x T x H x W) on that device. `config` is the exported network's,
read from the file's metadata, so a predictor and the pipeline treat this like the module it came from.

Providers: "onnxruntime" on the CPU is ONNX Runtime's CPU provider with torch's thread count (the model actor's
share); on a GPU the CUDA provider, and "tensorrt" ONNX Runtime's TensorRT provider (float16 engines, cached on disk
beside the file), the CUDA provider taking what TensorRT does not. On a GPU the input and output stay on the device:
I/O binding hands ONNX Runtime torch's own buffers, and the session runs on the CUDA stream current when it was first
called (the model actor's compute stream), so the pinned upload and the download around it keep their order.

`check_onnx_file(path)` reads a file's graph and metadata without its weights' arithmetic: the one-line errors for a
file that is not ours, of another network, corrupt, or of an opset this ONNX Runtime cannot run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError
from .config import DepthAnythingConfig
from .onnx_export import CACHED_TENSORS, INPUT_NAME, OUTPUT_NAME, VIDEO_STREAM, VIDEO_WINDOW, read_metadata

PAST_NAMES = tuple(f"past_{i}" for i in range(CACHED_TENSORS))
ENTRY_NAMES = tuple(f"entry_{i}" for i in range(CACHED_TENSORS))

__all__ = ["RUNTIMES", "OnnxNetwork", "check_onnx_file", "is_onnx_file", "runtime_problem"]

RUNTIMES = ("onnxruntime", "tensorrt")


def is_onnx_file(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def runtime_problem(runtime: str, device_type: str = "cpu") -> str | None:
    """Why `runtime` cannot run here (None when it can): onnxruntime missing, or TensorRT without its provider."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime; onnxruntime-gpu for a GPU)"
    available = onnxruntime.get_available_providers()
    if runtime == "tensorrt" and "TensorrtExecutionProvider" not in available:
        return (f"this onnxruntime ({onnxruntime.__version__}) has no TensorRT provider (providers: "
                f"{', '.join(available)}): install onnxruntime-gpu and TensorRT on a machine with an NVIDIA GPU")
    if device_type == "cuda" and "CUDAExecutionProvider" not in available:
        return (f"this onnxruntime ({onnxruntime.__version__}) has no CUDA provider: install onnxruntime-gpu (or "
                f"run on the CPU with --device cpu)")
    return None


def check_onnx_file(path: str | Path) -> tuple[str, DepthAnythingConfig]:
    """(kind, config) of an exported file, or a one-line CheckpointError naming it: missing, corrupt or truncated,
    not exported by us, not this network's interface, or of an opset the installed ONNX Runtime cannot run."""
    import onnx
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(error).__name__}); export it again") from None
    try:
        found = read_metadata(proto)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    if found is None:
        raise CheckpointError(f"{path}: an ONNX file without this project's metadata (not exported by "
                              f"`run_pipeline.py export`): its network and its output's meaning are unknown")
    inputs = [value.name for value in proto.graph.input]
    outputs = [value.name for value in proto.graph.output]
    streaming = found[0] == VIDEO_STREAM
    wanted_inputs = [INPUT_NAME, *(PAST_NAMES if streaming else ())]
    wanted_outputs = [OUTPUT_NAME, *(ENTRY_NAMES if streaming else ())]
    if inputs != wanted_inputs or outputs != wanted_outputs or not proto.graph.node:
        raise CheckpointError(f"{path}: its graph takes {inputs} and gives {outputs}; a depth network's takes "
                              f"{wanted_inputs} and gives {wanted_outputs} (export it again)")
    opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    supported = onnx.defs.onnx_opset_version()
    runtime_opset = _runtime_max_opset(onnxruntime.__version__)
    if opset > min(supported, runtime_opset):
        raise CheckpointError(f"{path}: opset {opset}, which onnxruntime {onnxruntime.__version__} cannot run (up to "
                              f"{runtime_opset}): export it again here, or upgrade onnxruntime")
    return found


# The newest ONNX opset each ONNX Runtime release runs (its compatibility table); releases later than the table's
# last run at least that one
_ORT_OPSETS = ((1, 14, 18), (1, 15, 19), (1, 17, 20), (1, 20, 21), (1, 21, 22), (1, 22, 23))


def _runtime_max_opset(version: str) -> int:
    major, minor = (int(part) for part in version.split(".")[:2])
    best = 17
    for table_major, table_minor, opset in _ORT_OPSETS:
        if (major, minor) >= (table_major, table_minor):
            best = opset
    return best


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session behind a module's face: `forward(image) -> depth`, `config`, on `device`."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", runtime: str = "onnxruntime",
                 threads: int = 0):
        super().__init__()
        self.path = Path(path)
        self.kind, self.config = check_onnx_file(self.path)
        self.device = torch.device(device)
        problem = runtime_problem(runtime, self.device.type)
        if runtime not in RUNTIMES or problem:
            raise CheckpointError(f"{self.path}: runtime {runtime!r}: {problem or 'unknown'}")
        self.runtime = runtime
        self.threads = threads or torch.get_num_threads()
        # An empty buffer on the device: the predictor finds the network's device where it finds a module's
        self.register_buffer("device_marker", torch.empty(0, device=self.device), persistent=False)
        self._session = None
        self._session_lock = threading.Lock()
        self._stream_handle: int | None = None
        if self.device.type == "cpu":  # (on a GPU the session waits for its first call's stream)
            self._session = self._new_session()

    def _new_session(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only (its warnings repeat what the one-line errors here say)
        if self.device.type == "cpu":
            # The actor's CPU share, as torch's threads are: ONNX Runtime's own pool would take every core
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            providers = ["CPUExecutionProvider"]
        else:
            index = self.device.index or 0
            cuda = {"device_id": index}
            if self._stream_handle is not None:
                cuda["user_compute_stream"] = str(self._stream_handle)
            providers = [("CUDAExecutionProvider", cuda)]
            if self.runtime == "tensorrt":
                providers.insert(0, ("TensorrtExecutionProvider", {
                    "device_id": index, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(self.path.parent / f"{self.path.stem}.trt-cache"),
                    **({"user_compute_stream": str(self._stream_handle)} if self._stream_handle else {})}))
        return onnxruntime.InferenceSession(str(self.path), options, providers=providers)

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.kind == VIDEO_STREAM:
            raise RuntimeError(f"{self.path}: the streaming mode's file runs a step at a time (`step`), not windows")
        # depth has the input's shape without its channels: B x H x W (B x T x H x W)
        [depth] = self._run({INPUT_NAME: image}, {OUTPUT_NAME: (*image.shape[:-3], *image.shape[-2:])})
        return depth

    @torch.inference_mode()
    def step(self, images_n3hw: torch.Tensor, past: list[torch.Tensor] | None) -> tuple[torch.Tensor,
                                                                                          list[torch.Tensor]]:
        """The streaming mode's step, as VideoDepthAnything.decode(*encode(images), 1, past) gives it: each of N
        streams' next frame and the eight past tensors ((N*h*w) x P x C; None: the streams' first frames) -> (depth
        N x H x W, the frames' eight entries (N*h*w) x 1 x C)."""
        count, _, height, width = images_n3hw.shape
        shapes = self._cached_shapes(count, (height // self.config.patch_size, width // self.config.patch_size))
        if past is None:  # a first frame looks back at nothing: pasts of no frames
            past = [torch.empty((rows, 0, channels), device=self.device) for rows, channels in shapes]
        outputs = self._run({INPUT_NAME: images_n3hw, **dict(zip(PAST_NAMES, past))},
                            {OUTPUT_NAME: (count, height, width),
                             **{name: (rows, 1, channels) for name, (rows, channels) in zip(ENTRY_NAMES, shapes)}})
        return outputs[0], outputs[1:]

    def _cached_shapes(self, count: int, grid_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """(rows, channels) of the eight cached tensors: the four motion modules' maps are at x1, x0.5 (a stride-2
        convolution: ceil), x1 and x2 of the patch grid, two tensors each."""
        grid_h, grid_w = grid_hw
        areas = (grid_h * grid_w, -(-grid_h // 2) * -(-grid_w // 2), grid_h * grid_w, 4 * grid_h * grid_w)
        widths = (*self.config.reassembly_widths[2:], self.config.fusion_width, self.config.fusion_width)
        return [(count * area, channels) for area, channels in zip(areas, widths) for _ in range(2)]

    def _run(self, inputs: dict[str, torch.Tensor], output_shapes: dict[str, tuple]) -> list[torch.Tensor]:
        """The session on float32 tensors (on the network's device) -> its outputs, in `output_shapes`' order."""
        inputs = {name: tensor.float().contiguous() for name, tensor in inputs.items()}
        if self.device.type == "cpu":
            feed = {name: tensor.numpy() for name, tensor in inputs.items()}
            return [torch.from_numpy(array) for array in self._session.run(list(output_shapes), feed)]
        return self._run_cuda(inputs, output_shapes)

    def _run_cuda(self, inputs: dict[str, torch.Tensor], output_shapes: dict[str, tuple]) -> list[torch.Tensor]:
        stream = torch.cuda.current_stream(self.device)
        with self._session_lock:
            if self._session is None:  # made on the first call's stream: ONNX Runtime's kernels queue there
                self._stream_handle = stream.cuda_stream
                self._session = self._new_session()
        if stream.cuda_stream != self._stream_handle:
            stream.synchronize()  # (another stream wrote the input: it must be there before ONNX Runtime reads it)
        binding = self._session.io_binding()
        index = self.device.index or 0
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        outputs = [torch.empty(shape, dtype=torch.float32, device=self.device) for shape in output_shapes.values()]
        for name, tensor in zip(output_shapes, outputs):
            binding.bind_output(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        self._session.run_with_iobinding(binding)
        return outputs

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.kind}, {self.runtime} on {self.device}"

    @property
    def is_video_window(self) -> bool:
        return self.kind == VIDEO_WINDOW

    @property
    def is_video_stream(self) -> bool:
        return self.kind == VIDEO_STREAM
