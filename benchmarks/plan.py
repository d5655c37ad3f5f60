"""What edge-bench measures: the :class:`Plan` (from ``--plan plan.json`` and the command line), its parsing, and
:func:`check_plan`, which refuses a plan that cannot run before anything is exported or written."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge.errors import EdgeError, look_up_option, parse_size
from benchmarks.console import log
from benchmarks.jsonio import read_json
from benchmarks.latency import (CUDA_BACKENDS, IMAGES, OPTIONAL_BACKENDS, cuda_unavailable, default_backends, missing,
                                parse_backends)


@dataclass
class Plan:
    """What to measure. Every field can come from ``--plan plan.json``; command-line options override."""

    models: list[str]
    sizes: list[tuple[int, int]] | None = None  # network input (tile) sizes; None: the model's default tile
    backends: list[str] | None = None  # None: the CPU backends, OpenVINO only when installed
    images: list[str] = field(default_factory=lambda: list(IMAGES))  # full images, tiled: names or HxW
    image_tile: tuple[int, int] | None = None  # tile for full images; None: the model's default tile
    runs: int = 30
    image_runs: int | None = None  # samples per full-image case; None: runs
    seconds: float = 10.0
    warmup: int = 3
    image_warmup: int = 1
    threads: int | None = None
    cores: list[int] | None = None
    meter: str = "auto"
    idle_seconds: float = 0.0
    weights: str | None = None
    interleave: bool = False
    interleave_gap_ms: float = 50.0  # idle gap before each interleaved sample: the previous runtime's workers park
    budget_ms: float | None = None  # interleaved: a backend slower than this per tile sits out once it has ...
    min_samples: int = 3  # ... this many samples (TVM's default lowering need not hold the run for an hour)
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
    a72_mca: bool = True  # ... with llvm-mca cycles (the goal's measure)
    a72_ort: bool = True  # ... with ONNX Runtime (the reference; off: TVM and the peers only, no ratios to it)
    a72_work: str | None = None  # the arm64proxy rig; None: $ARM64PROXY_WORK or /root/.cache/arm64proxy
    a72_tool: str | None = None  # the arm64proxy instrument (a72count.py); None: ../shared/tools/arm64proxy
    a72_peers: list[str] = field(default_factory=list)  # ... and these peers (ncnn, mnn, tflite; benchmarks.peers)
    a72_threads: int = 1  # > 1: TVM also counted alone on this many threads, and how its work splits
    a72_int8: str | None = None  # an int8 package (edge-export --quantize int8): its ONNX on ORT, counted beside


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
    data = read_json(p, "plan ")
    if not isinstance(data, dict):
        raise EdgeError(f"plan {p} must be a JSON object with keys such as {', '.join(PLAN_KEYS[:6])}")
    return {look_up_option(k, PLAN_KEYS, "plan key"): v for k, v in data.items()}


NUMBERS = (("runs", int), ("image_runs", int), ("warmup", int), ("threads", int), ("min_samples", int),
           ("a72_threads", int), ("seconds", float), ("idle_seconds", float), ("rpc_timeout", float),
           ("interleave_gap_ms", float), ("budget_ms", float))


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """A :class:`Plan` from plan keys whose values may still be text (a plan file merged with the options)."""
    from edge.cli import parse_cores

    data = dict(data)
    if not data.get("models"):
        raise EdgeError("name at least one model, package or ONNX file (e.g. edge-bench m2unet), or list them "
                        "under \"models\" in --plan")
    if isinstance(data["models"], str):
        data["models"] = [data["models"]]
    if data.get("sizes") is not None:
        data["sizes"] = parse_size_list(data["sizes"])
    if data.get("image_tile") is not None:
        data["image_tile"] = parse_size_list(str(data["image_tile"]))[0]
    for key in ("backends", "images"):
        if isinstance(data.get(key), str):
            data[key] = [] if data[key].strip().lower() == "none" else data[key].split(",")
    if isinstance(data.get("cores"), (str, int)):
        data["cores"] = parse_cores(str(data["cores"]))
    for key, kind in NUMBERS:
        if data.get(key) is not None:
            try:
                data[key] = kind(data[key])
            except (TypeError, ValueError):
                raise EdgeError(f"{key} must be a number, got {data[key]!r}") from None
    if data.get("threads") is not None and data["threads"] < 1:
        raise EdgeError("--threads must be at least 1")
    if data.get("weights") is not None:
        data["weights"] = str(data["weights"])
    return Plan(**data)


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
    if (plan.image_runs is not None and plan.image_runs < 1) or plan.min_samples < 1 \
            or plan.interleave_gap_ms < 0 or (plan.budget_ms is not None and not plan.budget_ms > 0):
        raise EdgeError("--image-runs and --min-samples must be >= 1, --interleave-gap-ms >= 0 and --budget-ms > 0")
    if plan.budget_ms is not None and not plan.interleave:
        raise EdgeError("--budget-ms goes with --interleave (a backend alone is bounded by --seconds)")
    if plan.a72_proxy:
        from benchmarks.a72_proxy import DEFAULT_TOOL, check_rig, default_work

        from benchmarks.peers import missing_converter, parse_peers

        plan.a72_peers = parse_peers(plan.a72_peers) if plan.a72_peers else []
        # a missing rig, or one without a peer's runtime, fails here, before any export
        check_rig(plan.a72_work or default_work(), plan.a72_tool or DEFAULT_TOOL,
                  (["ort"] if plan.a72_ort else []) + ["tvm", *plan.a72_peers])
        for p in plan.a72_peers:
            reason = missing_converter(p)
            if reason:
                raise EdgeError(f"--a72-peers {p}: {reason}")
        if plan.a72_threads < 1:
            raise EdgeError("--a72-threads must be at least 1")
        if plan.a72_int8:
            from edge.package import load_package

            if not load_package(plan.a72_int8).meta.get("quantization"):
                raise EdgeError(f"--a72-int8 {plan.a72_int8} is not an int8 package (no 'quantization' in its "
                                "meta.json); make one with edge-export MODEL --quantize int8 --target arm64")
    elif plan.a72_cache or plan.a72_work or plan.a72_peers or plan.a72_tool or plan.a72_threads != 1 \
            or not plan.a72_mca or not plan.a72_ort or plan.a72_int8:
        raise EdgeError("--a72-cache, --a72-work, --a72-tool, --a72-peers, --a72-threads, --a72-int8, --a72-no-mca "
                        "and --a72-no-ort go with --a72-proxy")
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
