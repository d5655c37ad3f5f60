"""The child-process job protocol of edge-bench: the parent writes a job (one artifact, the cases of one input,
the sampling settings) to JOB.json and runs ``python -m benchmarks.child JOB.json OUT.json``; the child loads the
backends, samples them (alone, or round-robin with ``interleave``) and writes one :class:`CaseRecord` per case.

Isolation: every child is a fresh process, so peak memory, thread pools and imported runtimes never mix.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError
from benchmarks.jsonio import write_json_atomic
from benchmarks.latency import LABELS, LatencyStats, collect, collect_interleaved, create_runner, tiled
from benchmarks.memory import MemoryRecord, hwm_mib, reset_hwm, rss_mib, ru_maxrss_mib, spawn_measured
from benchmarks.power import IdlePower, MeterUnavailable, create_meter, energy_record, unavailable

ROOT = Path(__file__).resolve().parents[1]
INTERLEAVE_GAP_S = 0.05  # idle gap before each interleaved sample: lets the previous runtime's spinning workers park


@dataclass
class CaseSpec:
    backend: str
    kind: str  # "tile": one network input; "image": a full image tiled with the artifact's tile
    tile_hw: list[int]
    image: str | None = None
    image_hw: list[int] | None = None


@dataclass
class CaseRecord:
    model: str
    backend: str
    backend_label: str
    kind: str
    tile_hw: list[int]
    image: str | None
    image_hw: list[int]
    tiles: int
    status: str  # "ok", "unavailable: <reason>" or "failed: <reason>"
    device: str | None = None
    threads: int | None = None
    cores: list[int] | None = None
    interleaved: bool = False
    load_avg_1m: list[float] | None = None  # the machine's 1-minute load average before and after sampling
    latency: dict | None = None
    memory: dict | None = None
    energy: dict | None = None
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def record(art: dict, spec: CaseSpec, status: str, tiles: int = 1, **kw) -> CaseRecord:
    """The record of one case of artifact ``art`` (an :class:`benchmarks.packages.Artifact` as a dict)."""
    return CaseRecord(model=art["model"], backend=spec.backend, backend_label=LABELS.get(spec.backend, spec.backend),
                      kind=spec.kind, tile_hw=list(spec.tile_hw), image=spec.image,
                      image_hw=list(spec.image_hw or spec.tile_hw), tiles=tiles, status=status, **kw)


# ----------------------------------------------------------------------------------------------------------
# The child


def run_job(job: dict) -> list[dict]:
    """Run one job's cases in this process (the child). All cases of a job share one input."""
    from edge.backends import available_cores, set_cores
    from edge.tiling import count_tiles

    art = job["artifact"]
    specs = [CaseSpec(**c) for c in job["cases"]]
    if job.get("cores"):
        set_cores(job["cores"])
    threads = job.get("threads") or available_cores()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    interleave = bool(job.get("interleave"))
    first = specs[0]
    rng = np.random.default_rng(0)
    th, tw = first.tile_hw
    if first.kind == "tile":
        x = rng.random((1, 3, th, tw), dtype=np.float32)
        tiles, warmup, runs = 1, job["warmup"], job["runs"]
    else:
        ih, iw = first.image_hw
        img = rng.random((3, ih, iw), dtype=np.float32)
        tiles, warmup = count_tiles(ih, iw, (th, tw), art["overlap"], art["divisor"]), job["image_warmup"]
        runs = job.get("image_runs") or job["runs"]

    records: dict[str, CaseRecord] = {}
    fns: dict[str, Callable[[], Any]] = {}
    runners = {}
    for spec in specs:
        try:
            r = create_runner(spec.backend, model=art["model"] if art["registered"] else None,
                              weights=art["weights"], package=art["package"], cuda_package=art["cuda_package"],
                              threads=threads, pinned=bool(job.get("cores")),
                              default_library=art.get("default_library"))
        except EdgeError as exc:
            records[spec.backend] = record(art, spec, f"unavailable: {exc}", tiles)
            continue
        except Exception as exc:  # a runtime failing to load is a result to report, not a crash of the suite
            traceback.print_exc()
            records[spec.backend] = record(art, spec, f"failed: {type(exc).__name__}: {str(exc)[:200]}", tiles)
            continue
        runners[spec.backend] = r
        if first.kind == "tile":
            fns[spec.backend] = (lambda r=r: r(x))
        else:
            fns[spec.backend] = tiled(r, img, (th, tw), art["overlap"], art["divisor"])
    if not fns:
        return [asdict(r) for r in records.values()]

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    rss_loaded = rss_mib()
    hwm_before = hwm_mib()
    torch_cuda = "torch-cuda" in runners
    if torch_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    reset_ok = reset_hwm()

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    energy: dict[str, dict] = {}
    if interleave:
        gap = job.get("gap_s", INTERLEAVE_GAP_S)
        budget = job.get("budget_ms")
        samples = collect_interleaved(fns, runs, job["seconds"], 0, pause_s=gap,
                                      budget_ms=None if budget is None else budget * tiles,
                                      min_samples=job.get("min_samples", 3))
        for b in fns:
            energy[b] = unavailable(job.get("meter") or "auto", "interleaved run: one meter window would span all "
                                    "backends; measure energy without --interleave").to_json()
    else:
        (b, fn), = fns.items()
        meter = create_meter(job.get("meter"), runners[b].device)
        idle = IdlePower(**job["idle"]) if job.get("idle") else None
        started = False
        try:
            meter.start()
            started = True
        except MeterUnavailable as exc:
            energy[b] = unavailable(meter.name, str(exc), meter.source).to_json()
        samples = {b: collect(fn, runs, job["seconds"], 0)}
        if started:
            try:
                reading = meter.stop()
                energy[b] = energy_record(meter, reading, len(samples[b]), idle).to_json()
            except MeterUnavailable as exc:
                energy[b] = unavailable(meter.name, str(exc), meter.source).to_json()

    hwm_after = hwm_mib()
    load = [load_before, os.getloadavg()[0]] if load_before is not None else None
    if job.get("outputs_dir"):  # every backend's output of the same input, for the parent's parity check
        for b, fn in fns.items():
            np.save(Path(job["outputs_dir"]) / f"{b}.npy", np.asarray(fn(), dtype=np.float32))
    peaks = [v for v in (hwm_before, hwm_after) if v is not None]
    peak = max(peaks) if peaks else ru_maxrss_mib()
    gpu_peak = None
    if torch_cuda:
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    most = max(len(v) for v in samples.values())
    for spec in specs:
        if spec.backend not in fns:
            continue
        r = runners[spec.backend]
        mem = MemoryRecord(peak_rss_mib=peak, rss_after_load_mib=rss_loaded,
                           inference_peak_rss_mib=hwm_after if reset_ok else None,
                           gpu_peak_mib=gpu_peak if spec.backend == "torch-cuda" else None,
                           isolated=len(fns) == 1,
                           measured_in="own process" if len(fns) == 1 else f"one process with {', '.join(fns)}",
                           note=None if reset_ok else "the peak-RSS high-water mark could not be reset "
                                                      "(/proc/self/clear_refs), so no inference-only peak")
        rec = record(
            art, spec, "ok", tiles, device=r.device, threads=r.threads, cores=cores, interleaved=interleave,
            load_avg_1m=load, latency=LatencyStats.from_samples(samples[spec.backend], warmup).to_json(),
            memory=mem.to_json(), energy=energy.get(spec.backend), info=r.info)
        if job.get("budget_ms") is not None and len(samples[spec.backend]) < most:
            rec.notes.append(f"over the --budget-ms of {job.get('budget_ms'):g} ms per tile: sampled "
                             f"{len(samples[spec.backend])} times, the others {most}")
        records[spec.backend] = rec
    return [asdict(records[s.backend]) for s in specs]


def child_main(argv: list[str]) -> int:
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text())
    write_json_atomic(out_path, run_job(job))
    return 0


# ----------------------------------------------------------------------------------------------------------
# The parent's side


def run_child(job: dict, art, specs: list[CaseSpec], verbose: bool) -> list[dict]:
    """Run ``specs`` of artifact ``art`` (:class:`benchmarks.packages.Artifact`) in a child process; a child that
    fails is a ``failed: ...`` record per case, with the last line it printed."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-job-") as tmpd:
        jp, op = Path(tmpd) / "job.json", Path(tmpd) / "out.json"
        jp.write_text(json.dumps({**job, "artifact": asdict(art), "cases": [asdict(s) for s in specs]}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        run = spawn_measured([sys.executable, "-m", "benchmarks.child", str(jp), str(op)], env=env,
                             on_line=(lambda line: print(f"    {line}", file=sys.stderr)) if verbose else None)
        if run.returncode != 0 or not op.is_file():
            why = next((ln for ln in reversed(run.stderr_tail) if ln.strip()), "no output")
            if not verbose:
                for ln in run.stderr_tail:
                    print(f"    {ln}", file=sys.stderr)
            return [asdict(record(asdict(art), s, f"failed: child process exited with code {run.returncode}: "
                                                  f"{why.strip()[:200]}")) for s in specs]
        recs = json.loads(op.read_text())
    # Not merged: wait4's ru_maxrss of an exec'd child starts from the forked parent's resident size (the
    # parent holds torch, onnx and TVM's compiler here), so the child's own VmHWM is the figure.
    return recs


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
