"""benchmarks/gpu_check.py on a machine without a GPU: its help and its no-GPU exit without Ray or av, its sections
isolated, and the parts of its checks that a CPU can run (the harness of sections a and b)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
WITHOUT_RAY_OR_AV = ("import sys, runpy; sys.modules['ray'] = None; sys.modules['av'] = None; "
                     "sys.argv = ['gpu_check.py', *sys.argv[1:]]; "
                     "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")


def run_check(*argv) -> subprocess.CompletedProcess:
    """The check in a Python where `import ray` and `import av` fail, as on the GPU machine before its pack."""
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY_OR_AV, *argv], capture_output=True, text=True,
                          cwd=PROJECT, timeout=120)


def test_help_and_the_no_gpu_exit_need_neither_ray_nor_av():
    helped = run_check("--help")
    assert helped.returncode == 0, helped.stderr
    assert "--sections" in helped.stdout and "<= 1e-2 (float16) and <= 2.5e-2 (bfloat16)" in helped.stdout
    no_gpu = run_check("--out", "/tmp/gpu_check_unused")
    assert no_gpu.returncode == 1
    assert no_gpu.stderr.strip().splitlines() == [no_gpu.stderr.strip()] and "no CUDA GPU visible" in no_gpu.stderr
    assert "Traceback" not in no_gpu.stderr


def test_a_failing_section_is_reported_and_the_others_run(tmp_path, capsys):
    sys.path.insert(0, str(PROJECT))
    from benchmarks.gpu_check import run_sections

    def broken():
        raise ImportError("No module named 'ray'")

    results = run_sections({"a": ("first", lambda: [{"value": 1.0, "pass": True}]),
                            "d": ("needs Ray", broken),
                            "e": ("last", lambda: [{"value": 2.0, "pass": False}])}, tmp_path)
    assert [s["status"] for s in results["sections"].values()] == ["ok", "error", "fail"]
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["sections"]["d"]["error"] == "ImportError: No module named 'ray'"
    out = capsys.readouterr().out
    assert "d. needs Ray: ERROR" in out and "e. last: FAIL" in out and "a. first: OK" in out


def test_the_checks_themselves_run_on_a_cpu():
    """Sections a and b's code, on the CPU at a small size: the harness is right before a GPU ever runs it."""
    sys.path.insert(0, str(PROJECT))
    from benchmarks.gpu_check import precision_agreement, worker_agreement

    row, cast = precision_agreement(["vits"], device="cpu", precisions=("bfloat16",), frame_hw=(101, 143),
                                    input_size=140)
    assert row["weights"] == "autocast" and row["pass"] and row["finite"] and row["limit"] == 2.5e-2
    assert 0 < row["relative_l2"] < 2.5e-2
    assert cast["weights"] == "cast once" and cast["pass"] is None and 0 < cast["relative_l2"] < 5e-2
    rows = worker_agreement(device="cpu", precision="float32", frame_hw=(64, 96), input_size=70)
    assert [r["call"] for r in rows] == [f"{layout} x{b}" for layout in ("rgb24", "yuv420p") for b in (8, 3, 1)] + [
        "multi-part I420 + RGB, two sizes"]
    assert all(r["pass"] and r["threads"] == 4 and r["calls"] == 12 for r in rows), rows


def test_the_speed_thresholds_compare_the_right_rows():
    sys.path.insert(0, str(PROJECT))
    from benchmarks.gpu_check import speed_thresholds

    def row(precision, batch, ms, compiled=False):
        return {"variant": "vits", "precision": precision, "batch": batch, "compile": compiled,
                "gpu_ms_per_frame": ms}

    rows = speed_thresholds([row("float32", 8, 4.0), row("float16", 8, 2.0), row("float16", 1, 9.0),
                             row("float16", 8, 2.2, compiled=True), row("bfloat16", 8, 3.9)])
    assert [r.get("pass") for r in rows] == [None, True, None, False, None]
    assert rows[1]["ratio"] == 0.5 and rows[3]["ratio"] == 1.1
    assert speed_thresholds([row("float32", 8, 4.0), row("float16", 8, 3.6)])[1]["pass"] is False


def test_sections_past_the_budget_are_skipped_and_said_so(tmp_path, capsys):
    sys.path.insert(0, str(PROJECT))
    from benchmarks.gpu_check import run_sections

    results = run_sections({"b": ("first", lambda: [{"pass": True}]), "a": ("gpu only", "needs a GPU")}, tmp_path)
    assert results["sections"]["a"] == {"title": "gpu only", "status": "skipped", "reason": "needs a GPU",
                                        "seconds": 0.0}
    results = run_sections({"d": ("late", lambda: [{"pass": True}])}, tmp_path, deadline=0.0)
    assert results["sections"]["d"]["status"] == "skipped" and results["sections"]["d"]["reason"] == "out of time"


def test_the_device_check_rehearsed_end_to_end_on_the_cpu(tmp_path):
    """The documented command's harness, end to end here: GPU-only sections skipped, d and e run small on the CPU,
    the JSON written where --out (or $OUT) says."""
    process = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--rehearse", "--frames", "16"],
                             capture_output=True, text=True, cwd=PROJECT, timeout=300,
                             env={**os.environ, "OUT": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(results["sections"]) == ["b", "a", "d", "e", "c", "f", "g"]
    assert {k: s["status"] for k, s in results["sections"].items()} == {"b": "skipped", "a": "skipped", "d": "ok",
                                                                        "e": "ok", "c": "skipped", "f": "ok",
                                                                        "g": "skipped"}
    video = results["sections"]["f"]["rows"]
    assert [row["check"] for row in video] == [
        "bfloat16 (autocast) against float32, one window", "bfloat16 (weights cast once) against float32, one window",
        "window mode", "streaming mode",
        "4 cameras batched against one at a time, float32 (the worker's streaming path)",
        "4 cameras, bfloat16: frames per second batched, one at a time"]
    assert 0 < video[0]["relative_l2"] < 5e-2 and video[0]["finite"] and 0 < video[1]["relative_l2"] < 5e-2
    assert video[2]["fps"] > 0 and video[3]["fps"] > 0
    assert video[4]["relative_l2"] <= 1e-4 and video[4]["pass"] and video[5]["fps"] > 0 < video[5]["fps_alone"]
    assert [r["frames"] for r in results["sections"]["d"]["rows"]] == [16, 32]
    assert results["sections"]["e"]["rows"][0]["frames_in"] == 16
    assert "d. Ray pipeline" in process.stdout and "OK" in process.stdout


def test_the_runtime_section_says_in_one_line_why_it_skips_without_onnxruntime_gpu(tmp_path, capsys):
    from benchmarks.gpu_check import run_sections, runtime_check

    reason = runtime_check()
    assert isinstance(reason, str) and "has no CUDA provider: install onnxruntime-gpu" in reason
    results = run_sections({"g": ("runtimes", runtime_check)}, tmp_path)
    assert results["sections"]["g"]["status"] == "skipped" and results["sections"]["g"]["reason"] == reason
