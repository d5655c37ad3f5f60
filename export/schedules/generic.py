"""A generic CPU schedule for the fused kernels nothing else schedules: concatenations, pools, means,
resizes, depth-to-space, normalisation chains.

TVM's Relax CPU pipeline leaves such kernels as the plain loop nests legalization wrote: one thread, no
vectors. Here each gets what any CPU wants from an elementwise or small-window kernel, with TVM's own
schedule primitives (so the computation stays exactly what legalization wrote):

- every intermediate block is inlined into its consumer where TVM can (``compute_inline`` /
  ``reverse_compute_inline``), so a chain of elementwise ops makes one pass over memory;
- the leading spatial loops of each block left are fused and run in parallel;
- an all-spatial block's innermost loop is vectorised by the target's lanes when they divide it and every
  load steps through memory by 0 or 1 element along it (a resize's computed index stays scalar: measured
  slower vectorised);
- a kernel that reads at indices it loads (grid sampling) is left to the default lowering, which LLVM
  vectorises with gathers only while it is serial (see :func:`_gathers`).

A hand-written kernel (:mod:`export.schedules.kernels`) or a tuned schedule (MetaSchedule database) takes
precedence: only functions without ``tirx.is_scheduled`` are touched.
"""
from __future__ import annotations


def schedule(func, lanes: int):
    """``func`` scheduled as above, or None when its loops are not in a form this handles."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import get_extent, try_inline

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    if len(infos) > 1:
        try_inline(sch, infos)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
    if any(_gathers(sch, info) for info in infos):
        return None
    done = False
    for info in infos:
        kinds = info.dom_kind()
        lead = len(kinds) - len(kinds.lstrip("S"))
        if lead == 0:
            continue
        loops = sch.get_loops(info.block_rv)
        if len(loops) != len(kinds):
            return None
        par = loops[:lead]
        if lead == len(kinds) and lead > 1:  # all spatial: the innermost loop is the vector one
            inner = loops[-1]
            extent = get_extent(sch, inner)
            par = loops[:-1]
            if isinstance(extent, int) and extent >= lanes and extent % lanes == 0 and _contiguous(sch, info):
                _, vec = sch.split(inner, factors=[None, lanes])
                sch.vectorize(vec)
        fused = sch.fuse(*par) if len(par) > 1 else par[0]
        sch.parallel(fused)
        done = True
    return sch.mod["main"].with_attr("tirx.is_scheduled", True) if done else None


def _contiguous(sch, info) -> bool:
    """Whether every load and store of the block moves by 0 or 1 element per step of its innermost iter var."""
    from tvm.sym.pattern import detect_linear_equation
    from tvm.tirx.analysis import undefined_vars

    block = sch.get(info.block_rv)
    var = block.iter_vars[-1].var

    def uses(e) -> bool:
        return any(v.same_as(var) for v in undefined_vars(e))

    def ok(access) -> bool:
        *outer, last = access.indices
        if any(uses(ix) for ix in outer):
            return False
        coef = detect_linear_equation(last, [var])
        return len(coef) == 2 and type(coef[0]).__name__ == "IntImm" and int(coef[0].value) in (0, 1)

    return all(ok(a) for a in _accesses(block.body, []))


def _gathers(sch, info) -> bool:
    """Whether the block reads at an index it loads from memory (grid sampling, take): LLVM vectorises such a
    loop nest with gather instructions only while it is serial (a parallel body loses the buffers' noalias),
    and measured, the serial vectorised kernel is faster than the parallel scalar one (grid_sample of
    HybridNetSeg: 4.4 ms serial, 18 ms parallel on one thread, 10 ms on two)."""
    return any(_accesses(ix, []) for a in _accesses(sch.get(info.block_rv).body, []) for ix in a.indices)


def _accesses(node, out: list) -> list:
    """Every load and store under ``node`` (expressions and the statements a block body holds)."""
    name = type(node).__name__
    if name in ("TensorLoad", "BufferLoad", "BufferStore", "TensorStore"):
        out.append(node)
    for attr in ("a", "b", "value", "condition", "true_value", "false_value", "body", "then_case", "else_case"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            _accesses(child, out)
    for attr in ("args", "indices", "seq"):
        for child in getattr(node, attr, None) or ():
            if not isinstance(child, (int, float, str)):
                _accesses(child, out)
    return out


def apply(mod, lanes: int) -> tuple[object, list[str], dict[str, str]]:
    """Schedule every PrimFunc of ``mod`` that is not scheduled yet; returns the module, their names, and
    {name: why} for those a schedule primitive refused (they keep the default lowering)."""
    import tvm

    updates, names, failed = {}, [], {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs is not None and "tirx.is_scheduled" in func.attrs):
            continue
        try:
            new = schedule(func, lanes)
        except Exception as exc:  # a primitive refused this loop nest: keep the default lowering, say why
            failed[gv.name_hint] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
            continue
        if new is not None:
            updates[gv] = new
            names.append(gv.name_hint)
    for gv, new in updates.items():
        mod[gv] = new
    return mod, sorted(names), failed
