"""The network exported to ONNX and run by ONNX Runtime: the file read back by a plain onnxruntime session (not our
wrapper) against the float64 reference at several sizes from one file; the pipeline's jobs with --runtime onnxruntime
giving torch's depth (an exported --checkpoint, and the export cache a model actor fills, with its lock); Video
Depth Anything's window mode against the original's fixture; batch sizes; cameras' shared passes; and the bad files
and runtimes refused with one line before Ray starts."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import run_pipeline
from model.config import DepthAnythingConfig
from model.onnx_network import OnnxNetwork
from tests.clips import clip
from tests.test_cli_faults import assert_one_line_error
from tests.test_cli_faults import run_cli as run_failing_cli

PROJECT = Path(__file__).resolve().parents[1]
onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

FAST = ["--input-size", "70", "--batch-size", "2", "--smoother", "none", "--depth-format", "exr"]
TINY = DepthAnythingConfig(embed_dim=64, num_blocks=4, num_heads=2, fusion_width=16, reassembly_widths=(8, 16, 32, 64),
                           tap_blocks=(0, 1, 2, 3), variant="tiny")


def cli(capsys, *argv) -> dict:
    code = run_pipeline.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def relative_l2(ours: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per frame (first axis)."""
    difference = (ours - expected).reshape(len(ours), -1)
    return np.linalg.norm(difference, axis=1) / np.linalg.norm(expected.reshape(len(expected), -1), axis=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, vits_checkpoint) -> Path:
    """The vits checkpoint exported by the CLI (`run_pipeline.py export --checkpoint X.pth -o X.onnx`)."""
    output = tmp_path_factory.mktemp("onnx") / "depth_anything_vits14.onnx"
    assert run_pipeline.main(["export", "--checkpoint", str(vits_checkpoint.official_path), "-o", str(output)]) == 0
    return output


def test_the_exported_file_read_by_a_plain_session_gives_the_reference_s_depth(exported, vits_checkpoint):
    from tests.reference import reference_depth

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    [image_input], [depth_output] = session.get_inputs(), session.get_outputs()
    assert (image_input.name, depth_output.name) == ("image", "depth")
    assert image_input.shape[1] == 3 and all(isinstance(d, str) for d in (image_input.shape[0], *image_input.shape[2:]))
    reference = vits_checkpoint.reference.double().eval()
    generator = torch.Generator().manual_seed(5)
    # Odd and even grids, both orientations, the square base grid (where the table is used as stored), batch 2
    for shape in [(2, 3, 14 * 5, 14 * 8), (1, 3, 14 * 9, 14 * 4), (1, 3, 518, 518)]:
        image = torch.randn(shape, generator=generator)
        expected = reference_depth(reference, image.double()).numpy()
        [depth] = session.run(["depth"], {"image": image.numpy()})
        assert depth.shape == expected.shape == (shape[0], *shape[2:])
        assert relative_l2(depth, expected).max() <= 1e-5, shape
    metadata = {entry.key: entry.value for entry in onnx.load(str(exported), load_external_data=False).metadata_props}
    assert json.loads(metadata["depth_anything.config"])["variant"] == "vits"
    assert metadata["depth_anything.kind"] == "image" and len(metadata["depth_anything.source_sha256"]) == 64


def test_batch_size_does_not_change_the_depth(exported):
    network = OnnxNetwork(exported)
    images = torch.randn(3, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    together = network(images).numpy()
    alone = np.concatenate([network(image[None]).numpy() for image in images])
    assert relative_l2(together, alone).max() <= 1e-6


def test_cameras_shared_passes_give_what_torch_gives(exported, vits_checkpoint):
    """The many-camera service's pass: several cameras' frames (two sizes, one aspect ratio) through the network
    together (DepthWorker.infer_together), ONNX Runtime against torch."""
    from model import DepthPredictor, PredictorOptions, load_model
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker

    generator = np.random.default_rng(3)
    batches = [FrameBatch(0, [0, 1], Fraction(1, 30), generator.integers(0, 255, (2, 64, 96, 3), dtype=np.uint8)),
               FrameBatch(5, [7], Fraction(1, 30), generator.integers(0, 255, (1, 128, 192, 3), dtype=np.uint8))]
    options = PredictorOptions(input_size=70)
    on_onnx = DepthWorker(DepthPredictor(OnnxNetwork(exported), options)).infer_together(batches, "float32")
    on_torch = DepthWorker(DepthPredictor(load_model(vits_checkpoint.official_path), options)).infer_together(
        batches, "float32")
    for ours, theirs in zip(on_onnx, on_torch):
        assert ours.first_index == theirs.first_index and list(ours.pts) == list(theirs.pts)
        assert relative_l2(ours.depth, theirs.depth).max() <= 1e-4


def test_a_file_job_runs_the_exported_checkpoint_with_torch_s_depth(ray_cluster, exported, vits_checkpoint, capsys,
                                                                   tmp_path):
    source = clip(tmp_path, "input.mp4", width=96, height=64, frames=6)
    by_torch = cli(capsys, source, "-o", tmp_path / "torch/", "--checkpoint", vits_checkpoint.official_path, *FAST)
    by_onnx = cli(capsys, source, "-o", tmp_path / "onnx/", "--checkpoint", exported, *FAST)
    assert by_torch["model"]["runtime"] == "torch" and by_onnx["model"]["runtime"] == "onnxruntime"
    assert by_onnx["frames_out"] == by_torch["frames_out"] == 6
    from tests.test_depth_outputs import exr_frames

    assert relative_l2(exr_frames(tmp_path / "onnx"), exr_frames(tmp_path / "torch")).max() <= 1e-4


def test_a_metric_model_is_exported_once_into_the_cache_and_reused(ray_cluster, metric_checkpoint, capsys, tmp_path):
    """--runtime onnxruntime with a .pth: the model actor exports it into the cache (metres kept: a metric v2 head),
    and the next run finds it there."""
    source = clip(tmp_path, "input.mp4", width=96, height=64, frames=4)
    cache = tmp_path / "cache"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"model:\n  onnx_cache: {cache}\n")
    common = ["--checkpoint", metric_checkpoint.official_path, "--config", settings, *FAST]
    by_torch = cli(capsys, source, "-o", tmp_path / "torch/", *common)
    by_onnx = cli(capsys, source, "-o", tmp_path / "onnx/", "--runtime", "onnxruntime", *common)
    [cached] = cache.glob("*.onnx")
    assert cached.name.startswith("vits-v2-")
    written = cached.stat().st_mtime_ns
    again = cli(capsys, source, "-o", tmp_path / "again/", "--runtime", "onnxruntime", *common)
    assert list(cache.glob("*.onnx")) == [cached] and cached.stat().st_mtime_ns == written
    assert by_onnx["model"]["depth"] == "metric" and by_onnx["model"]["max_depth_m"] == 20
    from tests.test_depth_outputs import exr_frames

    metres = exr_frames(tmp_path / "torch")
    assert metres.max() > 0
    assert relative_l2(exr_frames(tmp_path / "onnx"), metres).max() <= 1e-4
    assert np.array_equal(exr_frames(tmp_path / "again"), exr_frames(tmp_path / "onnx"))
    assert again["model"]["runtime"] == "onnxruntime"


def _export_tiny(folder: str, log: str) -> str:
    from model.depth_anything import DepthAnything
    from model.random_weights import randomize_
    from pipeline.stages.inference.onnx_cache import exported_file

    def build():
        with open(log, "a") as file:
            file.write("exported\n")
        return randomize_(DepthAnything(TINY), seed=0).eval()

    return str(exported_file("tiny recipe", build, folder))


def test_actors_starting_at_once_export_once(tmp_path):
    log = tmp_path / "exports.log"
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        paths = pool.starmap(_export_tiny, [(str(tmp_path / "cache"), str(log))] * 3)
    assert len(set(paths)) == 1 and log.read_text() == "exported\n"
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"] == [Path(paths[0]).name]
    OnnxNetwork(paths[0])  # whole, and ours


@pytest.mark.slow
def test_video_depth_anything_s_window_mode_gives_the_original_s_depth(tmp_path):
    from model.onnx_export import export_onnx
    from model.random_weights import random_video_model
    from tests.test_video_depth_anything import FIXTURES, prepared, relative_errors, run_windows
    from tests.video_frames import CASES, video_frames

    case = next(case for case in CASES if case.name == "window_70x28x42")
    path = export_onnx(random_video_model("vits", seed=case.seed), tmp_path / "vda.onnx")
    network = OnnxNetwork(path)
    assert network.config.temporal and network.is_video_window
    expected = np.load(FIXTURES / f"{case.name}.npz")["depth"]
    ours = run_windows(network, prepared(video_frames(case)), (case.height, case.width))
    errors = relative_errors(ours, expected)
    assert errors.max() <= 1e-4, f"worst frame {errors.argmax()}: {errors.max():.2e}"


@pytest.fixture(scope="module")
def streaming_file(tmp_path_factory) -> Path:
    """Video Depth Anything (the streaming case's seeded random weights) exported in its streaming mode."""
    from model.onnx_export import export_onnx
    from model.random_weights import random_video_model
    from tests.video_frames import CASES

    case = next(case for case in CASES if case.name == "stream_50x28x42")
    return export_onnx(random_video_model("vits", seed=case.seed), tmp_path_factory.mktemp("vda") / "stream.onnx",
                       mode="stream")


@pytest.mark.slow
def test_video_depth_anything_s_streaming_mode_gives_the_original_s_depth(streaming_file):
    """One step a frame through the exported file (the past in the pipeline's ring buffers), against the original's
    streaming run on 50 frames: the first frame (no past), the cache filling, and frames past the point where entries
    are let go."""
    from pipeline.stages.inference.temporal_stream import StreamingDepth
    from tests.test_video_depth_anything import FIXTURES, prepared, relative_errors
    from tests.video_frames import CASES, video_frames

    case = next(case for case in CASES if case.name == "stream_50x28x42")
    network = OnnxNetwork(streaming_file)
    assert network.is_video_stream and network.config.temporal
    stream = StreamingDepth(None, None, (case.height, case.width), step=network.step)
    ours = np.stack([stream.push(frame) for frame in prepared(video_frames(case))])
    expected = np.load(FIXTURES / f"{case.name}.npz")["depth"]
    errors = relative_errors(ours, expected)
    assert errors.max() <= 1e-4, f"worst frame {errors.argmax()}: {errors.max():.2e}"
    with pytest.raises(RuntimeError, match="a step at a time"):
        network(torch.zeros(1, 2, 3, 28, 42))


@pytest.mark.slow
def test_streams_pushed_together_through_the_exported_step_give_each_stream_s_own_depth(streaming_file):
    """Several cameras' streams in one step a round (live cameras' shared passes): each stream's depth as torch
    gives it for that stream alone."""
    from model.random_weights import random_video_model
    from pipeline.stages.inference.temporal_stream import StreamingDepth, push_together

    network, torch_net = OnnxNetwork(streaming_file), random_video_model("vits", seed=0)
    generator = torch.Generator().manual_seed(7)
    frames = torch.randn(3, 6, 3, 28, 42, generator=generator)  # 3 streams x 6 frames
    together = [StreamingDepth(None, None, (28, 42), step=network.step) for _ in range(3)]
    alone = [StreamingDepth(torch_net.encode, torch_net.decode, (28, 42)) for _ in range(3)]
    with torch.inference_mode():
        for index in range(6):
            # stream 2 starts a frame late: a first frame (no past) beside the others' in the same round
            streams = [0, 1, 2] if index else [0, 1]
            got = push_together([together[s] for s in streams], frames[streams, index])
            for stream, depth in zip(streams, got):
                expected = alone[stream].push(frames[stream, index])
                assert relative_l2(depth.numpy()[None], expected[None]).max() <= 1e-4


@pytest.mark.slow
def test_a_video_model_s_streaming_mode_runs_on_onnx_runtime_through_ray(ray_cluster, streaming_file, capsys,
                                                                         tmp_path):
    """--vda-mode stream --runtime onnxruntime with a Video Depth Anything .pth: the model actor exports the
    streaming step into the cache and each frame goes through it with its stream's cache: torch's depth, frame by
    frame; the streaming mode's file is refused for a window-mode run, with one line."""
    from model.random_weights import random_video_model
    from tests.test_depth_outputs import exr_frames
    from tests.test_video_depth_anything import frames_and_checkpoint
    from tests.video_frames import CASES

    case = next(case for case in CASES if case.name == "stream_50x28x42")
    _, folder, checkpoint = frames_and_checkpoint(tmp_path, case, random_video_model("vits", seed=case.seed),
                                                  "video_depth_anything_vits.pth")
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"model:\n  onnx_cache: {tmp_path / 'cache'}\n")
    common = [folder, "--checkpoint", checkpoint, "--vda-mode", "stream", "--config", settings,
              "--input-size", "28", "--depth-format", "exr", "--fps", "30"]
    by_torch = cli(capsys, *common, "-o", tmp_path / "torch/")
    by_onnx = cli(capsys, *common, "-o", tmp_path / "onnx/", "--runtime", "onnxruntime")
    assert by_onnx["model"]["runtime"] == "onnxruntime" and by_onnx["frames_out"] == by_torch["frames_out"] == 50
    [cached] = (tmp_path / "cache").glob("*.onnx")
    assert "-video-stream-" in cached.name
    assert relative_l2(exr_frames(tmp_path / "onnx"), exr_frames(tmp_path / "torch")).max() <= 1e-4
    code, err = run_failing_cli(capsys, folder, "--checkpoint", streaming_file, "-o", tmp_path / "never/",
                                "--depth-format", "exr", "--fps", "30")
    assert_one_line_error(code, err, "is Video Depth Anything's streaming mode; this run needs its window mode")


# Bad files and runtimes: one line naming the file or runtime, exit 2, before Ray starts ...........................

def tiny_foreign_model(path: Path, opset: int = 18, inputs=("image",)) -> Path:
    """A valid ONNX file that is not ours: an Identity graph without our metadata."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", [inputs[0]], ["depth"])], "foreign",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in inputs],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_bad_onnx_files_and_runtimes_are_refused_with_one_line(exported, tmp_path, capsys, monkeypatch):
    import pipeline.cluster.runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a run that could be refused without it")

    monkeypatch.setattr(pipeline.cluster.runtime, "start_ray", no_ray)
    source = clip(tmp_path, "input.mp4", width=96, height=64, frames=2)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    foreign = tiny_foreign_model(tmp_path / "foreign.onnx")
    # Ours, but with an opset no runtime here runs
    future = tmp_path / "future.onnx"
    proto = onnx.load(str(exported))
    proto.opset_import[0].version = 99
    onnx.save(proto, str(future))
    out = ["-o", tmp_path / "never.mp4", "--input-size", "70"]
    cases = [
        ([source, "--checkpoint", truncated, *out], "truncated.onnx: not a readable ONNX file"),
        ([source, "--checkpoint", garbage, *out], "garbage.onnx: not a readable ONNX file"),
        ([source, "--checkpoint", foreign, *out], "foreign.onnx: an ONNX file without this project's metadata"),
        ([source, "--checkpoint", future, *out], "future.onnx: opset 99, which onnxruntime"),
        ([source, "--checkpoint", tmp_path / "missing.onnx", *out], "missing.onnx: checkpoint not found"),
        ([source, "--checkpoint", exported, "--runtime", "torch", *out], "is an exported (ONNX) network"),
        ([source, "--random-weights", "vits", "--runtime", "tensorrt", *out], "--runtime tensorrt: "),
        ([source, "--random-weights", "vits", "--runtime", "onnxruntime", "--precision", "bfloat16", *out],
         "runtime onnxruntime runs the float32 file"),
        (["export", "--random-weights", "vits", "-o", tmp_path / "model.pt"], "an exported network is written to"),
        (["export", "-o", tmp_path / "model.onnx"], "export needs one of --model, --checkpoint, --random-weights"),
        (["export", "--checkpoint", exported, "-o", tmp_path / "again.onnx"], "is an exported network already"),
        (["export", "--random-weights", "vits", "--vda-mode", "stream", "-o", tmp_path / "model.onnx"],
         "--vda-mode stream is for Video Depth Anything models"),
    ]
    for argv, message in cases:
        assert_one_line_error(*run_failing_cli(capsys, *argv), message, case=message)
    assert not (tmp_path / "never.mp4").exists() and not (tmp_path / "model.onnx").exists()


def test_the_cuda_path_binds_torch_s_buffers_on_the_compute_stream(exported, monkeypatch):
    """What a CPU can check of the GPU path, with a stand-in session and stream: the session is made on the first
    call, with the CUDA stream current then (the model actor's compute stream) as ONNX Runtime's compute stream;
    input and output are bound as the tensors' own device buffers (pointer, shape, float32); a call from another
    stream waits for that stream's work first."""
    calls = []

    class Stream:
        def __init__(self, handle):
            self.cuda_stream = handle

        def synchronize(self):
            calls.append(("synchronize", self.cuda_stream))

    class Binding:
        def bind_input(self, name, device, index, dtype, shape, pointer):
            calls.append(("input", name, device, index, dtype, shape, pointer))

        def bind_output(self, name, device, index, dtype, shape, pointer):
            calls.append(("output", name, device, index, dtype, shape, pointer))

    class Session:
        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            calls.append(("run",))

    network = OnnxNetwork(exported)  # made on the CPU, then moved "to a GPU" by hand
    network.device, network._session = torch.device("cuda", 0), None
    made_with = []

    def new_session():
        made_with.append(network._stream_handle)
        return Session()

    current = [Stream(1234)]
    monkeypatch.setattr(network, "_new_session", new_session)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch, "empty", lambda shape, dtype, device: torch.zeros(shape, dtype=dtype))
    image = torch.randn(2, 3, 28, 42)
    depth = network(image)
    assert made_with == [1234] and depth.shape == (2, 28, 42)
    _, name, device, index, dtype, shape, pointer = calls[0]
    assert (name, device, index, dtype, shape) == ("image", "cuda", 0, np.float32, (2, 3, 28, 42))
    assert pointer == image.data_ptr()  # (a float32 contiguous input is bound as it is: no copy)
    assert calls[1][1:6] == ("depth", "cuda", 0, np.float32, (2, 28, 42)) and calls[1][6] == depth.data_ptr()
    assert calls[2] == ("run",)
    assert not any(call[0] == "synchronize" for call in calls)
    calls.clear()
    current[0] = Stream(99)  # another stream: its work is waited for; the session is not made again
    network(torch.randn(1, 4, 3, 28, 42))
    assert calls[0] == ("synchronize", 99) and made_with == [1234]
    assert calls[2][1:6] == ("depth", "cuda", 0, np.float32, (1, 4, 28, 42))


def test_a_checkpoint_s_digest_covers_a_folder_s_files(tmp_path, vits_checkpoint):
    """The export cache's key: a Hugging Face folder is digested file by file (a folder could not be opened as one),
    and any change to a file gives another key."""
    import shutil

    from model.onnx_export import file_digest

    copy = tmp_path / "copy"
    shutil.copytree(vits_checkpoint.hf_folder, copy)
    assert file_digest(copy) == file_digest(vits_checkpoint.hf_folder) and len(file_digest(copy)) == 64
    config = copy / "config.json"
    config.write_text(config.read_text() + " ")
    assert file_digest(copy) != file_digest(vits_checkpoint.hf_folder)
    assert file_digest(vits_checkpoint.official_path) != file_digest(vits_checkpoint.hf_folder)


def test_batch_segments_and_live_jobs_run_the_exported_file(ray_cluster, exported, vits_checkpoint, capsys, tmp_path):
    """Every job takes --runtime onnxruntime: a batch and a video in segments give the torch run's depth; a live run
    (a file in real time) gives every frame or counts it as dropped."""
    import shutil

    from tests.test_depth_outputs import exr_frames

    source = clip(tmp_path, "input.mp4", width=96, height=64, frames=30, keyframe_interval=10)
    by_torch = cli(capsys, source, "-o", tmp_path / "torch/", "--checkpoint", vits_checkpoint.official_path, *FAST)
    expected = exr_frames(tmp_path / "torch")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("one.mp4", "two.mp4"):
        shutil.copy(source, videos / name)
    report = cli(capsys, "batch", videos, "--output-dir", tmp_path / "batch", "--checkpoint", exported, *FAST)
    assert report["totals"]["done"] == 2
    for name in ("one", "two"):
        assert relative_l2(exr_frames(tmp_path / "batch" / f"{name}_depth"), expected).max() <= 1e-4
    split = cli(capsys, source, "-o", tmp_path / "segments/", "--checkpoint", exported, "--segments", 3, *FAST)
    assert len(split["segments"]) == 3 and split["model"]["runtime"] == "onnxruntime"
    assert relative_l2(exr_frames(tmp_path / "segments"), expected).max() <= 1e-4
    process = subprocess.run([sys.executable, str(PROJECT / "run_pipeline.py"), str(source), "--realtime", "--record",
                              str(tmp_path / "live.mp4"), "--checkpoint", str(exported), "--input-size", "70"],
                             capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    live = json.loads(process.stdout)
    assert live["model"]["runtime"] == "onnxruntime"
    assert live["frames_in"] == 30 and live["frames_out"] + live["dropped"] == 30 and live["frames_out"] > 0
