"""Frame folders without Ray: EXR / 16-bit PNG written and read back, the frame table and description, the folder
whole or not at all; image sequences read as streams (order, timestamps, gaps, bad images); metric depth through the
sink (colour, millimetres) and the smoother (no scale and shift fit)."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.jobs.outputs import depth_output_name
from pipeline.stages.frames import DepthBatch, FrameBatch, VideoInfo
from pipeline.stages.render.depth_units import DepthUnits
from pipeline.stages.render.smoothing import make_smoother
from pipeline.stages.sinks.depth_sink import DepthSink, RenderOptions
from pipeline.stages.sinks.image_sequence_writer import DepthSequenceWriter, read_exr
from pipeline.stages.sinks.output_files import remove_partial
from pipeline.stages.sinks.video_writer import check_output_path
from pipeline.stages.sources.image_sequence import ImageSequenceDecoder, frame_rate, is_image_sequence, list_images
from pipeline.stages.sources.video_decoder import open_source

INFO = VideoInfo("clip.mp4", 40, 30, Fraction(30000, 1001), Fraction(1, 30000), 0, 4, False, "h264")


def write_images(folder: Path, names: list[str], size_hw=(30, 40), seed=0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        rgb = rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append(rgb)
    return images


def read_table(folder: Path) -> list[tuple[int, int, float]]:
    lines = (folder / "frames.csv").read_text().splitlines()
    assert lines[0] == "frame,pts,time_s"
    return [(int(a), int(b), float(c)) for a, b, c in (line.split(",") for line in lines[1:])]


@pytest.mark.parametrize("depth_format", ["exr", "png16"])
def test_frames_read_back_with_their_table_and_description(tmp_path, depth_format):
    output = tmp_path / "out_depth"
    writer = DepthSequenceWriter(output, depth_format, INFO, {"values": "test", "scale": 1000.0}, "tag")
    rng = np.random.default_rng(1)
    frames = [rng.random((30, 40), dtype=np.float32) * 7 for _ in range(3)]
    pts = [0, 1001, 3003]  # a variable step
    for depth, stamp in zip(frames, pts):
        writer.write(depth if depth_format == "exr" else np.rint(depth * 1000).astype(np.uint16), stamp)
    assert not output.exists(), "nothing under the final name before close"
    assert writer.close() == output
    names = sorted(p.name for p in output.iterdir())
    suffix = ".exr" if depth_format == "exr" else ".png"
    assert names == sorted([f"00000{i}{suffix}" for i in range(3)] + ["depth.json", "frames.csv"])
    for index, depth in enumerate(frames):
        if depth_format == "exr":
            assert np.array_equal(read_exr(output / f"{index:06d}.exr"), depth)  # float32, lossless
        else:
            read = cv2.imread(str(output / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert read.dtype == np.uint16 and np.array_equal(read, np.rint(depth * 1000).astype(np.uint16))
    table = read_table(output)
    assert [(i, p) for i, p, _ in table] == list(enumerate(pts))
    assert [t for *_, t in table] == pytest.approx([float(Fraction(p, 30000)) for p in pts], abs=1e-9)  # to the ns
    description = json.loads((output / "depth.json").read_text())
    assert description["frames"] == 3 and description["time_base"] == "1/30000" and description["values"] == "test"
    assert description["source"] == "clip.mp4" and description["format"] == depth_format


def test_a_folder_appears_whole_or_not_at_all_and_only_replaces_our_own(tmp_path):
    output = tmp_path / "out_depth"
    aborted = DepthSequenceWriter(output, "exr", INFO, {})
    aborted.write(np.ones((30, 40), np.float32), 0)
    aborted.abort()
    assert list(tmp_path.iterdir()) == []
    first = DepthSequenceWriter(output, "exr", INFO, {})
    first.write(np.ones((30, 40), np.float32), 0)
    first.close()
    second = DepthSequenceWriter(output, "exr", INFO, {})  # a second run replaces the first run's folder
    for stamp in (0, 1001):
        second.write(np.full((30, 40), 2, np.float32), stamp)
    second.close()
    assert len(list(output.glob("*.exr"))) == 2 and read_exr(output / "000000.exr").max() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out_depth"]
    # Our folder with a user's file added: refused whole (a rerun deleted notes.txt and subfolders)
    for added in ("notes.txt", "renders"):
        (output / "notes.txt").write_text("mine") if added == "notes.txt" else (output / added).mkdir()
        with pytest.raises(PipelineError, match=f"out_depth: a depth folder from this pipeline, but it also holds "
                                                f"{added}, which the pipeline did not write"):
            check_output_path(output, "exr")
        third = DepthSequenceWriter(output, "exr", INFO, {})
        third.write(np.ones((30, 40), np.float32), 0)
        with pytest.raises(PipelineError, match=f"also holds {added}"):
            third.close()
        assert (output / added).exists() and read_exr(output / "000000.exr").max() == 2, "the folder is untouched"
        assert [p.name for p in tmp_path.iterdir()] == ["out_depth"], "the refused run left nothing"
        (output / "notes.txt").unlink() if added == "notes.txt" else (output / added).rmdir()
    # An output that is a symlink to one of our folders: the link is replaced, nothing left beside it
    linked = tmp_path / "linked_depth"
    linked.symlink_to(output)
    again = DepthSequenceWriter(linked, "exr", INFO, {})
    again.write(np.ones((30, 40), np.float32), 0)
    again.close()
    assert linked.is_dir() and not linked.is_symlink() and output.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked_depth", "out_depth"], "no .replaced link left"
    remove_partial(linked)
    # A user's folder that happens to have the name is never replaced, nor written into
    mine = tmp_path / "holiday"
    write_images(mine, ["a.png"])
    with pytest.raises(PipelineError, match="holiday: folder exists and is not a depth folder from this pipeline"):
        check_output_path(mine, "exr")
    for name, depth_format in (("out.mp4", "exr"), ("out.png", "png16"), ("out.EXR", "exr")):
        with pytest.raises(PipelineError, match=f"{depth_format} writes a folder of frames .not one file.; give a "
                                                f"folder name"):
            check_output_path(tmp_path / name, depth_format)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PipelineError, match="exists and is not a folder"):
        check_output_path(tmp_path / "file", "png16")


def test_image_folders_globs_and_patterns_in_order_with_timestamps_from_the_rate(tmp_path):
    folder = tmp_path / "shot"
    images = write_images(folder, ["f1.png", "f2.png", "f10.png", "f3.png"])  # natural order: 1, 2, 3, 10
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(PipelineError, match=r"shot/f4.png: missing from the image sequence \(after .*shot/f3.png\)"):
        list_images(str(folder))
    (folder / "f10.png").rename(folder / "f4.png")
    assert [p.name for p in list_images(str(folder))] == ["f1.png", "f2.png", "f3.png", "f4.png"]
    decoder = open_source(str(folder), "30000/1001")
    assert isinstance(decoder, ImageSequenceDecoder)
    assert (decoder.info.width, decoder.info.height, decoder.info.rate) == (40, 30, Fraction(30000, 1001))
    assert decoder.info.time_base == Fraction(1001, 30000)
    batches = list(decoder.batches(3))
    assert [b.pts for b in batches] == [[0, 1, 2], [3]] and [b.first_index for b in batches] == [0, 3]
    assert np.array_equal(batches[0].pixels[1], images[1]) and np.array_equal(batches[1].pixels[0], images[2])
    assert [p.name for p in list_images(f"{folder}/f[12].png")] == ["f1.png", "f2.png"]
    assert open_source(f"{folder}/f*.png").info.rate == 30  # the default rate
    # A printf pattern starts at its lowest number; a segment's range is frame numbers
    numbered = tmp_path / "numbered"
    write_images(numbered, [f"{n:04d}.png" for n in range(5, 9)])
    segment = ImageSequenceDecoder(f"{numbered}/%04d.png", 25, pts_range=(1, 3))
    assert [pts for pts, _ in segment.frames()] == [1, 2]
    (numbered / "0006.png").unlink()
    with pytest.raises(PipelineError, match=r"numbered/0006.png: missing from the sequence .*%04d.png \(frames 5 to 8"):
        list_images(f"{numbered}/%04d.png")
    odd_name = tmp_path / "take%d.mp4"
    odd_name.write_bytes(b"a video, as far as its name goes")
    assert not is_image_sequence(str(odd_name)) and is_image_sequence(f"{numbered}/%04d.png")
    assert depth_output_name(str(folder), "color") == tmp_path / "shot_depth.mp4"
    assert depth_output_name(f"{numbered}/%04d.png", "exr") == tmp_path / "numbered_depth"


def test_one_rule_for_a_numbered_sequence_and_a_file_that_does_not_fit_is_named(tmp_path):
    """Mixed extensions or case bypassed the gap check, and a stray thumbnail.png became a frame."""
    cases = [
        (["f000.png", "f001.jpg", "f003.png"], "f001.jpg: not part of the numbered image sequence fN.png (2 files)"),
        (["0001.png", "0002.png", "0003.PNG", "0005.png"], "0004.png: missing from the image sequence"),
        (["frame_0001.png", "frame_0002.png", "frame_0003.png", "thumbnail.png"],
         "thumbnail.png: not part of the numbered image sequence frame_N.png (3 files)"),
        (["1.png", "01.png", "2.png"], "frame 1 twice in the image sequence"),
    ]
    for index, (names, says) in enumerate(cases):
        folder = tmp_path / f"case{index}"
        write_images(folder, names)
        with pytest.raises(PipelineError, match=re.escape(says)) as error:
            list_images(str(folder))
        assert "\n" not in str(error.value)
    mixed_case = tmp_path / "mixed_case"
    write_images(mixed_case, ["0001.png", "0002.PNG", "0003.png"])
    assert [p.name for p in list_images(str(mixed_case))] == ["0001.png", "0002.PNG", "0003.png"]
    unnumbered = tmp_path / "unnumbered"
    write_images(unnumbered, ["dawn.png", "noon.png", "dusk.png"])  # no numbered sequence: name order
    assert [p.name for p in list_images(str(unnumbered))] == ["dawn.png", "dusk.png", "noon.png"]


def test_printf_patterns_as_ffmpeg_reads_them(tmp_path):
    folder = tmp_path / "p"
    write_images(folder, ["100%_0001.png", "100%_0002.png", "0001.png", "0002.png", "0003.png"])
    assert [p.name for p in list_images(f"{folder}/100%%_%04d.png")] == ["100%_0001.png", "100%_0002.png"]
    # %d over zero-padded names takes the files as they are named (it named 1.png, which does not exist)
    assert [p.name for p in list_images(f"{folder}/%d.png")] == ["0001.png", "0002.png", "0003.png"]
    with pytest.raises(PipelineError, match="a % that is not the frame number"):
        list_images(f"{folder}/50%off_%04d.png")
    write_images(folder, ["1.png"])
    with pytest.raises(PipelineError, match="frame 1 twice in the sequence"):
        list_images(f"{folder}/%d.png")


@pytest.mark.parametrize("rate", ["1e10", "1e400", "1e-400", "0", "-5", "29.970000000000000001"])
def test_frame_rates_out_of_range_are_one_line(tmp_path, rate):
    from pipeline.settings import load_settings

    with pytest.raises(PipelineError, match="--fps .*(must be|too precise)") as error:
        load_settings(None, {"input.fps": rate}, {"input.fps": "--fps"})
        frame_rate(rate)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("problem", ["corrupt", "mixed sizes", "empty", "bad rate"])
def test_bad_sequences_are_one_line_naming_the_file(tmp_path, problem):
    folder = tmp_path / "seq"
    write_images(folder, ["000000.png", "000001.png", "000002.png"])
    if problem == "corrupt":
        data = (folder / "000001.png").read_bytes()
        (folder / "000001.png").write_bytes(data[: len(data) // 3])
        expected, bad = "unreadable image", folder / "000001.png"
    elif problem == "mixed sizes":
        write_images(folder, ["000002.png"], size_hw=(31, 40))
        expected, bad = "40x31, but the sequence is 40x30", folder / "000002.png"
    elif problem == "empty":
        folder = tmp_path / "nothing"
        folder.mkdir()
        expected, bad = "folder holds no images", folder
    else:
        expected, bad = "not a frame rate", "--fps"
    with pytest.raises(PipelineError) as error:
        decoder = open_source(str(folder), "fast" if problem == "bad rate" else 30)
        list(decoder.frames())
    message = str(error.value)
    assert expected in message and str(bad) in message and "\n" not in message


def test_sixteen_bit_and_grey_images_come_in_as_8_bit_rgb(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    ramp = (np.arange(40, dtype=np.uint16) * 1600)[None].repeat(30, 0)
    cv2.imwrite(str(folder / "0.png"), ramp)  # 16-bit grey
    cv2.imwrite(str(folder / "1.png"), (ramp >> 8).astype(np.uint8))  # 8-bit grey
    first, second = [image for _, image in open_source(str(folder)).frames()]
    assert first.shape == second.shape == (30, 40, 3) and first.dtype == np.uint8
    assert np.array_equal(first, second)


def test_metric_depth_through_the_sink_near_is_bright_and_16_bit_is_millimetres(tmp_path):
    near_to_far = np.tile(np.linspace(1.0, 10.0, 40, dtype=np.float32), (30, 1))  # metres: near on the left
    rgb = np.zeros((1, 30, 40, 3), np.uint8)
    outputs = {}
    for depth_format in ("gray", "png16"):
        render = RenderOptions(depth_format=depth_format, encoder_thread=False)
        output = tmp_path / ("metric.mkv" if depth_format == "gray" else "metric_depth")
        sink = DepthSink(str(output), INFO, render, make_smoother("none"), model={"variant": "vits"})
        sink.write(DepthBatch(0, [0], INFO.time_base, near_to_far[None], max_depth=20.0),
                   FrameBatch(0, [0], INFO.time_base, rgb))
        outputs[depth_format] = sink.close()
    from tests.clips import read_video

    gray = read_video(tmp_path / "metric.mkv")["frames"][0].to_ndarray(format="gray")
    assert gray[:, 0].mean() > 230 and gray[:, -1].mean() < 25, "near is bright, as for relative depth"
    assert (np.diff(gray.astype(int), axis=1) <= 1).all(), "and darker with distance"
    assert "metric depth in metres" in read_video(tmp_path / "metric.mkv")["metadata"]["DEPTH_MODEL"]
    png = cv2.imread(str(tmp_path / "metric_depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert outputs["png16"]["depth_scale"] == 1000.0 and outputs["png16"]["saturated_pixels"] == 0
    assert np.array_equal(png, np.rint(near_to_far * 1000).astype(np.uint16)), "millimetres"
    description = json.loads((tmp_path / "metric_depth" / "depth.json").read_text())
    assert description["unit"] == "metre" and description["scale"] == 1000.0 and description["max_depth"] == 20.0
    assert DepthUnits(80.0).metric_scale == 500.0 and DepthUnits(20.0).metric_scale == 1000.0


def test_smoother_keeps_metres_and_passes_a_real_change_of_distance():
    """Relative depth's alignment would fit a per-frame scale away; for metres the sink turns it off: a static scene
    is smoothed towards its true metres, and the camera moving 20% closer shows at once."""
    rng = np.random.default_rng(3)
    truth = np.tile(np.linspace(2.0, 8.0, 64, dtype=np.float32), (48, 1))
    rgb = np.full((48, 64, 3), 128, np.uint8)  # a still picture: the motion gate lets the smoother work
    results = {}
    for metric in (False, True):
        smoother = make_smoother("default", metric=metric)
        outputs = []
        for t in range(30):
            scene = truth if t < 20 else truth * 0.8
            observed = scene * (1 + rng.normal(0, 0.01, scene.shape).astype(np.float32))
            outputs.append(smoother.update(observed, rgb))
        results[metric] = outputs
    metric = results[True]
    static_error = np.abs(metric[19] - truth).mean() / truth.mean()
    assert static_error < 0.006, "smoothed below the 1% per-frame noise, on the true metres"
    assert np.abs(metric[20] - truth * 0.8).mean() / truth.mean() < 0.02, "the step shows on its frame"
    assert np.abs(results[False][20] - truth * 0.8).mean() / truth.mean() > 0.1, \
        "with relative depth's scale fit the step is fitted away (why metric output does not use it)"


def test_a_killed_run_s_partial_folder_is_cleaned_but_a_live_writer_s_is_spared(tmp_path):
    from pipeline.jobs.batch import _remove_partial_files

    output = tmp_path / "clip_depth"
    live = DepthSequenceWriter(output, "png16", INFO, {}, "live")
    live.write(np.zeros((30, 40), np.uint16), 0)
    killed = tmp_path / ".clip_depth.dead.partial"  # what a killed writer leaves: its lock no longer held
    killed.mkdir()
    (killed / ".lock").touch()
    (killed / "000000.png").write_bytes(b"x")
    _remove_partial_files(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip_depth.live.partial"]
    assert live.close() == output and len(list(output.glob("*.png"))) == 1
