"""Bad settings, unschedulable requests, dead addresses, a full disk, signals and two runs on one output.

Each must end in one line on stderr ("error: ..."), a documented exit status, no traceback and no output left
behind; settings and inputs that can be checked without Ray must fail before Ray starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import run_pipeline
from tests.clips import clip, read_video
from tests.test_pipeline_e2e import FAST

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_clips")
    return {
        "short": clip(folder, "short.mp4", width=96, height=64, frames=6),
        "medium": clip(folder, "medium.mp4", width=160, height=96, frames=40),
        "long": clip(folder, "long.mp4", width=160, height=96, frames=150),
    }


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = run_pipeline.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own exit, for usage errors
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected: str, case: str = "") -> None:
    assert code == 2, (case, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], (case, err)
    assert not any("Traceback" in line for line in lines), (case, err)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"config_{abs(hash(text))}.yaml"
    path.write_text(text)
    return path


def test_bad_settings_fail_before_ray_starts(clips, tmp_path, capsys, monkeypatch, vits_checkpoint):
    import pipeline.cluster.runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a run that could be refused without it")

    monkeypatch.setattr(pipeline.cluster.runtime, "start_ray", no_ray)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"keep me")
    wrong_checkpoint = tmp_path / "weights.pth"
    wrong_checkpoint.write_bytes(b"\x00garbage" * 100)
    good = clips["short"]
    cases = {
        "unknown smoother": (["--smoother", "bogus"], "--smoother must be one of default, none, ema, aligned"),
        "unknown smoother parameter": (["--config", config(tmp_path, "smoothing:\n  params: {foo: 1}\n")],
                                       "has no parameter 'foo'; it takes strength"),
        "smoother parameter out of range": (["--config", config(tmp_path, "smoothing:\n  params: {strength: 2}\n")],
                                            "strength must be in [0, 1)"),
        "batch size not a number": (["--config", config(tmp_path, "batching:\n  batch_size: abc\n")],
                                    "batching.batch_size must be a whole number, got 'abc'"),
        "no batches in flight": (["--config", config(tmp_path, "batching:\n  max_in_flight: 0\n")],
                                 "batching.max_in_flight must be >= 1, got 0"),
        "negative threads": (["--config", config(tmp_path, "model:\n  threads: -3\n")], "model.threads must be >= 0"),
        "negative model actors": (["--model-actors", "-1"], "--model-actors must be >= 0, got -1"),
        "negative batch size": (["--batch-size", "-2"], "--batch-size must be >= 0, got -2"),
        "batch size flag not a number": (["--batch-size", "abc"], "argument --batch-size: invalid int value"),
        "unknown device": (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
        "input size": (["--input-size", "500"], "--input-size must be a multiple of 14, got 500"),
        "float16 on the cpu": (["--precision", "float16", "--device", "cpu"], "float16 needs a CUDA device"),
        "checkpoint and random weights": (["--checkpoint", vits_checkpoint.official_path], "both given"),
        "wrong checkpoint": (["--checkpoint", wrong_checkpoint, "--random-weights", None],
                             "not a readable PyTorch checkpoint"),
        "summary directory missing": (["--summary", tmp_path / "no" / "summary.json"], "cannot write the summary"),
        "no overwrite": (["-o", existing, "--no-overwrite"], "output exists and --no-overwrite was given"),
        "zero segments": (["--segments", "0"], "--segments must be >= 1, got 0 (or auto)"),
        "segments not a number": (["--segments", "many"], "--segments must be a whole number, got 'many' (or auto)"),
        "negative warm-up": (["--config", config(tmp_path, "segments:\n  warmup_seconds: -1\n")],
                             "segments.warmup_seconds must be >= 0"),
    }
    for case, (extra, expected) in cases.items():
        argv = [good, *FAST, *extra]
        if None in argv:  # a case that drops the random weights
            argv = [a for a in argv if a not in ("--random-weights", "vits", None)]
        if "-o" not in argv:
            argv += ["-o", out_dir / "result.mp4"]
        code, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, expected, case)
        assert list(out_dir.iterdir()) == [], f"{case}: left files behind"
    assert existing.read_bytes() == b"keep me"


def test_urls_stay_urls(capsys, tmp_path):
    code, err = run_cli(capsys, "http://127.0.0.1:9/clip.mp4", "-o", tmp_path / "x.mp4", *FAST)
    assert_one_line_error(code, err, "http://127.0.0.1:9/clip.mp4: not a readable video")
    code, err = run_cli(capsys, "rtsp://127.0.0.1:9/live", *FAST)
    assert_one_line_error(code, err, "rtsp://127.0.0.1:9/live: live mode needs somewhere to send depth")


@pytest.mark.parametrize("extra, expected", [
    (["--model-actors", "5"], "--model-actors 5: each model actor takes 1 CPU and the Ray cluster has 2"),
    (["--device", "cuda"], "--device cuda: the Ray cluster has no GPU"),
    (["--precision", "float16"], "precision float16 needs a GPU and none is in use"),
    (["--smoothing-device-cuda"], "smoothing.device cuda: the Ray cluster has no GPU"),
])
def test_what_the_cluster_cannot_place_fails_at_once(ray_cluster, clips, tmp_path, capsys, extra, expected):
    if extra == ["--smoothing-device-cuda"]:
        extra = ["--config", config(tmp_path, "smoothing:\n  device: cuda\n")]
    code, err = run_cli(capsys, clips["short"], "-o", tmp_path / "x.mp4", *FAST, *extra)
    assert_one_line_error(code, err, expected)
    assert list(tmp_path.glob("*.mp4")) == []


def test_actors_a_busy_cluster_cannot_place_time_out(ray_cluster, clips, tmp_path, capsys):
    import ray

    @ray.remote(num_cpus=1)
    class Blocker:
        def ready(self):
            return True

    blocker = Blocker.remote()
    ray.get(blocker.ready.remote())
    try:
        settings = config(tmp_path, "ray:\n  placement_timeout_s: 5\n")
        code, err = run_cli(capsys, clips["short"], "-o", tmp_path / "x.mp4", *FAST, "--model-actors", "2",
                            "--config", settings)
    finally:
        ray.kill(blocker)
    assert_one_line_error(code, err, "of 2 model actors could not be placed within 5 s")
    assert "the cluster has 0 CPU free" in err
    assert list(tmp_path.glob("*.mp4")) == []


@pytest.mark.parametrize("output, depth_format", [("depth.mkv", "gray16"), ("depth_exr", "exr"),
                                                  ("depth_png16", "png16")])
def test_full_disk_is_one_line_and_leaves_nothing(ray_cluster, clips, tmp_path, capsys, output, depth_format):
    """Every writer: one line naming the output and the disk (EXR's was an internal RuntimeError, png16's 'PNG
    encoder failed'), exit 2, nothing left."""
    small_disk = tmp_path / "small_disk"
    small_disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small_disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code, err = run_cli(capsys, clips["long"], "-o", small_disk / output, "--depth-format", depth_format, *FAST)
        assert_one_line_error(code, err, f"{output}: cannot write the output: the disk is full (no space left on "
                                         f"{small_disk})")
        assert list(small_disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small_disk)], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# The command as a user runs it: its own process, its own Ray


def start_cli(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT / "run_pipeline.py"), *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)


def ray_agents(of: int | None = None) -> set[int]:
    """Live Ray agent processes on this machine (an orphan from an interrupted start-up stays for minutes); `of`: only
    those descended from that process (a run's own, never those of another suite running beside this one)."""
    pids, parents = set(), {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        parents[int(stat.parent.name)] = int(fields[1])
        if fields[0] != "Z" and command.startswith((b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")):
            pids.add(int(stat.parent.name))
    if of is None:
        return pids

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == of:
                return True
        return False

    return {pid for pid in pids if descends(pid)}


def end_agents(pids: set[int]) -> None:
    """A killed driver's Ray agents outlive it by a minute: ended, rather than left to later tests."""
    for pid in pids & ray_agents():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_unreachable_address_fails_fast(clips, tmp_path):
    process = start_cli(clips["short"], "-o", tmp_path / "x.mp4", *FAST, "--address", "127.0.0.1:1")
    _, err = process.communicate(timeout=60)
    assert_one_line_error(process.returncode, err, "cannot reach a Ray cluster at 127.0.0.1:1")


@pytest.mark.parametrize("signals, status, line, depth_format", [
    ([signal.SIGTERM], 143, "error: terminated; no output written", "color"),
    ([signal.SIGINT, signal.SIGINT], 130, "error: interrupted; no output written", "color"),
    # png16's sink, slow and busy, kept writing into its temporary folder after the driver had removed it
    ([signal.SIGTERM], 143, "error: terminated; no output written", "png16"),
])
def test_signal_mid_run_stops_cleanly(clips, tmp_path, signals, status, line, depth_format):
    output = tmp_path / ("depth.mp4" if depth_format == "color" else "depth_png")
    process = start_cli(clips["long"], "-o", output, "--depth-format", depth_format, *FAST)
    if depth_format == "color":
        wait_for(lambda: list(tmp_path.glob(".depth.*.partial.mp4")))  # writing has begun
    else:
        wait_for(lambda: list(tmp_path.glob(".depth_png.*.partial/000001.png")))
    own_agents = ray_agents(of=process.pid)
    for number in signals:
        process.send_signal(number)
        time.sleep(0.3)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert err.strip().splitlines()[-1] == line
    assert "Traceback" not in err and "Segmentation" not in err
    assert list(tmp_path.iterdir()) == []
    wait_for(lambda: not own_agents & ray_agents(), timeout_s=10)


def test_interrupt_during_start_up_leaves_no_ray_processes(clips, tmp_path):
    process = start_cli(clips["long"], "-o", tmp_path / "depth.mp4", *FAST)
    wait_for(lambda: ray_agents(of=process.pid))  # Ray is starting
    own_agents = ray_agents(of=process.pid)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    wait_for(lambda: not own_agents & ray_agents(), timeout_s=10)
    assert list(tmp_path.iterdir()) == []


def at_once(runs: dict[str, list]) -> dict[str, int]:
    """The CLI's runs (name -> argv) at once, in threads sharing the test's Ray: name -> exit status."""
    codes: dict[str, int] = {}

    def one(name: str) -> None:
        codes[name] = run_pipeline.main([str(a) for a in runs[name]])

    threads = [threading.Thread(target=one, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return codes


def test_two_runs_on_one_output(ray_cluster, clips, tmp_path):
    """Two runs at once (threads sharing the test's Ray) on one output: both finish, the file is whole."""
    output = tmp_path / "shared.mp4"
    codes = at_once({name: [clips["medium"], "-o", output, *FAST, "--summary", tmp_path / f"{name}.json"]
                     for name in ("first", "second")})
    assert codes == {"first": 0, "second": 0}
    for name in codes:
        assert json.loads((tmp_path / f"{name}.json").read_text())["frames_out"] == 40
    assert read_video(output)["count"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "second.json", output.name]


def test_stdout_holds_the_summary_alone_whatever_prints_after_it():
    """Ray forwards its workers' and raylet's lines ('(raylet) WARNING: 30 PYTHON worker processes ...') to the
    driver's stdout, also while it shuts down, after the summary was printed: the command's stdout must still parse."""
    script = (
        "import os, sys\n"
        "import run_pipeline\n"
        "run_pipeline.run = lambda args: {'frames_out': 3}\n"
        "def late_lines():\n"
        "    print('(raylet) WARNING: 30 PYTHON worker processes have been started')\n"
        "    os.write(1, b'(raylet) a line from C\\n')\n"
        "run_pipeline.stop_ray_ignoring_signals = late_lines\n"
        "sys.argv = ['run_pipeline.py', 'input.mp4']\n"
        "run_pipeline.command_line()\n"
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout) == {"frames_out": 3}
    assert "(raylet) WARNING" not in process.stdout and "a line from C" not in process.stdout


def test_the_video_depth_command_is_the_cli(tmp_path):
    """`pip install .` gives `video-depth`, the same command as `python run_pipeline.py`, from any folder."""
    command = Path(sys.executable).parent / "video-depth"
    assert command.exists(), "the console script is installed beside the interpreter"
    helped = subprocess.run([str(command), "live", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert helped.returncode == 0 and "--control-token-file" in helped.stdout
    missing = subprocess.run([str(command), str(tmp_path / "none.mp4"), "--random-weights", "vits"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'none.mp4'}: input file not found"]


def test_an_error_about_a_url_never_shows_its_password(capsys, tmp_path):
    code, err = run_cli(capsys, "http://viewer:hunter2@127.0.0.1:9/clip.mp4", "-o", tmp_path / "out.mp4",
                        "--random-weights", "vits")
    assert_one_line_error(code, err, "http://***@127.0.0.1:9/clip.mp4")
    assert "hunter2" not in err and not (tmp_path / "out.mp4").exists()
