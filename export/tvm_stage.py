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
    hand_kernels: int = 0  # fused TIR functions replaced by a hand-written kernel (export.schedules)
    default_kernels: tuple[str, ...] = ()  # fused TIR functions left unscheduled: TVM's default lowering
    generic_kernels: tuple[str, ...] = ()  # fused TIR functions on the generic parallel / vector schedule


def import_onnx(m: onnx.ModelProto, input_name: str, shape: list[int]):
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Renaming name")  # input '0' -> 'input_0'; positional anyway
            return from_onnx(m, shape_dict={input_name: list(shape)}, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises assorted errors for ops/attributes it cannot map
        raise EdgeError(f"TVM's ONNX frontend could not import the graph: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}") from exc


def lower(mod, target, database=None, hand_kernels: bool = True, generic: bool = True):
    """Legalize and fuse (the zero pipeline), put hand-written kernels in place of the fused convolutions
    they recognise (:mod:`export.schedules`), apply tuned schedules from ``database`` (a MetaSchedule
    database, :attr:`export.tuning.Database.records`) to the rest, and the generic parallel / vector
    schedule (:mod:`export.schedules.generic`) to what is left (``generic=False``: leave it, for tuning;
    ``hand_kernels=False`` leaves everything to TVM's default lowering).

    Returns (module, kernels the database scheduled, :class:`export.schedules.Report`)."""
    from tvm import relax

    from export import schedules

    report = schedules.Report()
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        if hand_kernels:
            mod, rewrites = schedules.rewrite_graph(mod, target)
        mod = relax.get_pipeline("zero")(mod)
        if hand_kernels:
            mod, report = schedules.apply(mod, target)
            report.graph_rewrites = rewrites
            mod = schedules.fuse(mod, target, report)
        tuned = 0
        if database is not None:
            # tuned = scheduled by the database, not before it: hand kernels, graph rewrites and fused chains
            # are scheduled already (under names of their own), and an empty database must count 0
            before = _scheduled(mod)
            mod = _apply_database(mod, database)
            tuned = len(_scheduled(mod) - before)
        if hand_kernels and generic:
            mod = schedules.schedule_rest(mod, target, report)
    return mod, tuned, report


def _scheduled(mod) -> set[str]:
    import tvm

    return {gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs}


def _apply_database(mod, db):
    from tvm import relax

    with db:
        return relax.transform.MetaScheduleApplyDatabase()(mod)


def compile_library(m: onnx.ModelProto, input_name: str, shape: list[int], preset: TargetPreset, out: Path,
                    cuda_arch: str | None = None, database=None, hand_kernels: bool = True) -> Compiled:
    """Compile ``m`` for ``preset`` into the shared library ``out``, with the tuned schedules of ``database``
    (a :class:`export.tuning.Database`, or None); ``hand_kernels=False`` keeps TVM's default lowering (for
    benchmarks that compare the two)."""
    import tvm
    from tvm.support import cc

    preset.check_toolchain()
    target = preset.tvm_target(cuda_arch)
    mod = import_onnx(m, input_name, shape)
    tuned = hand = 0
    left: tuple[str, ...] = ()
    generic: tuple[str, ...] = ()
    if preset.device == "cuda":
        ex = tvm.compile(mod, target=target)  # the GPU pipeline schedules with dlight
    else:
        mod, tuned, report = lower(mod, target, None if database is None else database.records,
                                   hand_kernels=hand_kernels)
        hand = report.count
        left = tuple(sorted(set(report.default) - _scheduled(mod)))  # neither tuned nor on the generic schedule
        generic = tuple(report.generic)
        ex = tvm.compile(mod, target=target)
    try:
        if preset.cross_compiler:
            ex.export_library(str(out), fcompile=cc.cross_compiler(preset.cross_compiler))
        else:
            ex.export_library(str(out))
    except Exception as exc:  # linker failures come back as RuntimeError with the compiler's output
        raise EdgeError(f"linking the library for {preset.name} failed: {str(exc).splitlines()[0][:200]}") from exc
    return Compiled(out, {**preset.resolved_target(cuda_arch), "str": str(target)},
                    None if database is None else str(database.path), tuned, hand, left, generic)


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
