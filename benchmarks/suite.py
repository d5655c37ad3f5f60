"""The edge-bench run: a :class:`benchmarks.plan.Plan` -> artifacts and complexity in this process
(:mod:`benchmarks.packages`) -> every case in a child process (:mod:`benchmarks.child`) -> parity against ONNX
Runtime and PyTorch, the board (RPC) and emulated Cortex-A72 counts -> one run record (typed dicts, units in field
names) that :mod:`benchmarks.report` writes and merges.

Isolation: by default every (backend, input) case runs in its own child process, so peak memory, thread pools
and imported runtimes never mix. With ``interleave`` the backends of one input share a child and are timed
round-robin (the fairest latency ratios on a shared or drifting machine); their memory then comes from short
isolated children, and their energy is not attributed (one meter window would span all backends).
"""
from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.errors import EdgeError
from benchmarks.child import CaseSpec, record, run_child
from benchmarks.console import log
from benchmarks.latency import LatencyStats, cuda_unavailable
from benchmarks.memory import MemoryRecord
from benchmarks.packages import Artifact, check_packages, resolve
from benchmarks.plan import Plan, check_plan, image_size
from benchmarks.power import create_meter, measure_idle, unavailable


def run_plan(plan: Plan, verbose: bool = False) -> dict:
    """Measure everything the plan asks for and return one run record (see :mod:`benchmarks.report`)."""
    from benchmarks.machine import machine_info

    backends, optional = check_plan(plan)
    images = [image_size(i) for i in plan.images]
    create_meter(plan.meter)  # an unknown meter name fails here, before any export
    if plan.weights and not Path(plan.weights).is_file():
        what = "is a folder, not a state dict file" if Path(plan.weights).is_dir() else "does not exist"
        raise EdgeError(f"--weights {plan.weights} {what}; pass a .pth/.pt file saved with "
                        "torch.save(model.state_dict(), path)")
    check_packages(plan, backends)  # a package that cannot be used fails here, before any output folder
    outdir = Path(plan.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if plan.weights is None:
        notes.append("no --weights: models use shipped weights where the project has them, else random weights "
                     "(latency and memory do not depend on weight values)")

    idle = None
    if plan.idle_seconds > 0:
        meter = create_meter(plan.meter, "cpu")
        log(f"measuring idle power for {plan.idle_seconds:g} s with meter {meter.name}")
        idle = measure_idle(meter, plan.idle_seconds)
        log(f"idle power: {idle.power_w:.2f} W ({idle.kind})" if idle.power_w is not None else f"idle: {idle.status}")

    job = {"runs": plan.runs, "seconds": plan.seconds, "warmup": plan.warmup, "image_warmup": plan.image_warmup,
           "threads": plan.threads, "cores": plan.cores, "meter": plan.meter, "interleave": plan.interleave,
           "idle": idle.to_json() if idle and idle.power_w is not None else None, "image_runs": plan.image_runs,
           "gap_s": plan.interleave_gap_ms / 1e3, "budget_ms": plan.budget_ms, "min_samples": plan.min_samples}
    available_optional = [b for b in optional if not cuda_unavailable(b)]
    complexity, cases = [], []
    proxy_arts: list[Artifact] = []
    for item in plan.models:
        arts = resolve(item, plan, outdir, set(backends) | set(available_optional))
        for art in arts:
            log(f"complexity of {art.model} at {art.tile_hw[0]}x{art.tile_hw[1]}")
            complexity.append(_complexity(art))
        tile_for_images = plan.image_tile
        if tile_for_images is None:
            spec_tile = _default_tile(arts[0])
            tile_for_images = spec_tile
        image_art = next((a for a in arts if tuple(a.tile_hw) == tuple(tile_for_images)), None)
        groups: list[tuple[Artifact, list[CaseSpec]]] = []
        for art in arts:
            groups.append((art, [CaseSpec(b, "tile", art.tile_hw) for b in backends + optional]))
        if images and image_art is None:
            notes.append(f"{arts[0].model}: full-image runs use the {tile_for_images[0]}x{tile_for_images[1]} tile "
                         "(--image-tile, default the model's tile), which is not among --sizes: skipped")
            log(f"note: {notes[-1]}")
        elif images:
            th, tw = image_art.tile_hw
            for label, (ih, iw) in images:
                if ih < th or iw < tw:
                    notes.append(f"{image_art.model}: image {label} ({ih}x{iw}) is smaller than the {th}x{tw} tile: "
                                 "skipped")
                    continue
                if image_art.overlap >= min(th, tw):
                    notes.append(f"{image_art.model}: overlap {image_art.overlap} is not smaller than the tile "
                                 f"{th}x{tw}: full-image runs skipped")
                    break
                groups.append((image_art, [CaseSpec(b, "image", image_art.tile_hw, label, [ih, iw])
                                           for b in backends + optional]))
        for art, specs in groups:
            cases.extend(_run_group(art, specs, job, plan, optional, verbose))
        proxy_arts += arts

    a72 = _a72_proxy(proxy_arts, plan, notes) if plan.a72_proxy else []

    machine = machine_info()
    busy = busy_note(cases, len(machine["affinity"] or []) or machine["cores_logical"] or 1)
    if busy:
        notes.append(busy)
        log(f"note: {busy}")
    sources = sorted({c["energy"]["source"] for c in cases if c.get("energy") and c["energy"].get("source")})
    machine["meter_sources"] = sources
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "run_id": f"{socket.gethostname()}-{created}",
        "label": plan.label or f"{machine.get('cpu_model') or machine['arch']} ({socket.gethostname()})",
        "created_utc": created,
        "tool": "edge-bench",
        "machine": machine,
        "settings": {**{k: v for k, v in asdict(plan).items() if k not in ("dice", "label")}, "backends": backends},
        "idle_power": idle.to_json() if idle else None,
        "dice": dict(plan.dice),
        "complexity": complexity,
        "cases": cases,
        "a72_proxy": a72,
        "notes": notes,
    }


def _a72_proxy(arts: list[Artifact], plan: Plan, notes: list[str]) -> list[dict]:
    """ONNX Runtime (first: the reference; unless ``a72_ort`` is off), TVM, TVM's default lowering (tvm-default
    among the backends), the peers, and TVM on ``a72_threads`` threads, of every artifact's arm64 package on the
    emulated Cortex-A72. A failed count is a note, not the end of the run."""
    from benchmarks.a72_proxy import DEFAULT_TOOL, measure, thread_split
    from edge.package import load_package

    rows: list[dict] = []
    for art in arts:
        what = f"{art.model} {art.tile_hw[0]}x{art.tile_hw[1]}"
        if art.a72_package is None:
            notes.append(f"{what}: no A72 proxy: {art.package} is not an arm64 package (pass an arm64 package, "
                         "a registered model name or an ONNX file)")
            log(f"note: {notes[-1]}")
            continue
        pkg = load_package(art.a72_package)
        engines = (["ONNX Runtime"] * plan.a72_ort + ["TVM"] + ["ONNX Runtime int8"] * bool(plan.a72_int8)
                   + ["TVM default lowering"] * bool(art.a72_default_library))
        log(f"{what}: {', '.join(engines + plan.a72_peers)} on the emulated Cortex-A72 "
            f"(arm64proxy{', with the cache model' if plan.a72_cache else ''}; minutes)")
        try:
            from benchmarks.peers import convert

            peers = {p: convert(p, pkg.onnx, list(pkg.input_shape)) for p in plan.a72_peers}
            extra = {"tvm-default": Path(art.a72_default_library)} if art.a72_default_library else None
            tool = plan.a72_tool or DEFAULT_TOOL
            int8 = None
            if plan.a72_int8:
                q = load_package(plan.a72_int8)
                if tuple(q.input_shape) != tuple(pkg.input_shape):
                    raise EdgeError(f"--a72-int8 {plan.a72_int8} is a {'x'.join(map(str, q.input_shape[2:]))} "
                                    f"package, this one {'x'.join(map(str, pkg.input_shape[2:]))}; export it at the "
                                    "same tile (--input-size)")
                int8 = q.onnx
            got = measure(pkg.onnx if plan.a72_ort else None, pkg.library, list(pkg.input_shape), plan.a72_work,
                          tool, mca=plan.a72_mca, cache=plan.a72_cache, model=art.model, package=art.a72_package,
                          peers=peers, extra=extra, int8=int8)
            if plan.a72_threads > 1:  # TVM alone on more threads (the instrument runs the others on one)
                log(f"{what}: TVM on {plan.a72_threads} threads on the emulated Cortex-A72")
                many = measure(None, pkg.library, list(pkg.input_shape), plan.a72_work, tool, mca=plan.a72_mca,
                               cache=plan.a72_cache, model=art.model, package=art.a72_package,
                               threads=plan.a72_threads)
                one = next(r for r in got if r.engine == "tvm")
                for line in thread_split(one, many[0]):
                    notes.append(f"{what}: {line}")
                    log(f"note: {notes[-1]}")
                for r in many:  # another engine in the tables and ratios, beside the one-thread tvm row
                    r.engine = f"tvm ({plan.a72_threads} threads)"
                got += many
        except EdgeError as exc:
            notes.append(f"{what}: the A72 proxy failed: {exc}")
            log(f"note: {notes[-1]}")
            continue
        for r in got:
            log(f"{what} {r.engine:<4} {r.label}: {r.insns_m:.1f} M instructions, "
                f"{'n/a' if r.mca_cycles_m is None else f'{r.mca_cycles_m:.1f} M'} llvm-mca cycles")
        rows += [asdict(r) for r in got]
    return rows


def busy_note(cases: list[dict], cores: int) -> str | None:
    """A warning when the machine's load exceeded its cores while cases were sampled, else None."""
    loads = [v for c in cases for v in (c.get("load_avg_1m") or []) if v is not None]
    if not loads or max(loads) <= cores:
        return None
    return (f"the machine was busy while measuring (1-minute load average up to {max(loads):.1f} on {cores} cores): "
            "absolute latencies are contention-bound and multi-threaded runtimes suffer most; compare backends "
            "by the ratios of one --interleave run")


def _default_tile(art: Artifact) -> tuple[int, int]:
    if art.registered:
        from models import get_spec

        return tuple(get_spec(art.model).default_tile)  # type: ignore[return-value]
    return tuple(art.tile_hw)  # type: ignore[return-value]


def _describe(art: Artifact, spec: CaseSpec) -> str:
    if spec.kind == "tile":
        return f"{art.model} tile {spec.tile_hw[0]}x{spec.tile_hw[1]}"
    return f"{art.model} image {spec.image} {spec.image_hw[0]}x{spec.image_hw[1]} ({spec.tile_hw[0]}-px tiles)"


def _summary(rec: dict) -> str:
    if rec["status"] != "ok":
        return rec["status"]
    lat, mem = rec["latency"], rec["memory"] or {}
    peak = f", peak RSS {mem['peak_rss_mib']:.0f} MiB" if mem.get("peak_rss_mib") else ""
    return f"p50 {lat['p50_ms']:.1f} ms over {lat['n_samples']} samples{peak}"


PARITY_REFERENCE = "onnxruntime"
PARITY_TOL = 1e-4  # on probabilities, as edge-export gates every stage
# (reference backend, key under info); a mismatch with ONNX Runtime is also a note, PyTorch's is a figure only
PARITY_REFERENCES = ((PARITY_REFERENCE, "parity"), ("torch", "parity_torch"))


def attach_parity(recs: dict[str, dict], outputs: Path) -> None:
    """Each ok case's max |difference| to ONNX Runtime's output of the same input (logits and sigmoid
    probabilities, :func:`export.onnx_stage.compare`) under ``info.parity``, and to PyTorch's under
    ``info.parity_torch``; nothing for a reference that did not run."""
    from export.onnx_stage import compare

    for reference, key in PARITY_REFERENCES:
        ref_file = outputs / f"{reference}.npy"
        if not ref_file.is_file():
            continue
        ref = np.load(ref_file).astype(np.float64)
        for b, rec in recs.items():
            f = outputs / f"{b}.npy"
            if b == reference or rec.get("status") != "ok" or not f.is_file():
                continue
            got = np.load(f).astype(np.float64)
            if got.shape != ref.shape:
                d = {"reference": reference, "error": f"output shape {list(got.shape)} vs {list(ref.shape)}"}
                if reference == PARITY_REFERENCE:  # not the same model: a time of something else is no result
                    rec["status"] = (f"failed: output shape {list(got.shape)}, {PARITY_REFERENCE}'s "
                                     f"{list(ref.shape)}: not the same model (a broken conversion)")
            else:
                p = compare(b, reference, got, ref, tolerance=PARITY_TOL)
                d = {"reference": reference, "max_abs_diff_logits": p.max_abs_diff_logits,
                     "max_abs_diff_prob": p.max_abs_diff, "tolerance_prob": PARITY_TOL, "passed": p.passed}
            rec.setdefault("info", {})[key] = d
            if reference == PARITY_REFERENCE and not d.get("passed"):
                rec.setdefault("notes", []).append(f"output differs from {PARITY_REFERENCE}'s: {d}")


QUANTIZED_RUNS = ("onnxruntime", "openvino")  # the engines that run an int8 package's QDQ graph as int8


def _run_group(art: Artifact, specs: list[CaseSpec], job: dict, plan: Plan, optional: list[str],
               verbose: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-outputs-") as outputs:
        recs = _run_group_cases(art, specs, {**job, "outputs_dir": outputs}, plan, optional, verbose)
        attach_parity({r["backend"]: r for r in recs}, Path(outputs))
    return recs


def _run_group_cases(art: Artifact, specs: list[CaseSpec], job: dict, plan: Plan, optional: list[str],
                     verbose: bool) -> list[dict]:
    out: dict[str, dict] = {}
    runnable = []
    for s in specs:
        reason = cuda_unavailable(s.backend) if s.backend in optional else None
        if art.quantized and s.backend not in QUANTIZED_RUNS:
            reason = (f"the package is {art.quantized} (ONNX Runtime QDQ); {s.backend} does not run it as such: time "
                      "it beside its fp32 package with python -m benchmarks.int8 FP32_PKG --int8 PKG")
        if reason:
            out[s.backend] = asdict(record(asdict(art), s, f"unavailable: {reason}"))
        else:
            runnable.append(s)
    remote = []
    if plan.rpc_tracker and specs[0].kind == "tile":
        rs = CaseSpec("tvm-rpc", "tile", art.tile_hw)
        log(f"{_describe(art, rs)} TVM on the '{plan.rpc_key}' board via {plan.rpc_tracker}")
        rec = _remote_case(art, rs, plan)  # a board that fails ends the run: no report without the asked-for case
        log(f"{_describe(art, rs)} {'tvm-rpc':<17} {_summary(rec)}")
        remote.append(rec)
    if runnable:
        what = _describe(art, runnable[0])
        if plan.interleave and len(runnable) > 1:
            log(f"{what}: {', '.join(s.backend for s in runnable)} interleaved")
            recs = run_child(job, art, runnable, verbose)
            by = {r["backend"]: r for r in recs}
            for s in runnable:
                if by[s.backend]["status"] != "ok":
                    continue
                m = run_child({**job, "interleave": False, "outputs_dir": None, "runs": plan.memory_runs,
                                "seconds": plan.seconds,
                                "warmup": min(1, plan.warmup), "image_warmup": min(1, plan.image_warmup)},
                               art, [s], verbose)[0]
                if m.get("memory"):
                    by[s.backend]["memory"] = {**m["memory"],
                                               "measured_in": f"own process ({m['latency']['n_samples']} runs)"}
            for s in runnable:
                out[s.backend] = by[s.backend]
                log(f"  {s.backend:<17} {_summary(by[s.backend])}")
        else:
            for s in runnable:
                rec = run_child(job, art, [s], verbose)[0]
                out[s.backend] = rec
                log(f"{what} {s.backend:<17} {_summary(rec)}")
    return [out[s.backend] for s in specs] + remote



def _complexity(art: Artifact) -> dict:
    from benchmarks.complexity import measure
    from benchmarks.memory import tvm_planned_memory
    from edge.package import load_package

    pkg = load_package(art.package)
    net = None
    if art.registered:
        from models import create_model

        net = create_model(art.model, weights=art.weights)
    rec = measure(art.model, pkg.input_shape, onnx_path=pkg.onnx, net=net, weights=art.weights, library=pkg.library)
    planned, unplanned, status = tvm_planned_memory(pkg.onnx, pkg.info.input.name, list(pkg.input_shape))
    rec.tvm_planned_mib, rec.tvm_unplanned_mib, rec.tvm_planned_status = planned, unplanned, status
    return rec.to_json()


def _remote_case(art: Artifact, spec: CaseSpec, plan: Plan) -> dict:
    """A TVM tile case timed on a board through benchmarks.remote (samples come from the board's own timer)."""
    from benchmarks.remote import run_remote

    r = run_remote(art.remote_package, tracker=plan.rpc_tracker, key=plan.rpc_key, runs=plan.runs,
                   warmup=plan.warmup, seconds=plan.seconds, timeout_s=max(300.0, 4 * plan.seconds),
                   wait_s=plan.rpc_timeout)
    rec = record(asdict(art), spec, "ok", device=f"remote: {r.platform.cpu} ({r.timing})",
                  latency=LatencyStats.from_samples(list(r.samples_ms), r.warmup).to_json(),
                  memory=MemoryRecord(None, None, None, isolated=True, measured_in="remote",
                                      note="remote run: memory is not measured over RPC").to_json(),
                  energy=unavailable(plan.meter, "remote run: the meters are read on this host, not on the "
                                     "board").to_json(),
                  info={"target": plan.rpc_target, "package": art.remote_package, "timing": r.timing,
                        "platform": asdict(r.platform), "parity_max_abs_diff": r.parity_max_abs_diff,
                        "parity_reference": r.parity_reference, "upload_s": r.upload_s})
    if r.platform.emulated:
        rec.notes.append(f"the '{plan.rpc_key}' server is emulated ({r.platform.emulation}): not a board timing")
    rec.backend, rec.backend_label = "tvm-rpc", f"TVM RPC ({plan.rpc_target})"
    return asdict(rec)
