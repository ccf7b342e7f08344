"""benchmarks/gpu_check.py on a machine without a GPU: its help and its no-GPU exit without Ray or av, its sections
isolated, and the parts of its checks that a CPU can run (the harness of sections a and b)."""

from __future__ import annotations

import json
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
    assert "--sections" in helped.stdout and "relative L2 <= 2e-2" in helped.stdout
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

    [row] = precision_agreement(["vits"], device="cpu", precisions=("bfloat16",), frame_hw=(101, 143),
                                input_size=140)
    assert row["pass"] and 0 < row["relative_l2"] < 2e-2
    rows = worker_agreement(device="cpu", precision="float32", frame_hw=(64, 96), input_size=70)
    assert [(r["layout"], r["batch"]) for r in rows] == [(layout, b) for layout in ("rgb24", "yuv420p")
                                                         for b in (8, 3, 1)]
    assert all(r["pass"] and r["calls_at_once"] == 4 for r in rows), rows
