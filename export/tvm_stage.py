"""Stage 3: ONNX -> TVM Relax -> compiled library for a target preset (cross-linked when needed)."""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge.errors import EdgeError
from export.targets import TargetPreset


@dataclass(frozen=True)
class Compiled:
    library: Path
    target: dict
    tuning_db: str | None
    tuned_tasks: int  # fused TIR functions that got a schedule from the database


def import_onnx(m: onnx.ModelProto, input_name: str, shape: list[int]):
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Renaming name")  # input '0' -> 'input_0'; positional anyway
            return from_onnx(m, shape_dict={input_name: list(shape)}, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises assorted errors for ops/attributes it cannot map
        raise EdgeError(f"TVM's ONNX frontend could not import the graph: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}") from exc


def _lower(mod, target, database_dir: Path | None) -> tuple[object, int]:
    """Legalize and fuse (the zero pipeline), applying tuned schedules from ``database_dir`` when given."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        if database_dir is None:
            return relax.get_pipeline("zero")(mod), 0
        from export.tuning import load_database

        db, _ = load_database(database_dir, target)
        with db:
            lowered = relax.get_pipeline("zero")(mod)
    tuned = sum(1 for _, f in lowered.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs)
    return lowered, tuned


def compile_library(m: onnx.ModelProto, input_name: str, shape: list[int], preset: TargetPreset, out: Path,
                    cuda_arch: str | None = None, database_dir: Path | None = None) -> Compiled:
    """Compile ``m`` for ``preset`` into the shared library ``out``."""
    import tvm
    from tvm.support import cc

    preset.check_toolchain()
    target = preset.tvm_target(cuda_arch)
    mod = import_onnx(m, input_name, shape)
    tuned = 0
    if preset.device == "cuda":
        ex = tvm.compile(mod, target=target)  # the GPU pipeline schedules with dlight
    else:
        mod, tuned = _lower(mod, target, database_dir)
        ex = tvm.compile(mod, target=target)
    try:
        if preset.cross_compiler:
            ex.export_library(str(out), fcompile=cc.cross_compiler(preset.cross_compiler))
        else:
            ex.export_library(str(out))
    except Exception as exc:  # linker failures come back as RuntimeError with the compiler's output
        raise EdgeError(f"linking the library for {preset.name} failed: {str(exc).splitlines()[0][:200]}") from exc
    return Compiled(out, {**preset.resolved_target(cuda_arch), "str": str(target)},
                    str(database_dir) if database_dir else None, tuned)


def run_library(library: Path, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Run a host-loadable library on ``x`` through the Relax VM."""
    import tvm
    from tvm import relax

    dev = tvm.cuda() if device == "cuda" else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    out = vm["main"](tvm.runtime.tensor(x, dev))
    return out.numpy()


def progress(msg: str) -> None:
    print(f"[edge-export] {msg}", file=sys.stderr, flush=True)
