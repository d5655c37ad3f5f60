"""Graph-level rewrites in front of legalization: ops whose hand-written kernel needs the Relax attributes.

``concat`` along channels of parts that are x2 bilinear ``resize2d`` outputs (the U-Net decoder's
upsample-and-skip) becomes one call to :func:`export.schedules.kernels.upsample_concat`: the resize is
read from its attributes (method, coordinate mode, roi, layout, exact x2 size), which the legalized TIR
no longer states plainly. Anything else is left alone. :func:`rewrite_calls` is the one call-by-call
rewriting driver (these rewrites and :mod:`export.schedules.fused` use it).
"""
from __future__ import annotations

from export.schedules.emit import Cpu
from export.schedules.kernels import grid_sample, upsample_concat


def rewrite_calls(mod, rewrite) -> tuple[object, int]:
    """Every call in ``mod``'s Relax functions, innermost first, replaced by ``rewrite(mutator, call)`` unless
    that returns None (``mutator.lookup_binding`` and ``mutator.builder_`` are there for it); dead bindings
    are dropped when anything changed. Returns the module and how many calls were replaced."""
    from tvm import relax
    from tvm.relax import expr_functor

    @expr_functor.mutator
    class _Rewriter(expr_functor.PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.count = 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            new = rewrite(self, call)
            if new is None:
                return call
            self.count += 1
            return new

    rw = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rw.builder_.update_func(gv, rw.visit_expr(func))
    out = rw.builder_.finalize()
    if rw.count:
        out = relax.transform.DeadCodeElimination()(out)
    return out, rw.count


def _static_shape(ty) -> tuple[int, ...] | None:
    try:
        if str(ty.dtype) != "float32":
            return None
        return tuple(int(v) for v in ty.shape)
    except (AttributeError, TypeError, ValueError):
        return None


def _is_up2(call, shape_in, shape_out) -> bool:
    """``call`` is resize2d linear half-pixel, NCHW, exactly twice the input height and width."""
    a = call.attrs
    try:
        roi = [float(v) for v in a.roi]
        ok = (str(a.layout) == "NCHW" and str(a.method) == "linear"
              and str(a.coordinate_transformation_mode) in ("half_pixel", "pytorch_half_pixel")
              and all(v == 0.0 for v in roi) and float(a.extrapolation_value) == 0.0
              and (a.out_dtype is None or str(a.out_dtype) in ("", "float32")))
    except (AttributeError, TypeError, ValueError):
        return False
    if not ok or shape_in is None or shape_out is None or len(shape_in) != 4:
        return False
    n, c, h, w = shape_in
    # pytorch_half_pixel differs from half_pixel only for an output of size 1
    return n == 1 and shape_out == (1, c, 2 * h, 2 * w) and h >= 1 and w >= 1


def rewrite_upsample_concat(mod, cpu: Cpu):
    """Replace channel concats of (x2 bilinear resize | tensor) parts with one hand-written kernel."""
    from tvm import relax
    from tvm.ir import Op
    from tvm.script.parser.core.entry import parse

    def rewrite(rw, call):
        if not isinstance(call.op, Op) or call.op.name != "relax.concat":
            return None
        out_shape = _static_shape(call.ty)
        if out_shape is None or len(out_shape) != 4 or out_shape[0] != 1 or int(call.attrs.axis) not in (1, -3):
            return None
        fields = call.args[0]
        if not isinstance(fields, relax.Tuple):
            return None
        parts, args, any_up = [], [], False
        for f in fields.fields:
            shape = _static_shape(f.ty)
            if shape is None or len(shape) != 4:
                return None
            src = rw.lookup_binding(f) if isinstance(f, relax.Var) else None
            if (isinstance(src, relax.Call) and isinstance(src.op, Op) and src.op.name == "relax.image.resize2d"
                    and _is_up2(src, _static_shape(src.args[0].ty), shape)):
                parts.append(("up2", _static_shape(src.args[0].ty)))
                args.append(src.args[0])
                any_up = True
            else:
                parts.append(("copy", shape))
                args.append(f)
        if not any_up:
            return None
        func = parse(upsample_concat(parts, cpu, "upsample_concat"))
        gv = rw.builder_.add_func(func, "upsample_concat")
        return relax.call_tir(gv, args, out_ty=call.ty)

    return rewrite_calls(mod, rewrite)


def subpixel_plan(h: int, hout: int, s: int, p: int, k: int) -> tuple[int, int, int, list[tuple[int, int, int]]] | None:
    """One axis of a transposed convolution as a stride-1 convolution over its input with ``s`` output phases:
    output ``s * q + a`` reads input rows ``q + d``. Returns (kernel size, pad before, pad after, taps
    [(phase a, tap ky, dy)]) or None when the output is not ``s`` whole phases or would need cropping."""
    if hout % s:
        return None
    taps = [(a, ky, (a + p - ky) // s) for a in range(s) for ky in range(k) if (a + p - ky) % s == 0]
    if not taps:
        return None
    d0, d1 = min(d for *_, d in taps), max(d for *_, d in taps)
    before, after = -d0, hout // s - h + d1
    if before < 0 or after < 0:
        return None
    return d1 - d0 + 1, before, after, [(a, ky, d - d0) for a, ky, d in taps]


def subpixel_weight(w, sh: int, sw: int, rows: list, cols: list, kh: int, kw: int):
    """The (Cout * sh * sw, Cin, kh, kw) weight of the stride-1 convolution computing every output phase of a
    transposed convolution with (Cin, Cout, KH, KW) weight ``w``; channel (o * sh + a) * sw + b is phase (a, b)."""
    import numpy as np

    cin, cout = w.shape[:2]
    out = np.zeros((cout, sh, sw, cin, kh, kw), dtype=w.dtype)
    for a, ky, dy in rows:
        for b, kx, dx in cols:
            out[:, a, b, :, dy, dx] = w[:, :, ky, kx].T
    return out.reshape(cout * sh * sw, cin, kh, kw)


def rewrite_conv_transpose(mod):
    """Replace NCHW transposed convolutions with constant weights (groups 1, no dilation) by the sub-pixel form:
    one stride-1 convolution computing all ``sh * sw`` output phases, then a depth-to-space reshape. The
    convolution gets a hand-written kernel (pointwise for kernel = stride, dense otherwise); TVM has no schedule
    for conv2d_transpose. Exact: every phase sums the same products (zero taps where a phase has fewer)."""
    import numpy as np
    from tvm import relax
    from tvm.ir import Constant, Op

    def rewrite(rw, call):
        if not isinstance(call.op, Op) or call.op.name != "relax.nn.conv2d_transpose":
            return None
        a = call.attrs
        x, w = call.args
        wc = rw.lookup_binding(w) if isinstance(w, relax.Var) else w
        shape_in, shape_out = _static_shape(x.ty), _static_shape(call.ty)
        try:
            ok = (str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "IOHW"
                  and str(a.out_layout) in ("NCHW", "") and int(a.groups) == 1
                  and all(int(v) == 1 for v in a.dilation) and (a.out_dtype is None
                                                                or str(a.out_dtype) in ("", "float32")))
        except (AttributeError, TypeError, ValueError):
            return None
        if not ok or not isinstance(wc, Constant) or shape_in is None or shape_out is None \
                or shape_in[0] != 1 or str(wc.value.dtype) != "float32":
            return None
        wt = wc.value.numpy()
        sh, sw = (int(v) for v in a.strides)
        pad = [int(v) for v in a.padding]
        pt, pl = pad[0], pad[1]
        rows = subpixel_plan(shape_in[2], shape_out[2], sh, pt, wt.shape[2])
        cols = subpixel_plan(shape_in[3], shape_out[3], sw, pl, wt.shape[3])
        if rows is None or cols is None:
            return None
        (kh, bt, bb, rtaps), (kw, bl, br, ctaps) = rows, cols
        cout, hq, wq = shape_out[1], shape_out[2] // sh, shape_out[3] // sw
        weight = relax.const(np.ascontiguousarray(subpixel_weight(wt, sh, sw, rtaps, ctaps, kh, kw)))
        y = relax.op.nn.conv2d(x, weight, strides=1, padding=(bt, bl, bb, br))
        y = relax.op.reshape(y, (1, cout, sh, sw, hq, wq))
        y = relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3])
        return relax.op.reshape(y, (1, cout, hq * sh, wq * sw))

    return rewrite_calls(mod, rewrite)


def _grid_sample_args(rw, call):
    """(x shape, data, grid, grid layout last, align_corners) of a ``relax.image.grid_sample`` the hand-written
    kernel computes (bilinear, zero padding, NCHW, float32, static shapes), else None. A grid that is TVM's
    transpose of ONNX's (N, Hg, Wg, 2) is read before the transpose."""
    from tvm import relax
    from tvm.ir import Op

    if not isinstance(call, relax.Call) or not isinstance(call.op, Op) or call.op.name != "relax.image.grid_sample":
        return None
    a = call.attrs
    try:
        ok = (str(a.method) == "bilinear" and str(a.layout) == "NCHW" and str(a.padding_mode) == "zeros")
        align = bool(a.align_corners)
    except (AttributeError, TypeError, ValueError):
        return None
    x, g = call.args
    xs, gs = _static_shape(x.ty), _static_shape(g.ty)
    if not ok or xs is None or gs is None or len(xs) != 4 or len(gs) != 4 or gs[1] != 2 or gs[0] != xs[0]:
        return None
    src = rw.lookup_binding(g) if isinstance(g, relax.Var) else None
    if (isinstance(src, relax.Call) and isinstance(src.op, Op) and src.op.name == "relax.permute_dims"
            and src.attrs.axes is not None and [int(v) for v in src.attrs.axes] == [0, 3, 1, 2]
            and _static_shape(src.args[0].ty) == (gs[0], gs[2], gs[3], 2)):
        return xs, x, src.args[0], True, align
    return xs, x, g, False, align


def rewrite_grid_sample(mod, cpu: Cpu):
    """Bilinear zero-padded grid sampling as one hand-written kernel (:func:`export.schedules.kernels.grid_sample`).
    A sampled tensor reshaped to (B, G, C, K, Ho, Wo) and multiplied by a (B, G, 1, K, Ho, Wo) tensor (DCNv2's
    modulation mask, :func:`models.deform.deform_conv2d`) becomes one kernel with the mask folded into the
    bilinear weights: otherwise the mask's sigmoid is fused into the product and recomputed for every channel."""
    from tvm import relax
    from tvm.ir import Op
    from tvm.script.parser.core.entry import parse

    def call_kernel(rw, args, sampled, out_ty, scale=None):
        xs, x, g, last, align = args
        hg, wg = sampled[2], sampled[3]
        name = "grid_sample_scaled" if scale is not None else "grid_sample"
        func = parse(grid_sample(xs, hg, wg, last, align, scale is not None, cpu, name))
        gv = rw.builder_.add_func(func, name)
        ins = [x, g] + ([scale] if scale is not None else [])
        return relax.call_tir(gv, ins, out_ty=out_ty)

    def masked(rw, call):
        if not isinstance(call.op, Op) or call.op.name != "relax.multiply":
            return None
        for a, b in (call.args, call.args[::-1]):
            src = rw.lookup_binding(a) if isinstance(a, relax.Var) else None
            if not (isinstance(src, relax.Call) and isinstance(src.op, Op) and src.op.name == "relax.reshape"):
                continue
            gs = rw.lookup_binding(src.args[0]) if isinstance(src.args[0], relax.Var) else None
            args = _grid_sample_args(rw, gs)
            sa, sb, so, sampled = (_static_shape(a.ty), _static_shape(b.ty), _static_shape(call.ty),
                                   _static_shape(gs.ty) if args else None)
            if args is None or None in (sa, sb, so, sampled) or len(sa) != 6 or so != sa:
                continue
            bb, g, c, k, ho, wo = sa
            if sb != (bb, g, 1, k, ho, wo) or sampled != (bb * g, c, k * ho, wo):
                continue
            scale = relax.op.reshape(b, (bb * g, k * ho, wo))
            out = call_kernel(rw, args, sampled, gs.ty, scale)
            return relax.op.reshape(out, sa)
        return None

    def plain(rw, call):
        args = _grid_sample_args(rw, call)
        return None if args is None else call_kernel(rw, args, _static_shape(call.ty), call.ty)

    mod, n_masked = rewrite_calls(mod, masked)
    mod, n_plain = rewrite_calls(mod, plain)
    return mod, n_masked + n_plain


def rewrite_constant_division(mod):
    """``x / c`` for a constant ``c`` (hard-swish's 6, an unfolded batch norm's standard deviations) becomes
    ``x * (1 / c)``, constants folded first (the zero pipeline's own FoldConstant then has nothing left: lowering
    M2U-Net took 8.5-9.4 s with it, 8.6 s without). A vector division costs several multiplies: measured on
    HybridNetSeg's hard-swish epilogues, estimated (emulated A72), 1.94-2.83 llvm-mca cycles per FMLA with it,
    1.26-1.47 without. Within one rounding of the quotient; a zero, non-finite or subnormal ``c`` keeps its division."""
    import numpy as np
    from tvm import relax
    from tvm.ir import Constant, Op

    mod = relax.transform.FoldConstant()(mod)

    def rewrite(rw, call):
        if not isinstance(call.op, Op) or call.op.name != "relax.divide" or _static_shape(call.ty) is None:
            return None
        b = call.args[1]
        c = rw.lookup_binding(b) if isinstance(b, relax.Var) else b
        if not isinstance(c, Constant) or str(c.value.dtype) != "float32":
            return None
        v = c.value.numpy().astype(np.float64)
        with np.errstate(divide="ignore", over="ignore"):
            r = (1.0 / v).astype(np.float32)
        if not (np.all(np.isfinite(v)) and np.all(v != 0) and np.all(np.isfinite(r)) and np.all(r != 0)
                and np.all(np.abs(r) >= np.finfo(np.float32).tiny)):
            return None
        return relax.op.multiply(call.args[0], relax.const(r))

    return rewrite_calls(mod, rewrite)
