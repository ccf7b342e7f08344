"""Infer, sink, encode, colorize, smoothing and settings as plain classes, without Ray."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from model import DepthPredictor, PredictorOptions, resize_depth
from model.random_weights import random_model
from pipeline.errors import PipelineError
from pipeline.settings import load_settings
from pipeline.stages.frames import DepthBatch, FrameBatch
from pipeline.stages.inference.depth_worker import DepthWorker
from pipeline.stages.pixels import i420_planes, i420_to_rgb
from pipeline.stages.render.colorize import DepthColorizer, DepthQuantizer, RangeTracker, colormap_id
from pipeline.stages.render.smoothing import make_smoother
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions
from pipeline.stages.sinks.video_writer import DepthVideoWriter, blank_i420, check_output_path, read_depth_scale
from pipeline.stages.sources.video_decoder import VideoDecoder
from tests.clips import clip, gray16_frames, read_video

SMALL = PredictorOptions(input_size=70)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return clip(tmp_path_factory.mktemp("stage_clips"), "sample.mp4", width=96, height=64, frames=10, audio=True)


@pytest.fixture(scope="module")
def worker():
    return DepthWorker(DepthPredictor(random_model("vits", seed=0), SMALL))


@pytest.mark.parametrize("depth_dtype, tolerance", [("float32", 1e-5), ("float16", 1e-3)])
def test_worker_gives_depth_at_model_resolution(worker, sample, depth_dtype, tolerance):
    batch = next(VideoDecoder(str(sample)).batches(4))
    depth_batch = worker.infer(batch, depth_dtype)
    # 64 x 96 frames: the short side becomes 70, the long side 105 = 7.5 patches, rounded half-to-even to 8: 112
    assert depth_batch.depth.shape == (4, 70, 112) and depth_batch.depth.dtype == np.dtype(depth_dtype)
    assert depth_batch.pts == batch.pts and depth_batch.first_index == 0
    assert batch.layout == "yuv420p"  # converted to RGB by the worker, on the model's device
    rgb = i420_to_rgb(torch.from_numpy(batch.pixels))
    direct = worker.predictor(rgb, at_frame_size=False).numpy()
    np.testing.assert_allclose(depth_batch.depth, direct, rtol=tolerance, atol=tolerance * direct.max())


def test_sink_resizes_model_resolution_depth_to_the_frame_as_the_original(worker, sample, tmp_path):
    """Depth at model resolution in, frame-size 16-bit depth out: bilinear, half-pixel centres, like the model's
    own `resize_depth` (the original's post-processing)."""
    decoder = VideoDecoder(str(sample))
    batch = next(decoder.batches(4))
    output = tmp_path / "resized.mkv"
    sink = DepthSink(str(output), decoder.info, RenderOptions(depth_format="gray16"), make_smoother("none"))
    sink.write(worker.infer(batch, "float32"), batch)
    stats = sink.close()
    expected = worker.predictor(i420_to_rgb(torch.from_numpy(batch.pixels))).numpy()  # resized on the model's side
    written = gray16_frames(output) / read_depth_scale(output)
    assert written.shape == expected.shape == (4, 64, 96)
    np.testing.assert_allclose(written, expected, atol=0.51 / stats["depth_scale"] + 1e-4 * expected.max())


def test_sink_restores_order_and_writes_every_frame(worker, sample, tmp_path):
    decoder = VideoDecoder(str(sample))
    batches = list(decoder.batches(3))
    output = tmp_path / "ordered.mkv"
    sink = DepthSink(str(output), decoder.info, RenderOptions(depth_format="gray16"), make_smoother("none"))
    results = [worker.infer(b, "float32") for b in batches]
    for index in (2, 0, 3, 1):  # arrive out of order
        sink.write(results[index], batches[index])
    stats = sink.close()
    assert stats["frames_out"] == 10
    written = gray16_frames(output) / read_depth_scale(output)
    expected = resize_depth(torch.from_numpy(np.concatenate([r.depth for r in results])), (64, 96)).numpy()
    np.testing.assert_allclose(written, expected, atol=0.51 / stats["depth_scale"] + 1e-4 * expected.max())
    # Matroska counts in milliseconds
    assert read_video(output)["seconds"] == pytest.approx(read_video(sample)["seconds"], abs=5e-4)


def test_sink_refuses_to_close_with_a_gap(worker, sample, tmp_path):
    decoder = VideoDecoder(str(sample))
    batches = list(decoder.batches(5))
    sink = DepthSink(str(tmp_path / "gap.mp4"), decoder.info, RenderOptions(), make_smoother("none"))
    sink.write(worker.infer(batches[1]), batches[1])
    with pytest.raises(RuntimeError, match="never arrived"):
        sink.close()
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_two_writers_on_one_output_do_not_mix(sample, tmp_path):
    """Two runs on the same output, interleaved: each has its own temporary file; the last to finish wins whole."""
    info = VideoDecoder(str(sample)).info
    output = tmp_path / "shared.mkv"
    first, second = (DepthVideoWriter(output, "gray16", info, (64, 96)) for _ in range(2))
    for index in range(6):
        first.write(np.full((64, 96), 1000, np.uint16), index * 1001)
        second.write(np.full((64, 96), 2000, np.uint16), index * 1001)
    first.close()
    assert np.all(gray16_frames(output) == 1000) and len(gray16_frames(output)) == 6
    second.write(np.full((64, 96), 2000, np.uint16), 6 * 1001)
    second.close()
    assert np.all(gray16_frames(output) == 2000) and len(gray16_frames(output)) == 7
    assert [p.name for p in tmp_path.iterdir()] == [output.name]


def test_writer_is_atomic(sample, tmp_path):
    info = VideoDecoder(str(sample)).info
    output = tmp_path / "atomic.mp4"
    writer = DepthVideoWriter(output, "gray", info, (64, 96))
    writer.write(np.zeros((64, 96), np.uint8), 0)
    assert not output.exists(), "nothing under the final name until complete"
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_and_audio(worker, sample, tmp_path):
    decoder = VideoDecoder(str(sample))
    output = tmp_path / "sbs.mp4"
    sink = DepthSink(str(output), decoder.info, RenderOptions(depth_format="side-by-side"), make_smoother("ema"))
    for batch in decoder.batches(4):
        sink.write(worker.infer(batch), batch)
    sink.close()
    result, source = read_video(output), read_video(sample)
    assert result["size"] == (64, 192) and result["count"] == 10
    assert result["has_audio"] and result["audio_seconds"] == pytest.approx(source["audio_seconds"], abs=0.05)


@pytest.mark.parametrize("colormap", ["inferno", "gray"])
def test_side_by_side_straight_from_i420_matches_the_rgb_path(worker, sample, tmp_path, colormap):
    """From I420 frames the side-by-side view is assembled in I420 (the frame's own planes, the colour looked up into
    the right half); decoded, it must show what the RGB path shows, to within a level or two on average."""
    i420 = list(VideoDecoder(str(sample)).batches(4))
    rgb = list(VideoDecoder(str(sample), layout="rgb24").batches(4))
    assert i420[0].layout == "yuv420p" and rgb[0].layout == "rgb24"
    info = VideoDecoder(str(sample)).info
    decoded = {}
    for name, batches in (("i420", i420), ("rgb", rgb)):
        output = tmp_path / f"{name}.mp4"
        options = RenderOptions(depth_format="side-by-side", colormap=colormap, crf=0, copy_audio=False)
        sink = DepthSink(str(output), info, options, make_smoother("none"))
        for frames, same_depth in zip(batches, i420):
            sink.write(worker.infer(same_depth), frames)
        sink.close()
        decoded[name] = np.stack([f.to_ndarray(format="rgb24") for f in read_video(output)["frames"]]).astype(int)
    assert decoded["i420"].shape == decoded["rgb"].shape == (10, 64, 192, 3)
    assert np.abs(decoded["i420"] - decoded["rgb"]).mean() < 2


def test_output_path_checks(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.mp4", "color")
    with pytest.raises(PipelineError, match="use a .mkv"):
        check_output_path(tmp_path / "out.mp4", "gray16")
    with pytest.raises(PipelineError, match="unknown depth format"):
        check_output_path(tmp_path / "out.mp4", "sepia")


def test_range_tracker_moves_smoothly_and_ignores_outliers():
    tracker = RangeTracker(momentum=0.9)
    depth = np.linspace(0, 10, 10_000, dtype=np.float32).reshape(100, 100)
    first = tracker.update(depth)
    spiky = depth.copy()
    spiky[0, :5] = 1e6  # a few wild pixels
    second = tracker.update(spiky)
    assert second == pytest.approx(first, abs=1e-3)
    third = tracker.update(depth * 2)  # the whole scene changes: the range follows, a tenth per frame
    assert first[1] < third[1] < 2 * first[1]
    assert third[1] == pytest.approx(0.9 * second[1] + 0.1 * 2 * first[1], rel=1e-3)


def test_gray_is_white_where_near():
    colorizer = DepthColorizer("gray")
    depth = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (20, 1))  # larger inverse depth = nearer
    levels = colorizer(depth)
    assert levels.dtype == np.uint8 and levels.ndim == 2
    assert levels[:, -1].min() == 255 and levels[:, 0].max() == 0


def test_colormap_names():
    assert colormap_id("inferno") is not None and colormap_id("gray") is None
    with pytest.raises(ValueError, match="unknown colormap 'infernal'"):
        colormap_id("infernal")


def test_quantizer_counts_saturation():
    quantizer = DepthQuantizer()
    quantizer(np.full((4, 4), 2.0, np.float32))
    assert quantizer.scale == pytest.approx(65535 / 8)
    out = quantizer(np.full((4, 4), 100.0, np.float32))
    assert out.max() == 65535 and quantizer.saturated_pixels == 16


def test_ema_smoother_and_names():
    ema = make_smoother("ema", alpha=0.25)
    assert np.array_equal(ema.update(np.zeros((2, 2), np.float32)), np.zeros((2, 2)))
    assert ema.update(np.ones((2, 2), np.float32))[0, 0] == pytest.approx(0.25)
    ema.reset()
    assert ema.update(np.ones((2, 2), np.float32))[0, 0] == 1.0
    with pytest.raises(ValueError, match="unknown smoother"):
        make_smoother("kalman")
    with pytest.raises(ValueError, match="ema"):
        make_smoother("ema", beta=2)


def test_settings_presets_overrides_and_unknown_keys(tmp_path):
    for preset in ("default", "cpu", "gpu", "high-quality"):  # by name, wherever the command runs
        assert load_settings(preset).model.input_size % 14 == 0
    assert load_settings("configs/cpu.yaml") == load_settings("cpu.yaml") == load_settings("cpu")  # (older spelling)
    with pytest.raises(PipelineError, match=r"nothing.yaml: config file not found \(a YAML file, or a preset: cpu, "
                                            r"default, gpu, high-quality\)"):
        load_settings("nothing.yaml")
    settings = load_settings("cpu", {"batching.batch_size": 7, "model.input_size": None})
    assert settings.batching.batch_size == 7 and settings.model.input_size == 364
    assert settings.batching.network_batch == 1  # the CPU preset: one frame a pass through the network
    with pytest.raises(PipelineError, match="batching.network_batch must be >= 0, got -1"):
        load_settings("default", {"batching.network_batch": -1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  input_sise: 518\n")
    with pytest.raises(PipelineError, match=r"bad.yaml \[model\]: unknown setting 'input_sise'"):
        load_settings(bad)
    bad.write_text("modle:\n  input_size: 518\n")
    with pytest.raises(PipelineError, match="unknown section 'modle'"):
        load_settings(bad)


def test_yuv_colour_path_matches_the_rgb_colormap(sample, tmp_path):
    """Colour output is looked up straight in YUV; decoded, it must match the RGB colormap sent through the encoder's
    own conversion (both are 4:2:0, so compare like with like)."""
    ys, xs = np.mgrid[0:64, 0:96].astype(np.float32)
    depth = (np.sin(xs / 25) + np.cos(ys / 20) + 2).astype(np.float32)
    info = VideoDecoder(str(sample)).info
    yuv = DepthColorizer("turbo").yuv420(depth)
    assert yuv.shape == (96, 96) and yuv.dtype == np.uint8
    decoded = {}
    for name, image in (("yuv", yuv), ("rgb", DepthColorizer("turbo")(depth))):
        writer = DepthVideoWriter(tmp_path / f"{name}.mp4", "color", info, (64, 96), crf=0)
        writer.write(image, 0)
        writer.close()
        decoded[name] = read_video(tmp_path / f"{name}.mp4")["frames"][0].to_ndarray(format="rgb24").astype(int)
    assert np.abs(decoded["yuv"] - decoded["rgb"]).mean() < 2


def test_colour_written_into_an_encoder_frame_with_padded_rows(tmp_path, sample):
    """The sink renders straight into the encoder's frame, whose rows are wider than the picture (1000 px: rows of
    1008 bytes): every plane must land where the packed I420 array has it, and the file must decode to it."""
    ys, xs = np.mgrid[0:300, 0:530].astype(np.float32)
    depth = (np.sin(xs / 25) + np.cos(ys / 20) + 2).astype(np.float32)
    frame_hw = (562, 1000)
    packed = DepthColorizer("inferno").yuv420(depth, frame_hw)
    frame, planes = blank_i420(*frame_hw)
    assert frame.planes[0].line_size > frame_hw[1], "the test needs padded rows"
    DepthColorizer("inferno").yuv420_into(depth, planes)
    for ours, expected in zip(planes, i420_planes(packed, frame_hw[0])):
        np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(frame.to_ndarray(format="yuv420p"), packed)
    info = VideoDecoder(str(sample)).info
    writer = DepthVideoWriter(tmp_path / "frame.mp4", "color", info, frame_hw, crf=0)
    writer.write(frame, 0)
    writer.close()
    decoded = read_video(tmp_path / "frame.mp4")["frames"][0].to_ndarray(format="yuv420p").astype(int)
    assert np.abs(decoded - packed).max() <= 1


def test_colour_looked_up_at_model_resolution_matches_colouring_the_resized_depth():
    """The sink colours depth at the model's resolution and resizes the picture: the same as resizing the depth
    first and colouring that, to within a level or two (a rounding, and the colormap's slope)."""
    ys, xs = np.mgrid[0:70, 0:112].astype(np.float32)
    depth = (np.sin(xs / 25) + np.cos(ys / 20) + 2).astype(np.float32)
    frame_hw = (96, 160)
    resized_first = cv2.resize(depth, frame_hw[::-1], interpolation=cv2.INTER_LINEAR)
    for render in ("yuv420", "__call__"):
        at_model = getattr(DepthColorizer("inferno"), render)(depth, frame_hw).astype(int)
        at_frame = getattr(DepthColorizer("inferno"), render)(resized_first).astype(int)
        assert at_model.shape == at_frame.shape
        assert np.abs(at_model - at_frame).mean() < 1.0 and np.percentile(np.abs(at_model - at_frame), 99) <= 4


def test_compiled_model_sees_one_batch_size_only(sample, monkeypatch):
    """torch.compile specialises on shapes: the short last batch is padded to the batch size, its extra depth dropped."""
    seen_batch_sizes = []
    net = random_model("vits", seed=0)
    original_forward = net.forward

    def recording_forward(image_bchw):
        seen_batch_sizes.append(image_bchw.shape[0])
        return original_forward(image_bchw)

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: recording_forward)  # the real one takes 30 s
    worker = DepthWorker(DepthPredictor(net, PredictorOptions(input_size=70, compile=True)), batch_size=4)
    batches = list(VideoDecoder(str(sample)).batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    results = [worker.infer(b, "float32") for b in batches]
    assert seen_batch_sizes == [4, 4, 4]
    assert [len(r.depth) for r in results] == [4, 4, 2] and results[2].pts == batches[2].pts
    alone = DepthWorker(DepthPredictor(net, SMALL)).infer(batches[2], "float32")
    np.testing.assert_allclose(results[2].depth, alone.depth, rtol=1e-4, atol=1e-5)


def test_batch_passes_through_the_network_in_parts_of_network_batch(sample, monkeypatch):
    """Batches travel 4 frames at a time, but a CPU runs the network on one frame at a time: the same depth, frame
    for frame, as one pass of the whole batch."""
    net = random_model("vits", seed=0)
    whole = DepthWorker(DepthPredictor(net, SMALL)).infer(next(VideoDecoder(str(sample)).batches(4)), "float32")
    seen_batch_sizes = []
    original_forward = net.forward
    monkeypatch.setattr(net, "forward", lambda image: seen_batch_sizes.append(len(image)) or original_forward(image))
    worker = DepthWorker(DepthPredictor(net, SMALL), network_batch=3)
    batch = next(VideoDecoder(str(sample)).batches(4))
    parts = worker.infer(batch, "float32")
    assert seen_batch_sizes == [3, 1]
    assert parts.pts == whole.pts and parts.depth.shape == whole.depth.shape
    np.testing.assert_allclose(parts.depth, whole.depth, rtol=1e-4, atol=1e-5)


def x264_settings_of(path) -> str:
    """The settings x264 wrote into the stream (its SEI text: '... rc=cqp ... qp=16 ...')."""
    import av

    with av.open(str(path)) as container:
        first = bytes(next(container.demux(video=0)))
    return first[first.index(b"x264 - core"):].split(b"\x00")[0].decode("ascii", "replace")


def test_depth_is_encoded_at_a_constant_quantizer_unless_a_crf_is_set(sample, tmp_path):
    """The default rate control is x264's cheapest (constant QP 16); a crf, when set, is used instead (the
    high-quality preset's); both are checked against the ranges x264 takes."""
    info = VideoDecoder(str(sample)).info
    depth = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (64, 1))
    encoded = {}
    for name in ("default", "high-quality"):
        render = load_settings(name, {"output.preset": "ultrafast"}).output
        sink = DepthSink(str(tmp_path / f"{name}.mp4"), info, render, make_smoother("none"))
        frames = next(VideoDecoder(str(sample)).batches(2))
        sink.write(DepthBatch(0, frames.pts, frames.time_base, np.stack([depth, depth])), frames)
        sink.close()
        encoded[name] = x264_settings_of(tmp_path / f"{name}.mp4")
    assert " rc=cqp " in encoded["default"] and " qp=16 " in encoded["default"]
    assert " rc=crf " in encoded["high-quality"] and " crf=14.0 " in encoded["high-quality"]
    for key, value in (("output.qp", 52), ("output.crf", -1)):
        with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
            load_settings(None, {key: value})


def test_background_writer_keeps_order_and_passes_errors_on(tmp_path):
    from pipeline.stages.sinks.background_writer import BackgroundWriter

    class Recording:
        def __init__(self, fail_at=None):
            self.pts, self.fail_at, self.closed, self.aborted = [], fail_at, False, False

        def write(self, image, pts):
            if pts == self.fail_at:
                raise OSError("disk full")
            self.pts.append(pts)

        @property
        def frames_written(self):
            return len(self.pts)

        def close(self):
            self.closed = True
            return "done"

        def abort(self):
            self.aborted = True

    inner = Recording()
    writer = BackgroundWriter(inner)
    for pts in range(50):
        writer.write(np.zeros((2, 2), np.uint8), pts)
    assert writer.close() == "done" and inner.pts == list(range(50)) and writer.frames_written == 50
    failing = Recording(fail_at=3)
    writer = BackgroundWriter(failing)
    with pytest.raises(OSError, match="disk full"):
        for pts in range(50):
            writer.write(np.zeros((2, 2), np.uint8), pts)
        writer.close()
    writer.abort()
    assert failing.aborted and not failing.closed and failing.pts == [0, 1, 2]


def test_encoder_thread_writes_the_same_file(tmp_path, worker):
    """The sink with its encoder on a thread of its own writes what it writes in one thread, frame for frame."""
    sample = clip(tmp_path, "threaded.mp4", width=96, height=64, frames=20)
    decoder = VideoDecoder(str(sample))
    batches = list(decoder.batches(4))
    depth = [worker.infer(batch) for batch in batches]
    outputs = {}
    for encoder_thread in (False, True):
        outputs[encoder_thread] = tmp_path / f"out_{encoder_thread}.mp4"
        sink = DepthSink(str(outputs[encoder_thread]), decoder.info, RenderOptions(encoder_thread=encoder_thread),
                         make_smoother("default"))
        for depth_batch, frame_batch in zip(depth, batches):
            sink.write(depth_batch, frame_batch)
        stats = sink.close()
        assert stats["frames_out"] == 20 and stats["stage_cpu_s"]["encode"] > 0
    plain, threaded = (read_video(outputs[flag]) for flag in (False, True))
    assert plain["pts"] == threaded["pts"]
    assert all(np.array_equal(a.to_ndarray(), b.to_ndarray()) for a, b in zip(plain["frames"], threaded["frames"]))


def test_batches_of_different_sizes_go_through_the_network_together_as_each_would_alone(worker):
    """Live cameras of one aspect ratio (here 96 x 64 and 192 x 128, one I420 and one RGB, and a second 96 x 64 one)
    share the network's input size: one pass gives each batch the depth it gets alone. Another aspect ratio cannot
    join them."""
    from fractions import Fraction

    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.pixels import YUV420P

    rng = np.random.default_rng(5)

    def batch(frames, height, width, layout="rgb24", first_index=0):
        shape = (frames, height * 3 // 2, width) if layout == YUV420P else (frames, height, width, 3)
        return FrameBatch(first_index, list(range(first_index, first_index + frames)), Fraction(1, 15),
                          rng.integers(0, 256, shape, dtype=np.uint8), layout)

    batches = [batch(2, 64, 96), batch(1, 128, 192, YUV420P, first_index=7), batch(3, 64, 96, first_index=4)]
    assert len({worker.input_size_for(b) for b in batches}) == 1
    together = worker.infer_together(batches, "float32")
    for alone_batch, result in zip(batches, together):
        alone = worker.infer(alone_batch, "float32")
        assert result.first_index == alone.first_index and result.pts == alone.pts
        np.testing.assert_allclose(result.depth, alone.depth, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="share its input size"):
        worker.infer_together([batch(1, 64, 96), batch(1, 64, 64)], "float32")


@pytest.mark.parametrize("make, says", [
    (lambda: FrameBatch(0, [0, 1], Fraction(1, 25), np.zeros((3, 4, 6, 3), np.uint8)), "(3, 4, 6, 3)"),
    (lambda: FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 4, 6), np.uint8)), "B x H x W x 3"),
    (lambda: FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 4, 6, 3), np.float32)), "uint8"),
    (lambda: FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 7, 6), np.uint8), "yuv420p"), "(1, 7, 6)"),
    (lambda: FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 6, 5), np.uint8), "yuv420p"), "W even"),
    (lambda: FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 4, 6, 3), np.uint8), "bgr"), "'bgr'"),
    (lambda: FrameBatch(0, [5, 5], Fraction(1, 25), np.zeros((2, 4, 6, 3), np.uint8)), "[5, 5]"),
    (lambda: FrameBatch(-1, [0], Fraction(1, 25), np.zeros((1, 4, 6, 3), np.uint8)), "negative"),
    (lambda: FrameBatch(0, [], Fraction(1, 25), np.zeros((0, 4, 6, 3), np.uint8)), "at least one"),
    (lambda: DepthBatch(0, [0, 1], Fraction(1, 25), np.zeros((1, 4, 6), np.float32)), "(1, 4, 6)"),
    (lambda: DepthBatch(0, [0], Fraction(1, 25), np.zeros((1, 4, 6), np.float64)), "float64"),
    (lambda: DepthBatch(0, [0], Fraction(1, 25), np.zeros((4, 6), np.float32)), "B x h x w"),
    (lambda: DepthBatch(0, [0], Fraction(1, 25), np.zeros((1, 4, 6), np.float32), max_depth=0.0), "max_depth"),
    (lambda: DepthBatch(0, [3, 2], Fraction(1, 25), np.zeros((2, 4, 6), np.float16)), "[3, 2]"),
])
def test_batches_are_checked_where_made_and_say_their_shapes(make, says):
    with pytest.raises(ValueError, match="Batch from frame") as raised:
        make()
    assert says in str(raised.value)


def test_well_formed_batches_pass_their_checks():
    assert len(FrameBatch(3, [0, 1], Fraction(1, 25), np.zeros((2, 6, 4), np.uint8), "yuv420p")) == 2
    assert len(DepthBatch(3, [0, 9], Fraction(1, 25), np.zeros((2, 4, 6), np.float16), max_depth=20.0)) == 2
