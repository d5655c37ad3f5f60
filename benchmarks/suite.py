"""The benchmark suite: a plan -> packages and complexity (in this process) -> every case in a child process
-> one run record (typed dicts, units in field names) that :mod:`benchmarks.report` writes and merges.

Isolation: by default every (backend, input) case runs in its own child process, so peak memory, thread pools
and imported runtimes never mix. With ``interleave`` the backends of one input share a child and are timed
round-robin (the fairest latency ratios on a shared or drifting machine); their memory then comes from short
isolated children, and their energy is not attributed (one meter window would span all backends).

Run as ``python -m benchmarks.suite JOB.json OUT.json`` it is the child.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError, look_up_option, parse_size
from edge.imageio import write_atomic
from benchmarks.latency import (CUDA_BACKENDS, IMAGES, LABELS, OPTIONAL_BACKENDS, LatencyStats, collect,
                                collect_interleaved, create_runner, cuda_unavailable, default_backends, missing,
                                parse_backends, tiled)
from benchmarks.memory import MemoryRecord, hwm_mib, reset_hwm, rss_mib, ru_maxrss_mib, spawn_measured
from benchmarks.power import (IdlePower, MeterUnavailable, create_meter, energy_record, measure_idle,
                              unavailable)

ROOT = Path(__file__).resolve().parents[1]
INTERLEAVE_GAP_S = 0.05  # idle gap before each interleaved sample: lets the previous runtime's spinning workers park


def log(msg: str) -> None:
    print(f"[edge-bench] {msg}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """What to measure. Every field can come from ``--plan plan.json``; command-line options override."""

    models: list[str]
    sizes: list[tuple[int, int]] | None = None  # network input (tile) sizes; None: the model's default tile
    backends: list[str] | None = None  # None: the CPU backends, OpenVINO only when installed
    images: list[str] = field(default_factory=lambda: list(IMAGES))  # full images, tiled: names or HxW
    image_tile: tuple[int, int] | None = None  # tile for full images; None: the model's default tile
    runs: int = 30
    seconds: float = 10.0
    warmup: int = 3
    image_warmup: int = 1
    threads: int | None = None
    cores: list[int] | None = None
    meter: str = "auto"
    idle_seconds: float = 0.0
    weights: str | None = None
    interleave: bool = False
    gpu_baselines: bool = False  # also time the CUDA backends; recorded as unavailable without a GPU
    memory_runs: int = 3  # samples of the isolated memory children of an interleaved run
    outdir: str = "bench-out"
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    rpc_target: str = "arm64"
    rpc_timeout: float = 60.0  # seconds the tracker may take to answer and hand out a board's server
    dice: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    a72_proxy: bool = False  # also count ORT and TVM on the emulated Cortex-A72 (benchmarks.a72_proxy; slow)
    a72_cache: bool = False  # ... with the L1D/L2 simulation (several times slower)
    a72_work: str | None = None  # the arm64proxy rig; None: $ARM64PROXY_WORK or /root/.cache/arm64proxy
    a72_peers: list[str] = field(default_factory=list)  # ... and these peers (ncnn, mnn, tflite; benchmarks.peers)


PLAN_KEYS = tuple(f.name for f in fields(Plan))


def parse_size_list(text: str | list) -> list[tuple[int, int]]:
    """``"544,960"`` or ``"544x768,960"`` (HxW, each as :func:`edge.errors.parse_size`) or a JSON list of ints /
    [h, w] pairs; duplicates dropped, order kept."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for it in items:
        if isinstance(it, (list, tuple)) and len(it) == 2:
            it = f"{it[0]}x{it[1]}"
        if str(it).strip():
            out.append(parse_size(str(it).strip(), "size"))
    return list(dict.fromkeys(out))


def image_size(name: str) -> tuple[str, tuple[int, int]]:
    """A dataset name (drive, chase, hrf) or HxW -> (label, (H, W))."""
    n = name.strip().lower()
    if n in IMAGES:
        return n, IMAGES[n]
    if "x" in n and n.replace("x", "").isdigit():
        h, w = parse_size(n, "image size")
        return f"{h}x{w}", (h, w)
    n = look_up_option(n, list(IMAGES), "image size (a dataset name or HxW)")
    return n, IMAGES[n]


def load_plan(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise EdgeError(f"cannot read plan {p} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise EdgeError(f"plan {p} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise EdgeError(f"plan {p} must be a JSON object with keys such as {', '.join(PLAN_KEYS[:6])}")
    return {look_up_option(k, PLAN_KEYS, "plan key"): v for k, v in data.items()}


# ----------------------------------------------------------------------------------------------------------
# Records


@dataclass
class CaseSpec:
    backend: str
    kind: str  # "tile": one network input; "image": a full image tiled with the artifact's tile
    tile_hw: list[int]
    image: str | None = None
    image_hw: list[int] | None = None


@dataclass
class Artifact:
    """What one model at one tile size needs: the packages and the torch model's name and weights."""

    model: str
    registered: bool
    weights: str | None
    tile_hw: list[int]
    divisor: int
    overlap: int
    package: str | None = None
    cuda_package: str | None = None
    remote_package: str | None = None
    a72_package: str | None = None  # the arm64 package counted on the emulated A72 (--a72-proxy)


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


def _record(art: dict, spec: CaseSpec, status: str, tiles: int = 1, **kw) -> CaseRecord:
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
        tiles, warmup = 1, job["warmup"]
    else:
        ih, iw = first.image_hw
        img = rng.random((3, ih, iw), dtype=np.float32)
        tiles, warmup = count_tiles(ih, iw, (th, tw), art["overlap"], art["divisor"]), job["image_warmup"]

    records: dict[str, CaseRecord] = {}
    fns: dict[str, Callable[[], Any]] = {}
    runners = {}
    for spec in specs:
        try:
            r = create_runner(spec.backend, model=art["model"] if art["registered"] else None,
                              weights=art["weights"], package=art["package"], cuda_package=art["cuda_package"],
                              threads=threads, pinned=bool(job.get("cores")))
        except EdgeError as exc:
            records[spec.backend] = _record(art, spec, f"unavailable: {exc}", tiles)
            continue
        except Exception as exc:  # a runtime failing to load is a result to report, not a crash of the suite
            traceback.print_exc()
            records[spec.backend] = _record(art, spec, f"failed: {type(exc).__name__}: {str(exc)[:200]}", tiles)
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
        samples = collect_interleaved(fns, job["runs"], job["seconds"], 0, pause_s=INTERLEAVE_GAP_S)
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
        samples = {b: collect(fn, job["runs"], job["seconds"], 0)}
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
        records[spec.backend] = _record(
            art, spec, "ok", tiles, device=r.device, threads=r.threads, cores=cores, interleaved=interleave,
            load_avg_1m=load, latency=LatencyStats.from_samples(samples[spec.backend], warmup).to_json(),
            memory=mem.to_json(), energy=energy.get(spec.backend), info=r.info)
    return [asdict(records[s.backend]) for s in specs]


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode())


def child_main(argv: list[str]) -> int:
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text())
    write_json_atomic(out_path, run_job(job))
    return 0


# ----------------------------------------------------------------------------------------------------------
# The parent


def _run_child(job: dict, art: Artifact, specs: list[CaseSpec], verbose: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-job-") as tmpd:
        jp, op = Path(tmpd) / "job.json", Path(tmpd) / "out.json"
        jp.write_text(json.dumps({**job, "artifact": asdict(art), "cases": [asdict(s) for s in specs]}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        run = spawn_measured([sys.executable, "-m", "benchmarks.suite", str(jp), str(op)], env=env,
                             on_line=(lambda line: print(f"    {line}", file=sys.stderr)) if verbose else None)
        if run.returncode != 0 or not op.is_file():
            why = next((ln for ln in reversed(run.stderr_tail) if ln.strip()), "no output")
            if not verbose:
                for ln in run.stderr_tail:
                    print(f"    {ln}", file=sys.stderr)
            return [asdict(_record(asdict(art), s, f"failed: child process exited with code {run.returncode}: "
                                                   f"{why.strip()[:200]}")) for s in specs]
        recs = json.loads(op.read_text())
    # Not merged: wait4's ru_maxrss of an exec'd child starts from the forked parent's resident size (the
    # parent holds torch, onnx and TVM's compiler here), so the child's own VmHWM is the figure.
    return recs


def host_target() -> str:
    from edge.package import host_arch

    if host_arch() != "x86_64":
        raise EdgeError(f"edge-bench exports for x86_64 hosts only; on this {host_arch()} machine pass package "
                        "directories made with edge-export on the host")
    return "x86_64"


def ensure_package(model: str, target: str, size: tuple[int, int] | None, weights: str | None, outdir: Path,
                   cuda_arch: str | None = None) -> Path:
    """Export (or reuse a matching earlier export of) ``model`` at ``size`` for ``target`` under ``outdir``.

    ``model`` is a registered name or an ONNX file (``size`` None: its own fixed shape). An earlier package is
    reused when its source (weights file, or the ONNX file itself) has the same sha256, target, input size and
    TVM version match, and the exporter's and model zoo's source code is unchanged since (a fingerprint kept
    beside the package); otherwise it is exported again."""
    from edge.backends import installed_tvm_version
    from edge.package import load_package, sha256_file
    from export.pipeline import export_model

    is_onnx = model.lower().endswith(".onnx")
    suffix = "" if size is None else f"-{size[0]}x{size[1]}"
    out = outdir / "packages" / f"{Path(model).stem if is_onnx else model}-{target}{suffix}"
    source = model if is_onnx else weights
    want_sha = sha256_file(source) if source else None
    stamp = out.parent / f".{out.name}.edge-bench.json"
    fingerprint = exporter_fingerprint()
    fresh = stamp.is_file() and json.loads(stamp.read_text() or "{}").get("fingerprint") == fingerprint
    if fresh and (out / "meta.json").is_file():
        try:
            meta = load_package(out).meta
            have_sha = (meta["model"].get("weights") or {}).get("sha256")
            same_source = have_sha == want_sha if want_sha else bool(meta["model"].get("untrained"))
            same_size = size is None or meta["input"]["shape"][2:] == list(size)
            if (same_source and same_size and meta["target"]["preset"] == target
                    and meta["versions"].get("tvm") == installed_tvm_version()):
                log(f"reusing {out}")
                return out
        except (EdgeError, KeyError):
            pass
    log(f"exporting {model}{'' if size is None else f' {size[0]}x{size[1]}'} for {target} -> {out}")
    export_model(model, target, weights=None if is_onnx else weights, input_size=size, out=out,
                 cuda_arch=cuda_arch, force=True)
    write_json_atomic(stamp, {"fingerprint": fingerprint})
    return out


def exporter_fingerprint() -> str:
    """sha256 over export/ (code and shipped tuning databases) and models/*.py: a package exported by other code
    is not reused."""
    import hashlib

    files = [f for f in (ROOT / "export").rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    files += list((ROOT / "models").rglob("*.py"))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def is_package_path(item: str) -> bool:
    """Whether a MODEL_OR_PACKAGE item names a package (or a path meant as one: a folder, an archive, a file that
    is not .onnx), rather than a registered model name or an ONNX file."""
    from edge.package import ARCHIVE_SUFFIXES

    if item.lower().endswith(".onnx"):
        return False
    p = Path(item)
    if (p / "meta.json").is_file():
        return True
    try:
        from models import list_models

        if item in list_models():
            return False
    except ImportError:
        pass
    return p.exists() or os.sep in item or item.lower().endswith(ARCHIVE_SUFFIXES)


def check_packages(plan: Plan, backends: list[str]) -> None:
    """Load every package the plan names (format, inventory, checksums); with tvm asked for in --backends, also
    that its library runs here. Raises :class:`PackageError` before any export, run or output."""
    from edge.backends import check_tvm
    from edge.errors import PackageError
    from edge.package import host_arch, load_package

    for item in plan.models:
        if not is_package_path(item):
            continue
        pkg = load_package(item)
        if plan.backends is not None and "tvm" in backends:
            try:
                check_tvm(pkg)
            except PackageError as exc:
                board = " (time it on its board with --rpc-tracker HOST:PORT --rpc-key KEY)" \
                    if pkg.arch != host_arch() else ""
                raise PackageError(f"backend tvm was asked for, but {str(exc).split('; ')[0]}; leave tvm out of "
                                   f"--backends{board}") from exc


def _resolve(item: str, plan: Plan, outdir: Path, targets: set[str]) -> list[Artifact]:
    """Artifacts (one per tile size) for a registered model name, a package directory or an ONNX file."""
    from edge.package import load_package

    p = Path(item)
    if is_package_path(item):
        pkg = load_package(p)
        name = pkg.model_name
        try:
            from models import list_models

            registered = name in list_models()
        except ImportError:
            registered = False
        tile = list(pkg.tile)
        if plan.sizes and [list(s) for s in plan.sizes] != [tile]:
            log(f"note: {p} is a {tile[0]}x{tile[1]} package; --sizes does not apply to it")
        if registered and plan.weights is None:
            log(f"note: the PyTorch case of package {p} uses random weights (a package holds no .pth; "
                "pass --weights); latency does not depend on weight values")
        m = pkg.meta["model"]
        arm64 = pkg.arch == "aarch64" and pkg.library is not None
        # With --rpc-tracker the package itself goes to the board (typically an arm64 package).
        return [Artifact(name, registered, plan.weights, tile, int(m.get("divisor", 16)), int(m.get("overlap", 0)),
                         package=str(p), remote_package=str(p) if plan.rpc_tracker else None,
                         a72_package=str(p) if plan.a72_proxy and arm64 else None)]
    if item.lower().endswith(".onnx"):
        if not p.is_file():
            raise EdgeError(f"ONNX file not found: {p}")
        pkg_dir = ensure_package(str(p), host_target(), None, None, outdir)
        pkg = load_package(pkg_dir)
        m = pkg.meta["model"]
        a72 = str(ensure_package(str(p), "arm64", None, None, outdir)) if plan.a72_proxy else None
        return [Artifact(pkg.model_name, False, None, list(pkg.tile), int(m.get("divisor", 16)),
                         int(m.get("overlap", 0)), package=str(pkg_dir), a72_package=a72)]
    from models import get_spec

    spec = get_spec(item)
    sizes = plan.sizes or [spec.default_tile]
    weights = plan.weights
    if weights is None:
        from export.pipeline import default_weights

        w = default_weights(spec.name)
        weights = str(w) if w else None
    arts = []
    for size in sizes:
        spec.check_size(*size)
        art = Artifact(spec.name, True, weights, list(size), spec.divisor, spec.overlap)
        art.package = str(ensure_package(spec.name, host_target(), size, weights, outdir))
        if "tvm-cuda" in targets:
            from benchmarks.latency import cuda_arch

            art.cuda_package = str(ensure_package(spec.name, "cuda", size, weights, outdir, cuda_arch()))
        if plan.rpc_tracker:
            art.remote_package = str(ensure_package(spec.name, plan.rpc_target, size, weights, outdir))
        if plan.a72_proxy:
            art.a72_package = str(ensure_package(spec.name, "arm64", size, weights, outdir))
        arts.append(art)
    return arts


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
    planned, unplanned, status = tvm_planned_memory(pkg.onnx, pkg.meta["input"]["name"], list(pkg.input_shape))
    rec.tvm_planned_mib, rec.tvm_unplanned_mib, rec.tvm_planned_status = planned, unplanned, status
    return rec.to_json()


def _remote_case(art: Artifact, spec: CaseSpec, plan: Plan) -> dict:
    """A TVM tile case timed on a board through benchmarks.remote (samples come from the board's own timer)."""
    from benchmarks.remote import run_remote

    r = run_remote(art.remote_package, tracker=plan.rpc_tracker, key=plan.rpc_key, runs=plan.runs,
                   warmup=plan.warmup, seconds=plan.seconds, timeout_s=max(300.0, 4 * plan.seconds),
                   wait_s=plan.rpc_timeout)
    rec = _record(asdict(art), spec, "ok", device=f"remote: {r.platform.cpu} ({r.timing})",
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


def check_plan(plan: Plan) -> tuple[list[str], list[str]]:
    """(backends to run, optional GPU backends). Raises :class:`EdgeError` for a CUDA backend asked for on a
    machine that cannot run it, and for a remote run without the RPC runner."""
    backends = default_backends(log) if plan.backends is None else parse_backends(plan.backends)
    for b in backends:
        reason = missing(b) if b in OPTIONAL_BACKENDS else None
        if reason:
            raise EdgeError(f"backend {b} was asked for, but {reason}")
        if b in CUDA_BACKENDS:
            reason = cuda_unavailable(b)
            if reason:
                raise EdgeError(f"backend {b} needs CUDA but {reason} here; run it on a GPU machine or use "
                                "--gpu-baselines, which records the GPU baselines as unavailable instead")
    optional = [b for b in CUDA_BACKENDS if plan.gpu_baselines and b not in backends]
    if plan.runs < 1 or plan.seconds <= 0 or plan.warmup < 0:
        raise EdgeError("--runs must be >= 1, --seconds > 0 and --warmup >= 0")
    if plan.a72_proxy:
        from benchmarks.a72_proxy import check_rig, default_work

        from benchmarks.peers import missing_converter, parse_peers

        check_rig(plan.a72_work or default_work())  # a missing rig fails here, before any export
        plan.a72_peers = parse_peers(plan.a72_peers) if plan.a72_peers else []
        for p in plan.a72_peers:
            reason = missing_converter(p)
            if reason:
                raise EdgeError(f"--a72-peers {p}: {reason}")
    elif plan.a72_cache or plan.a72_work or plan.a72_peers:
        raise EdgeError("--a72-cache, --a72-work and --a72-peers go with --a72-proxy")
    if plan.rpc_tracker:
        if not plan.rpc_key:
            raise EdgeError("--rpc-tracker needs --rpc-key KEY (the device key the board registered with)")
        try:
            import benchmarks.remote as remote
        except ImportError:
            raise EdgeError("remote runs need benchmarks/remote.py (the TVM RPC runner), which this checkout "
                            "does not have yet; run without --rpc-tracker") from None
        if not hasattr(remote, "run_remote"):
            raise EdgeError("benchmarks.remote has no run_remote(package, tracker=, key=, runs=, warmup=, "
                            "seconds=); update edge-bench or remote.py")
        if not plan.rpc_timeout > 0:
            raise EdgeError(f"--rpc-timeout must be a positive number of seconds, got {plan.rpc_timeout!r}")
        # fail before the exports and local runs, not after them: the tracker answers and knows the board
        remote.check_tracker(plan.rpc_tracker, plan.rpc_key, min(10.0, plan.rpc_timeout))
    return backends, optional


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
           "idle": idle.to_json() if idle and idle.power_w is not None else None}
    available_optional = [b for b in optional if not cuda_unavailable(b)]
    complexity, cases = [], []
    proxy_arts: list[Artifact] = []
    for item in plan.models:
        arts = _resolve(item, plan, outdir, set(backends) | set(available_optional))
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
    """ONNX Runtime (first: the reference) and TVM of every artifact's arm64 package on the emulated Cortex-A72.
    A failed count is a note, not the end of the run."""
    from benchmarks.a72_proxy import measure
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
        log(f"{what}: ONNX Runtime, TVM{''.join(', ' + p for p in plan.a72_peers)} on the emulated Cortex-A72 "
            f"(arm64proxy{', with the cache model' if plan.a72_cache else ''}; minutes)")
        try:
            from benchmarks.peers import convert

            peers = {p: convert(p, pkg.onnx, list(pkg.input_shape)) for p in plan.a72_peers}
            got = measure(pkg.onnx, pkg.library, list(pkg.input_shape), plan.a72_work, mca=True,
                          cache=plan.a72_cache, model=art.model, package=art.a72_package, peers=peers)
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


def attach_parity(recs: dict[str, dict], outputs: Path) -> None:
    """Each ok case's max |difference| to ONNX Runtime's output of the same input (logits and sigmoid
    probabilities, :func:`export.onnx_stage.compare`), under ``info.parity``; nothing when ONNX Runtime did not run."""
    from export.onnx_stage import compare

    ref_file = outputs / f"{PARITY_REFERENCE}.npy"
    if not ref_file.is_file():
        return
    ref = np.load(ref_file).astype(np.float64)
    for b, rec in recs.items():
        f = outputs / f"{b}.npy"
        if b == PARITY_REFERENCE or rec.get("status") != "ok" or not f.is_file():
            continue
        got = np.load(f).astype(np.float64)
        if got.shape != ref.shape:
            d = {"reference": PARITY_REFERENCE, "error": f"output shape {list(got.shape)} vs {list(ref.shape)}"}
        else:
            p = compare(b, PARITY_REFERENCE, got, ref, tolerance=PARITY_TOL)
            d = {"reference": PARITY_REFERENCE, "max_abs_diff_logits": p.max_abs_diff_logits,
                 "max_abs_diff_prob": p.max_abs_diff, "tolerance_prob": PARITY_TOL, "passed": p.passed}
        rec.setdefault("info", {})["parity"] = d
        if not d.get("passed"):
            rec.setdefault("notes", []).append(f"output differs from {PARITY_REFERENCE}'s: {d}")


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
        if reason:
            out[s.backend] = asdict(_record(asdict(art), s, f"unavailable: {reason}"))
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
            recs = _run_child(job, art, runnable, verbose)
            by = {r["backend"]: r for r in recs}
            for s in runnable:
                if by[s.backend]["status"] != "ok":
                    continue
                m = _run_child({**job, "interleave": False, "outputs_dir": None, "runs": plan.memory_runs,
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
                rec = _run_child(job, art, [s], verbose)[0]
                out[s.backend] = rec
                log(f"{what} {s.backend:<17} {_summary(rec)}")
    return [out[s.backend] for s in specs] + remote


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
