"""What edge-bench runs: each MODEL_OR_PACKAGE item resolved into :class:`Artifact` s (one per tile size), the
packages exported for them (or reused from the export cache under OUTDIR/packages), and the TVM default-lowering
libraries of the tvm-default backend."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from benchmarks.console import log
from benchmarks.jsonio import write_json_atomic
from benchmarks.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


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
    default_library: str | None = None  # ``package``'s graph with TVM's default lowering (backend tvm-default)
    a72_default_library: str | None = None  # ... of ``a72_package`` (tvm-default counted on the emulated A72)
    quantized: str | None = None  # ``package`` is an int8 package (edge-export --quantize): its dtype


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
            info = load_package(out).info
            same_source = info.model.weights_sha256 == want_sha if want_sha else info.model.untrained
            same_size = size is None or list(info.input.shape[2:]) == list(size)
            if (same_source and same_size and info.target.preset == target
                    and info.target.tvm_version == installed_tvm_version()):
                log(f"reusing {out}")
                return out
        except (EdgeError, KeyError):
            pass
    log(f"exporting {model}{'' if size is None else f' {size[0]}x{size[1]}'} for {target} -> {out}")
    export_model(model, target, weights=None if is_onnx else weights, input_size=size, out=out,
                 cuda_arch=cuda_arch, force=True)
    write_json_atomic(stamp, {"fingerprint": fingerprint})
    return out


def ensure_default_library(package: str | Path, outdir: Path) -> Path | None:
    """The package's graph built with TVM's default lowering (no hand-written kernels of export.schedules), for
    the package's own target, under ``outdir``/packages; reused while the package's ONNX, the exporter's code and
    TVM are unchanged. None for a package without a TVM library (nothing to compare it with)."""
    from edge.backends import installed_tvm_version
    from edge.package import load_package, sha256_file
    from export.onnx_stage import load_onnx
    from export.targets import get_target, list_targets
    from export.tvm_stage import compile_library

    pkg = load_package(package)
    if pkg.library is None:
        return None
    preset = pkg.info.target.preset
    if preset not in list_targets():
        raise EdgeError(f"tvm-default: package {pkg.path} was exported for target {preset!r}, not a preset; "
                        "export it with a named --target to compare TVM's default lowering")
    out = outdir / "packages" / f"{Path(package).name}-tvm-default.so"
    stamp = out.parent / f".{out.name}.edge-bench.json"
    want = {"fingerprint": exporter_fingerprint(), "onnx_sha256": sha256_file(pkg.onnx), "target": preset,
            "tvm": installed_tvm_version()}
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text() or "{}") == want:
        log(f"reusing {out}")
        return out
    log(f"building {pkg.path.name} with TVM's default lowering -> {out} (no hand-written kernels)")
    m = load_onnx(pkg.onnx)
    out.parent.mkdir(parents=True, exist_ok=True)
    compile_library(m, m.graph.input[0].name, list(pkg.input_shape), get_target(preset), out, hand_kernels=False)
    write_json_atomic(stamp, want)
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


def resolve(item: str, plan: Plan, outdir: Path, targets: set[str]) -> list[Artifact]:
    """Artifacts (one per tile size) for a registered model name, a package directory or an ONNX file; with
    tvm-default among ``targets``, each with its default-lowering libraries."""
    arts = _resolve(item, plan, outdir, targets)
    if "tvm-default" in targets:
        from edge.package import host_arch, load_package

        for art in arts:
            if art.package and load_package(art.package).arch == host_arch():
                lib = ensure_default_library(art.package, outdir)
                art.default_library = str(lib) if lib else None
            if art.a72_package:
                lib = ensure_default_library(art.a72_package, outdir)
                art.a72_default_library = str(lib) if lib else None
    return arts


def _resolve(item: str, plan: Plan, outdir: Path, targets: set[str]) -> list[Artifact]:
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
        m = pkg.info.model
        arm64 = pkg.arch == "aarch64" and pkg.library is not None
        # With --rpc-tracker the package itself goes to the board (typically an arm64 package).
        return [Artifact(name, registered, plan.weights, tile, m.divisor, m.overlap,
                         package=str(p), remote_package=str(p) if plan.rpc_tracker else None,
                         a72_package=str(p) if plan.a72_proxy and arm64 else None,
                         quantized=(pkg.meta.get("quantization") or {}).get("dtype"))]
    if item.lower().endswith(".onnx"):
        if not p.is_file():
            raise EdgeError(f"ONNX file not found: {p}")
        pkg_dir = ensure_package(str(p), host_target(), None, None, outdir)
        pkg = load_package(pkg_dir)
        m = pkg.info.model
        a72 = str(ensure_package(str(p), "arm64", None, None, outdir)) if plan.a72_proxy else None
        return [Artifact(pkg.model_name, False, None, list(pkg.tile), m.divisor, m.overlap,
                         package=str(pkg_dir), a72_package=a72)]
    from models import get_spec

    spec = get_spec(item)
    sizes = plan.sizes or [spec.default_tile]
    weights = plan.weights
    if weights is None:
        from models.weights import shipped_weights

        w = shipped_weights(spec.name)
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
