"""The single-convolution kernels (pointwise, depthwise, dense KxK) and the x2 upsample + concat kernel,
written with :mod:`export.schedules.emit`.

Each generator takes a :class:`~export.schedules.match.ConvMatch` (what the fused kernel computes) and
:class:`~export.schedules.emit.Cpu` (vector lanes and registers of the target) and returns TVMScript for a
PrimFunc with the original signature, so the Relax graph calls it unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from export.schedules.emit import (HEAP_STAGE_BYTES, STAGE_BYTES, Code, Cpu, Vec, channel_blocks, depthwise_vector,
                                   epilogue, fit_vector, header, init, register_tile, row_span, stage_rows,
                                   staged_bytes, tap, tile_start, up2_row, up2_weights)
from export.schedules.match import ConvMatch


# ------------------------------------------------------------------------------------------ pointwise

def pointwise(m: ConvMatch, cpu: Cpu, name: str = "main") -> str:
    """1x1 convolution as GEMM Y[Cout, HW] = W[Cout, Cin] X[Cin, HW] (MLAS-style outer product).

    Register tile: ``cb`` output channels x ``kk`` vectors of pixels, accumulated over Cin with the weight
    broadcast; epilogue applied to the tile in registers. Parallel over macro tiles of pixels, which stay in
    L1/L2 while every block of output channels sweeps them. Grouped: one GEMM per group on its channels.
    """
    G = m.groups
    K, M, P = m.cin // G, m.cout // G, m.ho * m.wo  # per group
    cb, kk = register_tile(cpu)
    v, kk = fit_vector(P, cpu.lanes, kk)
    sw = v * kk
    cb = min(cb, M)
    # macro tile: X[Cin, st] about 64 KB, and enough tiles to keep every thread busy
    sm = max(1, min(P // sw, 65536 // (4 * K * sw), max(1, P // (sw * 4 * cpu.threads))))
    st = sm * sw
    nt = -(-P // st)
    code = Code()
    header(code, name, m.shapes)
    x, w, o = m.x, m.w, m.out
    base = f"{tile_start('t', st, P)} + sm * {sw}" if nt > 1 else f"sm * {sw}"
    gm, gk = (f"g * {M} + ", f"g * {K} + ") if G > 1 else ("", "")
    with code.block(f"for t in T.parallel({nt}):"), group_loop(code, G):
        for m0, rows, nblk in channel_blocks(M, cb):
            mv = "mo" if nblk > 1 else "0"
            with code.block(f"for mo in range({nblk}):" if nblk > 1 else "if True:"):
                with code.block(f"for sm in range({sm}):"):
                    code(f'acc = T.decl_buffer(({rows}, {sw}), "float32", scope="local")')
                    ch = f"{gm}{m0} + {mv} * {cb} + i"
                    with code.block(f"for i in T.unroll({rows}):"):
                        with code.block(f"for j in T.vectorized({sw}):"):
                            code(f"acc[i, j] = {init(m, ch)}")
                    with code.block(f"for k in range({K}):"):
                        with code.block(f"for i in T.unroll({rows}):"):
                            with code.block(f"for j0 in T.unroll({kk}):"):
                                with code.block(f"for j1 in T.vectorized({v}):"):
                                    code(f"acc[i, j0 * {v} + j1] = acc[i, j0 * {v} + j1] + "
                                         f"f{x}[({gk}k) * {P} + {base} + j0 * {v} + j1] * f{w}[({ch}) * {K} + k]")
                    with code.block(f"for i in T.unroll({rows}):"):
                        with code.block(f"for j in T.vectorized({sw}):"):
                            s = f"{base} + j"
                            code(f"f{o}[({ch}) * {P} + {s}] = {epilogue(m, 'acc[i, j]', ch, s, cpu)}")
    return code.text()


# ------------------------------------------------------------------------------------------ depthwise

def depthwise(m: ConvMatch, cpu: Cpu, name: str = "main") -> str:
    """Depthwise KxK (any stride / padding). Per channel, two output rows at a time: their input rows are
    staged zero padded (split by column phase for stride 2), then vector tiles along the rows accumulate the
    taps. Two rows share the staged rows between them, so loads stay below one per multiply-add."""
    C, Ho, Wo = m.cout, m.ho, m.wo
    s = m.sw
    v, kk = depthwise_vector(Wo, cpu)
    xv = v * kk
    nxt = -(-Wo // xv)
    L = row_span(m)
    R = 2 if Ho >= 2 and m.dil_h == 1 else 1  # output rows per pass (dilated rows: one, its taps' rows staged)
    nin = (R - 1) * m.sh + m.kh  # input rows they read
    npass = -(-Ho // R)
    nyb = max(1, min(npass, -(-8 * cpu.threads // C)))  # row blocks: enough parallel work when C is small
    pb = -(-npass // nyb)  # passes per block
    nyb = -(-npass // pb)
    code = Code()
    header(code, name, m.shapes)
    taps = m.kh * m.kw
    with code.block(f"for cy in T.parallel({C * nyb}):"):
        code(f'rows = T.decl_buffer(({nin * s * L},), "float32", scope="local")')
        code(f'acc = T.decl_buffer(({R}, {xv}), "float32", scope="local")')
        code(f"c = cy // {nyb}" if nyb > 1 else "c = cy")
        with code.block(f"for pi in range({pb}):"):
            code(f"p = (cy % {nyb}) * {pb} + pi" if nyb > 1 else "p = pi")
            with code.block(f"if p < {npass}:" if nyb * pb != npass else "if True:"):
                code(f"y = T.min(p * {R}, {Ho - R})")  # the last pass shifts back onto the last rows
                stage_rows(code, m, "rows", f"f{m.x}", "c", "y", "0", nin, m.dil_h)
                with code.block(f"for xt in range({nxt}):"):
                    code(f"x0 = {tile_start('xt', xv, Wo)}")
                    with code.tile("i", R, v, kk):
                        code(f"acc[i, j] = {init(m, 'c')}")
                    with code.block(f"for i in T.unroll({R}):"):
                        with code.block(f"for ky in T.unroll({m.kh}):"):
                            with code.block(f"for kx in T.unroll({m.kw}):"):
                                with Vec(code, v, kk):
                                    q, o = tap(m, "kx")
                                    code(f"acc[i, j] = acc[i, j] + rows[((i * {m.sh} + ky) * {s} + {q}) * {L} + x0"
                                         f" + {o} + j] * f{m.w}[c * {taps} + ky * {m.kw} + kx]")
                    with code.tile("i", R, v, kk):
                        sp = f"(y + i) * {Wo} + x0 + j"
                        code(f"f{m.out}[c * {Ho * Wo} + {sp}] = {epilogue(m, 'acc[i, j]', 'c', sp, cpu)}")
    return code.text()


# ------------------------------------------------------------------------------------------ dense KxK

def dense(m: ConvMatch, cpu: Cpu, name: str = "main") -> str | None:
    """Dense KxK convolution, direct: per output row the Cin x KH input rows are staged (zero padded,
    phase split), then register tiles of ``cb`` output channels x a row segment accumulate Cin x KH x KW
    (grouped: the group's Cin / groups). Returns None when the staged rows would not fit ``HEAP_STAGE_BYTES``."""
    G = m.groups
    K, M, Ho, Wo = m.cin, m.cout // G, m.ho, m.wo  # K: every input channel (all are staged); M: per group
    Kg = K // G
    s = m.sw
    L = row_span(m)
    per_ci = m.kh * s * L
    if staged_bytes(m) > HEAP_STAGE_BYTES:
        return None
    scope = "local" if staged_bytes(m) <= STAGE_BYTES else "global"  # beyond a stack's comfort: the workspace
    cb, kk = register_tile(cpu, dense=True)
    v, kk = fit_vector(Wo, cpu.lanes, kk)
    xv = v * kk
    nxt = -(-Wo // xv)
    cb = min(cb, M)
    taps = m.kh * m.kw
    code = Code()
    header(code, name, m.shapes)
    with code.block(f"for y in T.parallel({Ho}):"):
        code(f'rows = T.decl_buffer(({K * per_ci},), "float32", scope="{scope}")')
        with code.block(f"for ci in range({K}):"):
            stage_rows(code, m, "rows", f"f{m.x}", "ci", "y", f"ci * {per_ci}", m.kh, m.dil_h)
        gm, gk = (f"g * {M} + ", f"g * {Kg} + ") if G > 1 else ("", "")
        for m0, nrow, nblk in channel_blocks(M, cb):
            mv = "mo" if nblk > 1 else "0"
            with group_loop(code, G), code.block(f"for mo in range({nblk}):" if nblk > 1 else "if True:"):
                with code.block(f"for xt in range({nxt}):"):
                    code(f"x0 = {tile_start('xt', xv, Wo)}")
                    code(f'acc = T.decl_buffer(({nrow}, {xv}), "float32", scope="local")')
                    ch = f"{gm}{m0} + {mv} * {cb} + i"
                    with code.tile("i", nrow, v, kk):
                        code(f"acc[i, j] = {init(m, ch)}")
                    with code.block(f"for ci in range({Kg}):"):
                        with code.block(f"for ky in T.unroll({m.kh}):"):
                            with code.block(f"for kx in T.unroll({m.kw}):"):
                                with code.block(f"for i in T.unroll({nrow}):"):
                                    q, o = tap(m, "kx")
                                    with Vec(code, v, kk):
                                        code(f"acc[i, j] = acc[i, j] + rows[({gk}ci) * {per_ci} + (ky * {s} + {q}) * "
                                             f"{L} + x0 + {o} + j] * f{m.w}[(({ch}) * {Kg} + ci) * {taps} + ky * "
                                             f"{m.kw} + kx]")
                    with code.tile("i", nrow, v, kk):
                        sp = f"y * {Wo} + x0 + j"
                        code(f"f{m.out}[({ch}) * {Ho * Wo} + {sp}] = {epilogue(m, 'acc[i, j]', ch, sp, cpu)}")
    return code.text()


def channel_tile(m: ConvMatch, cpu: Cpu) -> tuple[int, int, int] | None:
    """(vectors of output channels, pixels, output rows per pass) of :func:`dense_channels`, None where it does
    not apply: groups of one, output channels a multiple of the vector, a row too short to fill the row-vector
    kernel's tiles (below 6 vectors; wider rows keep :func:`dense`, at parity with MLAS there), staged rows
    within ``HEAP_STAGE_BYTES``. x86 only (8 or 16 lanes): on NEON's 4 lanes the row-vector kernel wastes
    little and this one is not measured."""
    V = cpu.lanes
    if m.kind != "dense" or m.groups != 1 or m.cout % V or V < 8 or m.wo >= 6 * V or m.cin < 16:
        return None
    R = 2 if m.ho >= 2 and m.dil_h == 1 else 1  # output rows per weight pass (4 measured no better)
    if 4 * m.cin * ((R - 1) * m.sh + m.kh) * m.sw * row_span(m) > HEAP_STAGE_BYTES:
        return None
    nv = 2 if (m.cout // V) % 2 == 0 else 1
    pmax = min(m.wo, cpu.vregs * 5 // 8 // nv)  # accumulators: 20 of 32 registers (more spill, measured)
    # least work: a tile of p pixels costs about p + 2 pixels' multiply-adds (its weight loads), the last tile
    # shifts back over columns already computed
    px = min(range(max(1, pmax - 7), pmax + 1), key=lambda p: (-(-m.wo // p) * (p + 2), -p))
    return nv, px, R


def packed_weight(w, lanes: int):
    """(Cout, Cin, KH, KW) -> (Cout / lanes, Cin, KH, KW, lanes): the layout :func:`dense_channels` reads, one
    vector of output channels per tap."""
    import numpy as np

    co, ci, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(co // lanes, lanes, ci, kh, kw).transpose(0, 2, 3, 4, 1))


def dense_channels(m: ConvMatch, cpu: Cpu, name: str = "main") -> str | None:
    """Dense KxK convolution vectorised over output channels (MLAS's NCHWc kernel, on NCHW tensors): the
    deep, narrow layers of a U-Net (256-1024 channels at 68 px and less), where a row-vector tile wastes lanes.
    For every ``R`` output rows (:func:`channel_tile`) the input rows they read are staged as in :func:`dense`;
    a register tile of ``nv`` vectors of output channels x ``px`` pixels accumulates Cin x KH x KW, each tap
    one broadcast input times a vector of weights, read from the weight packed by :func:`packed_weight` (its
    parameter's shape says so). The outputs are stored channel by channel (strided): once per tile, after
    Cin x KH x KW multiply-adds."""
    tile = channel_tile(m, cpu)
    if tile is None:
        return None
    nv, px, R = tile
    V = cpu.lanes
    K, M, Ho, Wo = m.cin, m.cout, m.ho, m.wo
    s, L = m.sw, row_span(m)
    nin = (R - 1) * m.sh + m.kh
    per_ci = nin * s * L
    taps = m.kh * m.kw
    scope = "local" if 4 * K * per_ci <= STAGE_BYTES else "global"
    shapes = list(m.shapes)
    shapes[m.w] = (M // V, K, m.kh, m.kw, V)
    code = Code()
    header(code, name, shapes)
    nxt = -(-Wo // px)
    with code.block(f"for yb in T.parallel({-(-Ho // R)}):"):
        code(f"y = {tile_start('yb', R, Ho)}")
        code(f'rows = T.decl_buffer(({K * per_ci},), "float32", scope="{scope}")')
        with code.block(f"for ci in range({K}):"):
            stage_rows(code, m, "rows", f"f{m.x}", "ci", "y", f"ci * {per_ci}", nin, m.dil_h if R == 1 else 1)
        with code.block(f"for mb in range({M // (V * nv)}):"), code.block(f"for r in range({R}):"):
            with code.block(f"for xt in range({nxt}):"):
                code(f"x0 = {tile_start('xt', px, Wo)}")
                code(f'acc = T.decl_buffer(({px}, {nv * V}), "float32", scope="local")')
                ch = f"mb * {nv * V} + j"
                with code.tile("p", px, V, nv):
                    code(f"acc[p, j] = {init(m, ch)}")
                with code.block(f"for ci in range({K}):"):
                    with code.block(f"for ky in T.unroll({m.kh}):"):
                        with code.block(f"for kx in T.unroll({m.kw}):"):
                            q, o = tap(m, "kx")
                            with code.tile("p", px, V, nv):
                                code(f"acc[p, j] = acc[p, j] + rows[ci * {per_ci} + ((r * {m.sh} + ky) * {s} + {q})"
                                     f" * {L} + x0 + {o} + p] * f{m.w}[(((mb * {nv} + j0) * {K} + ci) * {taps} + "
                                     f"ky * {m.kw} + kx) * {V} + j1]")
                with code.tile("p", px, V, nv):
                    sp = f"(y + r) * {Wo} + x0 + p"
                    code(f"f{m.out}[({ch}) * {Ho * Wo} + {sp}] = {epilogue(m, 'acc[p, j]', ch, sp, cpu)}")
    return code.text()


# ------------------------------------------------------------------------------- Winograd 3x1 / 1x3

# F(m, 3) for a 3-tap correlation y[i] = sum_k g[k] d[i + k] (Lavin & Gray 2016): y = AT ((G g) * (BT d)),
# m outputs from m + 2 multiplies instead of 3m. Points 0, 1, -1 (F(2, 3)); 0, +-1, +-2 and infinity (F(4, 3)).
WINOGRAD = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


@dataclass(frozen=True)
class WinogradPlan:
    """How :func:`winograd` tiles a 3x1 (``axis`` "h") or 1x3 (``axis`` "w") convolution: F(``m``, 3) along the
    kernel's axis. With dilation ``d`` a tile's outputs are ``d`` apart: tile q starts at
    (q // d) * m * d + q % d, and ``tiles`` of them cover the ``n`` outputs (those starting past the end are
    skipped, or computed on zeros and not stored). The GEMMs run over ``P`` pixels: a chunk of a row (3x1, the
    row in ``chunks`` equal parts) or the tiles of a row (1x3: one lane each). A 3x3 is a 3x1 with ``kw`` = 3
    columns ``dw`` apart: Winograd down the rows, the three column taps summed in the GEMM."""

    axis: str
    m: int
    d: int
    pad: int
    n: int  # outputs along the axis
    tiles: int
    P: int
    chunks: int = 1
    kw: int = 1  # axis "h": the kernel's columns (3x1: 1, 3x3: 3), dw apart, (kw - 1) * dw / 2 padded
    dw: int = 1

    def start(self, q: str) -> str:
        return f"({q} // {self.d}) * {self.m * self.d} + {q} % {self.d}" if self.d > 1 else f"{q} * {self.m}"


def _lane_use(n: int, cpu: Cpu, dense: bool = False) -> float:
    """Share of the computed pixels that are real when a kernel's register tiles (pixel vectors) cover ``n``:
    the last tile shifts back over pixels already computed."""
    v, kk = fit_vector(n, cpu.lanes, register_tile(cpu, dense)[1])
    return n / (-(-n // (v * kk)) * v * kk)


def winograd_plan(m: ConvMatch, cpu: Cpu) -> WinogradPlan | None:
    """The cheapest F(m, 3) for a stride-1, ungrouped 3x1, 3x3 (along its rows) or 1x3 convolution of at least
    16 channels in and out, 'same' padded along the row (1x3: 32, its gathered input and scattered output cost
    more per channel; measured on ERFNet's 16-channel 1x3s, estimated (emulated A72): 7.3 M cycles direct,
    8.5 M Winograd), None when none needs under 3/4 of the direct kernel's multiply-adds (a 3x3: 3 (m + 2) / m
    per output against 9, with dense_channels' full vectors where that applies; an ad-hoc x86 A/B on U-Net 544:
    1722 ms with its deep 34- and 68-px rows on Winograd, 1782 ms with them on dense_channels). Both counts take in the outputs computed and not stored: a tile past
    the border (a dilation of 16 on a 32-px row leaves half of F(4, 3)'s tiles empty) and the lanes of the
    last pixel vectors (on AVX-512, 17 tiles of a 68-px row fill two 16-lane vectors)."""
    if m.kind not in ("dense", "winograd") or m.groups != 1 or (m.sh, m.sw) != (1, 1) or min(m.cin, m.cout) < 16:
        return None
    if m.kh == 3 and m.kw in (1, 3) and 2 * m.pw == (m.kw - 1) * m.dil_w and m.wo == m.wd:
        axis, d, pad, n = "h", m.dil_h, m.ph, m.ho
    elif (m.kh, m.kw, m.ph, m.dil_h) == (1, 3, 0, 1) and m.ho == m.h and min(m.cin, m.cout) >= 32:
        axis, d, pad, n = "w", m.dil_w, m.pw, m.wo
    else:
        return None
    kw = m.kw if axis == "h" else 1
    direct = 3 * kw * n / (1.0 if channel_tile(m, cpu) is not None else _lane_use(m.wo, cpu, dense=True))
    # a row in equal chunks, one point's transformed input within 64 KB (every block of output channels
    # sweeps it): unequal chunks of 64 px made ERFNet 544's 136-px rows 192
    chunks = -(-m.wo // max(cpu.lanes, 16384 // m.cin)) if axis == "h" else 1
    best = None
    for mt in WINOGRAD:
        tiles = -(-n // (mt * d)) * d
        used = sum(1 for q in range(tiles) if (q // d) * mt * d + q % d < n) if axis == "h" else tiles
        P = -(-m.wo // chunks) if axis == "h" else tiles
        cost = used * (mt + 2) * kw / _lane_use(P, cpu)
        if cost <= 0.75 * direct and (best is None or cost < best[0]):
            best = (cost, WinogradPlan(axis, mt, d, pad, n, tiles, P, chunks, kw, m.dil_w if kw > 1 else 1))
    return None if best is None else best[1]


def winograd_weight(w, plan: WinogradPlan):
    """(Cout, Cin, 3, kw) or (Cout, Cin, 1, 3) -> (m + 2, Cout, Cin * kw): G g along the kernel's axis for every
    filter (and column), the weight :func:`winograd` reads (computed in float64)."""
    import numpy as np

    g = np.asarray(WINOGRAD[plan.m][1], dtype=np.float64)
    co, ci = w.shape[:2]
    k = w.reshape(co, ci, 3, plan.kw) if plan.axis == "h" else w.reshape(co, ci, 3, 1)
    return np.ascontiguousarray(np.einsum("tk,ockx->tocx", g, k.astype(np.float64)).astype(np.float32)
                                .reshape(len(g), co, ci * plan.kw))


def _lin(coefs, terms) -> str:
    """sum c * term over the nonzero coefficients, as TVMScript (+-1 without a multiply)."""
    out = []
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        s = "-" if c < 0 else "+"
        out.append((s, t if abs(c) == 1 else f"T.float32({float(abs(c))!r}) * {t}"))
    if not out:
        return "T.float32(0)"
    text = ("-" if out[0][0] == "-" else "") + out[0][1]
    return text + "".join(f" {s} {t}" for s, t in out[1:])


def winograd(m: ConvMatch, cpu: Cpu, plan: WinogradPlan, name: str = "main") -> str:
    """A 3x1 or 1x3 convolution (ERFNet's factorised blocks, dilated or not), or a 3x3 (a U-Net's) by Winograd's
    F(m, 3) along the kernel's axis (:func:`winograd_plan`; a 3x3's rows): per tile, every input channel's m + 2
    rows (3x1 / 3x3: whole rows, a vector per pixel chunk, a 3x3's with the columns its side taps read; 1x3:
    gathered per tile, the tiles of a row are the vector lanes) are transformed (BT), then for each of the
    m + 2 points a GEMM over the input channels (and a 3x3's three column taps, shifted reads of the same
    transformed rows) with the transformed weight (:func:`winograd_weight`, packed at compile time), in the
    pointwise kernel's register tile, and the inverse transform (AT) gives the m outputs, epilogue applied:
    (m + 2) / 3m of the direct kernel's multiply-adds. ``plan``: :func:`winograd_plan` of ``m``."""
    BT, _, AT = WINOGRAD[plan.m]
    nt, mt, d = plan.m + 2, plan.m, plan.d
    K, M, H, W, Ho, Wo = m.cin, m.cout, m.h, m.wd, m.ho, m.wo
    rows_axis = plan.axis == "h"
    cb, kk = register_tile(cpu)
    P = pc = plan.P
    nchunk = plan.chunks
    v, kk = fit_vector(P, cpu.lanes, kk)
    sw = v * kk
    cb = min(cb, M)
    nxt = -(-P // sw)
    kw, dw = plan.kw, plan.dw
    pw = (kw - 1) * dw // 2
    Pp = P + 2 * pw  # a staged row: the chunk and the columns its 3x3 taps read past either end
    vbytes = 4 * nt * K * Pp
    scope = "local" if vbytes <= STAGE_BYTES else "global"
    shapes = list(m.shapes)
    shapes[m.w] = (nt, M, K * kw)
    code = Code()
    header(code, name, shapes)
    x, w, o = f"f{m.x}", f"f{m.w}", f"f{m.out}"

    def value(ch: str, expr: str) -> str:
        """The output before the epilogue: the bias :func:`init` would have folded into an accumulator added
        here (a transformed sum cannot start from it), so that :func:`epilogue` skips it as usual."""
        bias = init(m, ch)
        return expr if bias == "T.float32(0)" else f"({expr} + {bias})"

    if rows_axis:
        loop = f"for qc in T.parallel({plan.tiles * nchunk}):"
    else:
        loop = f"for y in T.parallel({Ho}):"
    with code.block(loop):
        code(f'V = T.decl_buffer(({nt * K * Pp},), "float32", scope="{scope}")')
        code(f'D = T.decl_buffer(({nt * Pp},), "float32", scope="local")')
        if rows_axis:
            code(f"q = qc // {nchunk}" if nchunk > 1 else "q = qc")
            code(f"s = {plan.start('q')}")
            code(f"c0 = {tile_start(f'(qc % {nchunk})', pc, Wo)}" if nchunk > 1 else "c0 = 0")
        body = code.block("if s < " + str(Ho) + ":") if rows_axis else contextlib.nullcontext()
        with body:
            with code.block(f"for ci in range({K}):"):
                if rows_axis:  # the tile's input rows s - pad + k d, zero outside the image
                    with code.block(f"for k in T.unroll({nt}):"):
                        code(f"iy = s - {plan.pad} + k * {d}")
                        at = f"{x}[(ci * {H} + iy) * {W} + "
                        with code.block(f"if iy >= 0 and iy < {H}:"):
                            with code.block(f"for j in T.vectorized({P}):"):
                                code(f"D[k * {Pp} + {pw} + j] = {at}c0 + j]" if pw else
                                     f"D[k * {P} + j] = {at}c0 + j]")
                            if pw:  # the columns past the chunk's ends, zero outside the image
                                with code.block(f"for j in range({pw}):"):
                                    code(f"D[k * {Pp} + j] = T.if_then_else(c0 + j >= {pw}, "
                                         f"{at}T.max(c0 + j - {pw}, 0)], T.float32(0))")
                                    code(f"D[k * {Pp} + {pw + P} + j] = T.if_then_else(c0 + {P} + j < {W}, "
                                         f"{at}T.min(c0 + {P} + j, {W - 1})], T.float32(0))")
                        with code.block("else:"):
                            with code.block(f"for j in T.vectorized({Pp}):"):
                                code(f"D[k * {Pp} + j] = T.float32(0)")
                else:  # tile q's input columns start(q) - pad + k d, gathered (the tiles are the lanes)
                    with code.block(f"for q in range({P}):"):
                        code(f"s = {plan.start('q')}")
                        with code.block(f"for k in T.unroll({nt}):"):
                            code(f"ix = s - {plan.pad} + k * {d}")
                            code(f"D[k * {P} + q] = T.if_then_else(ix >= 0 and ix < {W}, "
                                 f"{x}[(ci * {H} + y) * {W} + T.max(T.min(ix, {W - 1}), 0)], T.float32(0))")
                for t in range(nt):
                    with code.block(f"for j in T.vectorized({Pp}):"):
                        code(f"V[({t} * {K} + ci) * {Pp} + j] = "
                             + _lin(BT[t], [f"D[{k} * {Pp} + j]" for k in range(nt)]))
            for m0, nrow, nblk in channel_blocks(M, cb):
                mv = "mo" if nblk > 1 else "0"
                ch = f"{m0} + {mv} * {cb} + i"
                with code.block(f"for mo in range({nblk}):" if nblk > 1 else "if True:"):
                    with code.block(f"for xt in range({nxt}):"):
                        code(f"x0 = {tile_start('xt', sw, P)}")
                        code(f'U = T.decl_buffer(({nt * nrow * sw},), "float32", scope="local")')
                        with code.block(f"for t in range({nt}):"):
                            code(f'acc = T.decl_buffer(({nrow}, {sw}), "float32", scope="local")')
                            with code.tile("i", nrow, v, kk):
                                code("acc[i, j] = T.float32(0)")
                            with code.block(f"for ci in range({K}):"):
                                if kw == 1:
                                    with code.block(f"for i in T.unroll({nrow}):"), Vec(code, v, kk):
                                        code(f"acc[i, j] = acc[i, j] + V[(t * {K} + ci) * {P} + x0 + j] * "
                                             f"{w}[(t * {M} + {ch}) * {K} + ci]")
                                else:  # the three column taps of the transformed rows
                                    with code.block(f"for kx in T.unroll({kw}):"):
                                        with code.block(f"for i in T.unroll({nrow}):"), Vec(code, v, kk):
                                            code(f"acc[i, j] = acc[i, j] + V[(t * {K} + ci) * {Pp} + x0 + kx * "
                                                 f"{dw} + j] * {w}[((t * {M} + {ch}) * {K} + ci) * {kw} + kx]")
                            with code.tile("i", nrow, v, kk):
                                code(f"U[(t * {nrow} + i) * {sw} + j] = acc[i, j]")
                        if rows_axis:
                            for r in range(mt):
                                with code.block(f"if s + {r * d} < {Ho}:"), code.tile("i", nrow, v, kk):
                                    sp = f"(s + {r * d}) * {Wo} + c0 + x0 + j"
                                    y = _lin(AT[r], [f"U[({t} * {nrow} + i) * {sw} + j]" for t in range(nt)])
                                    code(f"{o}[({ch}) * {Ho * Wo} + {sp}] = "
                                         f"{epilogue(m, value(ch, y), ch, sp, cpu)}")
                        else:
                            code(f'Y = T.decl_buffer(({mt * nrow * sw},), "float32", scope="local")')
                            for r in range(mt):
                                with code.tile("i", nrow, v, kk):
                                    y = _lin(AT[r], [f"U[({t} * {nrow} + i) * {sw} + j]" for t in range(nt)])
                                    code(f"Y[({r} * {nrow} + i) * {sw} + j] = {y}")
                            with code.block(f"for i in T.unroll({nrow}):"), code.block(f"for r in range({mt}):"):
                                with code.block(f"for jj in range({sw}):"):
                                    code(f"xx = {plan.start('(x0 + jj)')} + r * {d}")
                                    with code.block(f"if xx < {Wo}:"):
                                        sp = f"y * {Wo} + xx"
                                        code(f"{o}[({ch}) * {Ho * Wo} + {sp}] = {epilogue(m, value(ch, f'Y[(r * {nrow} + i) * {sw} + jj]'), ch, sp, cpu)}")
    return code.text()


def group_loop(code: Code, groups: int):
    """``for g in range(groups):`` around a grouped convolution's per-group code (nothing for one group)."""
    return code.block(f"for g in range({groups}):" if groups > 1 else "if True:")


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
    code = Code()
    header(code, name, shapes)
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
                            up2_weights(code, "y")
                            up2_row(code, f"f{i}", f"(c - {off})", h, w, f"f{out}[{dst}", "j")
            off += n
    return code.text()


def grid_sample(x: tuple[int, int, int, int], hg: int, wg: int, grid_last: bool, align_corners: bool,
                scaled: bool, cpu: Cpu, name: str = "main") -> str:
    """Bilinear grid sampling with zero padding (ONNX GridSample / ``F.grid_sample``), NCHW float32.

    ``x`` is (N, C, H, W); the grid is (N, Hg, Wg, 2) when ``grid_last`` (ONNX's layout, read before TVM's
    transpose) else (N, 2, Hg, Wg), normalised (x, y) in [-1, 1]; with ``scaled`` a further (N, Hg, Wg) input
    multiplies every sample of all channels (DCNv2's modulation mask, folded into the four weights). A sampling
    point's four corner offsets and weights (zero for a corner outside the map) are computed once and held in
    registers while every channel reads them (NEON, no gathers), or, on AVX2 / AVX-512, kept in a row buffer
    that each channel's row loop reads with gathers; TVM's default lowering recomputes them for every channel.
    Measured on HybridNetSeg at 256: estimated (emulated A72) 923 M cycles with the default lowering, 372 M with
    the row buffer, 338 M with registers; on x86 (AVX-512, 2 threads) the row buffer ran 1.4x faster than the
    default, registers 1.1x slower."""
    n_, c_, h_, w_ = x
    shapes = [x, (n_, hg, wg, 2) if grid_last else (n_, 2, hg, wg)] + ([(n_, hg, wg)] if scaled else [])
    shapes.append((n_, c_, hg, wg))
    out = len(shapes) - 1
    code = Code()
    header(code, name, shapes)
    gx, gy = (("((n * {hg} + r) * {wg} + j) * 2", "((n * {hg} + r) * {wg} + j) * 2 + 1") if grid_last else
              ("(n * 2 * {hg} + r) * {wg} + j", "((n * 2 + 1) * {hg} + r) * {wg} + j"))
    rows = cpu.lanes >= 8  # AVX2 / AVX-512: the per-channel row loop vectorises with gathers
    weight, offset = zip(*((f"wt[{k * wg} + j]", f"of[{k * wg} + j]") if rows else (f"w{k}", f"o{k}")
                           for k in range(4)))

    def channels() -> None:
        """Every channel's output at sampling point ``j`` (in registers) or along row ``r`` (the row buffer)."""
        with code.block(f"for c in range({c_}):"):
            code(f"src = (n * {c_} + c) * {h_ * w_}")
            dst = f"((n * {c_} + c) * {hg} + r) * {wg}"
            if rows:
                code(f"dst = {dst}")
                dst = "dst"
            terms = " + ".join(f"{weight[k]} * f0[src + {offset[k]}]" for k in range(4))
            with code.block(f"for j in range({wg}):") if rows else contextlib.nullcontext():
                code(f"f{out}[{dst} + j] = {terms}")

    with code.block(f"for nr in T.parallel({n_ * hg}):"):
        if rows:
            code(f'wt = T.decl_buffer(({4 * wg},), "float32", scope="local")')
            code(f'of = T.decl_buffer(({4 * wg},), "int32", scope="local")')
        code(f"n = nr // {hg}")
        code(f"r = nr % {hg}")
        with code.block(f"for j in range({wg}):"):
            for v, size, g in (("x", w_, gx), ("y", h_, gy)):
                g = g.format(hg=hg, wg=wg)
                pix = (f"(f1[{g}] + T.float32(1)) * T.float32({0.5 * (size - 1)!r})" if align_corners else
                       f"((f1[{g}] + T.float32(1)) * T.float32({size}) - T.float32(1)) * T.float32(0.5)")
                # clamped first: far-off (or infinite) points still give both corners outside, in int32 range
                code(f"p{v} = T.max(T.min({pix}, T.float32({size + 1})), T.float32(-2))")
                code(f"{v}f = T.floor(p{v})")
                code(f"a{v} = p{v} - {v}f")
                code(f'{v}0 = T.Cast("int32", {v}f)')
                code(f"w{v}0 = T.if_then_else({v}0 >= 0 and {v}0 < {size}, T.float32(1) - a{v}, T.float32(0))")
                code(f"w{v}1 = T.if_then_else({v}0 >= -1 and {v}0 < {size - 1}, a{v}, T.float32(0))")
                code(f"{v}0c = T.max(T.min({v}0, {size - 1}), 0)")
                code(f"{v}1c = T.max(T.min({v}0 + 1, {size - 1}), 0)")
            code(f"s = f2[(n * {hg} + r) * {wg} + j]" if scaled else "s = T.float32(1)")
            corners = (("0", "0"), ("0", "1"), ("1", "0"), ("1", "1"))
            for k, (yy, xx) in enumerate(corners):
                code(f"{weight[k]} = wy{yy} * wx{xx} * s")
                code(f"{offset[k]} = y{yy}c * {w_} + x{xx}c")
            if not rows:
                channels()
        if rows:
            channels()
    return code.text()
