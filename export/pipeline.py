"""The export pipeline: model or ONNX file -> verified ONNX -> simplified ONNX -> TVM library -> package."""
from __future__ import annotations

import datetime as _dt
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edge import package as pkgfmt
from edge.errors import EdgeError
from export import onnx_stage, tvm_stage
from export.complexity import Complexity, count
from export.targets import TargetPreset, get_target, host_preset


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
    scale_source: str | None = None  # where meta.json's preprocess.fov_diameter_px came from


@dataclass
class Run:
    """What every stage adds to: its timing row, warnings for the user, parity records for meta.json."""

    log: Callable[[str], None]
    stages: list[Stage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parity: list[dict] = field(default_factory=list)

    def timed(self, name: str, t0: float, detail: str) -> None:
        self.stages.append(Stage(name, time.perf_counter() - t0, detail))

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)


@dataclass(frozen=True)
class Source:
    """Stage 1: the model as an ONNX graph that runs, with what meta.json says of the model."""

    graph: onnx.ModelProto
    input_name: str
    shape: list[int]
    model_meta: dict
    torch_params: int | None = None
    fov_diameter_px: float | None = None  # the training scale (FOV diameter, px) the runtime resamples to
    scale_source: str | None = None  # "--fov-diameter", "sidecar <name>.json" or None (unknown)


@dataclass(frozen=True)
class VerifiedOnnx:
    """Stage 2: the simplified graph (checked against the source), a sample input and its ONNX Runtime output."""

    graph: onnx.ModelProto
    input_name: str
    shape: list[int]
    sample: np.ndarray
    reference: np.ndarray
    complexity: Complexity


@dataclass(frozen=True)
class Library:
    """Stage 3: the compiled library, checked against ONNX Runtime (on this host, or on a host twin)."""

    compiled: tvm_stage.Compiled


def check_fov_diameter(value: float | None) -> float | None:
    """``--fov-diameter``: a positive, finite number of pixels (or None: read from the weights' sidecar)."""
    if value is None:
        return None
    if not pkgfmt.is_positive_number(value):
        raise EdgeError(f"--fov-diameter {value} must be a positive number of pixels (the FOV diameter of the images "
                        "the weights were trained at, e.g. 540 for DRIVE)")
    return float(value)


def load_source(model: str, weights: str | Path | None, input_size: tuple[int, int] | None, tmp: Path,
                run: Run, fov_diameter: float | None = None) -> Source:
    """A registered model (exported from PyTorch, parity checked) or an ONNX file (repaired, shape fixed).

    ``fov_diameter``: the weights' training scale; default: the ``scale.fov_diameter_px`` of the weights' JSON
    sidecar (``m2unet.json`` beside ``m2unet.pth``); an ONNX file has none (None: unknown)."""
    t0 = time.perf_counter()
    fov_diameter = check_fov_diameter(fov_diameter)
    given = "--fov-diameter" if fov_diameter is not None else None
    if model.lower().endswith(".onnx"):
        if weights is not None:
            raise EdgeError("--weights applies to registered models; an ONNX file carries its own weights")
        from export.legacy import repair

        m, changes = repair(onnx_stage.load_onnx(Path(model)))
        for c in changes:
            run.log(f"repaired: {c}")
        name, shape, _ = onnx_stage.io_signature(m)
        if input_size is not None:
            shape = [1, shape[1] if len(shape) > 1 and shape[1] > 0 else 3, *input_size]
        if len(shape) != 4 or min(shape) <= 0:
            raise EdgeError(f"the ONNX input '{name}' has shape {shape}; pass --input-size HxW for a fixed shape")
        if input_size is not None:
            m = onnx_stage.with_input_shape(m, name, shape)
        onnx_stage.ort_run(m, onnx_stage.sample_input(tuple(shape)))  # the repaired graph must run first
        # An ONNX file says nothing of its receptive field: overlap a quarter of the tile (64 px at most).
        meta_model = {"name": Path(model).stem, "source": "onnx", "divisor": 16, "mean": [0.0] * 3,
                      "std": [1.0] * 3, "output": "logits", "threshold": 0.5,
                      "overlap": min(64, min(shape[2:]) // 4), "default_tile": shape[2:], "untrained": False,
                      "weights": {"file": Path(model).name, "sha256": pkgfmt.sha256_file(model)},
                      "repairs": changes}
        run.warn("ONNX input: the output is assumed to be logits of inputs scaled to [0, 1] (no mean/std); "
                 "check meta.json if your model differs")
        run.timed("load + repair onnx", t0, f"{len(changes)} repairs" if changes else "valid as is")
        return Source(m, name, list(shape), meta_model, fov_diameter_px=fov_diameter, scale_source=given)

    from models import create_model, get_spec
    from models.weights import shipped_weights, sidecar_scale

    spec = get_spec(model)
    size = input_size or spec.default_tile
    spec.check_size(*size)
    weights = weights if weights is not None else shipped_weights(spec.name)
    if weights is None:
        msg = (f"WARNING: no --weights and no shipped weights for '{spec.name}': exporting RANDOM weights; "
               "the package is marked untrained and will not segment vessels")
        run.warn(msg)
        run.log(msg)
    net = create_model(spec.name, weights=weights)
    if fov_diameter is None and weights is not None:
        fov_diameter = sidecar_scale(weights)
        given = None if fov_diameter is None else f"sidecar {Path(weights).with_suffix('.json').name}"
    shape = [1, spec.in_channels, *size]
    m, p = onnx_stage.torch_to_onnx(net, tuple(shape), tmp / "raw.onnx")
    run.parity.append(p.to_meta())
    meta_model = {**spec.to_meta(), "source": "registry", "untrained": weights is None,
                  "weights": None if weights is None else
                  {"file": Path(weights).name, "sha256": pkgfmt.sha256_file(weights)}}
    run.timed("torch -> onnx", t0, _parity_detail(p))
    return Source(m, onnx_stage.INPUT_NAME, shape, meta_model, sum(q.numel() for q in net.parameters()),
                  fov_diameter, given)


def verify_onnx(src: Source, out: Path, run: Run) -> VerifiedOnnx:
    """Simplify the source graph with onnxsim (checked against it) and save it as the package's ONNX."""
    t0 = time.perf_counter()
    x = onnx_stage.sample_input(tuple(src.shape))
    s, p, (n_before, n_after) = onnx_stage.simplify(src.graph, x)
    run.parity.append(p.to_meta())
    onnx.save(s, str(out))
    run.timed("onnxsim", t0, f"nodes {n_before} -> {n_after}, max|dp| {p.max_abs_diff:.1e}")
    complexity = count(s)
    if src.torch_params is not None:
        complexity.params = src.torch_params
    return VerifiedOnnx(s, src.input_name, src.shape, x, onnx_stage.ort_run(s, x), complexity)


def build_library(v: VerifiedOnnx, preset: TargetPreset, out: Path, cuda_arch: str | None, database,
                  run: Run) -> Library:
    """Compile for ``preset`` and check the library against ONNX Runtime: on this host when it can run here,
    else on a host twin compiled from the same graph (the device itself is checked by edge-bench/tests)."""
    t0 = time.perf_counter()
    run.log(f"compiling for {preset.name} ({preset.description})")
    compiled = tvm_stage.compile_library(v.graph, v.input_name, v.shape, preset, out, cuda_arch, database)
    detail = f"{out.stat().st_size / 1e6:.2f} MB"
    if compiled.tuning_db:
        detail += f", {compiled.tuned_tasks} tuned kernels"
    run.timed(f"tvm compile ({preset.name})", t0, detail)

    t0 = time.perf_counter()
    if not preset.is_cross and preset.device == "cpu":
        p = onnx_stage.compare(f"tvm {preset.name}", "onnxruntime", tvm_stage.run_library(out, v.sample),
                               v.reference).require()
        run.parity.append({**p.to_meta(), "ran_on": "target"})
    else:
        twin = host_preset()
        run.log(f"compiling a host twin ({twin.name}) to check numerics before the device")
        twin_lib = out.with_name("twin.so")
        tvm_stage.compile_library(v.graph, v.input_name, v.shape, twin, twin_lib)
        p = onnx_stage.compare(f"tvm host twin ({twin.name})", "onnxruntime",
                               tvm_stage.run_library(twin_lib, v.sample), v.reference).require()
        run.parity.append({**p.to_meta(), "ran_on": "host twin"})
        twin_lib.unlink()
    run.timed("tvm parity", t0, _parity_detail(p))
    return Library(compiled)


def tuning_database(v: VerifiedOnnx, model_name: str, preset: TargetPreset, tuning_db: str | Path | None,
                    tune_trials: int, cuda_arch: str | None, rpc, run: Run):
    """Tune into ``tuning_db`` when asked, then open the database the compile applies: the given one, else the
    one shipped for this preset, model and tile (None when there is none)."""
    from export.tuning import open_database, shipped_database, tune

    db = Path(tuning_db) if tuning_db else None
    if tune_trials > 0:
        if db is None:
            raise EdgeError("--tune needs --tuning-db DIR to write the database into")
        t0 = time.perf_counter()
        run.log(f"tuning {tune_trials} trials for {preset.name} into {db} (this takes a while)")
        n_tasks = tune(v.graph, v.input_name, v.shape, preset, db, tune_trials, cuda_arch=cuda_arch, rpc=rpc)
        run.timed("tune (MetaSchedule)", t0, f"{tune_trials} trials over {n_tasks} kernels" if n_tasks else
                  "nothing to tune: every fused kernel is hand-written (empty database)")
    if db is None:
        db = shipped_database(preset, model_name, (v.shape[2], v.shape[3]))
    return None if db is None else open_database(db, preset, cuda_arch)


def export_model(model: str, target: str = "x86_64", weights: str | Path | None = None,
                 input_size: tuple[int, int] | None = None, out: str | Path | None = None,
                 cuda_arch: str | None = None, tuning_db: str | Path | None = None, tune_trials: int = 0,
                 force: bool = False, rpc_tracker: str | None = None, rpc_key: str | None = None,
                 tile_plan: dict | None = None, fov_diameter: float | None = None,
                 quantize: str | None = None, calibration_images: str | Path | None = None,
                 int8_max_dice_loss: float | None = None, log=tvm_stage.progress) -> ExportResult:
    """Run every stage (source -> verified ONNX -> library -> package), each checked against the previous one,
    and write the package atomically.

    ``model`` is a registered name or a path to an ``.onnx`` file. Raises :class:`EdgeError` on any failure;
    nothing is written then. ``tile_plan``: the camera image size the tile was planned for (``edge-export
    --image-size``), recorded under ``tiling.planned_for``. ``fov_diameter``: the FOV diameter in pixels of the
    images the weights were trained at (default: the weights' sidecar's), recorded as
    ``preprocess.fov_diameter_px``; edge-run resamples photographs to it. ``quantize="int8"``: an ONNX-only
    package of ONNX Runtime's int8 model instead of a TVM library (:mod:`export.quantize`: calibrated on
    ``calibration_images`` or the synthetic set, refused past ``int8_max_dice_loss``).
    """
    from export.tuning import rpc_endpoint, tuning_key

    fov_diameter = check_fov_diameter(fov_diameter)  # before any work

    preset = get_target(target)
    int8 = check_quantize(quantize, preset, tuning_db, tune_trials, calibration_images, int8_max_dice_loss)
    if int8 is None:
        preset.check_toolchain()
    rpc = None
    if rpc_tracker or rpc_key:
        if tune_trials <= 0:
            raise EdgeError("--rpc-tracker/--rpc-key only serve tuning: add --tune N --tuning-db DIR")
        rpc = rpc_endpoint(rpc_tracker, rpc_key)  # checked (and the tracker reached) before any work
    elif tune_trials > 0 and preset.is_cross:
        raise EdgeError(f"tuning for {preset.name} must measure on the device: pass --rpc-tracker HOST:PORT "
                        "--rpc-key KEY (a board or the emulated userland running a TVM RPC server)")
    run = Run(log)
    with tempfile.TemporaryDirectory(prefix="edge-export-") as tmpd:
        tmp = Path(tmpd)
        src = load_source(model, weights, input_size, tmp, run, fov_diameter)
        v = verify_onnx(src, tmp / pkgfmt.ONNX, run)
        if int8 is None:
            database = tuning_database(v, src.model_meta["name"], preset, tuning_db, tune_trials, cuda_arch, rpc,
                                       run)
            compiled = build_library(v, preset, tmp / pkgfmt.LIBRARY, cuda_arch, database, run).compiled
            target_meta = {"preset": preset.name, "description": preset.description, "tvm_target": compiled.target,
                           "arch": preset.arch, "device": preset.device, "library": pkgfmt.LIBRARY,
                           "tuning_key": tuning_key(preset)}
            tuning = {"database": compiled.tuning_db, "tuned_kernels": compiled.tuned_tasks,
                      "hand_kernels": compiled.hand_kernels, "generic_kernels": list(compiled.generic_kernels),
                      "default_lowering": list(compiled.default_kernels)}
            members = {pkgfmt.ONNX: tmp / pkgfmt.ONNX, pkgfmt.LIBRARY: compiled.library}
        else:
            target_meta = {"preset": preset.name, "description": preset.description, "tvm_target": {},
                           "arch": preset.arch, "device": "cpu", "library": None}
            tuning = None
        mm = src.model_meta
        meta = pkgfmt.build_meta(
            model=mm, input_name=v.input_name, shape=v.shape, output_name=v.graph.graph.output[0].name,
            preprocess=pkgfmt.Preprocess("RGB", 1.0 / 255.0, tuple(mm["mean"]), tuple(mm["std"]),
                                         src.fov_diameter_px),
            threshold=mm["threshold"], overlap=mm["overlap"], planned_for=tile_plan, target=target_meta,
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **({"tuning": tuning} if tuning else {}),
            versions=pkgfmt.versions(("torch", "onnx", "onnxsim", "onnxruntime", "tvm", "tvm_ffi", "vessel_edge")),
            host={"machine": platform.machine(), "cpu": _host_cpu_name()},
            parity=run.parity, complexity=v.complexity.to_meta(), warnings=run.warnings)
        if int8 is not None:
            meta, members = quantize_stage(meta, tmp, int8, run)
        shape = v.shape
        outdir = Path(out) if out else Path("packages") / f"{mm['name']}-{preset.name}-{shape[2]}x{shape[3]}"
        t0 = time.perf_counter()
        pkgfmt.write_package(outdir, meta, members, force=force)
        run.timed("write package", t0, str(outdir))
    return ExportResult(outdir, meta, run.stages, run.warnings, src.scale_source)


@dataclass(frozen=True)
class Int8Plan:
    """``--quantize int8``: the photographs and the limit, checked before any work."""

    calibration: list
    held_out: list
    max_dice_loss: float
    source: str


def check_quantize(quantize: str | None, preset: TargetPreset, tuning_db, tune_trials: int,
                   calibration_images, max_dice_loss: float | None) -> Int8Plan | None:
    """Validate the int8 options (one-line errors, before any work) and read the calibration photographs."""
    from export import quantize as q

    if quantize is None:
        if calibration_images is not None or max_dice_loss is not None:
            raise EdgeError("--calibration-images and --int8-max-dice-loss belong to --quantize int8; add it or "
                            "leave them out")
        return None
    from edge.errors import look_up_option

    look_up_option(quantize, ("int8",), "quantization")
    if preset.device != "cpu":
        raise EdgeError(f"--quantize int8 makes a package for ONNX Runtime on a CPU; {preset.name} is a "
                        f"{preset.device} target: pick arm64 or x86_64")
    if tune_trials or tuning_db:
        raise EdgeError("--tune and --tuning-db tune the TVM library; an int8 package runs on ONNX Runtime and has "
                        "none: leave them out")
    limit = q.DEFAULT_MAX_DICE_LOSS if max_dice_loss is None else float(max_dice_loss)
    if not 0 <= limit < 1:
        raise EdgeError(f"--int8-max-dice-loss {limit:g} must be in [0, 1), e.g. 0.005")
    if calibration_images is not None:
        cal, held = q.user_photos(calibration_images)
        return Int8Plan(cal, held, limit, str(calibration_images))
    return Int8Plan(q.synthetic_photos(q.SYNTHETIC_CALIBRATION), q.synthetic_photos(q.SYNTHETIC_HELD_OUT), limit,
                    "synthetic")


def quantize_stage(meta: dict, tmp: Path, plan: Int8Plan, run: Run) -> tuple[dict, dict[str, Path]]:
    """Quantize the verified ONNX, judged through the runtime on the fp32 package (written to ``tmp``)."""
    from export.quantize import quantize_int8

    t0 = time.perf_counter()
    fp32 = pkgfmt.load_package(pkgfmt.write_package(tmp / "fp32-package", meta, {pkgfmt.ONNX: tmp / pkgfmt.ONNX}))
    q = quantize_int8(fp32, tmp / "int8.onnx", plan.calibration, plan.held_out, plan.max_dice_loss, log=run.log)
    h = q.meta["held_out"]
    run.timed("int8 (onnxruntime)", t0, f"held-out Dice vs fp32 worst {h['dice_min']:.4f}, max|dp| "
              f"{h['max_abs_dp']:.3f}; {q.meta['int8_mac_fraction']:.0%} of MACs int8")
    q.meta["calibration"]["source"] = plan.source
    if q.meta["int8_mac_fraction"] < 0.5:
        msg = (f"WARNING: only {q.meta['int8_mac_fraction']:.0%} of the MACs run in int8 (these weights need "
               f"{', '.join(q.meta['fp32_blocks'])} in fp32 to stay within the Dice limit): the package is about as "
               "fast as fp32 on ONNX Runtime and slower than the fp32 TVM package")
        run.warn(msg)
        run.log(msg)
    return {**meta, "quantization": q.meta}, {pkgfmt.ONNX: q.path}


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
    q = r.meta.get("quantization")
    lines.append(f"target   {r.meta['target']['preset']}: {r.meta['target']['arch']}  "
                 + ("ONNX Runtime, no TVM library" if q else r.meta['target']['tvm_target'].get('mcpu', '')))
    lines.append("parity   " + "; ".join(f"{p['stage']} vs {p['reference']}: {p['max_abs_diff']:.1e}"
                                        for p in r.meta["parity"]))
    if q:
        h = q["held_out"]
        lines.append(f"int8     {len(q['int8_blocks'])} of {len(q['int8_blocks']) + len(q['fp32_blocks'])} blocks "
                     f"({q['int8_mac_fraction']:.0%} of MACs) int8, fp32: {', '.join(q['fp32_blocks']) or 'none'}; "
                     f"held-out Dice vs fp32 worst {h['dice_min']:.4f} mean {h['dice_mean']:.4f} (limit loss "
                     f"{h['max_dice_loss']:g}), max|dp| {h['max_abs_dp']:.3f}, {len(h['photographs'])} photographs")
    t = r.meta.get("tuning")
    if t:
        left = t.get("default_lowering") or []
        lines.append(f"tuning   {t['database'] or 'no database'}: {t['tuned_kernels']} tuned kernels, "
                     f"{t['hand_kernels']} hand-written, {len(t.get('generic_kernels') or [])} on the generic "
                     f"parallel schedule, {len(left)} on TVM's default lowering (unscheduled, slow)"
                     + (f": {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""))
    fov = r.meta["preprocess"].get("fov_diameter_px")
    lines.append(f"scale    training scale: FOV {fov:g} px ({r.scale_source}); edge-run resamples photographs to it"
                 if fov is not None else
                 "scale    training scale: unknown (runtime works at native scale; pass --fov-diameter)")
    if r.meta["model"].get("untrained"):
        lines.append("WARNING  untrained (random) weights: this package does not segment vessels")
    return "\n".join(lines)
