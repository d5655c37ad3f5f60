"""Recognise the fused TIR kernels that have a hand-written CPU kernel: convolution + elementwise epilogue.

FuseTIR leaves each fused convolution as a chain of blocks: an optional padding copy, the convolution
reduction, then one block per elementwise op (bias add, clip bounds, residual add). This module reads
that chain and returns what it computes as plain data (:class:`ConvMatch`), or ``None`` when anything
differs from the forms it knows: every index, extent, operand and dtype is checked, so a kernel
generated from the match computes exactly what the default lowering would.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpiOp:
    """One elementwise step ``y = op(y, operand)`` applied to the convolution output, in order."""

    op: str  # add | sub | rsub | mul | div | rdiv | max | min; sigmoid | exp | tanh (operand "none")
    operand: str  # chan: param[0, c, 0, 0]; scalar: param[()]; tensor: param[n, c, h, w]; const;
    #               stage: the value after epilogue step ``param`` (-1: the convolution itself), as in
    #               hard-swish t * clip(t + 3, 0, 6) / 6
    param: int | None = None  # index into the function's parameters (the step, for operand == "stage")
    value: float | None = None  # the constant for operand == "const"


@dataclass(frozen=True)
class ConvMatch:
    """An NCHW convolution (batch 1, float32) followed by an elementwise epilogue."""

    kind: str  # pointwise (1x1, stride 1, no pad) | depthwise (groups = channels) | dense (KxK)
    x: int  # parameter indices
    w: int
    out: int
    cin: int
    h: int
    wd: int
    cout: int
    ho: int
    wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int  # top / left zero padding (bottom / right follow from the output size)
    pw: int
    epilogue: tuple[EpiOp, ...]
    shapes: tuple[tuple[int, ...], ...]  # every parameter's shape, in order
    dil_h: int = 1  # dilation: tap ky reads input row y * sh + ky * dil_h - ph
    dil_w: int = 1
    groups: int = 1  # pointwise / dense: output channel c reads the cin/groups inputs of group c // (cout/groups)

    @property
    def macs(self) -> int:
        per = self.kh * self.kw * (1 if self.kind == "depthwise" else self.cin // self.groups)
        return self.cout * self.ho * self.wo * per


# ---------------------------------------------------------------------------------------------- helpers

def _tname(node) -> str:
    return type(node).__name__


def _ints(shape) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in shape)
    except (TypeError, ValueError):  # symbolic extents: not ours
        return None


def _realizes(stmt, out: list) -> list:
    """The block realizes directly under ``stmt`` (through loops and sequences), in program order."""
    name = _tname(stmt)
    if name == "SBlockRealize":
        out.append(stmt)
    elif name == "SeqStmt":
        for s in stmt.seq:
            _realizes(s, out)
    elif name == "For":
        _realizes(stmt.body, out)
    else:
        raise _NoMatch(f"unexpected statement {name}")
    return out


class _NoMatch(Exception):
    pass


def _linear(e) -> dict[str, int]:
    """``e`` as {var name: coefficient, "": constant}; raises _NoMatch when it is not affine."""
    n = _tname(e)
    if n == "IntImm":
        return {"": int(e.value)}
    if n == "Var":
        return {e.name: 1}
    if n == "Cast":
        return _linear(e.value)
    if n in ("Add", "Sub"):
        a, b = _linear(e.a), _linear(e.b)
        sign = 1 if n == "Add" else -1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return {k: v for k, v in out.items() if v != 0 or k == ""}
    if n == "Mul":
        a, b = _linear(e.a), _linear(e.b)
        if set(a) <= {""}:
            a, b = b, a
        if not set(b) <= {""}:
            raise _NoMatch("non-affine index")
        c = b.get("", 0)
        return {k: v * c for k, v in a.items()}
    raise _NoMatch(f"index {n}")


def _is(e, lin: dict[str, int]) -> bool:
    try:
        got = _linear(e)
    except _NoMatch:
        return False
    norm = lambda d: {k: v for k, v in d.items() if v != 0}
    return norm(got) == norm(lin)


def _load(e):
    if _tname(e) != "TensorLoad":
        raise _NoMatch(f"expected a load, got {_tname(e)}")
    return e.source, list(e.indices)


def _param_index(params, buf) -> int | None:
    for i, p in enumerate(params):
        if p.same_as(buf):
            return i
    return None


def _trivial(realize) -> list[tuple[str, int, str]]:
    """Iter vars of a block bound one-to-one to its loops, without predicate: [(name, extent, S|R)]."""
    pred = realize.predicate
    if not (_tname(pred) == "IntImm" and int(pred.value) == 1):
        raise _NoMatch("predicated block")
    b = realize.block
    if len(b.match_buffers) or len(b.alloc_buffers):
        raise _NoMatch("block with buffers")
    seen = set()
    for v in realize.iter_values:
        if _tname(v) != "Var" or v.name in seen:
            raise _NoMatch("non-trivial binding")
        seen.add(v.name)
    out = []
    for iv in b.iter_vars:
        if int(iv.dom.min) != 0:
            raise _NoMatch("iter var with offset")
        kind = {0: "S", 2: "R"}.get(int(iv.iter_type))
        if kind is None:
            raise _NoMatch("iter type")
        out.append((iv.var.name, int(iv.dom.extent), kind))
    return out


# ---------------------------------------------------------------------------------------------- matcher

def _step_and_dilation(lin: dict, out_var, tap_var, taps: int, what: str) -> tuple[int, int]:
    """(stride, dilation) of an input index ``stride * out + dilation * tap`` (no offset: padding is a buffer)."""
    nz = {k: c for k, c in lin.items() if c}
    step = nz.pop(out_var, 0)
    coef = nz.pop(tap_var, 0)
    dil = coef if taps > 1 else 1  # a single tap reads at 0, whatever its coefficient
    if nz:
        raise _NoMatch(f"{what} index (offset)")
    return step, dil


def match_conv(func) -> ConvMatch | None:
    """The convolution ``func`` computes, or None when it is not one of the recognised forms."""
    try:
        return _match_conv(func)
    except _NoMatch:
        return None


def _match_conv(func) -> ConvMatch:
    params = list(func.params)
    shapes = []
    for p in params:
        ty = p.ty
        if _tname(ty) != "BufferType" or str(ty.dtype) != "float32":
            raise _NoMatch("non-float32 parameter")
        s = _ints(ty.shape)
        if s is None:
            raise _NoMatch("symbolic shape")
        shapes.append(s)
    root = func.body
    if _tname(root) != "SBlockRealize":
        raise _NoMatch("no root block")
    blocks = _realizes(root.block.body, [])
    allocs = list(root.block.alloc_buffers)
    if not blocks:
        raise _NoMatch("no blocks")

    i = 0
    pad = None
    if len(blocks) > 1 and blocks[0].block.init is None and len(_trivial(blocks[0])) == 4 \
            and blocks[1].block.init is not None:
        pad = blocks[0]
        i = 1
    conv = blocks[i]
    epis = blocks[i + 1:]

    # the padding copy: pad[n, c, h, w] = X[n, c, h - ph, w - pw] inside the bounds, else 0
    ph = pw = 0
    if pad is not None:
        ivs = _trivial(pad)
        st = pad.block.body
        if _tname(st) != "BufferStore" or _param_index(params, st.buffer) is not None:
            raise _NoMatch("pad writes a parameter")
        names = [n for n, _, _ in ivs]
        if not all(_is(ix, {nm: 1}) for ix, nm in zip(st.indices, names)):
            raise _NoMatch("pad store index")
        v = st.value
        cond = None
        if _tname(v) == "Call" and v.op.name == "prim.if_then_else":
            cond, v, zero = v.args
            if _tname(zero) != "FloatImm" or float(zero.value) != 0.0:
                raise _NoMatch("pad value")
        xbuf, xidx = _load(v)
        x = _param_index(params, xbuf)
        if x is None or len(xidx) != 4:
            raise _NoMatch("pad source")
        offs = []
        for d, (ix, nm) in enumerate(zip(xidx, names)):
            lin = _linear(ix)
            if {k: c for k, c in lin.items() if k != ""} != {nm: 1}:
                raise _NoMatch("pad source index")
            offs.append(-lin.get("", 0))
        if offs[0] or offs[1]:
            raise _NoMatch("pad on batch/channel")
        ph, pw = offs[2], offs[3]
        _, cin, h, wd = shapes[x]
        if shapes[x][0] != 1 or ivs[0][1] != 1 or ivs[1][1] != cin:
            raise _NoMatch("pad shape")
        bounds = _bounds(cond) if cond is not None else {}
        want = {names[2]: (ph, ph + h), names[3]: (pw, pw + wd)}
        for nm, ext in ((names[2], ivs[2][1]), (names[3], ivs[3][1])):
            lo, hi = bounds.pop(nm, (0, ext))
            wl, wh = want[nm]
            # a bound may be left out only where it cannot cut (the padded extent stops there)
            if lo != wl and not (lo <= 0 and wl <= 0) or hi != wh and not (hi >= ext and wh >= ext):
                raise _NoMatch("pad bounds")
        if bounds:
            raise _NoMatch("pad condition on other axes")
        pad_buf = st.buffer
    else:
        pad_buf = None

    # the convolution
    civs = _trivial(conv)
    if [k for _, _, k in civs] != ["S", "S", "S", "S", "R", "R", "R"]:
        raise _NoMatch("conv iter vars")
    (nn, one, _), (ff, cout, _), (yy, ho, _), (xx, wo, _), (rc, nrc, _), (ry, kh, _), (rx, kw, _) = civs
    if one != 1:
        raise _NoMatch("batch")
    st = conv.block.body
    cbuf = st.buffer
    bare = not epis  # a convolution without epilogue writes the output parameter itself
    if (_param_index(params, cbuf) is not None) != bare or not (bare or any(a.same_as(cbuf) for a in allocs)):
        raise _NoMatch("conv writes a parameter")
    if not all(_is(ix, {nm: 1}) for ix, nm in zip(st.indices, (nn, ff, yy, xx))):
        raise _NoMatch("conv store index")
    init = conv.block.init
    if _tname(init) != "BufferStore" or not init.buffer.same_as(cbuf) or _tname(init.value) != "FloatImm" \
            or float(init.value.value) != 0.0:
        raise _NoMatch("conv init")
    v = st.value
    if _tname(v) != "Add":
        raise _NoMatch("conv update")
    acc, prod = (v.a, v.b) if _tname(v.a) == "TensorLoad" and v.a.source.same_as(cbuf) else (v.b, v.a)
    abuf, aidx = _load(acc)
    if not abuf.same_as(cbuf) or not all(_is(ix, {nm: 1}) for ix, nm in zip(aidx, (nn, ff, yy, xx))):
        raise _NoMatch("conv accumulator")
    if _tname(prod) != "Mul":
        raise _NoMatch("conv product")
    la, lb = _load(prod.a), _load(prod.b)
    wi = _param_index(params, lb[0])
    if wi is None:
        la, lb = lb, la
        wi = _param_index(params, lb[0])
    if wi is None:
        raise _NoMatch("conv weight")
    (xb, xidx), (_, widx) = la, lb
    if pad_buf is not None:
        if not xb.same_as(pad_buf):
            raise _NoMatch("conv reads something else than the padding")
    else:
        x = _param_index(params, xb)
        if x is None:
            raise _NoMatch("conv input")
        _, cin, h, wd = shapes[x]
    if not all(_is(ix, {nm: 1}) for ix, nm in zip(widx, (ff, rc, ry, rx))):
        raise _NoMatch("weight index")
    if not _is(xidx[0], {nn: 1}):
        raise _NoMatch("input batch index")
    rows, cols = _linear(xidx[2]), _linear(xidx[3])
    sh, dh = _step_and_dilation(rows, yy, ry, kh, "row")
    sw, dw = _step_and_dilation(cols, xx, rx, kw, "column")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1:
        raise _NoMatch("stride or dilation")
    if shapes[wi] != (cout, nrc, kh, kw):
        raise _NoMatch("weight shape")
    groups = 1
    if _is(xidx[1], {rc: 1}) and nrc == cin:
        kind = "pointwise" if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) else "dense"
    elif _is(xidx[1], {ff: 1, rc: 1}) and nrc == 1 and cin == cout:
        kind = "depthwise"
    elif (g := _group_index(xidx[1], ff, rc)) is not None and g[1] == nrc and cout % g[0] == 0 \
            and cin == (cout // g[0]) * nrc:
        groups = cout // g[0]
        kind = "pointwise" if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) else "dense"
    else:
        raise _NoMatch("grouping")
    hp = h + 2 * ph if pad is None else int(_trivial(pad)[2][1])
    wp = wd + 2 * pw if pad is None else int(_trivial(pad)[3][1])
    if (ho - 1) * sh + (kh - 1) * dh + 1 > hp or (wo - 1) * sw + (kw - 1) * dw + 1 > wp:
        raise _NoMatch("output larger than the padded input")

    # the epilogue: a chain of elementwise blocks, each reading the previous one's buffer (and maybe earlier ones)
    out_shape = (1, cout, ho, wo)
    prev = cbuf
    ops: list[EpiOp] = []
    stages = [(cbuf, -1)]  # (buffer, the step whose value it holds)
    for k, e in enumerate(epis):
        ivs = _trivial(e)
        if [x_ for _, x_, _ in ivs] != list(out_shape) or any(kd != "S" for _, _, kd in ivs):
            raise _NoMatch("epilogue domain")
        names = [n for n, _, _ in ivs]
        es = e.block.body
        if _tname(es) != "BufferStore" or not all(_is(ix, {nm: 1}) for ix, nm in zip(es.indices, names)):
            raise _NoMatch("epilogue store")
        ops.extend(_Epilogue(prev, names, params, shapes, out_shape, stages).chain(es.value))
        prev = es.buffer
        stages.append((prev, len(ops) - 1))
        last = k == len(epis) - 1
        if last != (_param_index(params, prev) is not None):
            raise _NoMatch("epilogue writes")
    out = _param_index(params, prev)
    if out != len(params) - 1 or shapes[out] != out_shape:
        raise _NoMatch("output parameter")
    return ConvMatch(kind, x, wi, out, cin, h, wd, cout, ho, wo, kh, kw, sh, sw, ph, pw, tuple(ops),
                     tuple(shapes), dh, dw, groups)


def _group_index(e, ff: str, rc: str) -> tuple[int, int] | None:
    """(output channels per group, input channels per group) of a grouped convolution's input channel
    index ``ff // Mg * Kg + rc``, None for anything else."""
    if _tname(e) != "Add":
        return None
    for a, b in ((e.a, e.b), (e.b, e.a)):
        if _tname(b) == "Var" and b.name == rc and _tname(a) == "Mul":
            d, k = (a.a, a.b) if _tname(a.a) == "FloorDiv" else (a.b, a.a)
            if _tname(d) == "FloorDiv" and _tname(k) == "IntImm" and _tname(d.a) == "Var" and d.a.name == ff \
                    and _tname(d.b) == "IntImm" and int(d.b.value) > 0:
                return int(d.b.value), int(k.value)
    return None


def _bounds(cond) -> dict[str, tuple[int, int]]:
    """A conjunction of ``c <= v`` / ``v < c`` terms as {var: (lo, hi)} (hi exclusive)."""
    out: dict[str, list[int]] = {}
    terms = []

    def walk(c):
        if _tname(c) == "And":
            walk(c.a)
            walk(c.b)
        else:
            terms.append(c)

    walk(cond)
    big = 1 << 60
    for t in terms:
        n = _tname(t)
        a, b = t.a, t.b
        if n in ("LE", "LT") and _tname(a) == "IntImm" and _tname(b) == "Var":
            lo = int(a.value) + (1 if n == "LT" else 0)
            out.setdefault(b.name, [-big, big])[0] = max(out.get(b.name, [-big, big])[0], lo)
        elif n in ("LT", "LE") and _tname(a) == "Var" and _tname(b) == "IntImm":
            hi = int(b.value) + (1 if n == "LE" else 0)
            out.setdefault(a.name, [-big, big])[1] = min(out.get(a.name, [-big, big])[1], hi)
        elif n in ("GE", "GT") and _tname(a) == "Var" and _tname(b) == "IntImm":
            lo = int(b.value) + (1 if n == "GT" else 0)
            out.setdefault(a.name, [-big, big])[0] = max(out.get(a.name, [-big, big])[0], lo)
        else:
            raise _NoMatch(f"pad condition term {n}")
    return {k: (v[0], v[1]) for k, v in out.items()}


_BINOPS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min"}
_SWAPPED = {"sub": "rsub", "div": "rdiv"}
_UNARY = {"tirx.sigmoid": "sigmoid", "tirx.exp": "exp", "tirx.tanh": "tanh"}


class _Epilogue:
    """Reads one epilogue block's value as steps applied to the previous block's value: a chain of binary
    ops (``T.max(T.min(v, 6), 0)`` is two), each with one operand that is a constant, a parameter or the
    value of an earlier step."""

    def __init__(self, prev, names, params, shapes, out_shape, stages) -> None:
        self.prev, self.names, self.params, self.shapes = prev, names, params, shapes
        self.out_shape, self.stages = out_shape, stages

    def _identity(self, load) -> bool:
        return all(_is(ix, {nm: 1}) for ix, nm in zip(load.indices, self.names))

    def chain(self, v) -> list[EpiOp]:
        if _tname(v) == "TensorLoad" and v.source.same_as(self.prev):
            if not self._identity(v):
                raise _NoMatch("epilogue read index")
            return []
        n = _tname(v)
        if n == "Call" and v.op.name in _UNARY and len(v.args) == 1:
            return self.chain(v.args[0]) + [EpiOp(_UNARY[v.op.name], "none")]
        if n not in _BINOPS:
            raise _NoMatch(f"epilogue op {n}")
        op = _BINOPS[n]
        try:
            steps, other = self.chain(v.a), v.b
        except _NoMatch:
            steps, other = self.chain(v.b), v.a
            op = _SWAPPED.get(op, op)
        return steps + [self.operand(op, other)]

    def operand(self, op: str, other) -> EpiOp:
        if _tname(other) == "FloatImm":
            return EpiOp(op, "const", value=float(other.value))
        ob, oidx = _load(other)
        for buf, step in self.stages:
            if buf.same_as(ob):
                if not self._identity(other):
                    raise _NoMatch("epilogue stage read index")
                return EpiOp(op, "stage", step)
        pi = _param_index(self.params, ob)
        if pi is None:
            raise _NoMatch("epilogue operand is not a parameter")
        s, names, out_shape = self.shapes[pi], self.names, self.out_shape
        if s == ():
            return EpiOp(op, "scalar", pi)
        if s == (1, out_shape[1], 1, 1) and _is(oidx[0], {names[0]: 1}) and _is(oidx[1], {names[1]: 1}) \
                and _is(oidx[2], {"": 0}) and _is(oidx[3], {"": 0}):
            return EpiOp(op, "chan", pi)
        if s == out_shape and all(_is(ix, {nm: 1}) for ix, nm in zip(oidx, names)):
            return EpiOp(op, "tensor", pi)
        raise _NoMatch("epilogue operand shape")
