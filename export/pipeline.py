"""The export pipeline: model or ONNX file -> verified ONNX -> simplified ONNX -> TVM library -> package."""
from __future__ import annotations

import datetime as _dt
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edge import package as pkgfmt
from edge.errors import EdgeError
from export import onnx_stage, tvm_stage
from export.complexity import count
from export.targets import get_target, host_preset


@dataclass
class Stage:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class ExportResult:
    package: Path
    meta: dict
    stages: list[Stage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def export_model(model: str, target: str = "x86_64", weights: str | Path | None = None,
                 input_size: tuple[int, int] | None = None, out: str | Path | None = None,
                 cuda_arch: str | None = None, tuning_db: str | Path | None = None, tune_trials: int = 0,
                 force: bool = False, rpc_tracker: str | None = None, rpc_key: str | None = None,
                 tile_plan: dict | None = None, log=tvm_stage.progress) -> ExportResult:
    """Run every stage, verify each against the previous one, and write the package atomically.

    ``model`` is a registered name or a path to an ``.onnx`` file. Raises :class:`EdgeError` on any failure;
    nothing is written then. ``tile_plan``: the camera image size the tile was planned for (``edge-export
    --image-size``), recorded under ``tiling.planned_for``.
    """
    preset = get_target(target)
    preset.check_toolchain()
    rpc = None
    if rpc_tracker or rpc_key:
        from export.tuning import rpc_endpoint

        if tune_trials <= 0:
            raise EdgeError("--rpc-tracker/--rpc-key only serve tuning: add --tune N --tuning-db DIR")
        rpc = rpc_endpoint(rpc_tracker, rpc_key)  # checked (and the tracker reached) before any work
    elif tune_trials > 0 and preset.is_cross:
        raise EdgeError(f"tuning for {preset.name} must measure on the device: pass --rpc-tracker HOST:PORT "
                        "--rpc-key KEY (a board or the emulated userland running a TVM RPC server)")
    stages: list[Stage] = []
    warns: list[str] = []
    parity: list[dict] = []
    is_onnx = model.lower().endswith(".onnx")
    meta_model: dict
    torch_params = None

    with tempfile.TemporaryDirectory(prefix="edge-export-") as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        if is_onnx:
            if weights is not None:
                raise EdgeError("--weights applies to registered models; an ONNX file carries its own weights")
            from export.legacy import repair

            src = onnx_stage.load_onnx(Path(model))
            m, changes = repair(src)
            for c in changes:
                log(f"repaired: {c}")
            name, shape, _ = onnx_stage.io_signature(m)
            if input_size is not None:
                shape = [1, shape[1] if len(shape) > 1 and shape[1] > 0 else 3, *input_size]
            if len(shape) != 4 or min(shape) <= 0:
                raise EdgeError(f"the ONNX input '{name}' has shape {shape}; pass --input-size HxW for a fixed shape")
            if input_size is not None:
                m = onnx_stage.with_input_shape(m, name, shape)
            x = onnx_stage.sample_input(tuple(shape))
            onnx_stage.ort_run(m, x)  # the repaired graph must run before anything else
            # An ONNX file says nothing of its receptive field: overlap a quarter of the tile (64 px at most).
            meta_model = {"name": Path(model).stem, "source": "onnx", "divisor": 16, "mean": [0.0] * 3,
                          "std": [1.0] * 3, "output": "logits", "threshold": 0.5,
                          "overlap": min(64, min(shape[2:]) // 4),
                          "default_tile": shape[2:], "untrained": False,
                          "weights": {"file": Path(model).name, "sha256": pkgfmt.sha256_file(model)},
                          "repairs": changes}
            warns.append("ONNX input: the output is assumed to be logits of inputs scaled to [0, 1] "
                         "(no mean/std); check meta.json if your model differs")
            stages.append(Stage("load + repair onnx", time.perf_counter() - t0,
                                f"{len(changes)} repairs" if changes else "valid as is"))
        else:
            from models import create_model, get_spec
            from models.weights import shipped_weights

            spec = get_spec(model)
            size = input_size or spec.default_tile
            spec.check_size(*size)
            untrained = False
            if weights is None:
                weights = shipped_weights(spec.name)
            if weights is None:
                untrained = True
                msg = (f"WARNING: no --weights and no shipped weights for '{spec.name}': exporting RANDOM weights; "
                       "the package is marked untrained and will not segment vessels")
                warns.append(msg)
                log(msg)
            net = create_model(spec.name, weights=weights)
            torch_params = sum(p.numel() for p in net.parameters())
            shape = [1, spec.in_channels, *size]
            name = onnx_stage.INPUT_NAME
            m, p = onnx_stage.torch_to_onnx(net, tuple(shape), tmp / "raw.onnx")
            parity.append(p.to_meta())
            x = onnx_stage.sample_input(tuple(shape))
            meta_model = {**spec.to_meta(), "source": "registry", "untrained": untrained,
                          "weights": None if weights is None else
                          {"file": Path(weights).name, "sha256": pkgfmt.sha256_file(weights)}}
            stages.append(Stage("torch -> onnx", time.perf_counter() - t0, _parity_detail(p)))

        t0 = time.perf_counter()
        s, p, (n_before, n_after) = onnx_stage.simplify(m, x)
        parity.append(p.to_meta())
        onnx.save(s, str(tmp / pkgfmt.ONNX))
        stages.append(Stage("onnxsim", time.perf_counter() - t0,
                            f"nodes {n_before} -> {n_after}, max|dp| {p.max_abs_diff:.1e}"))
        ref = onnx_stage.ort_run(s, x)
        complexity = count(s)
        if torch_params is not None:
            complexity.params = torch_params

        db = Path(tuning_db) if tuning_db else None
        if tune_trials > 0:
            from export.tuning import tune

            if db is None:
                raise EdgeError("--tune needs --tuning-db DIR to write the database into")
            t0 = time.perf_counter()
            log(f"tuning {tune_trials} trials for {preset.name} into {db} (this takes a while)")
            n_tasks = tune(s, name, shape, preset, db, tune_trials, cuda_arch=cuda_arch, rpc=rpc)
            stages.append(Stage("tune (MetaSchedule)", time.perf_counter() - t0,
                                f"{tune_trials} trials over {n_tasks} kernels" if n_tasks else
                                "nothing to tune: every fused kernel is hand-written (empty database)"))
        from export.tuning import open_database, shipped_database

        if db is None:
            db = shipped_database(preset, meta_model["name"], tuple(shape[2:]))
        database = None if db is None else open_database(db, preset, cuda_arch)

        t0 = time.perf_counter()
        log(f"compiling for {preset.name} ({preset.description})")
        lib = tmp / pkgfmt.LIBRARY
        compiled = tvm_stage.compile_library(s, name, shape, preset, lib, cuda_arch, database)
        detail = f"{lib.stat().st_size / 1e6:.2f} MB"
        if compiled.tuning_db:
            detail += f", {compiled.tuned_tasks} tuned kernels"
        stages.append(Stage(f"tvm compile ({preset.name})", time.perf_counter() - t0, detail))

        t0 = time.perf_counter()
        if not preset.is_cross and preset.device == "cpu":
            p = onnx_stage.compare(f"tvm {preset.name}", "onnxruntime", tvm_stage.run_library(lib, x), ref).require()
            parity.append({**p.to_meta(), "ran_on": "target"})
        else:
            twin = host_preset()
            log(f"compiling a host twin ({twin.name}) to check numerics before the device")
            twin_lib = tmp / "twin.so"
            tvm_stage.compile_library(s, name, shape, twin, twin_lib)
            p = onnx_stage.compare(f"tvm host twin ({twin.name})", "onnxruntime",
                                   tvm_stage.run_library(twin_lib, x), ref).require()
            parity.append({**p.to_meta(), "ran_on": "host twin"})
            twin_lib.unlink()
        stages.append(Stage("tvm parity", time.perf_counter() - t0, _parity_detail(p)))

        from export.tuning import tuning_key

        meta = pkgfmt.build_meta(
            model=meta_model, input_name=name, shape=shape, output_name=s.graph.output[0].name,
            preprocess=pkgfmt.Preprocess("RGB", 1.0 / 255.0, tuple(meta_model["mean"]), tuple(meta_model["std"])),
            threshold=meta_model["threshold"], overlap=meta_model["overlap"], planned_for=tile_plan,
            target={"preset": preset.name, "description": preset.description, "tvm_target": compiled.target,
                    "arch": preset.arch, "device": preset.device, "library": pkgfmt.LIBRARY,
                    "tuning_key": tuning_key(preset)},
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            tuning={"database": compiled.tuning_db, "tuned_kernels": compiled.tuned_tasks,
                    "hand_kernels": compiled.hand_kernels, "default_lowering": list(compiled.default_kernels)},
            versions=pkgfmt.versions(("torch", "onnx", "onnxsim", "onnxruntime", "tvm", "tvm_ffi", "vessel_edge")),
            host={"machine": platform.machine(), "cpu": _host_cpu_name()},
            parity=parity, complexity=complexity.to_meta(), warnings=warns)
        outdir = Path(out) if out else Path("packages") / f"{meta_model['name']}-{preset.name}-{shape[2]}x{shape[3]}"
        t0 = time.perf_counter()
        pkgfmt.write_package(outdir, meta, {pkgfmt.ONNX: tmp / pkgfmt.ONNX, pkgfmt.LIBRARY: lib}, force=force)
        stages.append(Stage("write package", time.perf_counter() - t0, str(outdir)))
    return ExportResult(outdir, meta, stages, warns)


def _parity_detail(p: onnx_stage.Parity) -> str:
    return f"max|dp| {p.max_abs_diff:.1e} (logits {p.max_abs_diff_logits:.1e})"


def _host_cpu_name() -> str:
    try:
        from export.targets import host_cpu

        return host_cpu()
    except Exception as exc:  # reporting only; never fail an export over a CPU name
        print(f"note: could not read the host CPU name ({exc})", file=sys.stderr)
        return "unknown"


def fmt_summary(r: ExportResult) -> str:
    rows = [("stage", "seconds", "detail")] + [(s.name, f"{s.seconds:.2f}", s.detail) for s in r.stages]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    files = r.meta and {k: v["bytes"] for k, v in pkgfmt.load_package(r.package, verify=False).meta["files"].items()}
    c = r.meta["complexity"]
    lines.append("")
    lines.append(f"package  {r.package}  ({', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in files.items())})")
    lines.append(f"model    {r.meta['model']['name']}  input {'x'.join(map(str, r.meta['input']['shape']))}  "
                 f"params {c['params'] / 1e6:.3f} M  MACs {c['gmacs']:.3f} G")
    lines.append(f"target   {r.meta['target']['preset']}: {r.meta['target']['arch']}  "
                 f"{r.meta['target']['tvm_target'].get('mcpu', '')}")
    lines.append("parity   " + "; ".join(f"{p['stage']} vs {p['reference']}: {p['max_abs_diff']:.1e}"
                                        for p in r.meta["parity"]))
    t = r.meta["tuning"]
    left = t.get("default_lowering") or []
    lines.append(f"tuning   {t['database'] or 'no database'}: {t['tuned_kernels']} tuned kernels, "
                 f"{t['hand_kernels']} hand-written, {len(left)} on TVM's default lowering (unscheduled, slow)"
                 + (f": {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""))
    if r.meta["model"].get("untrained"):
        lines.append("WARNING  untrained (random) weights: this package does not segment vessels")
    return "\n".join(lines)
