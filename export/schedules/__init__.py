"""Hand-written CPU kernels for the fused TIR functions TVM's Relax CPU path leaves unscheduled.

``apply(mod, target)`` replaces every fused PrimFunc it recognises (convolution + bias / clip / residual
epilogue: 1x1, depthwise, small dense KxK) with a vectorised, register-tiled, parallel kernel marked
``tirx.is_scheduled``; anything it does not recognise keeps TVM's default lowering. The kernels take
their vector width from the target (4 lanes NEON, 8 AVX2, 16 AVX-512), so one code path serves the
Cortex-A72 and x86.

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

import sys
from dataclasses import dataclass, field

from export.schedules.emit import Cpu, cpu_of
from export.schedules.kernels import generate
from export.schedules.match import match_conv

__all__ = ["Cpu", "Report", "apply", "cpu_of", "match_conv", "rewrite_graph", "schedule_rest"]


@dataclass
class Report:
    """Which fused functions got a hand-written kernel."""

    scheduled: dict[str, str] = field(default_factory=dict)  # function name -> kernel kind
    failed: dict[str, str] = field(default_factory=dict)  # recognised, but the kernel did not build
    default: list[str] = field(default_factory=list)  # left to the default lowering
    graph_rewrites: int = 0  # ops replaced before legalization (x2 upsample + concat, transposed convolutions)
    fused: list[str] = field(default_factory=list)  # conv chains streamed row by row (export.schedules.fused)
    matches: dict = field(default_factory=dict)  # function name -> ConvMatch, as FuseTIR made them
    generic: list[str] = field(default_factory=list)  # scheduled by export.schedules.generic (after any database)

    @property
    def count(self) -> int:
        return len(self.scheduled) + self.graph_rewrites


def kernel_for(func, cpu: Cpu):
    """The hand-written PrimFunc computing ``func``, None when it is not recognised."""
    from tvm.script.parser.core.entry import parse

    m = match_conv(func)
    if m is None:
        return None, None
    src = generate(m, cpu)
    if src is None:
        return m, None
    return m, parse(src)


def apply(mod, target, log=None) -> tuple[object, Report]:
    """Replace every recognised fused PrimFunc of ``mod`` with its hand-written kernel for ``target``."""
    import tvm

    cpu = cpu_of(target)
    report = Report()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue
        try:
            m, new = kernel_for(func, cpu)
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
        updates[gv] = new
        report.scheduled[name] = m.kind
        report.matches[name] = m
    for gv, new in updates.items():
        mod[gv] = new
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
    transposed convolutions in sub-pixel form. Returns the module and how many ops were rewritten."""
    from export.schedules.graph import rewrite_conv_transpose, rewrite_upsample_concat

    total = 0
    for what, rewrite in (("upsample+concat", lambda m: rewrite_upsample_concat(m, cpu_of(target))),
                          ("transposed-convolution", rewrite_conv_transpose)):
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
