"""Reports: JSON/CSV/Markdown/HTML written atomically, runs merged, other schema versions refused, and the HTML
rendered by a real headless browser."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess

import pytest

from benchmarks.cli import main
from benchmarks.report import SCHEMA, SCHEMA_VERSION, document, merge, ratios, render, write_report
from edge.errors import EdgeError


def test_report_files_hold_the_numbers(tmp_path, run_factory):
    doc = document([run_factory("board", {"torch": 300.0, "onnxruntime": 100.0, "tvm": 50.0}, energy_j=9.6)])
    paths = write_report(doc, tmp_path / "out")
    assert sorted(paths) == ["complexity.csv", "latency.png", "pareto.png", "report.html", "report.md",
                             "results.csv", "results.json"]
    data = json.loads(paths["results.json"].read_text())
    assert data["schema"] == SCHEMA and data["schema_version"] == SCHEMA_VERSION
    case = data["runs"][0]["cases"][0]
    assert case["latency"]["p50_ms"] == 300.0 and "p99_ms" in case["latency"]
    assert case["memory"]["peak_rss_mib"] == 300.0 and case["energy"]["energy_per_image_j"] == pytest.approx(1.92)

    rows = list(csv.DictReader(io.StringIO(paths["results.csv"].read_text())))
    assert len(rows) == 7  # 3 backends x (tile + HRF image) + the unavailable GPU baseline
    tvm_tile = next(r for r in rows if r["backend"] == "tvm" and r["kind"] == "tile")
    assert float(tvm_tile["p50_ms"]) == 50.0 and tvm_tile["energy_kind"] == "measured"
    gpu = next(r for r in rows if r["backend"] == "torch-cuda")
    assert gpu["status"] == "unavailable: no CUDA device" and gpu["p50_ms"] == ""  # empty, never 0

    md = paths["report.md"].read_text()
    assert "| model | input | params |" in md and "TVM / ONNX Runtime | 0.5x (2x faster) |" in md
    assert "unavailable: no CUDA device" in md and "577 ms / 1.67 s / 14.7 s" in md
    page = paths["report.html"].read_text()
    assert page.count("<table>") >= 6 and page.count('src="data:image/png;base64,') == 2
    assert "&lt;html&gt; &amp; characters" in page and "<link" not in page and "<script" not in page
    assert paths["latency.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_pair_backends_on_the_same_input(run_factory):
    run = run_factory("board", {"torch": 300.0, "onnxruntime": 100.0, "tvm": 6.0})
    q = {r["case"]: r["ratio"] for r in ratios(run, "tvm", "onnxruntime")}
    assert q == {"tile 544x544": pytest.approx(0.06), "hrf 2336x3504 (40 tiles of 544x544)": pytest.approx(0.06)}
    assert ratios(run, "torch-cuda", "torch") == []  # an unavailable case pairs with nothing


def test_cli_report_merges_a_board_run_and_a_gpu_run(tmp_path, run_factory, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(document([run_factory("rk3399", {"tvm": 577.0, "torch": 5870.0})])))
    b.write_text(json.dumps(document([run_factory("gtx", {"torch-cuda": 6.0}, device="cuda", hrf=False)])))
    assert main(["report", str(a), str(b), str(a), "-o", str(tmp_path / "merged")]) == 0
    assert "merged 2 run(s)" in capsys.readouterr().out
    data = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["rk3399", "gtx"]
    page = (tmp_path / "merged" / "report.html").read_text()
    assert "rk3399" in page and "gtx" in page and "PyTorch CUDA" in page


def test_another_schema_version_is_a_one_line_error(tmp_path, run_factory, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**document([run_factory("x", {"tvm": 1.0})]), "schema_version": 0}))
    with pytest.raises(EdgeError, match="schema_version 0, this edge-bench reads version 1"):
        merge([old])
    assert main(["report", str(old), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    notjson = tmp_path / "n.json"
    notjson.write_text("{")
    assert main(["report", str(notjson), "-o", str(tmp_path / "out")]) == 2
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"format": "vessel-edge-package"}))
    with pytest.raises(EdgeError, match="not an edge-bench results file"):
        merge([other])


def test_a_failed_render_leaves_the_previous_report_untouched(tmp_path, run_factory):
    out = tmp_path / "out"
    write_report(document([run_factory("good", {"tvm": 5.0})]), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = document([run_factory("bad", {"tvm": 5.0})])
    del broken["runs"][0]["cases"][0]["latency"]  # an ok case without latency cannot be rendered
    with pytest.raises(KeyError):
        write_report(broken, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, nothing half-written


def test_render_only_holds_complete_files(run_factory):
    files = render(document([run_factory("x", {"onnxruntime": 2.0})]))
    assert files["report.html"].rstrip().endswith(b"</html>")
    assert json.loads(files["results.json"])["runs"][0]["label"] == "x"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`; CI has it)")
def test_headless_chromium_renders_the_tables_and_plots(tmp_path, run_factory):
    paths = write_report(document([run_factory("board", {"torch": 300.0, "onnxruntime": 100.0, "tvm": 50.0},
                                               energy_j=9.6)]), tmp_path / "out")
    url = paths["report.html"].resolve().as_uri()
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert len(re.findall(r"<table>", dom)) >= 6
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) == 2
    assert "TVM / ONNX Runtime" in dom

    shot = tmp_path / "shot.png"
    subprocess.run(base + ["--window-size=1280,2000", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    from matplotlib.image import imread

    px = imread(str(shot))
    assert px.shape[0] == 2000 and px.shape[1] == 1280
    assert px[..., :3].std() > 0.05  # not a blank page


def test_gmac_per_s_is_the_work_of_a_sample_over_its_p50(run_factory, tmp_path):
    from benchmarks.cli import format_summary
    from benchmarks.report import case_macs, gmac_per_s, latency_rows

    run = run_factory("x86", {"onnxruntime": 100.0, "tvm": 50.0})
    macs = 1_418_860_528  # the fixture's complexity record: m2unet at 544x544
    by = {(c["backend"], c["kind"]): c for c in run["cases"]}
    tile, image = by[("tvm", "tile")], by[("tvm", "image")]
    assert case_macs(run, tile) == macs and case_macs(run, image) == 40 * macs  # 40 tiles of 544x544
    assert gmac_per_s(run, tile) == pytest.approx(macs / 1e9 / 0.050)  # 28.4 GMAC/s at p50 50 ms
    assert gmac_per_s(run, image) == pytest.approx(40 * macs / 1e9 / 2.0)  # the image's p50 is 40 x 50 ms
    assert gmac_per_s(run, by[("torch-cuda", "tile")]) is None  # unavailable: no figure, never 0
    other = dict(tile, model="unet")
    assert case_macs(run, other) is None and gmac_per_s(run, other) is None  # no complexity record for it

    doc = document([run])
    head, rows = latency_rows(doc)
    col = head.index("GMAC/s at p50")
    tvm_rows = [row for row in rows if row[3] == "TVM"]
    assert [row[col] for row in tvm_rows] == ["28.38", "28.38"]
    assert [row[col] for row in rows if row[3] == "ONNX Runtime"] == ["14.19", "14.19"]
    paths = write_report(doc, tmp_path / "out")
    csv_rows = list(csv.DictReader(io.StringIO(paths["results.csv"].read_text())))
    img = next(r for r in csv_rows if r["backend"] == "tvm" and r["kind"] == "image")
    assert int(img["macs"]) == 40 * macs and float(img["gmac_per_s"]) == pytest.approx(28.377, abs=1e-3)
    assert "| GMAC/s at p50 |" in paths["report.md"].read_text() and "GMAC/s at p50" in paths["report.html"].read_text()
    summary = format_summary(doc, paths)
    assert summary.count("GMAC/s") == 4 and "28.38 GMAC/s" in summary


def test_full_image_overhead_against_the_same_runs_tile(tmp_path, run_factory):
    """The HRF image of the factory takes 40 tiles' time: 40 x 544^2 / (2336 x 3504) = 1.45x its pixels' cost,
    in the table, the CSV and the summary; a tile has none, and an image without its tile case has none."""
    from benchmarks.report import full_image_overhead

    run = run_factory("host", {"onnxruntime": 100.0, "tvm": 50.0})
    expected = 40 * 544 * 544 / (2336 * 3504)
    image = next(c for c in run["cases"] if c["kind"] == "image" and c["backend"] == "tvm")
    assert full_image_overhead(run, image) == pytest.approx(expected)
    assert full_image_overhead(run, next(c for c in run["cases"] if c["kind"] == "tile")) is None
    no_tile = {**run, "cases": [c for c in run["cases"] if not (c["kind"] == "tile" and c["backend"] == "tvm")]}
    assert full_image_overhead(no_tile, image) is None
    paths = write_report(document([run]), tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(paths["results.csv"].read_text())))
    img_rows = [r for r in rows if r["kind"] == "image"]
    assert img_rows and all(float(r["full_image_overhead"]) == pytest.approx(expected) for r in img_rows)
    assert all(r["full_image_overhead"] == "" for r in rows if r["kind"] == "tile")
    assert "full-image overhead" in paths["report.md"].read_text() and "| 1.45x |" in paths["report.md"].read_text()
