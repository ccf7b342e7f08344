"""Nothing the user owns is overwritten, concurrent runs never mix, every flag does what it says.

One test per finding of an adversarial round on the newer ways to run the pipeline (batch, live, segments): each
failed on the code before the fix. What can be refused without Ray is checked with Ray forbidden (`no_ray`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import run_pipeline
from pipeline.jobs.inputs import find_inputs
from pipeline.jobs.segments import SegmentStore, work_folders
from pipeline.stages.sinks.file_lock import FileLock, is_held_elsewhere
from pipeline.stages.sources.video_decoder import VideoDecoder
from tests.clips import clip, read_video
from tests.test_cli_faults import assert_one_line_error, at_once, run_cli, start_cli, wait_for
from tests.test_pipeline_e2e import FAST


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_data_clips")
    return {
        "short": clip(folder, "short.mp4", width=64, height=48, frames=6),
        "segmentable": clip(folder, "segmentable.mp4", width=64, height=48, frames=45, keyframe_interval=10),
        "long": clip(folder, "long.mp4", width=96, height=64, frames=150),
    }


@pytest.fixture
def no_ray(monkeypatch):
    import pipeline.cluster.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for a run that should have been refused (or had nothing to do)")

    monkeypatch.setattr(pipeline.cluster.runtime, "start_ray", refuse)


def copy_of(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only filesystem (root writes anywhere else: permissions would not stop it)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data loss


def test_batch_refuses_an_output_that_is_one_of_its_inputs(clips, tmp_path, capsys, no_ray):
    inputs = tmp_path / "in"
    a = copy_of(clips["short"], inputs / "a.mp4")
    a_depth = copy_of(clips["short"], inputs / "a_depth.mp4")  # the user's own file, named like an output
    before = a_depth.read_bytes()
    code, err = run_cli(capsys, "batch", a, a_depth, "--output-dir", inputs, *FAST)
    assert_one_line_error(code, err, f"{a_depth}: the output of {a.resolve()} would overwrite the input")
    # Spelled another way: through a symbolic link to the folder, and a folder input
    (tmp_path / "link").symlink_to(inputs)
    code, err = run_cli(capsys, "batch", inputs, "--output-dir", tmp_path / "link", *FAST)
    assert_one_line_error(code, err, "would overwrite the input")
    assert a_depth.read_bytes() == before and sorted(p.name for p in inputs.iterdir()) == ["a.mp4", "a_depth.mp4"]


def test_live_recording_never_replaces_its_input_or_an_existing_file(clips, tmp_path, capsys, no_ray):
    source = copy_of(clips["short"], tmp_path / "clip.mp4")
    before = source.read_bytes()
    code, err = run_cli(capsys, source, "--realtime", "--record", source, *FAST)
    assert_one_line_error(code, err, "the recording would overwrite the input")
    (tmp_path / "alias.mp4").symlink_to(source)
    code, err = run_cli(capsys, source, "--realtime", "--record", tmp_path / "alias.mp4", *FAST)
    assert_one_line_error(code, err, "the recording would overwrite the input")
    existing = tmp_path / "earlier_recording.mp4"
    existing.write_bytes(b"keep me")
    code, err = run_cli(capsys, source, "--realtime", "--record", existing, "--no-overwrite", *FAST)
    assert_one_line_error(code, err, "recording exists and --no-overwrite was given")
    assert source.read_bytes() == before and existing.read_bytes() == b"keep me"


def test_each_run_keeps_its_own_segment_folder_and_resume_takes_one_that_is_over(tmp_path):
    output = tmp_path / "film_depth.mp4"
    fingerprint = {"source": "film.mp4", "settings": {"colormap": "inferno"}}
    first = SegmentStore(output, fingerprint)
    first.open(resume=False)
    (first.folder / "segment_00000.nut").write_bytes(b"first run's segment")
    first.finish(type("S", (), {"index": 0, "start": 0, "end": 10})(), frames=10)
    second = SegmentStore(output, {**fingerprint, "settings": {"colormap": "turbo"}})
    second.open(resume=True)  # the first run is still working: its folder is not this run's, nor removed
    assert second.folder != first.folder and second.done == {}
    assert (first.folder / "segment_00000.nut").read_bytes() == b"first run's segment"
    same = SegmentStore(output, fingerprint)
    same.open(resume=True)  # same settings, but the first run still holds its folder
    assert same.folder not in (first.folder, second.folder) and same.done == {}
    assert is_held_elsewhere(first.folder / "lock")
    same.remove()
    first.release()  # the first run is interrupted: its finished segment stays for --resume
    resumed = SegmentStore(output, fingerprint)
    resumed.open(resume=True)
    assert resumed.folder == first.folder and list(resumed.done) == [0]
    resumed.remove()
    second.remove()
    assert work_folders(output) == []


def test_two_segmented_runs_on_one_output_never_mix(ray_cluster, clips, tmp_path):
    """Two runs at once with different colour maps, each in 3 segments: both succeed, and the output is whole and one
    run's, frame for frame; nothing is left beside it."""
    references = {}
    for colormap in ("inferno", "turbo"):
        references[colormap] = tmp_path / f"alone_{colormap}.mp4"
        assert run_pipeline.main([str(clips["segmentable"]), "-o", str(references[colormap]), *FAST, "--colormap",
                                  colormap, "--segments", "3"]) == 0
    shared = tmp_path / "shared" / "depth.mp4"
    shared.parent.mkdir()
    codes = at_once({colormap: [clips["segmentable"], "-o", shared, *FAST, "--colormap", colormap, "--segments", "3"]
                     for colormap in references})
    assert codes == {"inferno": 0, "turbo": 0}
    frames = frames_of(shared)
    assert len(frames) == 45
    assert any(all(np.array_equal(a, b) for a, b in zip(frames, frames_of(ref))) for ref in references.values())
    assert sorted(p.name for p in shared.parent.iterdir()) == ["depth.mp4"]


def test_two_batch_jobs_on_one_folder_never_mix(ray_cluster, clips, tmp_path):
    inputs = tmp_path / "in"
    copy_of(clips["segmentable"], inputs / "film.mp4")
    copy_of(clips["short"], inputs / "sub" / "clip.mp4")
    out = tmp_path / "out"
    codes = at_once({colormap: ["batch", inputs, "--output-dir", out, *FAST, "--colormap", colormap, "--segments", "3",
                                "--videos-in-flight", "2"] for colormap in ("inferno", "turbo")})
    assert codes == {"inferno": 0, "turbo": 0}
    assert read_video(out / "film_depth.mp4")["count"] == 45 and read_video(out / "sub" / "clip_depth.mp4")["count"] == 6
    lines = [json.loads(line) for line in (out / "batch_status.jsonl").read_text().splitlines()]
    assert sorted((line["video"], line["status"]) for line in lines) == [("film.mp4", "done")] * 2 + \
        [("sub/clip.mp4", "done")] * 2
    assert not [p for p in out.rglob(".*")], "hidden work left behind"


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_leftover_partial_file_is_removed_but_a_live_writers_is_not(tmp_path):
    from pipeline.jobs.batch import _remove_partial_files

    output = tmp_path / "clip_depth.mp4"
    live, stale = tmp_path / ".clip_depth.aaaa.partial.mp4", tmp_path / ".clip_depth.bbbb.partial.mp4"
    live.write_bytes(b"being written")
    stale.write_bytes(b"left by a killed run")
    lock = FileLock(live)
    assert lock.acquire()
    _remove_partial_files(output)
    assert live.exists() and not stale.exists()
    lock.release()
    _remove_partial_files(output)
    assert not live.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Exit statuses and messages


def descendant_running(process: subprocess.Popen, command: bytes) -> bool:
    """A process below `process` whose command line contains `command`."""
    from pipeline.cluster.runtime import _descendant_pids

    for pid in _descendant_pids(process.pid):
        try:
            if command in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def gcs_started(process: subprocess.Popen) -> bool:
    """Ray's GCS server runs: ray.init is under way (it installs its own SIGTERM handler about now)."""
    return descendant_running(process, b"gcs_server")


def raylet_started(process: subprocess.Popen) -> bool:
    """Ray's raylet runs: the driver is connecting to it (a SIGTERM here aborted the interpreter's exit, issue 35)."""
    return descendant_running(process, b"/raylet ")


def model_actor_started(process: subprocess.Popen) -> bool:
    """A model actor's process runs: the driver is waiting for the actors to be placed and loaded."""
    return descendant_running(process, b"ray::ModelActor")


@pytest.mark.parametrize("moment", [gcs_started, raylet_started, model_actor_started])
def test_sigterm_during_ray_start_up_exits_143_with_one_line(clips, tmp_path, moment):
    process = start_cli(clips["long"], "-o", tmp_path / "depth.mp4", *FAST)
    try:
        wait_for(lambda: moment(process) or process.poll() is not None, timeout_s=60)
    finally:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("error: terminated"), err
    assert "Traceback" not in err and "SystemError" not in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    process = start_cli("--random-weights", "vits", "-o", tmp_path / "x.mp4")
    # Once torch's libraries are being loaded, the command is deep in its imports
    wait_for(lambda: b"torch" in Path(f"/proc/{process.pid}/maps").read_bytes() or process.poll() is not None)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted while starting; nothing was written"]


def test_batch_output_folder_that_cannot_be_written_fails_before_ray(clips, read_only_folder, capsys, no_ray):
    code, err = run_cli(capsys, "batch", clips["short"], "--output-dir", read_only_folder, *FAST)
    assert_one_line_error(code, err, f"{read_only_folder}: --output-dir is not writable")
    code, err = run_cli(capsys, "batch", clips["short"], "--output-dir", read_only_folder / "new" / "depth", *FAST)
    assert_one_line_error(code, err, "--output-dir does not exist and cannot be made")


def test_an_rtsp_destination_that_is_not_a_url_is_exit_2_before_ray(clips, capsys, no_ray):
    """(One that refuses its first session is exit 2 too, once the model is loaded: no probe connection is made ahead
    of the session, which a one-shot receiver would take for its publisher; tests/test_live.py.)"""
    code, err = run_cli(capsys, clips["short"], "--realtime", "-o", "rtsp://127.0.0.1:99999/depth", *FAST)
    assert_one_line_error(code, err, "rtsp://127.0.0.1:99999/depth: not a valid RTSP URL (bad port)")
    code, err = run_cli(capsys, clips["short"], "--realtime", "-o", "rtsp:///depth", *FAST)
    assert_one_line_error(code, err, "rtsp:///depth: not a valid RTSP URL")


def manifest(tmp_path: Path, *lines: str, suffix: str = ".jsonl") -> Path:
    path = tmp_path / f"jobs{abs(hash(lines))}{suffix}"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_manifest_lines_and_config_files_name_the_file_line_and_key(clips, tmp_path, capsys, no_ray):
    video = json.dumps(str(clips["short"]))
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("batching:\n  batch_size: 2\n", encoding="utf-16")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    cases = {
        "input a number": (manifest(tmp_path, '{"input": 5}'), [], "jobs", ":1: input must be a path"),
        "a null line": (manifest(tmp_path, "null"), [], "", ":1: expected {\"input\": PATH"),
        "empty input": (manifest(tmp_path, '{"input": ""}'), [], "", ":1: input must be a path to a video file, got ''"),
        "missing file": (manifest(tmp_path, '{"input": "nowhere.mp4"}'), [], "", ":1: nowhere.mp4: no such file"),
        "missing file in a list": (manifest(tmp_path, "# one", "nowhere.mp4", suffix=".txt"), [], "",
                                   ":2: nowhere.mp4: no such file"),
        "unknown key": (manifest(tmp_path, f'{{"input": {video}, "option": {{}}}}'), [], "",
                        ":1: unknown key 'option'"),
        "key without a section": (manifest(tmp_path, f'{{"input": {video}, "options": {{"depth_format": "gray"}}}}'),
                                  [], "", "'depth_format' is a setting of the output section: output.depth_format"),
        "bad smoother parameter": (manifest(tmp_path, f'{{"input": {video}, "options": {{"smoothing.params": '
                                                      f'{{"strength": 5}}}}}}'), [], "", ":1: options: smoothing.params"),
        "utf-16 config": (None, ["--config", utf16], "", "utf16.yaml: not a UTF-8 text file"),
        "binary config": (None, ["--config", binary], "", "binary.yaml: not a UTF-8 text file"),
        "integer key": (None, ["--config", write(tmp_path / "int.yaml", "batching:\n  5: 2\n")], "",
                        "int.yaml [batching]: a setting name must be text, got 5"),
        "nan duration": (None, ["--config", write(tmp_path / "nan.yaml", "segments:\n  min_seconds: .nan\n")], "",
                         "nan.yaml: segments.min_seconds must be a finite number, got nan"),
        "infinite scale": (None, ["--config", write(tmp_path / "inf.yaml", "output:\n  depth_scale: .inf\n")], "",
                           "inf.yaml: output.depth_scale must be a finite number, got inf"),
    }
    for case, (spec, extra, _, expected) in cases.items():
        code, err = run_cli(capsys, "batch", spec or clips["short"], "--output-dir", tmp_path / "out", *FAST, *extra)
        assert_one_line_error(code, err, expected, case)
        if spec is not None:
            assert str(spec) in err, (case, err)
    assert not (tmp_path / "out").exists()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Inputs a user has


def size_changing_stream(path: Path) -> Path:
    """An MPEG-TS stream that switches from 160x96 to 128x80 after 10 frames (two encodings, one after the other, as a
    broadcast switching resolution)."""
    with open(path, "wb") as out:
        for part, (width, height) in enumerate(((160, 96), (128, 80))):
            piece = path.with_name(f"part{part}.ts")
            with av.open(str(piece), mode="w", format="mpegts") as container:
                stream = container.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for i in range(10):
                    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 20 * i + 40 * part, np.uint8),
                                                       format="rgb24")
                    frame.pts = part * 10 + i
                    frame.time_base = Fraction(1, 25)
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            out.write(piece.read_bytes())
            piece.unlink()
    return path


def test_a_stream_whose_frame_size_changes_gives_every_frame_at_the_first_size(tmp_path):
    source = size_changing_stream(tmp_path / "switch.ts")
    decoder = VideoDecoder(str(source))
    batches = list(decoder.batches(4))
    decoder.close()
    assert sum(len(batch) for batch in batches) == 20
    assert all(batch.pixels.shape[1:] == (96 * 3 // 2, 160) for batch in batches)  # I420 at 160x96
    assert decoder.resized_frames == 10


def test_globs_leave_out_outputs_and_survive_symlink_loops(clips, tmp_path):
    root = tmp_path / "in"
    copy_of(clips["short"], root / "a.mp4")
    copy_of(clips["short"], root / "sub" / "b.mp4")
    copy_of(clips["short"], root / "depth" / "a_depth.mp4")  # an earlier run's output, under the glob
    (root / "self").symlink_to(".")
    (root / "sub" / "up").symlink_to("..")
    for spec in (f"{root}/**/*.mp4", str(root)):
        started = time.monotonic()
        found = find_inputs([spec], root / "depth")
        assert time.monotonic() - started < 5
        assert [item.key for item in found] == ["a.mp4", "sub/b.mp4"], spec


def test_folders_skip_hidden_work_and_may_be_their_own_output_folder(ray_cluster, clips, tmp_path, capsys):
    folder = tmp_path / "videos"
    copy_of(clips["short"], folder / "a.mp4")
    copy_of(clips["short"], folder / ".a_depth.mp4.0123456789ab.segments" / "segment_00000.mp4")
    assert [item.key for item in find_inputs([str(folder)], tmp_path / "out")] == ["a.mp4"]
    code, err = run_cli(capsys, "batch", folder, "--output-dir", folder, *FAST)
    assert code == 0, err
    assert read_video(folder / "a_depth.mp4")["count"] == 6
    # The rerun sees its own output (it carries the depth tag) as an output, not as a new input
    assert [item.key for item in find_inputs([str(folder)], folder)] == ["a.mp4"]


# ---------------------------------------------------------------------------------------------------------------------
# Flags and messages


def test_flags_that_would_do_nothing_are_refused(clips, tmp_path, capsys, no_ray):
    cases = {
        "two recordings": ([clips["short"], "--realtime", "-o", tmp_path / "a.mp4", "--record", tmp_path / "b.mp4"],
                           "live mode records to one file"),
        "record in file mode": ([clips["short"], "-o", tmp_path / "a.mp4", "--record", tmp_path / "b.mp4"],
                                "--record " + str(tmp_path / "b.mp4") + ": a recording is for live mode"),
        "segments live": ([clips["short"], "--realtime", "--record", tmp_path / "a.mp4", "--segments", "2"],
                          "--segments is for files"),
        "resume live": ([clips["short"], "--realtime", "--record", tmp_path / "a.mp4", "--resume"],
                        "--resume is for files"),
        "fps for a video": ([clips["short"], "-o", tmp_path / "a.mp4", "--fps", "24"],
                            "--fps 24: the frame rate is for image sequences"),
        "frame folders live": ([clips["short"], "--realtime", "--record", tmp_path / "a", "--depth-format", "exr"],
                               "--depth-format: depth_format exr writes folders of frames, for files"),
    }
    for case, (argv, expected) in cases.items():
        code, err = run_cli(capsys, *argv, *FAST)
        assert_one_line_error(code, err, expected, case)
    assert list(tmp_path.iterdir()) == []


def test_batch_interrupted_says_what_finished_and_marks_its_report(clips, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    for name in ("a", "b", "c"):
        copy_of(clips["long"], inputs / f"{name}.mp4")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "batch_report.json").write_text('{"from": "an earlier run"}')
    process = start_cli("batch", inputs, "--output-dir", out, *FAST, "--videos-in-flight", "1")
    status = out / "batch_status.jsonl"
    wait_for(lambda: status.exists() and status.read_text().count("\n") >= 1 or process.poll() is not None,
             timeout_s=180)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted; ") and "finished in this run and recorded" in last, err
    assert "no output written" not in last
    report = json.loads((out / "batch_report.json").read_text())
    assert report["interrupted"] is True and report["totals"]["done"] >= 1
    assert {row["status"] for row in report["videos"]} <= {"done", "not done"}


def test_a_rerun_with_nothing_to_do_does_not_start_ray(ray_cluster, clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "batch", clips["short"], "--output-dir", out, *FAST)
    assert code == 0, err
    import pipeline.cluster.runtime

    monkeypatch.setattr(pipeline.cluster.runtime, "start_ray", lambda *a, **k: pytest.fail("Ray started with nothing to do"))
    code, err = run_cli(capsys, "batch", clips["short"], "--output-dir", out, *FAST)
    assert code == 0, err
    assert "1 skipped (done before)" in err


def test_depth_traceback_0_means_no_traceback(clips, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a fault of ours")

    monkeypatch.setattr(run_pipeline, "resolve_model", broken)
    for value in ("0", "", "false"):
        monkeypatch.setenv("DEPTH_TRACEBACK", value)
        code = run_pipeline.main([str(clips["short"]), "-o", str(tmp_path / "x.mp4"), *FAST])
        err = capsys.readouterr().err
        assert code == 1 and "internal ZeroDivisionError: a fault of ours" in err, value
    monkeypatch.setenv("DEPTH_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        run_pipeline.main([str(clips["short"]), "-o", str(tmp_path / "x.mp4"), *FAST])
