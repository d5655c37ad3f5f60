"""Row-streaming fusion of convolution chains: expand/stem conv -> depthwise 3x3 -> pointwise projection.

MobileNetV2 inverted residuals and M2U-Net decoder blocks materialise a wide intermediate tensor (6x the
channels, or the upsampled skip concat) only to read it back once. Here the three fused kernels of such a
chain become one: each thread walks a band of output rows, computes the first stage's rows into a small
ring buffer (the rows the depthwise window needs: 3 + (R - 1) * stride), the depthwise rows from the ring,
and the projection of those rows straight into the output. The intermediates never leave L2.

The chain is found in the lowered Relax graph (call_tir -> call_tir -> call_tir, each intermediate used
once) from the :class:`~export.schedules.match.ConvMatch` of each fused function, so every stage computes
exactly what its own kernel computed; the generated PrimFunc takes all their arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from export.schedules.emit import (STAGE_BYTES, Code, Cpu, Vec, channel_blocks, depthwise_vector, epilogue,
                                   fit_vector, header, init, register_tile, row_span, stage_rows, staged_bytes, tap,
                                   tile_start, up2_row, up2_weights)
from export.schedules.graph import rewrite_calls
from export.schedules.match import ConvMatch

MIN_BYTES = 1 << 20  # fuse when the intermediate that disappears is at least this big ...
MIN_WIDTH = 64  # ... and rows are wide enough for row-sized register tiles


@dataclass
class _Params:
    """The fused kernel's parameter list, built stage by stage."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    args: list = field(default_factory=list)

    def add(self, shape: tuple[int, ...], arg) -> int:
        self.shapes.append(tuple(shape))
        self.args.append(arg)
        return len(self.shapes) - 1

    def stage(self, m: ConvMatch, args: list, skip: int) -> dict[int, int]:
        """Add the parameters of stage ``m`` except its input (``skip``) and output: original -> new index."""
        out = {}
        for i, a in enumerate(args):
            if i != skip:
                out[i] = self.add(m.shapes[i], a)
        return out


def _names(index: dict[int, int]):
    return lambda i: (f"g{index[i]}", f"q{index[i]}")


def _row_tiles(P: int, cpu: Cpu) -> tuple[int, int, int]:
    """(cb, v, kk) for a GEMM over a row of P pixels: the widest register tile whose shifted last tile
    wastes at most 10 %, else the least wasteful."""
    cb, kk_max = register_tile(cpu)
    best = None
    for kk in range(kk_max, 0, -1):
        v, k2 = fit_vector(P, cpu.lanes, kk)
        sw = v * k2
        waste = -(-P // sw) * sw / P
        if waste <= 1.1:
            return cb, v, k2
        if best is None or waste < best[0]:
            best = (waste, v, k2)
    return cb, best[1], best[2]


def _gemm(code: Code, cpu: Cpu, uid: str, K: int, M: int, P: int, src, wgt, start, store,
          kloops: list[tuple[str, int, bool]] | None = None) -> None:
    """acc[c, p] = start(c, p) + sum_k wgt(c, k) * src(k, p) over M channels x P pixels, then ``store(c, p, acc)``
    (a statement). Register tiles of cb channels x kk vectors; the last pixel tile is shifted back.
    ``kloops`` splits the reduction into named nested loops (name, extent, unrolled); ``src`` and ``wgt``
    then get the tuple of loop names instead of one name."""
    cb, v, kk = _row_tiles(P, cpu)
    sw = v * kk
    nt = -(-P // sw)
    cb = min(cb, M)
    single = kloops is None
    kloops = kloops or [(f"k{uid}", K, False)]
    ks = kloops[0][0] if single else tuple(n for n, _, _ in kloops)
    for m0, rows, nblk in channel_blocks(M, cb):
        mo = f"mo{uid}"
        with code.block(f"for {mo} in range({nblk}):"):
            with code.block(f"for t{uid} in range({nt}):"):
                p0 = tile_start(f"t{uid}", sw, P)
                code(f'acc{uid} = T.decl_buffer(({rows}, {sw}), "float32", scope="local")')
                ch = f"({m0} + {mo} * {cb} + i{uid})"
                with code.tile(f"i{uid}", rows, v, kk):
                    code(f"acc{uid}[i{uid}, j] = {start(ch, f'{p0} + j')}")
                depth = code.depth
                for name, ext, unroll in kloops:
                    code(f"for {name} in {'T.unroll' if unroll else 'range'}({ext}):")
                    code.depth += 1
                with code.tile(f"i{uid}", rows, v, kk):
                    code(f"acc{uid}[i{uid}, j] = acc{uid}[i{uid}, j] + {src(ks, f'{p0} + j')} * "
                         f"{wgt(ch, ks)}")
                code.depth = depth
                with code.tile(f"i{uid}", rows, v, kk):
                    code(store(ch, f"{p0} + j", f"acc{uid}[i{uid}, j]"))


# -------------------------------------------------------------------------------------------- chains

@dataclass
class Chain:
    """One fusable chain: producer stage (``m1``, possibly fed by an upsample+concat), depthwise, projection."""

    m1: ConvMatch
    m2: ConvMatch
    m3: ConvMatch
    args1: list
    args2: list
    args3: list
    upcat: list | None = None  # [(kind, shape, arg)] of the upsample+concat feeding m1, or None


def fusable(m1: ConvMatch, m2: ConvMatch, m3: ConvMatch, upcat_bytes: int = 0) -> bool:
    """Whether the three stages form a chain this module generates, and fusing it pays."""
    if m2.kind != "depthwise" or (m2.kh, m2.kw, m2.ph, m2.pw) != (3, 3, 1, 1) or m2.sh != m2.sw \
            or m2.sh not in (1, 2) or m3.kind != "pointwise" or m1.kind not in ("pointwise", "dense") \
            or m1.groups != 1 or m3.groups != 1:
        return False
    if (m2.cin, m2.h, m2.wd) != (m1.cout, m1.ho, m1.wo) or (m3.cin, m3.h, m3.wd) != (m2.cout, m2.ho, m2.wo):
        return False
    if any((m.dil_h, m.dil_w) != (1, 1) for m in (m1, m2, m3)):  # the ring buffer streams undilated windows
        return False
    if any(op.operand == "tensor" for op in m1.epilogue + m2.epilogue):
        return False
    if m1.kind == "dense" and staged_bytes(m1) > STAGE_BYTES:
        return False
    gone = max(4 * m1.cout * m1.ho * m1.wo, upcat_bytes)
    return gone >= MIN_BYTES and m1.wo >= MIN_WIDTH


def generate(chain: Chain, cpu: Cpu, name: str = "main") -> tuple[str, list]:
    """TVMScript for the fused chain and the Relax arguments of the generated function, in order."""
    m1, m2, m3 = chain.m1, chain.m2, chain.m3
    P = _Params()
    # producer inputs
    if chain.upcat is not None:
        ins = [P.add(shape, arg) for _, shape, arg in chain.upcat]
    else:
        ins = [P.add(m1.shapes[m1.x], chain.args1[m1.x])]
    n1 = P.stage(m1, chain.args1, m1.x)
    n2 = P.stage(m2, chain.args2, m2.x)
    n3 = P.stage(m3, chain.args3, m3.x)
    out = P.add((1, m3.cout, m3.ho, m3.wo), None)

    C1, H, W = m1.cout, m1.ho, m1.wo  # the ring's rows: the producer's output
    s, Ho, Wo = m2.sh, m2.ho, m2.wo
    C2 = m3.cout
    R = 2 if Ho % 2 == 0 and Ho >= 2 else 1  # output rows per step
    NS = (R - 1) * s + 3  # ring slots: the rows one step's depthwise window spans
    WP = max(W + 2, s * (Wo + 1))  # padded ring row: zero column 0 and W + 1 ...
    nc = max(1, min(cpu.threads, Ho // (8 * R)))  # row bands, one per thread
    rpc = -(-(-(-Ho // nc)) // R) * R
    nc = -(-Ho // rpc)

    lowres = _lowres_split(chain)
    code = Code()
    header(code, name, P.shapes, param="q", view="g")
    nm1, nm2, nm3 = _names(n1), _names(n2), _names(n3)
    if lowres is not None:
        _lowres_pass(code, chain, cpu, ins, n1, lowres)

    with code.block(f"for band in T.parallel({nc}):"):
        code(f'ring = T.decl_buffer(({NS * C1 * WP},), "float32", scope="global")')
        code(f'dbuf = T.decl_buffer(({C1 * R * Wo},), "float32", scope="global")')
        if chain.upcat is not None:  # the producer's row buffers, once per band
            rows_cat = C1 if lowres is not None else m1.cin
            code(f'cat = T.decl_buffer(({rows_cat * W},), "float32", scope="global")')
            wmax = max(sh[3] for kind, sh, _ in chain.upcat if kind == "up2")
            code(f'tmp = T.decl_buffer(({wmax},), "float32", scope="local")')
        if m1.kind == "dense":
            code(f'srows = T.decl_buffer(({m1.cin * m1.kh * m1.sw * row_span(m1)},), "float32", scope="global")')
        with code.block(f"for z in range({NS * C1}):"):  # the padding columns stay zero
            code("ring[z * " + str(WP) + "] = T.float32(0)")
            with code.block(f"for zc in range({WP - W - 1}):"):
                code(f"ring[z * {WP} + {W + 1} + zc] = T.float32(0)")
        code(f"ya = band * {rpc}")

        def produce(r: str) -> None:
            """Ring slot of producer row ``r`` (zero outside the image)."""
            code(f"slot = T.floormod({r} + {4 * NS}, {NS})")
            with code.block(f"if {r} >= 0 and {r} < {H}:"):
                _produce(code, chain, cpu, r, ins, n1, nm1, C1, W, WP, lowres)
            with code.block("else:"):
                with code.block(f"for zc in range({C1}):"):
                    with code.block(f"for zx in range({W}):"):
                        code(f"ring[(slot * {C1} + zc) * {WP} + 1 + zx] = T.float32(0)")

        # rows the first step needs that no step produces: ya*s - 1 .. (ya - 1)*s + 1
        for d in range(-1, 2 - s):
            with code.block("if True:"):
                produce(f"ya * {s} + {d}")
        with code.block(f"for step in range({rpc // R}):"):
            code(f"y = ya + step * {R}")
            with code.block(f"if y < {Ho}:" if nc * rpc != Ho else "if True:"):
                with code.block(f"for nr in range({R * s}):"):  # rows (y - 1)*s + 2 .. (y + R - 1)*s + 1
                    produce(f"(y - 1) * {s} + 2 + nr")
                _depthwise_rows(code, m2, cpu, nm2, C1, W, WP, NS, R, s, Wo)
                _gemm(code, cpu, "p", C1, C2, R * Wo,
                      src=lambda k, p: f"dbuf[{k} * {R * Wo} + {p}]",
                      wgt=lambda c, k: f"g{n3[m3.w]}[{c} * {C1} + {k}]",
                      start=lambda c, p: init(m3, c, nm3),
                      store=lambda c, p, a: f"g{out}[{c} * {Ho * Wo} + y * {Wo} + {p}] = "
                                            f"{epilogue(m3, a, c, f'y * {Wo} + {p}', cpu, nm3)}")
    return code.text(), P.args[:-1]


def _lowres_split(chain: Chain) -> tuple[int, int, int, int] | None:
    """(up2 part index, its channel offset, copy channels' offset, copy channel count) when the decoder's
    first 1x1 convolution can run before the upsampling: exactly one up2 part and one copy part.

    A 1x1 convolution commutes with bilinear upsampling (both linear, the upsampling weights sum to 1
    everywhere, borders included): W_a . up2(a) = up2(W_a . a). So the up2 part's share of the
    convolution is computed at a quarter of the pixels and only its C1 output channels are upsampled
    (M2U-Net: 5 instead of 30 at the last level); the result differs by float rounding only."""
    if chain.upcat is None or chain.m1.kind != "pointwise" or len(chain.upcat) != 2:
        return None
    kinds = [k for k, _, _ in chain.upcat]
    if sorted(kinds) != ["copy", "up2"]:
        return None
    iu = kinds.index("up2")
    offs = [0, chain.upcat[0][1][1]]
    return iu, offs[iu], offs[1 - iu], chain.upcat[1 - iu][1][1]


def _lowres_pass(code: Code, chain: Chain, cpu: Cpu, ins: list[int], n1, lowres) -> None:
    """zbuf = W_a . a over the low-resolution image, in parallel blocks of rows."""
    m1 = chain.m1
    iu, off_u, _, _ = lowres
    _, n, h, w = chain.upcat[iu][1]
    a = ins[iu]
    C1 = m1.cout
    code(f'zbuf = T.decl_buffer(({C1 * h * w},), "float32", scope="global")')
    nzb = max(1, min(h, 4 * cpu.threads))
    zr = -(-h // nzb)
    nzb = -(-h // zr)
    zp = zr * w
    with code.block(f"for zb in T.parallel({nzb}):"):
        code(f"zbase = T.min(zb * {zp}, {h * w - zp})" if nzb * zp != h * w else f"zbase = zb * {zp}")
        _gemm(code, cpu, "z", n, C1, zp, src=lambda k, p: f"g{a}[{k} * {h * w} + zbase + {p}]",
              wgt=lambda c, k: f"g{n1[m1.w]}[{c} * {m1.cin} + {off_u} + {k}]", start=lambda c, p: "T.float32(0)",
              store=lambda c, p, acc: f"zbuf[{c} * {h * w} + zbase + {p}] = {acc}")


def _up2_rows(code: Code, src: str, nch: int, h: int, w: int, r: str, dst_row, tag: str = "") -> None:
    """Row ``r`` of the x2 bilinear upsampling of ``src`` (nch x h x w, flat) into ``dst_row(c)`` + x."""
    up2_weights(code, r, tag)
    with code.block(f"for uc in range({nch}):"):
        up2_row(code, src, "uc", h, w, dst_row("uc"), "ux", tag)


def _produce(code: Code, chain: Chain, cpu: Cpu, r: str, ins: list[int], n1, nm1, C1: int, W: int, WP: int,
             lowres=None):
    """Producer row ``r`` (C1 x W) into ring slot ``slot``, columns 1..W."""
    m1 = chain.m1
    dst = lambda c, p, a: f"ring[(slot * {C1} + {c}) * {WP} + 1 + {p}] = {epilogue(m1, a, c, '0', cpu, nm1)}"  # noqa
    acc0 = lambda c, p=None: init(m1, c, nm1)  # noqa: E731
    if lowres is not None:  # up2(zbuf) row + the copy part's 1x1 convolution at full resolution
        iu, _, off_c, nc_ = lowres
        _, _, h, w = chain.upcat[iu][1]
        _up2_rows(code, "zbuf", C1, h, w, r, lambda c: f"cat[{c} * {W}")
        sk = ins[1 - iu]
        _gemm(code, cpu, "e", nc_, C1, W, src=lambda k, p: f"g{sk}[({k} * {m1.h} + {r}) * {W} + {p}]",
              wgt=lambda c, k: f"g{n1[m1.w]}[{c} * {m1.cin} + {off_c} + {k}]",
              start=lambda c, p: f"cat[{c} * {W} + {p}] + {acc0(c)}", store=dst)
        return
    if m1.kind == "pointwise" and chain.upcat is None:
        x = ins[0]
        _gemm(code, cpu, "e", m1.cin, C1, W, src=lambda k, p: f"g{x}[{k} * {m1.h * m1.wd} + ({r}) * {W} + {p}]",
              wgt=lambda c, k: f"g{n1[m1.w]}[{c} * {m1.cin} + {k}]", start=acc0, store=dst)
        return
    if m1.kind == "pointwise":  # x2 upsample + concat staged row by row, then the GEMM
        off = 0
        for (kind, (_, n, h, w), _), i in zip(chain.upcat, ins):
            if kind == "copy":
                with code.block(f"for uc in range({n}):"):
                    with code.block(f"for ux in range({W}):"):
                        code(f"cat[({off} + uc) * {W} + ux] = g{i}[(uc * {m1.h} + {r}) * {W} + ux]")
            else:
                _up2_rows(code, f"g{i}", n, h, w, r, lambda c, o=off: f"cat[({o} + {c}) * {W}", tag=str(i))
            off += n
        _gemm(code, cpu, "e", m1.cin, C1, W, src=lambda k, p: f"cat[{k} * {W} + {p}]",
              wgt=lambda c, k: f"g{n1[m1.w]}[{c} * {m1.cin} + {k}]", start=acc0, store=dst)
        return
    # dense KxK producer (the stem): stage its input rows, accumulate taps per register tile
    x = ins[0]
    s1, L1 = m1.sw, row_span(m1)
    per = m1.kh * s1 * L1
    with code.block(f"for sci in range({m1.cin}):"):
        stage_rows(code, m1, "srows", f"g{x}", "sci", f"({r})", f"sci * {per}", m1.kh, tag="s", vector_zero=False)
    taps = m1.kh * m1.kw
    q, o = tap(m1, "ekx")
    _gemm(code, cpu, "e", m1.cin * taps, C1, W,
          src=lambda k, p: f"srows[{k[0]} * {per} + ({k[1]} * {s1} + {q}) * {L1} + {o} + {p}]",
          wgt=lambda c, k: f"g{n1[m1.w]}[({c} * {m1.cin} + {k[0]}) * {taps} + {k[1]} * {m1.kw} + {k[2]}]",
          start=acc0, store=dst, kloops=[("eci", m1.cin, False), ("eky", m1.kh, True), ("ekx", m1.kw, True)])


def _depthwise_rows(code: Code, m2: ConvMatch, cpu: Cpu, nm2, C1: int, W: int, WP: int, NS: int, R: int, s: int,
                    Wo: int) -> None:
    """Depthwise rows y .. y + R - 1 of every channel from the ring into ``dbuf``."""
    v, kk = depthwise_vector(Wo, cpu)
    xv = v * kk
    nxt = -(-Wo // xv)
    L = Wo + 1
    nin = (R - 1) * s + 3
    with code.block(f"for dc in range({C1}):"):
        if s > 1:  # phase-split copies of the window's rows: stride-2 taps become contiguous vectors
            code(f'st = T.decl_buffer(({nin * s * L},), "float32", scope="local")')
            with code.block(f"for dr in T.unroll({nin}):"):
                code(f"sl = T.floormod(y * {s} - 1 + dr + {4 * NS}, {NS})")
                with code.block(f"for dj in range({L}):"):
                    for q in range(s):
                        code(f"st[(dr * {s} + {q}) * {L} + dj] = ring[(sl * {C1} + dc) * {WP} + dj * {s} + {q}]")
        with code.block(f"for dxt in range({nxt}):"):
            code(f"dx0 = {tile_start('dxt', xv, Wo)}")
            code(f'dacc = T.decl_buffer(({R}, {xv}), "float32", scope="local")')
            with code.tile("di", R, v, kk):
                code(f"dacc[di, j] = {init(m2, 'dc', nm2)}")
            w = nm2(m2.w)[0]
            with code.block(f"for di in T.unroll({R}):"):
                with code.block("for ky in T.unroll(3):"):
                    if s == 1:
                        code(f"sl = T.floormod(y + di - 1 + ky + {4 * NS}, {NS})")
                    with code.block("for kx in T.unroll(3):"):
                        with Vec(code, v, kk):
                            if s == 1:
                                srcx = f"ring[(sl * {C1} + dc) * {WP} + dx0 + kx + j]"
                            else:
                                q, o = tap(m2, "kx")
                                srcx = f"st[((di * {s} + ky) * {s} + {q}) * {L} + dx0 + {o} + j]"
                            code(f"dacc[di, j] = dacc[di, j] + {srcx} * {w}[dc * 9 + ky * 3 + kx]")
            with code.tile("di", R, v, kk):
                code(f"dbuf[dc * {R * Wo} + di * {Wo} + dx0 + j] = "
                     f"{epilogue(m2, 'dacc[di, j]', 'dc', '0', cpu, nm2)}")


# ------------------------------------------------------------------------------------- graph rewrite

def _upcat_parts(func) -> list[tuple[str, tuple[int, ...]]] | None:
    """The parts of an upsample_concat kernel (see kernels.upsample_concat) read off its parameter shapes."""
    try:
        shapes = [tuple(int(v) for v in p.ty.shape) for p in func.params]
    except (AttributeError, TypeError, ValueError):
        return None
    *parts, out = shapes
    kinds = []
    for sh in parts:
        if sh[2:] == out[2:]:
            kinds.append(("copy", sh))
        elif (2 * sh[2], 2 * sh[3]) == out[2:]:
            kinds.append(("up2", sh))
        else:
            return None
    return kinds


def fuse_chains(mod, matches: dict[str, ConvMatch], cpu: Cpu) -> tuple[object, list[str]]:
    """Replace every fusable (upsample_concat ->) producer -> depthwise -> pointwise chain of call_tir's in
    ``main`` with one call to a generated row-streaming kernel. ``matches``: function name -> ConvMatch of
    the functions as FuseTIR produced them. Returns the module and the fused chains' descriptions."""
    import tvm
    from tvm import relax
    from tvm.script.parser.core.entry import parse

    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod, []
    main = mod["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    uses: dict = {}
    for v in relax.analysis.all_vars(main):
        uses.setdefault(v, 0)

    def count(expr):
        for v in relax.analysis.free_vars(expr):
            uses[v] = uses.get(v, 0) + 1

    body = main.body
    for blk in body.blocks:
        for b in blk.bindings:
            count(b.value)
    count(body.body)

    def callee(call):
        if isinstance(call, relax.Call) and call.op.same_as(call_tir):
            return call.args[0].name_hint, list(call.args[1].fields)
        return None, None

    def producer(rw, v):
        """(function, arguments) of the call_tir that computes ``v``, when ``v`` is used there only."""
        if not isinstance(v, relax.Var) or uses.get(v, 0) != 1:
            return None, None
        return callee(rw.lookup_binding(v))

    done: list[str] = []

    def fuse(rw, call):
        n3, a3 = callee(call)
        m3 = matches.get(n3)
        if m3 is None or m3.kind != "pointwise":
            return None
        n2, a2 = producer(rw, a3[m3.x])
        m2 = matches.get(n2)
        if m2 is None or m2.kind != "depthwise":
            return None
        n1, a1 = producer(rw, a2[m2.x])
        m1 = matches.get(n1)
        if m1 is None:
            return None
        upcat, up_bytes = None, 0
        if m1.kind == "pointwise":
            n0, a0 = producer(rw, a1[m1.x])
            if n0 is not None and n0.startswith("upsample_concat"):
                parts = _upcat_parts(mod[n0])
                if parts is not None:
                    upcat = [(k, sh, a) for (k, sh), a in zip(parts, a0)]
                    up_bytes = 4 * m1.cin * m1.h * m1.wd
        if not fusable(m1, m2, m3, up_bytes):
            return None
        chain = Chain(m1, m2, m3, a1, a2, a3, upcat)
        src, args = generate(chain, cpu, "fused_block")
        gv = rw.builder_.add_func(parse(src), "fused_block")
        done.append(f"{'upsample_concat + ' if upcat else ''}{n1} + {n2} + {n3}")
        return relax.call_tir(gv, args, out_ty=call.ty)

    out, _ = rewrite_calls(mod, fuse)
    return out, done
