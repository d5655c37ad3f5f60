"""The TVMScript emitter every hand-written kernel is built with: the target's vector shape, the code writer,
the epilogue, tiling arithmetic, row staging and the x2 bilinear row.

Written by hand because no library does it for TVM's Relax CPU path: the default lowering applies no
schedule, dlight's CPU rules cover only GEMV/reductions, and MetaSchedule needs hours per model.
The single-convolution kernels (:mod:`export.schedules.kernels`) and the fused chains
(:mod:`export.schedules.fused`) are both written with these pieces, so each of them (how a row is staged,
where a tap reads, how big a staging buffer may get) is decided here once. The kernels are target-independent
TIR: LLVM picks the instructions (NEON on the Cortex-A72, AVX2 / AVX-512 on x86) from the vector width.

Shapes never need to divide the tiles: the last tile of an axis is shifted back to end at the border
(it recomputes a few outputs with identical values) instead of running a scalar remainder loop.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

from export.schedules.match import ConvMatch, EpiOp

STAGE_BYTES = 96 * 1024  # staged input rows of one output row on the stack ...
HEAP_STAGE_BYTES = 4 * 1024 * 1024  # ... up to this in a workspace buffer (a U-Net decoder's 1024 channels: 860 KB)


@dataclass(frozen=True)
class Cpu:
    """What the kernels are shaped for."""

    lanes: int  # float32 lanes in one vector register: 4 (NEON, SSE), 8 (AVX2), 16 (AVX-512)
    vregs: int  # architectural vector registers: 32 (AArch64, AVX-512), 16 (AVX2, SSE)
    threads: int  # cores the parallel loops are cut for
    maxnum: bool = False  # clip with llvm.maxnum/minnum (one fmaxnm on AArch64; x86's vmaxps matches T.max)


def cpu_of(target) -> Cpu:
    """Vector lanes, registers and cores of an LLVM CPU target."""
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    if triple.startswith("x86_64") or not triple:
        # llvm_get_vector_width answers 512 for any x86 CPU; the features say what the CPU has
        lanes = 16 if codegen.target_has_features("avx512f", target) else \
            8 if codegen.target_has_features("avx2", target) else 4
    else:
        lanes = max(4, int(codegen.llvm_get_vector_width(target)) // 32)
    if triple.startswith("aarch64") or lanes >= 16:
        vregs = 32
    else:
        vregs = 16
    cores = target.attrs.get("num-cores") if hasattr(target, "attrs") else None
    threads = int(cores) if cores else (os.cpu_count() or 1)
    return Cpu(lanes=lanes, vregs=vregs, threads=max(1, threads), maxnum=triple.startswith("aarch64"))


# ------------------------------------------------------------------------------------------ the writer

class Code:
    """TVMScript lines at an indentation depth; ``code(line)`` appends, ``code.block(line)`` indents a body."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0
        self.j: str | None = None  # inside Vec: what ``j`` stands for

    def __call__(self, text: str) -> "Code":
        if self.j is not None:
            text = re.sub(r"\bj\b", self.j, text)
        self.lines.append("    " * self.depth + text)
        return self

    def block(self, text: str) -> "_Indent":
        self(text)
        return _Indent(self)

    @contextmanager
    def tile(self, i: str, rows: int, v: int, kk: int):
        """``for {i} in T.unroll(rows)`` around :class:`Vec`: every element of a register tile, as vectors."""
        with self.block(f"for {i} in T.unroll({rows}):"), Vec(self, v, kk):
            yield

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Indent:
    def __init__(self, code: Code) -> None:
        self.code = code

    def __enter__(self) -> None:
        self.code.depth += 1

    def __exit__(self, *exc) -> None:
        self.code.depth -= 1


class Vec:
    """``for j0 in unroll(kk): for j1 in vectorized(v): j = j0 * v + j1``: row segments as whole registers
    (a single <kk*v x float> access keeps LLVM from promoting the accumulators to registers)."""

    def __init__(self, code: Code, v: int, kk: int) -> None:
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


def i64(v: int) -> str:
    return f"T.int64({v})"


def header(code: Code, name: str, shapes, param: str = "p", view: str = "f") -> None:
    """The PrimFunc's signature (float32 buffers ``{param}{i}`` of ``shapes``) and a flat view ``{view}{i}`` of
    each non-scalar one: every index in a kernel body is computed by hand."""
    args = []
    for i, s in enumerate(shapes):
        args.append(f'{param}{i}: T.Buffer(({", ".join(i64(v) for v in s)}{"," if len(s) == 1 else ""}), "float32")')
    code("@T.prim_func(private=True, s_tir=True)")
    code(f"def {name}({', '.join(args)}):")
    code.depth += 1
    code('T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})')
    for i, s in enumerate(shapes):
        if s:
            code(f'{view}{i} = T.decl_buffer(({math.prod(s)},), "float32", data={param}{i}.data)')


# ------------------------------------------------------------------------------------------ epilogue

def init(m: ConvMatch, c: str, names=None) -> str:
    """The accumulator's start: a per-channel / scalar bias added first is folded in (the sum then starts
    from the bias instead of adding it at the end: the same value up to float rounding, one op less per
    output vector). Not when a later step reads the convolution's value before the bias."""
    if m.epilogue and m.epilogue[0].op == "add" and m.epilogue[0].operand in ("chan", "scalar", "const") \
            and not any(op.operand == "stage" and op.param == -1 for op in m.epilogue):
        return _operand(m.epilogue[0], c, "0", 0, names)
    return "T.float32(0)"


def epilogue(m: ConvMatch, v: str, c: str, s: str, cpu: Cpu, names=None) -> str:
    """The epilogue applied to value ``v`` at output channel ``c`` and flat spatial index ``s`` (after the
    bias :func:`init` folded into the accumulator). ``names(i)`` gives (flat view, buffer) of parameter i of
    ``m``'s function in the generated kernel (default ``f{i}``, ``p{i}``). A step that reads an earlier
    step's value (``operand == "stage"``) gets that value's expression again; LLVM computes it once."""
    plane = m.ho * m.wo
    first = 1 if init(m, c) != "T.float32(0)" else 0
    vals = {first - 1: v}  # step -> its value; the folded bias makes the accumulator step 0's value
    for i, op in enumerate(m.epilogue[first:], first):
        o = vals[op.param] if op.operand == "stage" else _operand(op, c, s, plane, names)
        if op.operand == "none":  # sigmoid / exp / tanh
            v = f"T.{op.op}({v})"
        elif op.op in ("max", "min") and cpu.maxnum and op.operand not in ("tensor", "stage"):
            # T.max lowers to compare + select (fcmgt + bif on NEON); maxnum(v, bound) is the same value for
            # every v, NaN included (both give the bound), as long as the bound itself is a number
            v = f'T.call_llvm_pure_intrin("float32", "llvm.{op.op}num", {v}, {o})'
        else:
            v = {"add": f"({v} + {o})", "sub": f"({v} - {o})", "rsub": f"({o} - {v})", "mul": f"({v} * {o})",
                 "div": f"({v} / {o})", "rdiv": f"({o} / {v})", "max": f"T.max({v}, {o})",
                 "min": f"T.min({v}, {o})"}[op.op]
        vals[i] = v
    return v


def _operand(op: EpiOp, c: str, s: str, plane: int, names=None) -> str:
    flat, raw = names(op.param) if names is not None and op.param is not None else (f"f{op.param}", f"p{op.param}")
    if op.operand == "none":
        return ""
    if op.operand == "const":
        return f"T.float32({float(op.value)!r})"
    if op.operand == "scalar":
        return f"{raw}[()]"
    if op.operand == "chan":
        return f"{flat}[{c}]"
    return f"{flat}[({c}) * {plane} + {s}]"


# ------------------------------------------------------------------------------------------ tiling

def fit_vector(n: int, lanes: int, nvec: int) -> tuple[int, int]:
    """(lanes, vectors) for a tile along an axis of ``n`` elements: full width where it fits."""
    if n < lanes:
        return n, 1
    return lanes, max(1, min(nvec, n // lanes))


def register_tile(cpu: Cpu, dense: bool = False) -> tuple[int, int]:
    """(output channels, pixel vectors) of a multiply-accumulate register tile: 8 x 3 on AVX-512, 8 x 2 with
    32 registers, else 4 x 3 (AVX2) or 4 x 2 (SSE); the direct dense convolution keeps 4 x 2 on 16 registers."""
    if cpu.lanes >= 16:
        return 8, 3
    if cpu.vregs >= 32:
        return 8, 2
    return 4, 3 if cpu.lanes >= 8 and not dense else 2


def depthwise_vector(n: int, cpu: Cpu) -> tuple[int, int]:
    """(lanes, vectors) of a depthwise row segment along ``n`` outputs: 4 vectors of 4 lanes, else 2."""
    return fit_vector(n, cpu.lanes, 4 if cpu.lanes <= 4 else 2)


def channel_blocks(M: int, cb: int) -> list[tuple[int, int, int]]:
    """(first channel, channels per block, blocks) covering ``M`` channels: whole blocks of ``cb``, then the rest."""
    return [(m0, n, k) for m0, n, k in ((0, cb, M // cb), ((M // cb) * cb, M % cb, 1)) if n and k]


def tile_start(t: str, size: int, total: int) -> str:
    """Start of tile ``t`` of ``size`` along ``total``: the last tile shifted back to end at the border."""
    return f"T.min({t} * {size}, {total - size})" if total > size else "0"


# ------------------------------------------------------------------------------------------ row staging

def row_span(m: ConvMatch) -> int:
    """L: the staged columns per phase that one output row's taps read (``kx * dil_w`` past its first)."""
    return m.wo + (m.kw - 1) * m.dil_w // m.sw + 1


def staged_bytes(m: ConvMatch) -> int:
    """Bytes of the input rows one output row of a dense KxK convolution reads, staged by :func:`stage_rows`."""
    return 4 * m.cin * m.kh * m.sw * row_span(m)


def tap(m: ConvMatch, kx: str) -> tuple[str, str]:
    """(phase, offset) of column tap ``kx`` in the phase-split rows: input column x * sw + kx * dil_w."""
    if m.dil_w == 1:
        return f"{kx} % {m.sw}", f"{kx} // {m.sw}"
    return f"({kx} * {m.dil_w}) % {m.sw}", f"({kx} * {m.dil_w}) // {m.sw}"


def stage_rows(code: Code, m: ConvMatch, rows: str, src: str, c: str, y: str, base: str, nrows: int,
               row_step: int = 1, tag: str = "", vector_zero: bool = True) -> None:
    """Copy the ``nrows`` input rows ``y * sh - ph + r * row_step`` of channel ``c`` of the flat input ``src``
    (``row_step``: the row dilation, 1 = consecutive rows) into ``rows[base + (r * sw + q) * L + j]``
    (L = :func:`row_span`), zero padded, split by column phase q (stride sw): tap kx of output x then reads
    ``[(r, phase), x + offset]`` (:func:`tap`), contiguous in x for every stride. ``c`` and ``y`` are names or
    parenthesised; ``tag`` prefixes the loop names (``r``, ``iy``, ``j``); ``vector_zero``: the rows outside
    the image are zeroed by a vectorised loop (else a serial one, as the fused stem has it)."""
    s, W, H, L = m.sw, m.wd, m.h, row_span(m)
    r, iy, j = f"{tag}r", f"{tag}iy", f"{tag}j"
    with code.block(f"for {r} in T.unroll({nrows}):"):
        code(f"{iy} = {y} * {m.sh} + {r} * {row_step} - {m.ph}" if row_step > 1 else
             f"{iy} = {y} * {m.sh} + {r} - {m.ph}")
        with code.block(f"if {iy} >= 0 and {iy} < {H}:"):
            at = f"{src}[({c} * {H} + {iy}) * {W} + "
            span = [max(0, -(-(m.pw - q) // s)) for q in range(s)]  # first j with j*s + q - pw >= 0
            span = [(lo, max(lo, min(L, -(-(W + m.pw - q) // s)))) for q, lo in enumerate(span)]
            jlo, jhi = max(lo for lo, _ in span), min(hi for _, hi in span)
            # one loop over the columns every phase has, all phases in its body: LLVM turns the stride-s
            # reads into wide loads + shuffles (ld2 on NEON) instead of one insert per element
            if jhi > jlo:
                with code.block(f"for {j} in range({jhi - jlo}):"):
                    for q in range(s):
                        code(f"{rows}[{base} + ({r} * {s} + {q}) * {L} + {jlo} + {j}] = {at}({j} + {jlo}) * {s} + "
                             f"{q - m.pw}]")
            for q, (lo, hi) in enumerate(span):
                off = f"{base} + ({r} * {s} + {q}) * {L}"
                a, b = (lo, jlo) if jhi > jlo else (lo, hi)
                for j0, j1, val in ((0, lo, False), (a, b, True), (max(jhi, lo) if jhi > jlo else hi, hi, True),
                                    (hi, L, False)):
                    if j1 <= j0:
                        continue
                    with code.block(f"for {j} in range({j1 - j0}):"):
                        v = f"{at}({j} + {j0}) * {s} + {q - m.pw}]" if val else "T.float32(0)"
                        code(f"{rows}[{off} + {j0} + {j}] = {v}")
        with code.block("else:"):
            with code.block(f"for {j} in {'T.vectorized' if vector_zero else 'range'}({s * L}):"):
                code(f"{rows}[{base} + {r} * {s * L} + {j}] = T.float32(0)")


# ------------------------------------------------------------------------------------------ x2 upsampling

def up2_weights(code: Code, y: str, tag: str = "") -> None:
    """``y0``, ``fy`` (suffixed ``tag``) of output row ``y`` of an x2 half-pixel bilinear upsampling: it blends
    input rows y0 and y0 + 1 (clamped) as 1 - fy / fy (0.25 / 0.75 or 0.75 / 0.25)."""
    code(f"y0{tag} = T.floordiv({y} - 1, 2)")
    code(f"fy{tag} = T.Select(T.floormod({y}, 2) == 0, T.float32(0.75), T.float32(0.25))")


def up2_row(code: Code, src: str, c: str, h: int, w: int, dst: str, x: str, tag: str = "") -> None:
    """One output row of channel ``c`` of the x2 upsampling of ``src`` (flat, ? x h x w) into ``dst`` + 0 ..
    2w - 1 (``dst`` an open index ``buf[offset``): blended vertically (:func:`up2_weights`) into ``tmp``, then
    widened with the same weights; the interleaved stores are left to LLVM's loop vectoriser (st2 on NEON,
    shuffles on x86). ``x`` names the column loop."""
    top = f"({c} * {h} + T.max(y0{tag}, 0)) * {w}"
    bot = f"({c} * {h} + T.min(y0{tag} + 1, {h - 1})) * {w}"
    with code.block(f"for {x} in range({w}):"):
        code(f"tmp[{x}] = {src}[{top} + {x}] * (T.float32(1) - fy{tag}) + {src}[{bot} + {x}] * fy{tag}")
    q, t = "T.float32(0.25)", "T.float32(0.75)"
    code(f"{dst}] = tmp[0] * {q} + tmp[0] * {t}")
    if w > 1:
        with code.block(f"for {x} in range({w - 1}):"):
            code(f"{dst} + 2 * {x} + 1] = tmp[{x}] * {t} + tmp[{x} + 1] * {q}")
            code(f"{dst} + 2 * {x} + 2] = tmp[{x}] * {q} + tmp[{x} + 1] * {t}")
    code(f"{dst} + {2 * w - 1}] = tmp[{w - 1}] * {t} + tmp[{w - 1}] * {q}")
