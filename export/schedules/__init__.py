"""Hand-written CPU kernels for the fused TIR functions TVM's Relax CPU path leaves unscheduled.

``apply(mod, target)`` replaces every fused PrimFunc it recognises (convolution + bias / clip / residual
epilogue: 1x1, depthwise, small dense KxK; 3x1 / 1x3 / 3x3 by Winograd) with a vectorised, register-tiled,
parallel kernel marked ``tirx.is_scheduled`` (a deep, narrow dense KxK with a constant weight: vectorised over
output channels, the weight repacked at compile time, its calls given the packed constant); anything it does
not recognise keeps TVM's default lowering. The kernels take their vector width from the target (4 lanes NEON,
8 AVX2, 16 AVX-512), so one code path serves the Cortex-A72 and x86.

The modules, and what imports what (arrows one way; no module imports another's private names):

- ``match``: reads what a fused PrimFunc computes (:class:`~export.schedules.match.ConvMatch`); imports none of
  the others.
- ``emit``: the one TVMScript emitter: ``Cpu`` / ``cpu_of``, the code writer, epilogue, tiling arithmetic,
  row staging (``stage_rows``, ``tap``, ``row_span``, ``STAGE_BYTES`` / ``HEAP_STAGE_BYTES``) and the x2 bilinear
  row; imports ``match``.
- ``kernels``: the single-convolution kernels and the upsample + concat kernel; imports ``emit``, ``match``.
- ``graph``: Relax rewrites before legalization and ``rewrite_calls``, the call-rewriting driver; imports
  ``emit``, ``kernels``.
- ``fused``: conv -> depthwise -> pointwise chains streamed row by row; imports ``emit``, ``graph``, ``match``.
- ``generic``: parallel + vectorised schedules (TVM's primitives) for every kernel still unscheduled after the
  hand-written ones and a tuning database: concats, pools, means, resizes; imports none of the others.
- this package: ``apply`` / ``rewrite_graph`` / ``fuse``, what :mod:`export.tvm_stage` calls.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field, replace

from export.schedules.emit import Cpu, cpu_of
from export.schedules.kernels import (channel_tile, dense_channels, generate, packed_weight, winograd, winograd_plan,
                                      winograd_weight)
from export.schedules.match import match_conv

__all__ = ["KERNELS_OFF", "Cpu", "Report", "apply", "cpu_of", "kernels_off", "match_conv", "rewrite_graph",
           "schedule_rest"]

# kernel families kernel_for may leave out (kernels_off): each then falls back to the next kernel that fits
KERNELS_OFF = ("winograd", "winograd-3x3", "dense_channels")
_off: set[str] = set()


@contextlib.contextmanager
def kernels_off(*families: str):
    """Lower with these hand-written kernel families left out (:data:`KERNELS_OFF`: every Winograd kernel, the
    3x3 ones only, the output-channel-vectorised dense kernel), for A/B measurements
    (``benchmarks.kernel_ab``) and tests; a layer they would have taken gets the next kernel that fits."""
    unknown = sorted(set(families) - set(KERNELS_OFF))
    if unknown:
        raise ValueError(f"unknown kernel family {', '.join(unknown)}: choose from {', '.join(KERNELS_OFF)}")
    before = set(_off)
    _off.update(families)
    try:
        yield
    finally:
        _off.clear()
        _off.update(before)


def _winograd_on(m) -> bool:
    return "winograd" not in _off and not ("winograd-3x3" in _off and (m.kh, m.kw) == (3, 3))


@dataclass
class Report:
    """Which fused functions got a hand-written kernel."""

    scheduled: dict[str, str] = field(default_factory=dict)  # function name -> kernel kind
    failed: dict[str, str] = field(default_factory=dict)  # recognised, but the kernel did not build
    default: list[str] = field(default_factory=list)  # left to the default lowering
    graph_rewrites: int = 0  # ops replaced before legalization (x2 upsample + concat, transposed convolutions,
    #                          grid sampling)
    fused: list[str] = field(default_factory=list)  # conv chains streamed row by row (export.schedules.fused)
    matches: dict = field(default_factory=dict)  # function name -> ConvMatch, as FuseTIR made them
    generic: list[str] = field(default_factory=list)  # scheduled by export.schedules.generic (after any database)

    @property
    def count(self) -> int:
        return len(self.scheduled) + self.graph_rewrites


def kernel_for(func, cpu: Cpu, const_params: frozenset = frozenset()):
    """The hand-written PrimFunc computing ``func``, None when it is not recognised. ``const_params``: the
    parameters every call passes a constant (a weight there may be repacked: kinds ``winograd`` and
    ``dense_channels``)."""
    from tvm.script.parser.core.entry import parse

    m = match_conv(func)
    if m is None:
        return None, None
    plan = winograd_plan(m, cpu) if m.w in const_params and _winograd_on(m) else None
    if plan is not None:
        return replace(m, kind="winograd"), parse(winograd(m, cpu, plan))
    if m.w in const_params and "dense_channels" not in _off and channel_tile(m, cpu) is not None:
        return replace(m, kind="dense_channels"), parse(dense_channels(m, cpu))
    src = generate(m, cpu)
    if src is None:
        return m, None
    return m, parse(src)


def _constant_params(mod) -> dict[str, frozenset]:
    """Function name -> the parameters every call_tir of it passes a constant."""
    import tvm
    from tvm import relax
    from tvm.ir import Constant

    call_tir = tvm.ir.Op.get("relax.call_tir")
    seen: dict[str, frozenset] = {}

    def visit(e):
        if isinstance(e, relax.Call) and e.op.same_as(call_tir) and isinstance(e.args[1], relax.Tuple):
            consts = frozenset(i for i, a in enumerate(e.args[1].fields) if isinstance(a, Constant))
            name = e.args[0].name_hint
            seen[name] = seen[name] & consts if name in seen else consts

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return seen


def _pack_weights(mod, packed: dict[str, tuple[object, int, object]]):
    """Every call of a function in ``packed`` (name -> its ``dense_channels`` / ``winograd`` kernel, weight
    parameter, packing function) calls that kernel instead, with the constant weight in the packed layout the
    kernel declares (a new function: the old one's signature is part of its callers' types). Returns the module
    and old name -> new name."""
    import tvm
    from tvm import relax

    from export.schedules.graph import rewrite_calls

    call_tir = tvm.ir.Op.get("relax.call_tir")
    added: dict[str, object] = {}

    def rewrite(rw, call):
        if not call.op.same_as(call_tir) or call.args[0].name_hint not in packed:
            return None
        name = call.args[0].name_hint
        func, i, pack = packed[name]
        if name not in added:
            added[name] = rw.builder_.add_func(func, name)
        args = list(call.args[1].fields)
        args[i] = relax.const(pack(args[i].value.numpy()))
        return relax.call_tir(added[name], args, out_ty=call.ty)

    mod = rewrite_calls(mod, rewrite)[0]
    return mod, {k: gv.name_hint for k, gv in added.items()}


def apply(mod, target, log=None) -> tuple[object, Report]:
    """Replace every recognised fused PrimFunc of ``mod`` with its hand-written kernel for ``target``."""
    import tvm

    cpu = cpu_of(target)
    report = Report()
    updates = {}
    const_params = _constant_params(mod)
    packed: dict[str, tuple[object, int, object]] = {}  # name -> (kernel, weight parameter, packing)
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue
        try:
            m, new = kernel_for(func, cpu, const_params.get(name, frozenset()))
        except Exception as exc:  # a generator bug must not break the export: keep the default, say so
            report.failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        if new is None:
            report.default.append(name)
            continue
        attrs = {k: v for k, v in func.attrs.items()} if func.attrs is not None else {}
        attrs.pop("tirx.is_scheduled", None)
        for k, v in attrs.items():
            new = new.with_attr(k, v)
        if m.kind == "dense_channels":
            packed[name] = (new, m.w, lambda w, n=cpu.lanes: packed_weight(w, n))
        elif m.kind == "winograd":
            packed[name] = (new, m.w, lambda w, p=winograd_plan(m, cpu): winograd_weight(w, p))
        else:
            updates[gv] = new
        report.scheduled[name] = m.kind
        report.matches[name] = m
    for gv, new in updates.items():
        mod[gv] = new
    if packed:
        mod, renamed = _pack_weights(mod, packed)
        for old, name in renamed.items():
            report.scheduled[name] = report.scheduled.pop(old)
            report.matches[name] = report.matches.pop(old)
    _notice(report.failed, "recognised kernels kept TVM's default lowering because the hand-written kernel "
                           "did not build")
    return mod, report


def _notice(failed: dict[str, str], what: str) -> None:
    """One stderr line naming every kernel an optimisation skipped, and why."""
    if failed:
        print(f"notice: {len(failed)} {what}: " + "; ".join(f"{k} ({v})" for k, v in failed.items()),
              file=sys.stderr)


def rewrite_graph(mod, target) -> tuple[object, int]:
    """Relax-level rewrites that must see op attributes (before legalization): x2 upsample + concat, and
    transposed convolutions in sub-pixel form, bilinear grid sampling, division by a constant as a multiply.
    Returns the module and how many ops were rewritten."""
    from export.schedules.graph import (rewrite_constant_division, rewrite_conv_transpose, rewrite_grid_sample,
                                        rewrite_upsample_concat)

    total = 0
    for what, rewrite in (("upsample+concat", lambda m: rewrite_upsample_concat(m, cpu_of(target))),
                          ("transposed-convolution", rewrite_conv_transpose),
                          ("grid-sample", lambda m: rewrite_grid_sample(m, cpu_of(target))),
                          ("constant-division", lambda m: (rewrite_constant_division(m)[0], 0))):  # not a kernel
        try:
            mod, n = rewrite(mod)
            total += n
        except Exception as exc:  # never break an export over an optimisation: keep the graph, say so
            print(f"notice: the {what} rewrite failed and is skipped ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:160]})", file=sys.stderr)
    return mod, total


def fuse(mod, target, report: Report):
    """Stream conv -> depthwise -> pointwise chains row by row (export.schedules.fused); needs ``apply`` first."""
    from export.schedules.fused import fuse_chains

    try:
        mod, done = fuse_chains(mod, report.matches, cpu_of(target))
    except Exception as exc:  # never break an export over an optimisation: keep the graph, say so
        print(f"notice: chain fusion failed and is skipped ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]})", file=sys.stderr)
        return mod
    report.fused = done
    return mod


def schedule_rest(mod, target, report: Report):
    """Give every kernel still unscheduled the generic parallel / vector schedule (export.schedules.generic);
    run it after the hand-written kernels and the tuning database, which take precedence."""
    from export.schedules import generic as gen

    mod, report.generic, failed = gen.apply(mod, cpu_of(target).lanes)
    _notice(failed, "kernels kept TVM's default lowering (the generic schedule did not apply)")
    return mod
