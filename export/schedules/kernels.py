"""Hand-written CPU kernels for the recognised convolutions, emitted as TVMScript text and parsed.

Written by hand because no library does it for TVM's Relax CPU path: the default lowering applies no
schedule, dlight's CPU rules cover only GEMV/reductions, and MetaSchedule needs hours per model.
Each generator takes a :class:`~export.schedules.match.ConvMatch` (what the fused kernel computes) and
:class:`Cpu` (vector lanes and registers of the target) and returns a PrimFunc with the original
signature, so the Relax graph calls it unchanged. The kernels are target-independent TIR: LLVM picks
the instructions (NEON on the Cortex-A72, AVX2 / AVX-512 on x86) from the vector width chosen here.

Shapes never need to divide the tiles: the last tile of an axis is shifted back to end at the border
(it recomputes a few outputs with identical values) instead of running a scalar remainder loop.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from export.schedules.match import ConvMatch, EpiOp


@dataclass(frozen=True)
class Cpu:
    """What the kernels are shaped for."""

    lanes: int  # float32 lanes in one vector register: 4 (NEON, SSE), 8 (AVX2), 16 (AVX-512)
    vregs: int  # architectural vector registers: 32 (AArch64, AVX-512), 16 (AVX2, SSE)
    threads: int  # cores the parallel loops are cut for
    maxnum: bool = False  # clip with llvm.maxnum/minnum (one fmaxnm on AArch64; x86's vmaxps matches T.max)


class _Code:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0
        self.j: str | None = None  # inside _Vec: what ``j`` stands for

    def __call__(self, text: str) -> "_Code":
        if self.j is not None:
            text = re.sub(r"\bj\b", self.j, text)
        self.lines.append("    " * self.depth + text)
        return self

    def block(self, text: str) -> "_Indent":
        self(text)
        return _Indent(self)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Indent:
    def __init__(self, code: _Code) -> None:
        self.code = code

    def __enter__(self) -> None:
        self.code.depth += 1

    def __exit__(self, *exc) -> None:
        self.code.depth -= 1


class _Vec:
    """``for j0 in unroll(kk): for j1 in vectorized(v): j = j0 * v + j1``: row segments as whole registers
    (a single <kk*v x float> access keeps LLVM from promoting the accumulators to registers)."""

    def __init__(self, code: _Code, v: int, kk: int) -> None:
        self.code, self.v, self.kk = code, v, kk

    def __enter__(self) -> None:
        c = self.code
        c(f"for j0 in T.unroll({self.kk}):")
        c.depth += 1
        c(f"for j1 in T.vectorized({self.v}):")
        c.depth += 1
        c.j = f"(j0 * {self.v} + j1)"  # substituted, not let-bound: a vector let miscompiles here

    def __exit__(self, *exc) -> None:
        self.code.depth -= 2
        self.code.j = None


def _i64(v: int) -> str:
    return f"T.int64({v})"


def _header(code: _Code, name: str, m: ConvMatch) -> None:
    args = []
    for i, s in enumerate(m.shapes):
        shape = "(" + "".join(_i64(v) + ", " for v in s).rstrip(", ") + ("," if len(s) == 1 else "") + ")"
        args.append(f'p{i}: T.Buffer({shape}, "float32")')
    code("@T.prim_func(private=True, s_tir=True)")
    code(f"def {name}({', '.join(args)}):")
    code.depth += 1
    code('T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})')
    for i, s in enumerate(m.shapes):  # flat views: every index below is computed by hand
        if s:
            code(f'f{i} = T.decl_buffer(({math.prod(s)},), "float32", data=p{i}.data)')


def _init(m: ConvMatch, c: str, names=None) -> str:
    """The accumulator's start: a per-channel / scalar bias added first is folded in (the sum then starts
    from the bias instead of adding it at the end: the same value up to float rounding, one op less per
    output vector)."""
    if m.epilogue and m.epilogue[0].op == "add" and m.epilogue[0].operand in ("chan", "scalar", "const"):
        return _operand(m.epilogue[0], c, "0", 0, names)
    return "T.float32(0)"


def _epilogue(m: ConvMatch, v: str, c: str, s: str, cpu: Cpu, names=None) -> str:
    """The epilogue applied to value ``v`` at output channel ``c`` and flat spatial index ``s`` (after the
    bias :func:`_init` folded into the accumulator). ``names(i)`` gives (flat view, buffer) of parameter i of
    ``m``'s function in the generated kernel (default ``f{i}``, ``p{i}``)."""
    plane = m.ho * m.wo
    ops = m.epilogue[1:] if _init(m, c) != "T.float32(0)" else m.epilogue
    for op in ops:
        o = _operand(op, c, s, plane, names)
        if op.op in ("max", "min") and cpu.maxnum and op.operand != "tensor":
            # T.max lowers to compare + select (fcmgt + bif on NEON); maxnum(v, bound) is the same value for
            # every v, NaN included (both give the bound), as long as the bound itself is a number
            v = f'T.call_llvm_pure_intrin("float32", "llvm.{op.op}num", {v}, {o})'
            continue
        v = {"add": f"({v} + {o})", "sub": f"({v} - {o})", "rsub": f"({o} - {v})", "mul": f"({v} * {o})",
             "max": f"T.max({v}, {o})", "min": f"T.min({v}, {o})"}[op.op]
    return v


def _operand(op: EpiOp, c: str, s: str, plane: int, names=None) -> str:
    flat, raw = names(op.param) if names is not None and op.param is not None else (f"f{op.param}", f"p{op.param}")
    if op.operand == "const":
        return f"T.float32({float(op.value)!r})"
    if op.operand == "scalar":
        return f"{raw}[()]"
    if op.operand == "chan":
        return f"{flat}[{c}]"
    return f"{flat}[({c}) * {plane} + {s}]"


def _fit_vector(n: int, lanes: int, nvec: int) -> tuple[int, int]:
    """(lanes, vectors) for a tile along an axis of ``n`` elements: full width where it fits."""
    if n < lanes:
        return n, 1
    return lanes, max(1, min(nvec, n // lanes))


# ------------------------------------------------------------------------------------------ pointwise

def pointwise(m: ConvMatch, cpu: Cpu, name: str = "main") -> str:
    """1x1 convolution as GEMM Y[Cout, HW] = W[Cout, Cin] X[Cin, HW] (MLAS-style outer product).

    Register tile: ``cb`` output channels x ``kk`` vectors of pixels, accumulated over Cin with the weight
    broadcast; epilogue applied to the tile in registers. Parallel over macro tiles of pixels, which stay in
    L1/L2 while every block of output channels sweeps them.
    """
    K, M, P = m.cin, m.cout, m.ho * m.wo
    if cpu.lanes >= 16:
        cb, kk = 8, 3
    elif cpu.vregs >= 32:
        cb, kk = 8, 2
    else:
        cb, kk = 4, 3 if cpu.lanes >= 8 else 2
    v, kk = _fit_vector(P, cpu.lanes, kk)
    sw = v * kk
    cb = min(cb, M)
    # macro tile: X[Cin, st] about 64 KB, and enough tiles to keep every thread busy
    sm = max(1, min(P // sw, 65536 // (4 * K * sw), max(1, P // (sw * 4 * cpu.threads))))
    st = sm * sw
    nt = -(-P // st)
    code = _Code()
    _header(code, name, m)
    x, w, o = m.x, m.w, m.out
    base = f"T.min(t * {st}, {P - st}) + sm * {sw}" if nt > 1 else f"sm * {sw}"
    with code.block(f"for t in T.parallel({nt}):"):
        for m0, rows, nblk in ((0, cb, M // cb), ((M // cb) * cb, M % cb, 1)):
            if rows == 0 or nblk == 0:
                continue
            mv = "mo" if nblk > 1 else "0"
            with code.block(f"for mo in range({nblk}):" if nblk > 1 else "if True:"):
                with code.block(f"for sm in range({sm}):"):
                    code(f'acc = T.decl_buffer(({rows}, {sw}), "float32", scope="local")')
                    ch = f"{m0} + {mv} * {cb} + i"
                    with code.block(f"for i in T.unroll({rows}):"):
                        with code.block(f"for j in T.vectorized({sw}):"):
                            code(f"acc[i, j] = {_init(m, ch)}")
                    with code.block(f"for k in range({K}):"):
                        with code.block(f"for i in T.unroll({rows}):"):
                            with code.block(f"for j0 in T.unroll({kk}):"):
                                with code.block(f"for j1 in T.vectorized({v}):"):
                                    code(f"acc[i, j0 * {v} + j1] = acc[i, j0 * {v} + j1] + "
                                         f"f{x}[k * {P} + {base} + j0 * {v} + j1] * f{w}[({ch}) * {K} + k]")
                    with code.block(f"for i in T.unroll({rows}):"):
                        with code.block(f"for j in T.vectorized({sw}):"):
                            s = f"{base} + j"
                            code(f"f{o}[({ch}) * {P} + {s}] = {_epilogue(m, 'acc[i, j]', ch, s, cpu)}")
    return code.text()


# --------------------------------------------------------------------------------- row staging (shared)

def _row_span(m: ConvMatch) -> int:
    """L: the staged columns per phase that one output row's taps read (``kx * dil_w`` past its first)."""
    return m.wo + (m.kw - 1) * m.dil_w // m.sw + 1


def _tap(m: ConvMatch, kx: str) -> tuple[str, str]:
    """(phase, offset) of column tap ``kx`` in the phase-split rows: input column x * sw + kx * dil_w."""
    if m.dil_w == 1:
        return f"{kx} % {m.sw}", f"{kx} // {m.sw}"
    return f"({kx} * {m.dil_w}) % {m.sw}", f"({kx} * {m.dil_w}) // {m.sw}"


def _stage_rows(code: _Code, m: ConvMatch, rows: str, c: str, y: str, base: str, L: int, nrows: int,
                row_step: int = 1) -> None:
    """Copy the ``nrows`` input rows ``y * sh - ph + r * row_step`` (``row_step``: the row dilation, 1 = consecutive
    rows) into ``rows[base + (r * sw + q) * L + j]``, zero padded, split by column phase q (stride sw): tap kx of
    output x then reads ``[(r, phase), x + offset]`` (:func:`_tap`), contiguous in x for every stride."""
    s, W, H = m.sw, m.wd, m.h
    with code.block(f"for r in T.unroll({nrows}):"):
        code(f"iy = {y} * {m.sh} + r * {row_step} - {m.ph}" if row_step > 1 else f"iy = {y} * {m.sh} + r - {m.ph}")
        with code.block(f"if iy >= 0 and iy < {H}:"):
            src = f"f{m.x}[(({c}) * {H} + iy) * {W} + "
            span = [(max(0, -(-(m.pw - q) // s)), None) for q in range(s)]  # first j with j*s + q - pw >= 0
            span = [(lo, max(lo, min(L, -(-(W + m.pw - q) // s)))) for q, (lo, _) in enumerate(span)]
            jlo, jhi = max(lo for lo, _ in span), min(hi for _, hi in span)
            # one loop over the columns every phase has, all phases in its body: LLVM turns the stride-s
            # reads into wide loads + shuffles (ld2 on NEON) instead of one insert per element
            if jhi > jlo:
                with code.block(f"for j in range({jhi - jlo}):"):
                    for q in range(s):
                        code(f"{rows}[{base} + (r * {s} + {q}) * {L} + {jlo} + j] = {src}(j + {jlo}) * {s} + "
                             f"{q - m.pw}]")
            for q, (lo, hi) in enumerate(span):
                off = f"{base} + (r * {s} + {q}) * {L}"
                a, b = (lo, jlo) if jhi > jlo else (lo, hi)
                for j0, j1, val in ((0, lo, None), (a, b, True), (max(jhi, lo) if jhi > jlo else hi, hi, True),
                                    (hi, L, None)):
                    if j1 <= j0:
                        continue
                    with code.block(f"for j in range({j1 - j0}):"):
                        v = f"{src}(j + {j0}) * {s} + {q - m.pw}]" if val else "T.float32(0)"
                        code(f"{rows}[{off} + {j0} + j] = {v}")
        with code.block("else:"):
            with code.block(f"for j in T.vectorized({s * L}):"):
                code(f"{rows}[{base} + r * {s * L} + j] = T.float32(0)")


# ------------------------------------------------------------------------------------------ depthwise

def depthwise(m: ConvMatch, cpu: Cpu, name: str = "main") -> str:
    """Depthwise KxK (any stride / padding). Per channel, two output rows at a time: their input rows are
    staged zero padded (split by column phase for stride 2), then vector tiles along the rows accumulate the
    taps. Two rows share the staged rows between them, so loads stay below one per multiply-add."""
    C, Ho, Wo = m.cout, m.ho, m.wo
    s = m.sw
    v, kk = _fit_vector(Wo, cpu.lanes, 4 if cpu.lanes <= 4 else 2)
    xv = v * kk
    nxt = -(-Wo // xv)
    L = _row_span(m)
    R = 2 if Ho >= 2 and m.dil_h == 1 else 1  # output rows per pass (dilated rows: one, its taps' rows staged)
    nin = (R - 1) * m.sh + m.kh  # input rows they read
    npass = -(-Ho // R)
    nyb = max(1, min(npass, -(-8 * cpu.threads // C)))  # row blocks: enough parallel work when C is small
    pb = -(-npass // nyb)  # passes per block
    nyb = -(-npass // pb)
    code = _Code()
    _header(code, name, m)
    taps = m.kh * m.kw
    with code.block(f"for cy in T.parallel({C * nyb}):"):
        code(f'rows = T.decl_buffer(({nin * s * L},), "float32", scope="local")')
        code(f'acc = T.decl_buffer(({R}, {xv}), "float32", scope="local")')
        code(f"c = cy // {nyb}" if nyb > 1 else "c = cy")
        with code.block(f"for pi in range({pb}):"):
            code(f"p = (cy % {nyb}) * {pb} + pi" if nyb > 1 else "p = pi")
            with code.block(f"if p < {npass}:" if nyb * pb != npass else "if True:"):
                code(f"y = T.min(p * {R}, {Ho - R})")  # the last pass shifts back onto the last rows
                _stage_rows(code, m, "rows", "c", "y", "0", L, nin, m.dil_h)
                with code.block(f"for xt in range({nxt}):"):
                    code(f"x0 = T.min(xt * {xv}, {Wo - xv})" if nxt > 1 else "x0 = 0")
                    with code.block(f"for i in T.unroll({R}):"):
                        with _Vec(code, v, kk):
                            code(f"acc[i, j] = {_init(m, 'c')}")
                    with code.block(f"for i in T.unroll({R}):"):
                        with code.block(f"for ky in T.unroll({m.kh}):"):
                            with code.block(f"for kx in T.unroll({m.kw}):"):
                                with _Vec(code, v, kk):
                                    q, o = _tap(m, "kx")
                                    code(f"acc[i, j] = acc[i, j] + rows[((i * {m.sh} + ky) * {s} + {q}) * {L} + x0"
                                         f" + {o} + j] * f{m.w}[c * {taps} + ky * {m.kw} + kx]")
                    with code.block(f"for i in T.unroll({R}):"):
                        with _Vec(code, v, kk):
                            sp = f"(y + i) * {Wo} + x0 + j"
                            code(f"f{m.out}[c * {Ho * Wo} + {sp}] = {_epilogue(m, 'acc[i, j]', 'c', sp, cpu)}")
    return code.text()


# ------------------------------------------------------------------------------------------ dense KxK

STAGE_BYTES = 96 * 1024  # staged input rows of one output row on the stack (what fused chains stage too) ...
HEAP_STAGE_BYTES = 4 * 1024 * 1024  # ... up to this in a workspace buffer (a U-Net decoder's 1024 channels: 860 KB)


def dense(m: ConvMatch, cpu: Cpu, name: str = "main") -> str | None:
    """Dense KxK convolution, direct: per output row the Cin x KH input rows are staged (zero padded,
    phase split), then register tiles of ``cb`` output channels x a row segment accumulate Cin x KH x KW.
    Returns None when the staged rows would not fit ``HEAP_STAGE_BYTES``."""
    K, M, Ho, Wo = m.cin, m.cout, m.ho, m.wo
    s = m.sw
    L = _row_span(m)
    per_ci = m.kh * s * L
    if 4 * K * per_ci > HEAP_STAGE_BYTES:
        return None
    scope = "local" if 4 * K * per_ci <= STAGE_BYTES else "global"  # beyond a stack's comfort: the workspace
    if cpu.lanes >= 16:
        cb, kk = 8, 3
    elif cpu.vregs >= 32:
        cb, kk = 8, 2
    else:
        cb, kk = 4, 2
    v, kk = _fit_vector(Wo, cpu.lanes, kk)
    xv = v * kk
    nxt = -(-Wo // xv)
    cb = min(cb, M)
    taps = m.kh * m.kw
    code = _Code()
    _header(code, name, m)
    with code.block(f"for y in T.parallel({Ho}):"):
        code(f'rows = T.decl_buffer(({K * per_ci},), "float32", scope="{scope}")')
        with code.block(f"for ci in range({K}):"):
            _stage_rows(code, m, "rows", "ci", "y", f"ci * {per_ci}", L, m.kh, m.dil_h)
        for m0, nrow, nblk in ((0, cb, M // cb), ((M // cb) * cb, M % cb, 1)):
            if nrow == 0 or nblk == 0:
                continue
            mv = "mo" if nblk > 1 else "0"
            with code.block(f"for mo in range({nblk}):" if nblk > 1 else "if True:"):
                with code.block(f"for xt in range({nxt}):"):
                    code(f"x0 = T.min(xt * {xv}, {Wo - xv})" if nxt > 1 else "x0 = 0")
                    code(f'acc = T.decl_buffer(({nrow}, {xv}), "float32", scope="local")')
                    ch = f"{m0} + {mv} * {cb} + i"
                    with code.block(f"for i in T.unroll({nrow}):"):
                        with _Vec(code, v, kk):
                            code(f"acc[i, j] = {_init(m, ch)}")
                    with code.block(f"for ci in range({K}):"):
                        with code.block(f"for ky in T.unroll({m.kh}):"):
                            with code.block(f"for kx in T.unroll({m.kw}):"):
                                with code.block(f"for i in T.unroll({nrow}):"):
                                    q, o = _tap(m, "kx")
                                    with _Vec(code, v, kk):
                                        code(f"acc[i, j] = acc[i, j] + rows[ci * {per_ci} + (ky * {s} + {q}) * {L}"
                                             f" + x0 + {o} + j] * f{m.w}[(({ch}) * {K} + ci) * {taps} + ky * "
                                             f"{m.kw} + kx]")
                    with code.block(f"for i in T.unroll({nrow}):"):
                        with _Vec(code, v, kk):
                            sp = f"y * {Wo} + x0 + j"
                            code(f"f{m.out}[({ch}) * {Ho * Wo} + {sp}] = {_epilogue(m, 'acc[i, j]', ch, sp, cpu)}")
    return code.text()


def generate(m: ConvMatch, cpu: Cpu, name: str = "main") -> str | None:
    """TVMScript for the kernel computing ``m``, or None when no kernel here fits it."""
    if m.kind == "pointwise":
        return pointwise(m, cpu, name)
    if m.kind == "depthwise":
        return depthwise(m, cpu, name)
    return dense(m, cpu, name)


# ------------------------------------------------------------------------------- x2 upsample + concat

def upsample_concat(parts: list[tuple[str, tuple[int, int, int, int]]], cpu: Cpu, name: str = "main") -> str:
    """Channel concat of ``parts`` (NCHW, batch 1), each copied (``"copy"``) or bilinearly upsampled x2
    (``"up2"``: half-pixel centres, edge clamped, as ONNX Resize linear / PyTorch align_corners=False).

    x2 half-pixel bilinear has fixed weights: output row 2i blends input rows i-1 and i as 0.25 / 0.75,
    row 2i+1 rows i and i+1 as 0.75 / 0.25 (clamped at the borders); columns alike. Each output row is
    blended vertically from two input rows, then widened; the interleaved stores are left to LLVM's loop
    vectoriser (st2 on NEON, shuffles on x86)."""
    H, W = None, None
    C = 0
    for kind, (_, c, h, w) in parts:
        oh, ow = (2 * h, 2 * w) if kind == "up2" else (h, w)
        if H is None:
            H, W = oh, ow
        if (oh, ow) != (H, W):
            raise ValueError("concat parts of different sizes")
        C += c
    shapes = [s for _, s in parts] + [(1, C, H, W)]
    args = []
    for i, s in enumerate(shapes):
        args.append(f'p{i}: T.Buffer(({", ".join(_i64(v) for v in s)}), "float32")')
    code = _Code()
    code("@T.prim_func(private=True, s_tir=True)")
    code(f"def {name}({', '.join(args)}):")
    code.depth += 1
    code('T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})')
    for i, s in enumerate(shapes):
        code(f'f{i} = T.decl_buffer(({math.prod(s)},), "float32", data=p{i}.data)')
    out = len(parts)
    nyb = max(1, min(H, -(-8 * cpu.threads // C)))
    yb = -(-H // nyb)
    nyb = -(-H // yb)
    wmax = max(s[3] for k, s in parts if k == "up2") if any(k == "up2" for k, _ in parts) else 1
    with code.block(f"for cy in T.parallel({C * nyb}):"):
        code(f'tmp = T.decl_buffer(({wmax},), "float32", scope="local")')
        code(f"c = cy // {nyb}")
        off = 0
        for i, (kind, (_, n, h, w)) in enumerate(parts):
            with code.block(f"if c >= {off} and c < {off + n}:"):
                with code.block(f"for yi in range({yb}):"):
                    code(f"y = (cy % {nyb}) * {yb} + yi")
                    with code.block(f"if y < {H}:"):
                        dst = f"(c * {H} + y) * {W}"
                        if kind == "copy":
                            with code.block(f"for x in range({W}):"):
                                code(f"f{out}[{dst} + x] = f{i}[((c - {off}) * {H} + y) * {W} + x]")
                        else:
                            code("y0 = T.floordiv(y - 1, 2)")
                            code(f"fy = T.Select(T.floormod(y, 2) == 0, T.float32(0.75), T.float32(0.25))")
                            top = f"((c - {off}) * {h} + T.max(y0, 0)) * {w}"
                            bot = f"((c - {off}) * {h} + T.min(y0 + 1, {h - 1})) * {w}"
                            with code.block(f"for j in range({w}):"):
                                code(f"tmp[j] = f{i}[{top} + j] * (T.float32(1) - fy) + f{i}[{bot} + j] * fy")
                            q, t = "T.float32(0.25)", "T.float32(0.75)"
                            code(f"f{out}[{dst}] = tmp[0] * {q} + tmp[0] * {t}")
                            if w > 1:
                                with code.block(f"for j in range({w - 1}):"):
                                    code(f"f{out}[{dst} + 2 * j + 1] = tmp[j] * {t} + tmp[j + 1] * {q}")
                                    code(f"f{out}[{dst} + 2 * j + 2] = tmp[j] * {q} + tmp[j + 1] * {t}")
                            code(f"f{out}[{dst} + {2 * w - 1}] = tmp[{w - 1}] * {t} + tmp[{w - 1}] * {q}")
            off += n
    return code.text()
