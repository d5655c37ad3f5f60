"""Benchmark reports: ``results.json`` (typed records, a schema version, machine info), CSV, Markdown and one
self-contained HTML page (inline CSS, plots as base64 PNG), merged from any number of runs.

Numbers are stored raw with units in the field names (``p50_ms``, ``peak_rss_mib``, ``energy_per_image_j``);
they are formatted only here. Every output is rendered in memory first and then written through temporary
files renamed into place, so an error leaves no half-written report.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.imageio import write_files_atomic
from benchmarks.jsonio import read_json

SCHEMA = "vessel-edge-bench-results"
SCHEMA_VERSION = 1
REFERENCE_BACKEND = "onnxruntime"  # ratios are given against ONNX Runtime (the common peer) when it ran

# The M2U-Net paper's own measurements (seeds/002, Tables 2-4 and Sec. 4), shown beside ours.
PUBLISHED = [
    {"model": "m2unet", "what": "params", "value": "0.55 M", "where": "Table 2"},
    {"model": "m2unet", "what": "weights file", "value": "2.2 MB", "where": "Table 2"},
    {"model": "m2unet", "what": "MAdds 3x544x544 (DRIVE)", "value": "1.4 B", "where": "Table 2"},
    {"model": "m2unet", "what": "MAdds 3x960x960 (CHASE_DB1)", "value": "4.4 B", "where": "Table 2"},
    {"model": "m2unet", "what": "RK3399 TVM, 2x Cortex-A72: DRIVE / CHASE / HRF", "value": "577 ms / 1.67 s / 14.7 s",
     "where": "Tables 2-4"},
    {"model": "m2unet", "what": "RK3399 PyTorch (NNPACK), 1x Cortex-A72: DRIVE / CHASE", "value": "5.87 s / 23.5 s",
     "where": "Table 2"},
    {"model": "m2unet", "what": "GTX 1080 Ti: DRIVE / CHASE / HRF", "value": "6 ms / 7 ms / 19.9 ms",
     "where": "Tables 3-4"},
    {"model": "m2unet", "what": "RK3399 board power: inference / idle", "value": "9.6 W / 3.6 W", "where": "Sec. 4"},
    {"model": "unet", "what": "params / MAdds 544x544", "value": "31.03 M / 246.6 B", "where": "Table 2"},
    {"model": "hybridnetseg", "what": "params / MACs 512x512", "value": "0.71 M / 3.52 G",
     "where": "seeds/001 Table 5"},
]


# ----------------------------------------------------------------------------------------------------------
# Documents


def document(runs: list[dict]) -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}


def load_results(path: str | Path) -> list[dict]:
    """The runs of one results file; a file of another schema or schema version is refused in one line."""
    p = Path(path)
    data = read_json(p, "", "; pass results.json files of edge-bench")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise EdgeError(f"{p} is not an edge-bench results file (schema {schema!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise EdgeError(f"{p} has results schema_version {data.get('schema_version')}, this edge-bench reads version "
                        f"{SCHEMA_VERSION}; re-run the benchmark with this release or report with the release "
                        "that wrote it")
    return list(data.get("runs", []))


def merge(paths: list[str | Path]) -> dict:
    """One document of all runs in ``paths`` (a run found twice, by run_id, is kept once)."""
    if not paths:
        raise EdgeError("edge-bench report needs at least one results.json")
    runs: dict[str, dict] = {}
    for p in paths:
        for r in load_results(p):
            runs.setdefault(r["run_id"], r)
    return document(list(runs.values()))


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _f(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}{unit}"
    return str(v)


def _hw(hw: list[int] | None) -> str:
    return "x".join(map(str, hw)) if hw else "–"


def case_label(c: dict) -> str:
    if c["kind"] == "tile":
        return f"tile {_hw(c['tile_hw'])}"
    n = c["tiles"]
    return f"{c['image']} {_hw(c['image_hw'])} ({n} tile{'' if n == 1 else 's'} of {_hw(c['tile_hw'])})"


def _case_key(c: dict) -> tuple:
    return (c["model"], c["kind"], tuple(c["tile_hw"]), c.get("image"), tuple(c["image_hw"]))


def case_macs(run: dict, c: dict) -> int | None:
    """MACs (conv/gemm) of one sample of case ``c``: the complexity record's MACs of the model at the case's tile,
    times the tiles a full image is cut into (overlaps are computed twice, so they count). None when the run has no
    complexity record for that model and tile."""
    for k in run.get("complexity", []):
        if k["model"] == c["model"] and list(k["input_shape"][2:]) == list(c["tile_hw"]) and k.get("macs"):
            return int(k["macs"]) * int(c["tiles"])
    return None


def gmac_per_s(run: dict, c: dict) -> float | None:
    """Throughput of an ok case: :func:`case_macs` / p50, in GMAC/s; None without MACs or latency."""
    macs = case_macs(run, c)
    p50 = (c.get("latency") or {}).get("p50_ms")
    if c["status"] != "ok" or macs is None or not p50:
        return None
    return macs / 1e9 / (p50 / 1e3)


def full_image_overhead(run: dict, c: dict) -> float | None:
    """A full image's p50 over its MAC-proportional time: the p50 of one tile of the same shape, model and
    backend in the same run x image pixels / tile pixels. 1.0 is every pixel computed once at the tile's speed;
    the overlaps, the padding and the blending make it larger. None for tiles, or without that tile case."""
    if c["kind"] != "image" or c["status"] != "ok":
        return None
    tile = next((t for t in run["cases"] if t["kind"] == "tile" and t["status"] == "ok" and t["model"] == c["model"]
                 and t["backend"] == c["backend"] and list(t["tile_hw"]) == list(c["tile_hw"])), None)
    if tile is None:
        return None
    (th, tw), (ih, iw) = c["tile_hw"], c["image_hw"]
    return c["latency"]["p50_ms"] / (tile["latency"]["p50_ms"] * ih * iw / (th * tw))


def ratios(run: dict, numerator: str, denominator: str) -> list[dict]:
    """p50 ratios ``numerator / denominator`` for every input both ran on successfully."""
    by: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for c in run["cases"]:
        if c["status"] == "ok":
            by[_case_key(c)][c["backend"]] = c
    out = []
    for key, bs in by.items():
        if numerator in bs and denominator in bs:
            n, d = bs[numerator]["latency"]["p50_ms"], bs[denominator]["latency"]["p50_ms"]
            out.append({"model": key[0], "case": case_label(bs[numerator]), "numerator": numerator,
                        "denominator": denominator, "ratio": n / d if d else None,
                        "numerator_p50_ms": n, "denominator_p50_ms": d})
    return out


def fmt_ratio(r: float | None) -> str:
    """``0.375x (2.67x faster)``, ``4.9x (4.9x slower)``: a p50 time ratio, three significant digits, with how
    many times faster or slower the numerator is."""
    if r is None:
        return "–"
    if r <= 0:
        return f"{r:.3g}x"
    return f"{r:.3g}x ({1 / r:.3g}x faster)" if r < 1 else f"{r:.3g}x ({r:.3g}x slower)" if r > 1 else "1x"


def _energy_cell(e: dict | None) -> str:
    if not e:
        return "–"
    if e["kind"] == "unavailable":
        return "unavailable (see Energy)"
    v = e.get("net_energy_per_image_j") if e.get("net_energy_per_image_j") is not None else e.get("energy_per_image_j")
    net = " net of idle" if e.get("net_energy_per_image_j") is not None else ""
    return f"{_f(v, 3)} J{net} ({e['kind']})"


# ----------------------------------------------------------------------------------------------------------
# Tables (rows of plain strings; rendered as Markdown or HTML)


def machine_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    head = ["run", "CPU", "LLVM -mcpu", "cores", "memory", "GPUs", "threads / cores used", "versions", "meters"]
    rows = []
    for r in doc["runs"]:
        m, s = r["machine"], r["settings"]
        v = m.get("versions", {})
        vers = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino", "tvm", "onnx", "ncnn",
                                                  "mnn", "ai_edge_litert") if v.get(k))
        gpus = ", ".join(g["name"] for g in m.get("gpus") or []) or "none"
        rows.append([r["label"], m.get("cpu_model") or "?", m.get("llvm_cpu") or "?",
                     f"{m.get('cores_physical')} physical / {m.get('cores_logical')} logical",
                     f"{_f(m.get('memory_total_mib', 0) / 1024, 1)} GiB", gpus,
                     f"{s.get('threads') or 'all'} / {','.join(map(str, s['cores'])) if s.get('cores') else 'any'}"
                     + (" (interleaved)" if s.get("interleave") else ""),
                     vers, "; ".join(m.get("meter_sources") or []) or "none"])
    return head, rows


def complexity_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    head = ["model", "input", "params", "paper params", "GMACs (conv/gemm)", "paper GMACs", "FlopCounterMode GMACs",
            "other GOPs (resize, BN, element-wise)", "weights file", "ONNX", "TVM library", "TVM planned activations"]
    rows, seen = [], set()
    for r in doc["runs"]:
        for c in r["complexity"]:
            key = (c["model"], tuple(c["input_shape"]))
            if key in seen:
                continue
            seen.add(key)
            scaled = " (scaled)" if "scaled" in (c.get("paper_gmacs_note") or "") else ""
            paper_g = _f(c["paper_gmacs"], 2) + scaled if c.get("paper_gmacs") else "–"
            other = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in sorted(c["other_ops"].items(), key=lambda kv: -kv[1])
                              if v)
            rows.append([
                c["model"], _hw(c["input_shape"]), f"{c['params']:,} ({c['params_source']})",
                _f(c["paper_params"] / 1e6, 2, " M") if c.get("paper_params") else "–",
                _f(c["gmacs"], 3), paper_g,
                _f(c["macs_torch_flopcounter"] / 1e9, 3) if c.get("macs_torch_flopcounter") else "–",
                f"{_f(c['other_gops'], 3)} ({other})",
                (f"{_f(c['weights_bytes'] / 1e6, 2, ' MB')} ({c['weights_file'] or c['weights_bytes_source']})"
                 if c.get("weights_bytes") else "–"),
                _f(c["onnx_bytes"] / 1e6, 2, " MB") if c.get("onnx_bytes") else "–",
                _f(c["library_bytes"] / 1e6, 2, " MB") if c.get("library_bytes") else "–",
                _f(c["tvm_planned_mib"], 1, " MiB") + f" (unplanned {_f(c['tvm_unplanned_mib'], 1)} MiB)"
                if c.get("tvm_planned_mib") is not None else c.get("tvm_planned_status", "–")])
    return head, rows


def parity_cell(c: dict, key: str = "parity") -> str:
    """Max |difference| of the case's probabilities to ONNX Runtime's (``key`` parity_torch: PyTorch's) on the same
    input ('–' when not compared)."""
    p = (c.get("info") or {}).get(key)
    if not p:
        return "–"
    if "max_abs_diff_prob" not in p:
        return p.get("error", "–")
    return f"{p['max_abs_diff_prob']:.1e}" + ("" if p.get("passed") else " (over 1e-4)")


def _overhead_cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def latency_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    head = ["run", "model", "input", "backend", "device", "threads", "load 1 min", "n", "p10 ms", "p50 ms", "p90 ms",
            "p99 ms", "mean ± std ms", "min ms", "GMAC/s at p50", "full-image overhead", "max |Δp| vs ONNX Runtime",
            "max |Δp| vs PyTorch", "peak RSS", "energy / inference"]
    rows = []
    for r in doc["runs"]:
        for c in r["cases"]:
            load = [v for v in c.get("load_avg_1m") or [] if v is not None]
            base = [r["label"], c["model"], case_label(c), c["backend_label"], c.get("device") or "–",
                    str(c.get("threads") or "–"), _f(max(load), 1) if load else "–"]
            if c["status"] != "ok":
                rows.append(base + [c["status"]] + [""] * (len(head) - len(base) - 1))
                continue
            lat, mem = c["latency"], c.get("memory") or {}
            rows.append(base + [str(lat["n_samples"]), _f(lat.get("p10_ms"), 1), _f(lat["p50_ms"], 1),
                                _f(lat["p90_ms"], 1), _f(lat["p99_ms"], 1),
                                f"{_f(lat['mean_ms'], 1)} ± {_f(lat['std_ms'], 1)}", _f(lat["min_ms"], 1),
                                _f(gmac_per_s(r, c), 2), _overhead_cell(full_image_overhead(r, c)), parity_cell(c),
                                parity_cell(c, "parity_torch"),
                                _f(mem.get("peak_rss_mib"), 0, " MiB") if mem.get("peak_rss_mib") else "–",
                                _energy_cell(c.get("energy"))])
    return head, rows


def ratio_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    from benchmarks.latency import LABELS

    head = ["run", "model", "input", "ratio of p50", "value"]
    rows = []
    for r in doc["runs"]:
        present = {c["backend"] for c in r["cases"] if c["status"] == "ok"}
        ref = REFERENCE_BACKEND if REFERENCE_BACKEND in present else None
        pairs = []
        if ref:
            pairs += [(b, ref) for b in sorted(present) if b != ref]
        if "torch" in present:
            pairs += [(b, "torch") for b in sorted(present) if b not in ("torch", ref)]
        for num, den in pairs:
            for q in ratios(r, num, den):
                rows.append([r["label"], q["model"], q["case"], f"{LABELS.get(num, num)} / {LABELS.get(den, den)}",
                             fmt_ratio(q["ratio"])])
    return head, rows


A72_TITLE = "Cortex-A72 proxy: estimated (emulated A72), not board timings"


def a72_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The arm64proxy counts of every run (edge-bench --a72-proxy), per inference, one thread."""
    from benchmarks.a72_proxy import HEAD, cells, groups

    head = ["run", "model", "input", *HEAD, "figures"]
    rows = []
    for r in doc["runs"]:
        for model, shape, rs in groups(r.get("a72_proxy") or []):
            rows += [[r["label"], model, _hw(shape), *cells(x), x.label] for x in rs]
    return head, rows


def a72_lines(doc: dict) -> list[str]:
    """Ratio and goal lines of the arm64proxy counts (TVM vs ONNX Runtime), each labelled as an estimate."""
    from benchmarks.a72_proxy import groups, ratio_lines

    out = []
    for r in doc["runs"]:
        for model, shape, rs in groups(r.get("a72_proxy") or []):
            out += [f"{r['label']}: {model} {_hw(shape)}: {line}" if len(doc["runs"]) > 1 else
                    f"{model} {_hw(shape)}: {line}" for line in ratio_lines(rs)]
    return out


def memory_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    head = ["run", "model", "input", "backend", "peak RSS MiB", "RSS after load MiB", "inference peak MiB",
            "GPU peak MiB", "measured in"]
    rows = []
    for r in doc["runs"]:
        for c in r["cases"]:
            m = c.get("memory")
            if c["status"] != "ok" or not m:
                continue
            rows.append([r["label"], c["model"], case_label(c), c["backend_label"], _f(m.get("peak_rss_mib"), 0),
                         _f(m.get("rss_after_load_mib"), 0), _f(m.get("inference_peak_rss_mib"), 0),
                         _f(m.get("gpu_peak_mib"), 0), m.get("measured_in") or ""])
    return head, rows


# ----------------------------------------------------------------------------------------------------------
# Plots


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


COLORS = {"torch": "#d62728", "onnxruntime": "#1f77b4", "tvm": "#2ca02c", "openvino": "#9467bd",
          "ncnn": "#8c564b", "mnn": "#e377c2", "tflite": "#bcbd22",
          "torch-cuda": "#ff9896", "onnxruntime-cuda": "#aec7e8", "tvm-cuda": "#98df8a", "tvm-rpc": "#17becf"}


def latency_plot(doc: dict) -> bytes | None:
    """Grouped bars: p50 per backend for every input of every run; whiskers to p90; log scale."""
    from matplotlib.figure import Figure

    groups: dict[str, dict[str, dict]] = {}
    backends: list[str] = []
    multi = len(doc["runs"]) > 1
    for r in doc["runs"]:
        for c in r["cases"]:
            if c["status"] != "ok":
                continue
            label = case_label(c).replace(" (", "\n(")
            g = (f"{r['label'][:24]}\n" if multi else "") + f"{c['model']}\n{label}"
            groups.setdefault(g, {})[c["backend"]] = c["latency"]
            if c["backend"] not in backends:
                backends.append(c["backend"])
    if not groups:
        return None
    from benchmarks.latency import LABELS

    fig = Figure(figsize=(max(6.0, 1.5 * len(groups) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        xs, ys, hi = [], [], []
        for j, g in enumerate(groups):
            lat = groups[g].get(b)
            if lat:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(lat["p50_ms"])
                hi.append(max(0.0, lat["p90_ms"] - lat["p50_ms"]))
        ax.bar(xs, ys, width, label=LABELS.get(b, b), color=COLORS.get(b), yerr=[[0] * len(hi), hi], capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("latency p50, ms (whisker: p90; log scale)")
    ax.set_title("Latency per backend and input")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    return _png(fig)


def pareto_plot(doc: dict) -> bytes | None:
    """The paper's Figure 4 as a Pareto plot: GMACs (or Dice when given) against latency p50 of one tile, marker
    area proportional to the parameter count; the non-dominated points are joined."""
    from matplotlib.figure import Figure

    from benchmarks.latency import LABELS

    pts = []
    for r in doc["runs"]:
        cx = {(c["model"], tuple(c["input_shape"][2:])): c for c in r["complexity"]}
        dice = r.get("dice") or {}
        for c in r["cases"]:
            if c["status"] != "ok" or c["kind"] != "tile":
                continue
            k = cx.get((c["model"], tuple(c["tile_hw"])))
            if not k:
                continue
            pts.append({"x": c["latency"]["p50_ms"], "gmacs": k["gmacs"], "dice": dice.get(c["model"]),
                        "params": k["params"], "backend": c["backend"],
                        "label": f"{c['model']} {_hw(c['tile_hw'])}"
                                 + (f"\n{r['label'][:20]}" if len(doc["runs"]) > 1 else "")})
    if not pts:
        return None
    use_dice = all(p["dice"] is not None for p in pts)
    for p in pts:
        p["y"] = p["dice"] if use_dice else p["gmacs"]
    fig = Figure(figsize=(7, 4.6))
    ax = fig.add_subplot()
    pmax = max(p["params"] for p in pts)
    seen = set()
    for p in pts:
        area = 60 + 900 * math.sqrt(p["params"] / pmax)
        lab = LABELS.get(p["backend"], p["backend"])
        ax.scatter(p["x"], p["y"], s=area, alpha=0.55, color=COLORS.get(p["backend"]), edgecolors="k",
                   label=None if lab in seen else lab)
        seen.add(lab)
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(6, 4), textcoords="offset points")
    # Pareto front: lower latency and lower MACs (or higher Dice) are better.
    better = (lambda a, b: a["y"] >= b["y"]) if use_dice else (lambda a, b: a["y"] <= b["y"])
    front = sorted((p for p in pts if not any(q is not p and q["x"] <= p["x"] and better(q, p)
                                              and (q["x"], q["y"]) != (p["x"], p["y"]) for q in pts)),
                   key=lambda p: p["x"])
    if len(front) > 1:
        ax.plot([p["x"] for p in front], [p["y"] for p in front], "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 of one network input, ms (log scale)")
    ax.set_ylabel("Dice" if use_dice else "GMACs (conv/gemm)")
    ax.set_title(f"{'Dice' if use_dice else 'MACs'} vs latency; marker area ~ parameters")
    ax.legend(fontsize=8, markerscale=0.4)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


# ----------------------------------------------------------------------------------------------------------
# Renderers


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def energy_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Measured and estimated energy per case; unavailable meters once per run and reason."""
    head = ["run", "model", "input", "backend", "kind", "energy / inference J", "net of idle J", "mean power W",
            "idle W", "source"]
    rows, said = [], set()
    for r in doc["runs"]:
        for c in r["cases"]:
            e = c.get("energy")
            if c["status"] != "ok" or not e:
                continue
            if e["kind"] == "unavailable":
                if (r["run_id"], e["status"]) not in said:
                    said.add((r["run_id"], e["status"]))
                    rows.append([r["label"], "all", "", "", e["status"], "", "", "", "", f"meter {e['meter']}"])
                continue
            rows.append([r["label"], c["model"], case_label(c), c["backend_label"], e["kind"],
                         _f(e.get("energy_per_image_j"), 4), _f(e.get("net_energy_per_image_j"), 4),
                         _f(e.get("mean_power_w"), 2), _f(e.get("idle_power_w"), 2), e.get("source") or ""])
    return head, rows


SECTIONS = [("Machines", machine_rows), ("Complexity", complexity_rows), ("Latency", latency_rows),
            ("Latency ratios (p50)", ratio_rows), ("Memory", memory_rows), ("Energy", energy_rows)]


def published_rows() -> tuple[list[str], list[list[str]]]:
    return ["model", "figure", "value", "where"], [[p["model"], p["what"], p["value"], p["where"]] for p in PUBLISHED]


def _notes(doc: dict) -> list[str]:
    out = []
    for r in doc["runs"]:
        out += [f"{r['label']}: {n}" for n in r.get("notes", [])]
        idle = r.get("idle_power")
        if idle:
            out.append(f"{r['label']}: idle power {_f(idle.get('power_w'), 2, ' W')} ({idle['kind']}; "
                       f"{idle['status']}; {idle.get('source') or ''})")
    return out


def markdown(doc: dict, plots: dict[str, bytes]) -> str:
    parts = [f"# edge-bench report\n\n{len(doc['runs'])} run(s), schema {SCHEMA} v{SCHEMA_VERSION}, "
             f"generated {doc['generated_utc']}.\n"]
    for title, fn in SECTIONS:
        head, rows = fn(doc)
        parts.append(f"## {title}\n\n" + (_md_table(head, rows) if rows else "_none_") + "\n")
    head, rows = a72_rows(doc)
    if rows:
        parts.append(f"## {A72_TITLE}\n\n" + _md_table(head, rows) + "\n\n"
                     + "\n".join(f"- {line}" for line in a72_lines(doc)) + "\n")
    for name in plots:
        parts.append(f"![{name}]({name}.png)\n")
    parts.append("## Published (M2U-Net paper and seeds)\n\n" + _md_table(*published_rows()) + "\n")
    notes = _notes(doc)
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(parts)


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; } tr:nth-child(even) td { background: #fafbfc; }
td.na { color: #a33; } .plots img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.meta { color: #666; }
"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for row in rows:
        tds = "".join(
            f"<td class=\"na\">{html.escape(str(c))}</td>" if str(c).startswith(("unavailable", "failed"))
            else f"<td>{html.escape(str(c))}</td>" for c in row)
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(doc: dict, plots: dict[str, bytes]) -> str:
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>edge-bench report</title>",
             f"<style>{CSS}</style></head><body><h1>edge-bench report</h1>",
             f"<p class=\"meta\">{len(doc['runs'])} run(s); schema {SCHEMA} v{SCHEMA_VERSION}; generated "
             f"{html.escape(doc['generated_utc'])}</p>"]
    for title, fn in SECTIONS:
        head, rows = fn(doc)
        parts.append(f"<h2>{html.escape(title)}</h2>" + (_html_table(head, rows) if rows else "<p>none</p>"))
    head, rows = a72_rows(doc)
    if rows:
        parts.append(f"<h2>{html.escape(A72_TITLE)}</h2>" + _html_table(head, rows) + "<ul>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in a72_lines(doc)) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2><div class=\"plots\">")
        for name, png in plots.items():
            parts.append(f"<img alt=\"{html.escape(name)}\" src=\"data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}\">")
        parts.append("</div>")
    parts.append("<h2>Published (M2U-Net paper and seeds)</h2>" + _html_table(*published_rows()))
    notes = _notes(doc)
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


CASE_COLUMNS = ["run_id", "label", "model", "backend", "device", "kind", "image", "image_h", "image_w", "tile_h",
                "tile_w", "tiles", "threads", "cores", "interleaved", "status", "n_samples", "warmup_runs", "min_ms",
                "mean_ms", "std_ms", "p10_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "macs", "gmac_per_s",
                "full_image_overhead",
                "max_abs_diff_prob_vs_onnxruntime", "max_abs_diff_prob_vs_torch", "peak_rss_mib", "rss_after_load_mib",
                "inference_peak_rss_mib", "gpu_peak_mib", "energy_kind", "energy_source",
                "energy_status", "energy_per_image_j", "net_energy_per_image_j", "mean_power_w"]
COMPLEXITY_COLUMNS = ["run_id", "model", "input_shape", "params", "params_source", "macs", "gmacs", "other_gops",
                      "macs_torch_flopcounter", "paper_params", "paper_gmacs", "weights_bytes", "onnx_bytes",
                      "library_bytes", "tvm_planned_mib", "tvm_unplanned_mib"]


def _csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def cases_csv(doc: dict) -> str:
    rows = []
    for r in doc["runs"]:
        for c in r["cases"]:
            lat, mem, en = c.get("latency") or {}, c.get("memory") or {}, c.get("energy") or {}
            rows.append({"run_id": r["run_id"], "label": r["label"], "model": c["model"], "backend": c["backend"],
                         "device": c.get("device"), "kind": c["kind"], "image": c.get("image"),
                         "image_h": c["image_hw"][0], "image_w": c["image_hw"][1], "tile_h": c["tile_hw"][0],
                         "tile_w": c["tile_hw"][1], "tiles": c["tiles"], "threads": c.get("threads"),
                         "cores": " ".join(map(str, c.get("cores") or [])), "interleaved": c.get("interleaved"),
                         "status": c["status"], **lat, "macs": case_macs(r, c), "gmac_per_s": gmac_per_s(r, c),
                         "full_image_overhead": full_image_overhead(r, c),
                         "max_abs_diff_prob_vs_onnxruntime": ((c.get("info") or {}).get("parity") or {}).get(
                             "max_abs_diff_prob"),
                         "max_abs_diff_prob_vs_torch": ((c.get("info") or {}).get("parity_torch") or {}).get(
                             "max_abs_diff_prob"),
                         **{k: mem.get(k) for k in CASE_COLUMNS if k in mem},
                         "energy_kind": en.get("kind"), "energy_source": en.get("source"),
                         "energy_status": en.get("status"), "energy_per_image_j": en.get("energy_per_image_j"),
                         "net_energy_per_image_j": en.get("net_energy_per_image_j"),
                         "mean_power_w": en.get("mean_power_w")})
    return _csv(CASE_COLUMNS, rows)


A72_COLUMNS = ["run_id", "run", "model", "input_shape", "engine", "insns_m", "fmla_q128_m", "fp_scalar_m",
               "mca_cycles_m", "estimated_ms_at_1_8ghz", "l1d_miss_m", "l2_miss_m", "max_abs_diff_vs_ort",
               "max_abs_dp_vs_ort", "threads", "other_vcpu_insns_m", "emulation_s", "package", "label"]


def a72_csv(doc: dict) -> str | None:
    """The arm64proxy rows of every run, or None when no run has any."""
    rows = [{**d, "run_id": r["run_id"], "run": r["label"], "input_shape": _hw(d.get("input_shape"))}
            for r in doc["runs"] for d in r.get("a72_proxy") or []]
    return _csv(A72_COLUMNS, rows) if rows else None


def complexity_csv(doc: dict) -> str:
    rows = [{"run_id": r["run_id"], **c, "input_shape": "x".join(map(str, c["input_shape"]))}
            for r in doc["runs"] for c in r["complexity"]]
    return _csv(COMPLEXITY_COLUMNS, rows)


def render(doc: dict) -> dict[str, bytes]:
    """Every output file's name and bytes, rendered in memory."""
    plots = {k: v for k, v in (("latency", latency_plot(doc)), ("pareto", pareto_plot(doc))) if v}
    files = {"results.json": (json.dumps(doc, indent=1) + "\n").encode(),
             "results.csv": cases_csv(doc).encode(),
             "complexity.csv": complexity_csv(doc).encode(),
             "report.md": markdown(doc, plots).encode(),
             "report.html": html_page(doc, plots).encode()}
    proxy = a72_csv(doc)
    if proxy is not None:
        files["a72_proxy.csv"] = proxy.encode()
    files.update({f"{k}.png": v for k, v in plots.items()})
    return files


def write_report(doc: dict, outdir: str | Path) -> dict[str, Path]:
    """Render everything, then write the files atomically, all of them or none (:func:`edge.imageio.write_files_atomic`)."""
    out = Path(outdir)
    files = render(doc)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeError(f"cannot create {out} ({exc.strerror}); choose a writable -o") from None
    write_files_atomic({out / name: data for name, data in files.items()})
    return {name: out / name for name in files}
