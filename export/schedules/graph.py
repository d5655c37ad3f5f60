"""Graph-level rewrites in front of legalization: ops whose hand-written kernel needs the Relax attributes.

``concat`` along channels of parts that are x2 bilinear ``resize2d`` outputs (the U-Net decoder's
upsample-and-skip) becomes one call to :func:`export.schedules.kernels.upsample_concat`: the resize is
read from its attributes (method, coordinate mode, roi, layout, exact x2 size), which the legalized TIR
no longer states plainly. Anything else is left alone.
"""
from __future__ import annotations

from export.schedules.kernels import Cpu, upsample_concat


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
    from tvm.relax import expr_functor
    from tvm.script.parser.core.entry import parse

    @expr_functor.mutator
    class _Rewriter(expr_functor.PyExprMutator):
        def __init__(self, m):
            super().__init__(m)
            self.count = 0

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, Op) or call.op.name != "relax.concat":
                return call
            out_shape = _static_shape(call.ty)
            if out_shape is None or len(out_shape) != 4 or out_shape[0] != 1 or int(call.attrs.axis) not in (1, -3):
                return call
            fields = call.args[0]
            if not isinstance(fields, relax.Tuple):
                return call
            parts, args, any_up = [], [], False
            for f in fields.fields:
                shape = _static_shape(f.ty)
                if shape is None or len(shape) != 4:
                    return call
                src = self.lookup_binding(f) if isinstance(f, relax.Var) else None
                if (isinstance(src, relax.Call) and isinstance(src.op, Op) and src.op.name == "relax.image.resize2d"
                        and _is_up2(src, _static_shape(src.args[0].ty), shape)):
                    parts.append(("up2", _static_shape(src.args[0].ty)))
                    args.append(src.args[0])
                    any_up = True
                else:
                    parts.append(("copy", shape))
                    args.append(f)
            if not any_up:
                return call
            func = parse(upsample_concat(parts, cpu, "upsample_concat"))
            gv = self.builder_.add_func(func, "upsample_concat")
            self.count += 1
            return relax.call_tir(gv, args, out_ty=call.ty)

    rw = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rw.builder_.update_func(gv, rw.visit_expr(func))
    out = rw.builder_.finalize()
    if rw.count:
        out = relax.transform.DeadCodeElimination()(out)
    return out, rw.count
