"""The Cortex-A72 proxy in edge-bench: rows parsed from the instrument (a stand-in script, no emulation), the
report's section, CSV and ratio lines from canned rows, the one-line error for a missing rig, and (slow, as root
with the rig) a real emulated run."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks.a72_proxy import (LABEL, RIG_MODULES, ProxyRow, default_work, fmt, measure, missing_in_rig, ratio_lines,
                                  rig_command, rig_pip)
from benchmarks.cli import format_summary, main
from benchmarks.report import document, merge, render, write_report
from edge.errors import EdgeError

SHAPE = [1, 3, 256, 256]


def canned(tvm_cycles_m: float = 847.1, tvm_l2_m: float | None = 49.8) -> list[dict]:
    """The instrument's README figures (M2U-Net, random weights, 256x256) as edge-bench stores them."""
    ort = ProxyRow("ort", "m2unet", 283.9, 78.2, 1.0, 188.5, 188.5 / 1.8, 9.0, 2.26, 0.0, SHAPE, 100.0)
    tvm = ProxyRow("tvm", "m2unet", 919.3, 35.8, 212.0, tvm_cycles_m, tvm_cycles_m / 1.8, 60.0, tvm_l2_m, 3e-6,
                   SHAPE, 200.0)
    return [asdict(ort), asdict(tvm)]


def test_ratio_and_goal_lines_are_labelled_estimates():
    rows = [ProxyRow(**d) for d in canned()]
    lines = ratio_lines(rows)
    assert lines[0] == (f"tvm vs ort ({LABEL}): instructions 3.24x more, cycles 4.49x more, L1D misses 6.67x more, "
                        "L2 misses 22.04x more")
    assert lines[1] == f"goal ({LABEL}; cycles <= ORT / 1.5: 125.7 M): missed at 847.1 M; L2 misses <= ORT's: missed"
    fast = ratio_lines([ProxyRow(**d) for d in canned(tvm_cycles_m=100.0, tvm_l2_m=None)])
    assert "cycles 1.89x fewer" in fast[0] and fast[1].endswith("met at 100.0 M")  # no L2 figure: no L2 goal
    text = fmt(rows, "1x3x256x256")
    assert text.startswith(f"{LABEL}: Cortex-A72, one thread, per inference 1x3x256x256")
    assert "| tvm | 919.3 M | 35.8 M | 212.0 M | 847.1 M | 470.6 | 60.0 M | 49.8 M | 3.0e-06 |" in text


def test_report_shows_the_proxy_section_and_merging_keeps_it(tmp_path, run_factory, capsys):
    run = {**run_factory("x86", {"onnxruntime": 100.0, "tvm": 50.0}), "a72_proxy": canned()}
    doc = document([run])
    files = render(doc)
    rows = list(csv.DictReader(io.StringIO(files["a72_proxy.csv"].decode())))
    assert [r["engine"] for r in rows] == ["ort", "tvm"] and all(r["label"] == LABEL for r in rows)
    assert float(rows[1]["mca_cycles_m"]) == 847.1 and rows[1]["input_shape"] == "1x3x256x256"
    md = files["report.md"].decode()
    assert "## Cortex-A72 proxy: estimated (emulated A72), not board timings" in md
    section = md.split("## Cortex-A72 proxy")[1].split("\n## ")[0]
    table = [ln for ln in section.splitlines() if ln.startswith("| x86 |")]
    assert len(table) == 2 and all(ln.endswith(f"| {LABEL} |") for ln in table)  # every figure labelled
    assert f"- m2unet 1x3x256x256: goal ({LABEL}; cycles <= ORT / 1.5" in md
    page = files["report.html"].decode()
    assert "Cortex-A72 proxy: estimated (emulated A72), not board timings" in page and "missed at 847.1 M" in page
    summary = format_summary(doc, {"report.html": tmp_path / "report.html"})
    assert f"m2unet 1x3x256x256: tvm vs ort ({LABEL}): instructions 3.24x more" in summary

    # a run without the proxy writes no a72_proxy.csv; merged with one that has it, the section is carried
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(document([run_factory("board", {"tvm": 577.0})])))
    assert "a72_proxy.csv" not in render(json.loads(plain.read_text()))
    proxy = tmp_path / "proxy.json"
    write_report(doc, tmp_path / "one")
    proxy.write_bytes((tmp_path / "one" / "results.json").read_bytes())
    merged = merge([plain, proxy])
    assert merged["runs"][1]["a72_proxy"] == canned()
    assert main(["report", str(plain), str(proxy), "-o", str(tmp_path / "merged")]) == 0
    assert "x86: m2unet 1x3x256x256: goal" in (tmp_path / "merged" / "report.md").read_text()
    assert (tmp_path / "merged" / "a72_proxy.csv").is_file()


def rig_folder(work: Path, modules=tuple(RIG_MODULES.values())) -> Path:
    """A rig folder as setup.sh leaves it: the plugin qemu, and the arm64 venv holding ``modules``."""
    (work / "rootfs" / "opt" / "x86").mkdir(parents=True)
    (work / "rootfs" / "opt" / "x86" / "qemu-aarch64").write_text("")
    for m in modules:
        (work / "rootfs" / "opt" / "venv" / "lib" / "python3.11" / "site-packages" / m).mkdir(parents=True)
    return work


def fake_rig(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A rig folder that passes the check and a stand-in a72count.py running ``body`` (a, rows, out: as in
    a72count's main)."""
    work, tool = rig_folder(tmp_path / "work"), tmp_path / "tool"
    tool.mkdir()
    (tool / "a72count.py").write_text(textwrap.dedent("""\
        import argparse, json, sys
        ap = argparse.ArgumentParser()
        ap.add_argument("workdir"); ap.add_argument("models", nargs="+"); ap.add_argument("--input")
        ap.add_argument("--json"); ap.add_argument("--mca", action="store_true")
        ap.add_argument("--cache", action="store_true")
        a = ap.parse_args()
        """) + textwrap.dedent(body))
    return work, tool


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the rig check asks for root")
def test_measure_reads_the_instruments_rows_and_refuses_a_failed_run(tmp_path):
    work, tool = fake_rig(tmp_path, """\
        with open(a.json, "a") as f:
            for i, spec in enumerate(a.models):
                row = {"engine": spec.split(":")[0], "model": spec.rsplit("/", 1)[-1], "insns": 2e6 * (i + 1),
                       "fmla_q128": 1e6, "fp_scalar": 0.0, "max_abs_diff_vs_first": 0.5e-6 * i}
                if a.mca:
                    row["mca_cycles"] = 1.8e6 * (i + 1)
                f.write(json.dumps(row) + "\\n")
        """)
    said = []
    rows = measure(tmp_path / "model.onnx", tmp_path / "model.so", [1, 3, 32, 32], work, tool, model="tiny",
                   log=said.append)
    assert [(r.engine, r.model, r.insns_m, r.mca_cycles_m, r.estimated_ms_at_1_8ghz) for r in rows] == [
        ("ort", "tiny", 2.0, 1.8, 1.0), ("tvm", "tiny", 4.0, 3.6, 2.0)]
    assert rows[1].max_abs_diff_vs_ort == 0.5e-6 and rows[1].input_shape == [1, 3, 32, 32]
    assert rows[1].label == LABEL and "--mca" in said[0] and "--cache" not in said[0]
    only_tvm = measure(None, tmp_path / "model.so", [1, 3, 32, 32], work, tool, mca=False)
    assert [r.engine for r in only_tvm] == ["tvm"] and only_tvm[0].max_abs_diff_vs_ort is None  # no ORT: no diff
    assert only_tvm[0].mca_cycles_m is None
    with_int8 = measure(tmp_path / "model.onnx", tmp_path / "model.so", [1, 3, 32, 32], work, tool,
                        int8=tmp_path / "int8.onnx", log=said.append)
    assert [(r.engine, r.model_file) for r in with_int8] == [
        ("ort", str(tmp_path / "model.onnx")), ("tvm", str(tmp_path / "model.so")),
        ("ort-int8", str(tmp_path / "int8.onnx"))]
    assert f"ort:{tmp_path / 'int8.onnx'}" in said[-1]  # ONNX Runtime runs the int8 graph
    assert f"tvm (fp32) vs ort-int8 ({LABEL}): cycles 1.50x fewer" in ratio_lines(with_int8)

    work, tool = fake_rig(tmp_path / "bad", """\
        sys.exit("error: 0_ort K=1 failed in the emulated userland:\\nTraceback ...\\nOSError: boom")
        """)
    with pytest.raises(EdgeError, match=r"^the arm64proxy run failed \(exit 1\): error: 0_ort K=1 failed in the "
                                        r"emulated userland: OSError: boom$"):
        measure(tmp_path / "model.onnx", tmp_path / "model.so", [1, 3, 32, 32], work, tool)


def test_a_missing_rig_is_one_line_before_any_export(tmp_path, capsys):
    assert main(["m2unet", "--a72-proxy", "--a72-work", str(tmp_path / "nowhere"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "no built arm64proxy rig; run `PIP_SPECS=\"" in err and f"setup.sh {tmp_path / 'nowhere'}` as root first" in err
    assert not (tmp_path / "packages").exists()
    assert main(["m2unet", "--a72-cache", "-o", str(tmp_path)]) == 2
    assert "go with --a72-proxy" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the rig check asks for root")
def test_a_rig_without_the_peers_runtimes_is_one_line_naming_the_command_that_completes_it(tmp_path, capsys):
    # setup.sh's own default PIP_SPECS holds ORT and TVM only; CI once ran the peers on such a rig (ncnn failed)
    work = rig_folder(tmp_path / "rig", modules=("onnxruntime", "tvm"))
    assert missing_in_rig(work, list(RIG_MODULES)) == ["ncnn", "mnn", "tflite"]
    assert main(["m2unet", "--a72-proxy", "--a72-work", str(work), "--a72-peers", "ncnn,mnn",
                 "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"rig at {work} has no arm64 ncnn, MNN (built without the peers' wheels)" in err
    assert f'`PIP_SPECS="{rig_pip()}" bash ' in err and "ncnn==" in rig_pip() and not (tmp_path / "out").exists()
    (tmp_path / "a72count.py").write_text("raise SystemExit('never run')\n")
    with pytest.raises(EdgeError, match="has no arm64 ai_edge_litert"):
        measure(None, tmp_path / "m.so", [1, 3, 8, 8], work, tmp_path, peers={"tflite": tmp_path / "m.tflite"})
    assert main(["m2unet", "--a72-proxy", "--a72-work", str(work), "--a72-no-ort", "--images", "none",
                 "--sizes", "64", "--a72-tool", str(tmp_path / "none"), "-o", str(tmp_path / "o2")]) == 2
    assert "no a72count.py" in capsys.readouterr().err  # ORT + TVM are there: only the missing tool is named


RIG = default_work()
HAVE_RIG = (RIG / "rootfs" / "opt" / "x86" / "qemu-aarch64").exists() and os.geteuid() == 0 \
    and not missing_in_rig(RIG, list(RIG_MODULES))


@pytest.mark.slow
@pytest.mark.cross
@pytest.mark.skipif(not HAVE_RIG, reason=f"no arm64proxy rig with every engine at {RIG} (or not root): run "
                                         f"`{rig_command(RIG)}` as root (~7 min)")
def test_edge_bench_counts_ort_tvm_and_the_peers_on_the_emulated_a72(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["m2unet", "--sizes", "64", "--backends", "onnxruntime", "--images", "none", "--runs", "2",
                 "--a72-proxy", "--a72-peers", "all", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    run = json.loads((out / "results.json").read_text())["runs"][0]
    rows = {r["engine"]: r for r in run["a72_proxy"]}
    assert list(rows) == ["ort", "tvm", "ncnn", "mnn", "tflite"], run["notes"]
    for name in ("tvm", "ncnn", "mnn", "tflite"):  # each engine's output on the emulated A72 against ORT's
        assert rows[name]["max_abs_dp_vs_ort"] <= 1e-4, (name, rows[name])
    assert "tvm vs the best peer, " in captured.out
    for r in rows.values():
        assert r["model"] == "m2unet" and r["input_shape"] == [1, 3, 64, 64] and r["label"] == LABEL
        assert r["insns_m"] > 0 and r["mca_cycles_m"] > 0 and r["estimated_ms_at_1_8ghz"] > 0
        assert Path(r["package"]).name == "m2unet-arm64-64x64"
    assert rows["tvm"]["max_abs_diff_vs_ort"] <= 1e-4
    assert "m2unet 1x3x64x64: tvm vs ort (estimated (emulated A72)): " in captured.out
    assert (out / "a72_proxy.csv").is_file()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the rig check asks for root")
def test_more_tvm_threads_reach_the_instrument_and_the_split_is_reported(tmp_path):
    from benchmarks.a72_proxy import thread_split

    work, tool = rig_folder(tmp_path / "work"), tmp_path / "tool"
    tool.mkdir()
    (tool / "a72count.py").write_text(textwrap.dedent("""\
        import argparse, json, sys
        ENV = {"TVM_NUM_THREADS": "1"}
        def main():
            ap = argparse.ArgumentParser()
            ap.add_argument("workdir"); ap.add_argument("models", nargs="+"); ap.add_argument("--input")
            ap.add_argument("--json"); ap.add_argument("--mca", action="store_true")
            a = ap.parse_args()
            n = int(ENV["TVM_NUM_THREADS"])
            with open(a.json, "a") as f:  # 100 M instructions of work, split evenly, 2 M of waiting per extra thread
                f.write(json.dumps({"engine": "tvm", "model": "m.so", "insns": 100e6 / n + 2e6 * (n - 1),
                                    "other_vcpu_insns": (100e6 / n + 2e6) * (n - 1), "fmla_q128": 0,
                                    "fp_scalar": 0, "mca_cycles": 90e6}) + "\\n")
            return 0
        if __name__ == "__main__":
            sys.exit(main())
        """))
    one = measure(None, tmp_path / "m.so", [1, 3, 32, 32], work, tool)[0]
    two = measure(None, tmp_path / "m.so", [1, 3, 32, 32], work, tool, threads=2)[0]
    assert (one.threads, one.insns_m, one.other_vcpu_insns_m) == (1, 100.0, 0.0)
    assert (two.threads, two.insns_m, two.other_vcpu_insns_m) == (2, 52.0, 52.0)
    (line,) = thread_split(one, two)
    assert line == (f"tvm on 2 threads ({LABEL}): main thread 52.0 M instructions, other threads 52.0 M; together "
                    "1.040x one thread's 100.0 M; parallel efficiency 0.96 (one thread's / (2 x the busiest "
                    "thread's), the pool's waiting counted as work)")
    with pytest.raises(EdgeError, match=r"runs ONNX Runtime and the peers on one thread only"):
        measure(tmp_path / "m.onnx", tmp_path / "m.so", [1, 3, 32, 32], work, tool, threads=2)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the rig check asks for root")
def test_a72_int8_takes_only_an_int8_package_and_only_with_the_proxy(tmp_path, capsys, onnx_package):
    assert main(["m2unet", "--a72-int8", str(onnx_package), "-o", str(tmp_path / "a")]) == 2
    assert "--a72-int8, --a72-no-mca and --a72-no-ort go with --a72-proxy" in capsys.readouterr().err
    work, tool = fake_rig(tmp_path, "")
    assert main(["m2unet", "--a72-proxy", "--a72-work", str(work), "--a72-tool", str(tool), "--a72-int8",
                 str(onnx_package), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an int8 package" in err[0] and "--quantize int8 --target arm64" in err[0]
    assert not (tmp_path / "b").exists()
