"""Video Depth Anything against the original, on seeded random weights: the network in window mode (four windows,
portrait, a padded last window) and in streaming mode (past the cache's steady state), each within float32 rounding
(relative L2 <= 1e-4 a frame) of the original run in float64 (fixtures made by tests/fixtures/make_vda_fixtures.py);
the two modes differing, the temporal attention mattering, the released file layout loading strictly, and memory
bounded by a window or a cache whatever the length."""

from __future__ import annotations

import tracemalloc
import urllib.request
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model import load_model
from model.checkpoint import CheckpointError, our_name
from model.predictor import cast_weights_once
from model.random_weights import random_video_model
from pipeline.stages.inference.temporal_stream import CACHED_FRAMES, RING_SLOTS, StreamingDepth
from pipeline.stages.inference.temporal_windows import WindowedDepth
from tests.clips import clip
from tests.test_gpu_path import cuda_dtype_rules  # noqa: F401, F811 (the fixture: mixed dtypes refused as on CUDA)
from tests.video_frames import CASES, Case, video_frames

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vda"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def prepared(frames: np.ndarray) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W float32, normalised as the original does (in float64, then float32)."""
    normalised = (frames.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)).astype(np.float32))


@pytest.fixture(scope="module")
def models():
    return {seed: random_video_model("vits", seed=seed) for seed in {case.seed for case in CASES}}


def run_windows(model, frames: torch.Tensor, output_hw, metric: bool = False) -> np.ndarray:
    windows = WindowedDepth(lambda window: model(window.unsqueeze(0))[0], output_hw, metric)
    with torch.inference_mode():
        depth = [plane for frame in frames for plane in windows.push(frame)] + windows.finish()
    return np.stack(depth)


def run_stream(model, frames: torch.Tensor, output_hw) -> np.ndarray:
    stream = StreamingDepth(model.encode, model.decode, output_hw)
    with torch.inference_mode():
        return np.stack([stream.push(frame) for frame in frames])


def frames_and_checkpoint(tmp_path: Path, case: Case, model, checkpoint_name: str):
    """A case's frames (T x H x W x 3), written as a numbered PNG folder, and the model saved in the released layout:
    (frames, the folder, the checkpoint's path)."""
    frames = video_frames(case)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    checkpoint = tmp_path / checkpoint_name
    torch.save(official_layout(model), checkpoint)
    return frames, folder, checkpoint


def relative_errors(ours: np.ndarray, expected: np.ndarray) -> np.ndarray:
    difference = (ours - expected).reshape(len(ours), -1)
    return np.linalg.norm(difference, axis=1) / np.linalg.norm(expected.reshape(len(expected), -1), axis=1)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_mode_gives_the_original_s_depth(models, case):
    expected = np.load(FIXTURES / f"{case.name}.npz")["depth"]
    frames = prepared(video_frames(case))
    if case.mode == "window":
        ours = run_windows(models[case.seed], frames, (case.height, case.width), case.metric)
    else:
        ours = run_stream(models[case.seed], frames, (case.height, case.width))
    assert ours.shape == expected.shape == (case.frames, case.height, case.width)
    errors = relative_errors(ours, expected)
    assert errors.max() <= 1e-4, f"worst frame {errors.argmax()}: {errors.max():.2e}"


def test_the_two_modes_differ_and_the_temporal_attention_matters(models):
    case = next(case for case in CASES if case.mode == "stream")
    frames, size = prepared(video_frames(case)), (case.height, case.width)
    model = models[case.seed]
    stream, window = run_stream(model, frames, size), run_windows(model, frames, size)
    assert relative_errors(stream, window)[1:].mean() > 1e-2  # (frame 0 may agree: both see it alone first)
    without = random_video_model("vits", seed=case.seed)
    for module in without.motion_modules:
        torch.nn.init.zeros_(module.proj_out.weight)
        torch.nn.init.zeros_(module.proj_out.bias)
    assert relative_errors(run_windows(without, frames, size), window).mean() > 1e-2


def official_layout(model) -> dict[str, torch.Tensor]:
    """Our weights under the released files' names (the loader's mapping run backwards, key by key)."""
    ours = model.state_dict()
    return {key: ours[our_name(key)].clone() for key in _released_keys(model)}


def _released_keys(model) -> list[str]:
    """The released files' key names, found by trying the loader's mapping on every candidate spelling."""
    wanted = set(model.state_dict())
    found = []
    candidates = _candidate_keys(model)
    for key in candidates:
        ours_key = our_name(key)
        if ours_key in wanted:
            found.append(key)
            wanted.discard(ours_key)
    assert not wanted, f"no released name for {sorted(wanted)[:3]}"
    return found


def _candidate_keys(model) -> list[str]:
    heads = ["pretrained.cls_token", "pretrained.pos_embed", "pretrained.patch_embed.proj.weight",
             "pretrained.patch_embed.proj.bias", "pretrained.norm.weight", "pretrained.norm.bias"]
    for block in range(model.config.num_blocks):
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                     "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"):
            heads.append(f"pretrained.blocks.{block}.{part}")
    for stage in range(4):
        for kind in ("weight", "bias"):
            heads += [f"head.projects.{stage}.{kind}", f"head.resize_layers.{stage}.{kind}"]
        heads.append(f"head.scratch.layer{stage + 1}_rn.weight")
        for unit in ("out_conv", "resConfUnit1.conv1", "resConfUnit1.conv2", "resConfUnit2.conv1",
                     "resConfUnit2.conv2"):
            heads += [f"head.scratch.refinenet{stage + 1}.{unit}.{kind}" for kind in ("weight", "bias")]
    heads += [f"head.scratch.output_conv{name}.{kind}" for name in ("1", "2.0", "2.2") for kind in ("weight", "bias")]
    block = "temporal_transformer.transformer_blocks.0"
    for module in range(4):
        base = f"head.motion_modules.{module}.temporal_transformer"
        for part in ("norm", "proj_in", "proj_out"):
            heads += [f"{base}.{part}.{kind}" for kind in ("weight", "bias")]
        for attention in range(2):
            prefix = f"head.motion_modules.{module}.{block}.attention_blocks.{attention}"
            heads += [f"{prefix}.to_q.weight", f"{prefix}.to_k.weight", f"{prefix}.to_v.weight",
                      f"{prefix}.to_out.0.weight", f"{prefix}.to_out.0.bias", f"{prefix}.pos_encoder.pe"]
            heads += [f"head.motion_modules.{module}.{block}.norms.{attention}.{kind}" for kind in ("weight", "bias")]
        for part in ("ff.net.0.proj", "ff.net.2", "ff_norm"):
            heads += [f"head.motion_modules.{module}.{block}.{part}.{kind}" for kind in ("weight", "bias")]
    return heads


def test_a_released_layout_file_loads_strictly_and_gives_the_same_depth(models, tmp_path):
    model = models[0]
    path = tmp_path / "video_depth_anything_vits.pth"
    torch.save(official_layout(model), path)
    loaded = load_model(path)
    assert type(loaded).__name__ == "VideoDepthAnything" and loaded.config.tap_blocks == (2, 5, 8, 11)
    frames = prepared(video_frames(CASES[0]))[:6].unsqueeze(0)
    with torch.inference_mode():
        assert torch.equal(loaded(frames), model(frames))
    state = torch.load(path, weights_only=True)
    del state["head.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="video_depth_anything_vits.pth: not a complete vits Video Depth "
                                              "Anything checkpoint: missing: motion_modules.2.feed_forward_norm.bias"):
        load_model(path)


class StandInNetwork:
    """A network-shaped stand-in that costs nothing: depth from the frames' first channel, a cache entry per frame."""

    def window(self, frames_t3hw):
        return frames_t3hw[:, 0].abs() + 0.1

    def encode(self, frames_n3hw):
        return [frames_n3hw], frames_n3hw.shape[-2:]

    def decode(self, tapped, grid_hw, frames, cached=None):
        images = tapped[0]
        entries = [images.flatten(2).transpose(1, 2).reshape(-1, 1, 3)[:, :, :1].clone() for _ in range(8)]
        return images[:, 0].abs() + 0.1, entries


def test_memory_is_bounded_by_a_window_and_by_the_cache_whatever_the_length():
    network, frame = StandInNetwork(), torch.randn(3, 42, 56)
    peaks = []
    for windows in (3, 30):
        runner = WindowedDepth(network.window, (42, 56))
        tracemalloc.start()
        count = 0
        for index in range(22 * windows + 10):
            count += len(runner.push(frame + index % 7))
            part = runner.part
            assert len(part.planner._waiting) <= 32 and len(part.aligner._tail) <= 8
            assert len(part.aligner._reference) <= 2 and len(part._awaiting) <= 32
        count += len(runner.finish())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == 22 * windows + 10  # every frame's depth, once
    assert peaks[1] <= 1.2 * peaks[0], peaks
    stream = StreamingDepth(network.encode, network.decode, (42, 56))
    for index in range(120):
        stream.push(frame)
        assert stream.cached_frames == min(32 + index, CACHED_FRAMES)
        if index == 0:
            held = stream.cache_bytes  # (allocated once, at the first frame)
        assert stream.cache_bytes == held and len(set(stream._order)) <= RING_SLOTS - 1


def test_weights_cast_once_run_under_cuda_dtype_rules_in_both_modes(cuda_dtype_rules):  # noqa: F811
    """The GPU's half-precision path: every weight (the motion modules' norms and position tables too) cast once,
    run where mixed dtypes are refused as CUDA refuses them; the head's last convolutions in float32 as the
    original keeps them; the depth close to float32's."""
    case = CASES[0]
    frames, size = prepared(video_frames(case))[:34], (case.height, case.width)
    reference_windows = run_windows(random_video_model("vits", seed=case.seed), frames, size)
    reference_stream = run_stream(random_video_model("vits", seed=case.seed), frames[:12], size)
    half = cast_weights_once(random_video_model("vits", seed=case.seed), torch.bfloat16)
    assert {tensor.dtype for tensor in (*half.parameters(), *half.buffers())} == {torch.bfloat16}
    windows = run_windows(half, frames.to(torch.bfloat16), size)
    stream = run_stream(half, frames[:12].to(torch.bfloat16), size)
    assert windows.dtype == stream.dtype == np.float32
    assert relative_errors(windows, reference_windows).max() < 5e-2
    assert relative_errors(stream, reference_stream).max() < 5e-2


def test_a_worker_runs_each_live_stream_through_its_own_cache(models):
    """The streaming mode in a model actor's worker: each camera's frames through its own cache, in order, the same
    depth as StreamingDepth on the same prepared frames; two cameras interleaved never mix; a camera back at another
    size starts afresh; a stream let go is forgotten."""
    from model import DepthPredictor, PredictorOptions
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker, OneClip

    net = models[0]
    worker = DepthWorker(DepthPredictor(OneClip(net), PredictorOptions(input_size=28)))
    cameras = {name: video_frames(Case(name, "stream", 12, 28, 42, seed=seed))
               for name, seed in (("door", 3), ("yard", 4))}
    expected = {}
    for name, frames in cameras.items():
        prepared_frames = worker.predictor.prepare(torch.from_numpy(frames))
        expected[name] = run_stream(net, prepared_frames, (28, 42))
    got = {name: [] for name in cameras}
    for start in range(0, 12, 3):  # batches of three, the cameras taking turns
        for name, frames in cameras.items():
            batch = FrameBatch(start, list(range(start, start + 3)), Fraction(1, 30), frames[start:start + 3])
            got[name].append(worker.infer_stream(name, batch, "float32").depth)
    for name in cameras:
        assert relative_errors(np.concatenate(got[name]), expected[name]).max() <= 1e-5
    wide = video_frames(Case("wide", "stream", 2, 28, 56, seed=5))
    fresh_batch = worker.infer_stream("door", FrameBatch(0, [0, 1], Fraction(1, 30), wide), "float32")
    fresh = fresh_batch.depth
    alone = run_stream(net, worker.predictor.prepare(torch.from_numpy(wide)), (28, 56))
    assert relative_errors(fresh, alone).max() <= 1e-5  # another size: the stream started afresh
    worker.end_stream("yard")
    assert set(worker._streams) == {"door"}
    # Each depth batch says how many frames its cache had seen: a stream let go and sent on starts again at 0
    again = worker.infer_stream("yard", FrameBatch(12, [12, 13], Fraction(1, 30), cameras["yard"][:2]), "float32")
    assert (again.history, fresh_batch.history) == (0, 0)
    assert worker.infer_stream("yard", FrameBatch(14, [14], Fraction(1, 30), cameras["yard"][2:3]),
                               "float32").history == 2


def test_streams_are_admitted_against_the_model_actor_s_byte_budget_and_a_camera_that_does_not_fit_fails(models):
    """Each stream's cache sits in ring buffers allocated once (its bytes known after its first frame); a new stream
    whose cache would take the worker past its budget is refused with one line (a live camera then fails, said
    once), and is taken once a stream has let go."""
    from model import DepthPredictor, PredictorOptions
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker, OneClip, StreamRefused
    from pipeline.stages.live.camera_runner import LiveCamera, LiveCameraOptions, LiveTargets
    from pipeline.stages.sources.live_stream import LiveSource

    worker = DepthWorker(DepthPredictor(OneClip(models[0]), PredictorOptions(input_size=28)))
    frames = video_frames(Case("door", "stream", 3, 28, 42, seed=3))

    def batch(first):
        return FrameBatch(first, [first], Fraction(1, 30), frames[first:first + 1])

    worker.infer_stream("door", batch(0), "float32")
    one_stream = worker._streams["door"][0].cache_bytes
    assert one_stream > 0
    worker.infer_stream("door", batch(1), "float32")
    assert worker._streams["door"][0].cache_bytes == one_stream  # (allocated at the first frame, never again)
    worker.stream_budget_bytes = int(1.5 * one_stream)
    with pytest.raises(StreamRefused, match=r"stream 'yard': its video model cache \(0\.\d+ GiB at 42x28\) does not "
                                            r"fit beside the 1 streams this model actor holds"):
        worker.infer_stream("yard", batch(0), "float32")
    assert set(worker._streams) == {"door"}
    worker.end_stream("door")
    assert worker.infer_stream("yard", batch(0), "float32").depth.shape == (1, 28, 42)

    # A live camera refused so: failed, its reason said once, nothing retried
    lines = []
    camera = LiveCamera(LiveCameraOptions(), LiveSource("rtsp://127.0.0.1:9/gate"), LiveTargets("rtsp://h:9/g", None),
                        name="gate", log=lines.append)
    camera._model_failed(StreamRefused("stream 'gate': its video model cache ... does not fit"), 1)
    camera._model_failed(StreamRefused("stream 'gate': its video model cache ... does not fit"), 1)
    assert camera.stats()["state"] == "failed" and camera.stopping.is_set() and camera.model_errors == 0
    assert lines == ["[gate] live: not run: stream 'gate': its video model cache ... does not fit"]


def test_streams_pushed_together_give_each_stream_s_own_depth(models):
    """push_together: several streams at different points (one new, one past its cache's steady state, one twice in
    the call) through one encoder pass and shared decoder passes, each the depth it gets alone; the worker's
    infer_streams_together the same as infer_stream a stream at a time."""
    from model import DepthPredictor, PredictorOptions
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker, OneClip
    from pipeline.stages.inference.temporal_stream import push_together

    net, size = models[0], (28, 42)
    clips = {name: prepared(video_frames(Case(name, "stream", 60, 28, 42, seed=seed)))
             for name, seed in (("a", 5), ("b", 6), ("c", 7))}
    alone = {name: run_stream(net, frames, size) for name, frames in clips.items()}
    together = {name: StreamingDepth(net.encode, net.decode, size) for name in clips}
    got = {name: [] for name in clips}
    with torch.inference_mode():
        for frame in clips["b"][:45]:  # b is past the steady state when the others start
            got["b"].append(together["b"].push(frame))
        for step in range(7):
            order = ["a", "c", "c", "b"]  # (c twice: its two frames in order)
            position = {"a": step, "b": 45 + step, "c": 2 * step}
            frames, streams = [], []
            for name in order:
                frames.append(clips[name][position[name]])
                streams.append(together[name])
                position[name] += 1
            for name, depth in zip(order, push_together(streams, torch.stack(frames))):
                got[name].append(depth.numpy())
    for name, count in (("a", 7), ("b", 52), ("c", 14)):
        assert relative_errors(np.stack(got[name]), alone[name][:count]).max() <= 1e-5, name
    worker = DepthWorker(DepthPredictor(OneClip(net), PredictorOptions(input_size=28)))
    pictures = {name: video_frames(Case(name, "stream", 6, 28, 42, seed=seed)) for name, seed in (("a", 5), ("b", 6))}
    batches = [(name, FrameBatch(start, [start, start + 1], Fraction(1, 30), pictures[name][start:start + 2]))
               for start in (0, 2, 4) for name in ("a", "b")]
    joint = [worker.infer_streams_together(batches[i:i + 2], "float32") for i in range(0, 6, 2)]
    worker.end_stream("a")
    worker.end_stream("b")
    single = [worker.infer_stream(name, batch, "float32") for name, batch in batches]
    for result, reference in zip([r for pair in joint for r in pair], single):
        assert relative_errors(result.depth, reference.depth).max() <= 1e-4  # (float32 rounding of other batches)
        assert result.history == reference.history == result.first_index


def test_a_sink_reports_where_a_stream_s_cache_started_again(tmp_path):
    """DepthBatch.history falling behind the frames the sink has had through that cache: the time is reported."""
    from pipeline.stages.frames import DepthBatch
    from pipeline.stages.render.smoothing import make_smoother
    from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions
    from pipeline.stages.sources.video_decoder import open_source

    decoder = open_source(str(clip(tmp_path, "six.mp4", width=64, height=48, frames=6, rate=Fraction(2))))
    batches = list(decoder.batches(2))
    decoder.close()
    sink = DepthSink(str(tmp_path / "depth.mp4"), decoder.info, RenderOptions(), make_smoother("none"))
    for batch, history in zip(batches, (0, 2, 0)):  # the third batch's cache started afresh
        depth = DepthBatch(batch.first_index, batch.pts, batch.time_base, np.ones((2, 6, 8), np.float32),
                           history=history)
        sink.write(depth, batch)
    stats = sink.close()
    assert stats["frames_out"] == 6 and stats["cache_rebuilt_at_s"] == [2.0]


def test_a_file_job_gives_the_window_mode_s_depth(ray_cluster, models, tmp_path, capsys):
    """The documented command: an image sequence through the whole pipeline on Ray (stream actor making the windows,
    a model actor running them, the alignment, the sink writing EXR) gives WindowedDepth's depth, which is the
    original's (the fixtures above), frame for frame at the source's times."""
    import json

    import run_pipeline
    from pipeline.stages.sinks.image_sequence_writer import read_exr
    case = Case("e2e", "window", 50, 126, 224, seed=2)  # (50: padding copies become the next window's keyframes)
    frames, folder, checkpoint = frames_and_checkpoint(tmp_path, case, models[0], "video_depth_anything_vits.pth")
    code = run_pipeline.main([f"{folder}/%06d.png", "--fps", "30", "--checkpoint", str(checkpoint),
                              "--input-size", "126", "--smoother", "none", "--depth-format", "exr",
                              "-o", str(tmp_path / "depth"), "--model-actors", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["frames_out"] == case.frames
    written = np.stack([read_exr(path) for path in sorted((tmp_path / "depth").glob("*.exr"))])
    expected = run_windows(models[0], prepared(frames), (case.height, case.width))
    errors = relative_errors(written, expected)
    assert written.shape == expected.shape and errors.max() <= 1e-4, errors.max()
    rows = (tmp_path / "depth" / "frames.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(case.frames))
    # The same with --vda-mode stream: the streaming mode's depth (StreamingDepth's, the original's)
    code = run_pipeline.main([f"{folder}/%06d.png", "--fps", "30", "--checkpoint", str(checkpoint),
                              "--input-size", "126", "--smoother", "none", "--depth-format", "exr", "--vda-mode",
                              "stream", "-o", str(tmp_path / "streamed"), "--model-actors", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["frames_out"] == case.frames
    streamed = np.stack([read_exr(path) for path in sorted((tmp_path / "streamed").glob("*.exr"))])
    expected_stream = run_stream(models[0], prepared(frames), (case.height, case.width))
    assert relative_errors(streamed, expected_stream).max() <= 1e-4
    assert relative_errors(streamed, written).mean() > 1e-2  # (the two modes' depth differ)
    # Live: a file played in real time, one camera, the streaming mode on the model actor
    source = clip(tmp_path, "live.mp4", width=224, height=126, frames=12, rate=Fraction(5))
    code = run_pipeline.main([str(source), "--realtime", "--record", str(tmp_path / "live_depth.mp4"),
                              "--checkpoint", str(checkpoint), "--input-size", "126", "--model-actors", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["frames_in"] == 12 and summary["frames_out"] + summary["dropped"] == 12, summary
    assert (tmp_path / "live_depth.mp4").exists()


def test_segments_of_a_video_model_run_its_windows_and_caches_from_a_warm_up(ray_cluster, models, tmp_path, capsys):
    """`--segments N` with a video model: each segment decodes the video's opening frames again and runs a warm-up
    (`segments.warmup_seconds`, here 5 s at 10 fps: 3 windows, or 50 frames) before its first frame. A segment whose
    warm-up reaches frame 0 is a whole run's frames exactly; a later one is what the stages give for its span (the
    pipeline runs the stated algorithm), within the stated bound of a whole run (benchmarks/vda_segment_seams.py),
    every frame once at its time. Both modes."""
    import json

    import run_pipeline
    from pipeline.stages.inference.temporal_windows import WindowSpan, first_window_reference
    from pipeline.stages.sinks.image_sequence_writer import read_exr
    case = Case("segments", "window", 150, 28, 42, seed=3)
    frames, folder, checkpoint = frames_and_checkpoint(tmp_path, case, models[0], "video_depth_anything_vits.pth")
    config = tmp_path / "warmup.yaml"
    config.write_text("segments:\n  warmup_seconds: 5\n")
    model, size, prepared_frames = models[0], (case.height, case.width), prepared(frames)

    def run(name: str, *flags: str) -> tuple[np.ndarray, dict]:
        code = run_pipeline.main([f"{folder}/%06d.png", "--fps", "10", "--checkpoint", str(checkpoint),
                                  "--input-size", "28", "--depth-format", "exr", "--config", str(config),
                                  "-o", str(tmp_path / name), "--model-actors", "1", *flags])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        rows = (tmp_path / name / "frames.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == list(range(case.frames))  # each frame once, in order
        return np.stack([read_exr(path) for path in sorted((tmp_path / name).glob("*.exr"))]), json.loads(
            captured.out)

    whole, _ = run("whole")
    segmented, summary = run("segmented", "--segments", "3")
    assert [segment["frames"] for segment in summary["segments"]] == [46, 44, 60], summary["segments"]
    # Segments 0 and 1 run from frame 0 (1's warm-up reaches it): a whole run's depth
    assert relative_errors(segmented[:90], whole[:90]).max() <= 1e-5
    # Segment 2 (from frame 90, window 4) runs windows 1-3 as its warm-up, tied to window 0 run again
    span = WindowSpan(1, 4)
    run_window = lambda window: model(window.unsqueeze(0))[0]  # noqa: E731
    with torch.inference_mode():
        part = WindowedDepth(run_window, size, span=span, first_frame=prepared_frames[0],
                             first_reference=first_window_reference(run_window(prepared_frames[:32]), size))
        expected = np.stack([p for frame in prepared_frames[span.decode_from:] for p in part.push(frame)]
                            + part.finish())[span.write_from - 32:]
    assert relative_errors(segmented[90:], expected).max() <= 1e-4
    seams = relative_errors(segmented[90:], whole[90:])
    assert 0 < seams.max() <= 0.1, seams.max()  # (3 warm-up windows: up to 4.1e-2 measured on random weights)
    # Streaming mode: segment 1 (from frame 75) pushes frame 0 first, then frames 25-149
    streamed, _ = run("streamed", "--vda-mode", "stream")
    streamed_segments, summary = run("streamed_segmented", "--vda-mode", "stream", "--segments", "2")
    assert [segment["frames"] for segment in summary["segments"]] == [75, 75], summary["segments"]
    assert relative_errors(streamed_segments[:75], streamed[:75]).max() <= 1e-5
    cache = StreamingDepth(model.encode, model.decode, size)
    with torch.inference_mode():
        cache.push(prepared_frames[0])
        expected = np.stack([cache.push(frame) for frame in prepared_frames[25:]])[50:]
    assert relative_errors(streamed_segments[75:], expected).max() <= 1e-4
    assert 0 < relative_errors(streamed_segments[75:], streamed[75:]).max() <= 0.5


def test_the_released_names_resolve_to_their_one_file_from_the_hub_cache(models, tmp_path, capsys):
    """`vda-small` / `vda-base` / `vda-large`: one .pth a repo, fetched alone (offline here: from a cache laid out as
    huggingface_hub lays it out), loaded as the video model; a non-commercial one says so."""
    import hashlib

    from huggingface_hub import constants

    import run_pipeline
    from model.hub import MODEL_NAMES, NON_COMMERCIAL, resolve_checkpoint
    from pipeline.settings import load_settings
    from tests.test_hub import write_hub_cache

    release = tmp_path / "video_depth_anything_vitb.pth"
    torch.save(official_layout(models[0]), release)  # (vits weights under the Base file's name: a test stand-in)
    commit = hashlib.sha1(b"vda release").hexdigest()
    session_cache, constants.HF_HUB_CACHE = constants.HF_HUB_CACHE, str(tmp_path / "hub")
    try:
        snapshot = write_hub_cache(MODEL_NAMES["vda-base"], [release], commit)
        resolved = resolve_checkpoint("vda-base")
        assert (resolved.path, resolved.repo_id, resolved.revision) == (
            str(snapshot / release.name), "depth-anything/Video-Depth-Anything-Base", commit)
        assert "vda-base" in NON_COMMERCIAL
        # (the stand-in's weights are vits's: a file whose name says another variant is refused, never run)
        with pytest.raises(CheckpointError, match=r"video_depth_anything_vitb\.pth: its name says vitb, but its "
                                                  r"weights are vits's"):
            run_pipeline.resolve_model(load_settings(None, {"model.name": "vda-base"}))  # (prints the note first)
        assert "note: vda-base (depth-anything/Video-Depth-Anything-Base) is for non-commercial use only" in \
            capsys.readouterr().err
        with pytest.raises(CheckpointError, match=r"Video-Depth-Anything-Small: video_depth_anything_vits\.pth is "
                                                  r"not in the Hugging Face cache"):
            resolve_checkpoint("vda-small")
        # The metric models: their own repos and file names, metres by the name
        metric_release = tmp_path / "metric_video_depth_anything_vits.pth"
        torch.save(official_layout(models[0]), metric_release)
        write_hub_cache(MODEL_NAMES["vda-metric-small"], [metric_release], commit)
        resolved = resolve_checkpoint("vda-metric-small")
        assert resolved.repo_id == "depth-anything/Metric-Video-Depth-Anything-Small"
        assert load_model(resolved.path).config.max_depth == 80.0
        assert "vda-metric-small" not in NON_COMMERCIAL and "vda-metric-large" in NON_COMMERCIAL
    finally:
        constants.HF_HUB_CACHE = session_cache


def test_a_video_model_s_default_smoother_is_none_and_a_named_one_runs():
    from pipeline.stages.render.smoothing import smoother_for

    assert smoother_for("default", {"temporal": True}) == "none"
    assert smoother_for("default", {"temporal": False}) == "default"
    assert smoother_for("aligned", {"temporal": True}) == "aligned"


def test_a_metric_video_checkpoint_gives_metres_laid_out_for_its_range(models, tmp_path):
    """The metric files have the relative files' keys: their name says metres (80 m the range their outputs are laid
    out for, or --max-depth); --max-depth on a released relative name is refused."""
    metric, relative = tmp_path / "metric_video_depth_anything_vits.pth", tmp_path / "video_depth_anything_vits.pth"
    for path in (metric, relative):
        torch.save(official_layout(models[0]), path)
    loaded = load_model(metric)
    assert loaded.config.temporal and loaded.config.metric and loaded.config.max_depth == 80.0
    assert load_model(metric, max_depth=120).config.max_depth == 120.0
    assert not load_model(relative).config.metric
    with pytest.raises(CheckpointError, match="video_depth_anything_vits.pth: a released relative-depth Video Depth "
                                              "Anything checkpoint"):
        load_model(relative, max_depth=80)
    with pytest.raises(CheckpointError, match="max depth must be from 0.1 to 1000 metres"):
        load_model(metric, max_depth=1e9)


def test_a_metric_video_model_s_file_job_writes_its_unfitted_windows_in_metres(ray_cluster, models, tmp_path,
                                                                               capsys):
    """A metric video model through the file pipeline: its windows joined without a scale and shift (the original's
    metric rule, checked against the original by the metric fixture above), EXR in metres, PNG16 at 2 mm steps."""
    import json

    import run_pipeline
    from pipeline.stages.sinks.image_sequence_writer import read_exr
    case = Case("metric e2e", "window", 30, 42, 70, seed=2)
    frames, folder, checkpoint = frames_and_checkpoint(tmp_path, case, models[2],
                                                       "metric_video_depth_anything_vits.pth")
    written = {}
    for depth_format in ("exr", "png16"):
        code = run_pipeline.main([f"{folder}/%06d.png", "--fps", "30", "--checkpoint", str(checkpoint),
                                  "--input-size", "42", "--depth-format", depth_format,
                                  "-o", str(tmp_path / depth_format), "--model-actors", "1"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads(captured.out)
        assert summary["frames_out"] == case.frames and summary["model"]["depth"] == "metric", summary
        description = json.loads((tmp_path / depth_format / "depth.json").read_text())
        assert description["unit"] == "metre" and description["max_depth"] == 80.0, description
        written[depth_format] = description, sorted((tmp_path / depth_format).glob(f"*.{depth_format[:3]}"))
    exr = np.stack([read_exr(path) for path in written["exr"][1]])
    expected = run_windows(models[2], prepared(frames), (case.height, case.width), metric=True)
    assert relative_errors(exr, expected).max() <= 1e-4
    relative_rule = run_windows(models[2], prepared(frames), (case.height, case.width))
    assert relative_errors(relative_rule[25:], expected[25:]).min() > 1e-2  # (the relative rule fits windows)
    png = np.stack([cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in written["png16"][1]])
    assert png.dtype == np.uint16 and np.abs(png / 500.0 - np.minimum(exr, 65535 / 500)).max() <= 1 / 1000 + 1e-4


def test_many_cameras_run_a_video_model_each_through_its_own_cache(models, tmp_path):
    """The many-camera job on Ray with a video model: three file cameras of two sizes played in real time, each
    camera's frames through its own cache on its model actor (one batch at a time), those of one size batched
    together, every frame written or counted as dropped, the recordings whole; SIGTERM ends the job with the
    summary (and the cameras' caches let go)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.clips import read_video
    from tests.live_peers import control_url

    project = Path(__file__).resolve().parents[1]
    checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save(official_layout(models[0]), checkpoint)
    played = {"door": clip(tmp_path, "door.mp4", width=56, height=42, frames=25, rate=Fraction(5)),
              "gate": clip(tmp_path, "gate.mp4", width=56, height=42, frames=25, rate=Fraction(5)),
              "yard": clip(tmp_path, "yard.mp4", width=84, height=42, frames=25, rate=Fraction(5))}
    file = tmp_path / "cameras.yaml"
    file.write_text(json.dumps({"cameras": [
        {"name": name, "input": str(source), "realtime": True, "record": str(tmp_path / f"{name}_depth.mp4")}
        for name, source in played.items()]}))
    settings = tmp_path / "settings.yaml"
    settings.write_text("live:\n  batch_wait_ms: 150\n")  # (frames of cameras playing at 5 fps can meet)
    process = subprocess.Popen([sys.executable, str(project / "run_pipeline.py"), "live", str(file), "--control",
                                "127.0.0.1:0", "--checkpoint", str(checkpoint), "--input-size", "42",
                                "--model-actors", "1", "--config", str(settings)], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = control_url(process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both files played to their end (5 s each in real time)
            with urllib.request.urlopen(f"{base}/cameras", timeout=5) as answer:
                cameras = json.loads(answer.read())["cameras"]
            if len(cameras) == 3 and all(camera.get("frames_in", 0) >= 25 for camera in cameras):
                break
            time.sleep(0.5)
        time.sleep(2)  # (what is in flight written)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=90)
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["model"]["temporal"] is True and summary["model"]["variant"] == "vits"
    for name in played:
        camera = summary["cameras"][name]
        assert camera["frames_in"] == 25 and camera["frames_out"] > 0 and camera["cache_restarts"] == 0, camera
        assert camera["frames_out"] + camera["dropped"] <= camera["frames_in"] + 1, camera
        assert read_video(tmp_path / f"{name}_depth.mp4")["count"] == camera["frames_out"]
    # door and gate (one size) shared the network's passes, each through its own cache
    assert summary["model_batches"]["mean_cameras"] > 1.2, summary["model_batches"]  # (1.44-1.47 seen; 1.5 at most)


def test_windows_of_every_stream_length_make_valid_batches_and_cover_every_frame():
    """Whatever a stream's length, each window is a batch whose timestamps increase (keyframes are earlier frames,
    and padding copies of the last one can open the next window: it failed for 50 frames), and the aligner gives
    each real frame's depth once."""
    from pipeline.stages.inference.temporal_windows import WindowAligner, WindowPlanner, window_batch

    for count in range(1, 100):
        planner, aligner, written = WindowPlanner(), WindowAligner((4, 6)), 0
        pixels = np.zeros((4, 6, 3), np.uint8)
        windows = [w for index in range(count) for w in planner.push((index, 1000 * index, pixels))]
        windows += planner.finish()
        for window in windows:
            batch = window_batch(window, Fraction(1, 1000), "rgb24")  # (raises on timestamps that do not increase)
            assert len(batch) == 32
            written += len(aligner.add(np.ones((32, 2, 3), np.float32)))
        written += len(aligner.finish())
        assert written >= count and len(windows) == max(1, -(-count // 22)), count


def test_window_segments_cover_every_frame_once_and_each_part_makes_exactly_its_frames_final():
    """plan_window_segments for many lengths, counts and warm-ups: the segments' frames tile the video once, each
    starting where a window makes depth final; each segment's part (SpanWindows over its decode range, window 0's
    depth given) pairs its frames with depth in order, and what it decodes is written, warm-up, lead-in or left to
    the next part, nothing else."""
    from pipeline.jobs.segments import plan_window_segments
    from pipeline.stages.inference.temporal_windows import INFER_LEN, SpanWindows, first_final, window_start

    reference = np.zeros((4, 6), np.float32)
    for frames in (33, 54, 77, 100, 141, 237, 500):
        index = [(3 * position, position % 50 == 0) for position in range(frames)]
        pts_position = {pts: position for position, (pts, _) in enumerate(index)}
        for count in (1, 2, 3, 7):
            for warmup in (1, 3, 7):
                segments = plan_window_segments(index, count, warmup)
                covered = []
                for segment in segments:
                    span = segment.windows
                    start = pts_position[segment.start]
                    end = frames if segment.end is None else pts_position[segment.end]
                    assert start == (first_final(span.written_from) if segment.index else 0)
                    assert span.first == (max(0, span.written_from - warmup) if segment.index else 0)
                    assert (segment.prefix_end is not None) == (span.first > 0)
                    covered += range(start, end)
                    decode_end = frames if segment.decode_end is None else pts_position[segment.decode_end]
                    decoded = range(pts_position[segment.warmup_from], decode_end)
                    part = SpanWindows(span, (4, 6), first_reference=reference, first_frame=-1)
                    windows = [w for position in decoded for w in part.push(position)] + part.finish()
                    paired = [frame for window in windows
                              for frame, _ in part.add(np.ones((INFER_LEN, 2, 3), np.float32))] + \
                        [frame for frame, _ in part.close()]
                    assert paired == list(range(window_start(span.first) if span.first else 0, end))
                    assert paired[-(end - start):] == list(range(start, end))
                    assert part.lead_in_frames + part.lookahead_frames + len(paired) == len(decoded)
                    assert all(len(window.frames) == INFER_LEN for window in windows)
                assert covered == list(range(frames)), (frames, count, warmup)


@pytest.mark.parametrize("mode", ["window", "stream"])
def test_a_model_actor_lost_mid_stream_leaves_an_undisturbed_run_s_depth_in_both_modes(ray_cluster, models, tmp_path,
                                                                                       mode):
    """The model actor's process killed mid-run (Ray restarts it). Window mode: its windows are sent again as they
    were (the alignment's state is the stream actor's), and the stream goes on. Streaming mode: the stream's cache
    went with the process, and Ray would resend the lost calls out of order (seen: 62, 56, 60, 58, 64), so the
    stream fails and runs again whole, its summary says so (retried_streams). Either way the depth is an undisturbed
    run's, every frame written once, at its time."""
    import ray

    from pipeline.cluster.graph import DepthGraph
    from pipeline.jobs.file import process_video
    from pipeline.settings import load_settings
    from pipeline.stages.sinks.image_sequence_writer import read_exr

    case = Case("lost actor", mode, 120, 28, 42, seed=4)
    frames, folder, checkpoint = frames_and_checkpoint(tmp_path, case, models[0], "video_depth_anything_vits.pth")
    graph = DepthGraph(load_settings(None, {
        "model.checkpoint": str(checkpoint), "model.input_size": 28, "model.vda_mode": mode, "input.fps": 10,
        "batching.batch_size": 2, "output.depth_format": "exr", "ray.model_actors": 1}))
    written = []

    def kill_once(count: int) -> None:
        written.append(count)
        if sum(written) >= 30 and not killed:
            killed.append(True)
            ray.kill(graph.model_actors[0], no_restart=False)

    killed: list[bool] = []
    try:
        summary = process_video(graph, f"{folder}/%06d.png", str(tmp_path / "depth"), on_progress=kill_once)
    finally:
        graph.shutdown()
    assert killed and summary["frames_out"] == case.frames, summary
    rows = (tmp_path / "depth" / "frames.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(case.frames))
    depth = np.stack([read_exr(path) for path in sorted((tmp_path / "depth").glob("*.exr"))])
    size = (case.height, case.width)
    undisturbed = (run_windows if mode == "window" else run_stream)(models[0], prepared(frames), size)
    assert relative_errors(depth, undisturbed).max() <= 1e-4 and summary["rebuilt_caches_at_s"] == []
    # Window mode: the lost windows ran again, the stream went on; streaming mode: the stream ran again whole
    assert summary["retried_streams"] == (0 if mode == "window" else 1), summary
