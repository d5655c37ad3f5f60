"""Memory readings: /proc parsing, a child's peak from its own process, TVM's static plan."""
from __future__ import annotations

import sys

import pytest

from benchmarks.memory import hwm_mib, reset_hwm, spawn_measured, tvm_planned_memory


def test_vmhwm_is_read_from_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert hwm_mib(status) == 200.0
    assert hwm_mib(tmp_path / "absent") is None


def test_high_water_mark_reset_reports_failure_instead_of_pretending(tmp_path):
    assert reset_hwm(tmp_path / "no" / "clear_refs") is False


def test_a_child_that_allocates_shows_its_own_peak():
    code = ("import sys, numpy as np; from benchmarks.memory import hwm_mib; a = np.ones(64 * 2**20 // 8); "
            "print('peak', hwm_mib(), file=sys.stderr)")
    lines: list[str] = []
    run = spawn_measured([sys.executable, "-c", code], on_line=lines.append)
    assert run.returncode == 0
    peak = float(next(ln for ln in lines if ln.startswith("peak")).split()[1])
    assert peak > 64  # the 64 MiB array is resident at the peak
    assert run.peak_rss_mib is not None and run.peak_rss_mib > 0


def test_failing_child_returns_its_code_and_last_lines():
    run = spawn_measured([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    assert run.returncode == 3 and run.stderr_tail == ["boom"]


def test_tvm_static_plan_is_smaller_than_the_unplanned_total(tmp_path):
    pytest.importorskip("tvm")
    import torch

    from benchmarks.complexity import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)).eval()
    path = export_onnx(net, (1, 3, 64, 64), tmp_path / "m.onnx")
    planned, unplanned, status = tvm_planned_memory(path, "input", [1, 3, 64, 64])
    assert status.startswith("static plan")
    assert 0 < planned <= unplanned
    # the two 8x64x64 float32 intermediates need at least 2 x 128 KiB without reuse
    assert unplanned >= 2 * 8 * 64 * 64 * 4 / 2**20 * 0.99


def test_tvm_plan_failure_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    planned, unplanned, status = tvm_planned_memory(bad, "input", [1, 3, 8, 8])
    assert planned is None and unplanned is None and status.startswith("unavailable: ")
