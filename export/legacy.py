"""Repair legacy and third-party ONNX graphs (e.g. PyTorch 0.4 exports) into valid modern ONNX.

Written by hand: onnx.version_converter upgrades opsets but refuses the invalid opset-9 ``Upsample``
that PyTorch 0.4 wrote (scales as an attribute), and maps Upsample to ``asymmetric`` Resize, which is not
what PyTorch's bilinear ``align_corners=False`` computes. Every change is listed for the user.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from edge.errors import EdgeError
from export.onnx_stage import OPSET


def _tvm_supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return set(_get_convert_map())


def unsupported_ops(m: onnx.ModelProto) -> list[str]:
    """Operators of the default domain that ONNX does not define or TVM's Relax frontend cannot import."""
    known = _tvm_supported_ops()
    bad = set()
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in known:
            bad.add(f"{n.domain + '.' if n.domain else ''}{n.op_type}")
    return sorted(bad)


def repair(m: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Return a valid graph at :data:`OPSET` and the list of changes made (empty when none was needed)."""
    changes: list[str] = []
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    bad = unsupported_ops(m)
    bad = [b for b in bad if b != "Upsample"]
    if bad:
        raise EdgeError(f"unsupported ONNX operators: {', '.join(bad)}; replace them in the source model "
                        "(TVM's Relax ONNX frontend and ONNX Runtime must both run the graph)")

    inits = {i.name for i in g.initializer}
    weight_inputs = [i for i in g.input if i.name in inits]
    if weight_inputs:
        keep = [i for i in g.input if i.name not in inits]
        del g.input[:]
        g.input.extend(keep)
        changes.append(f"{len(weight_inputs)} initializers removed from the graph inputs (weights are constants)")

    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    resize_from_upsample: set[str] = set()
    fixed = 0
    for n in g.node:
        if n.op_type == "Upsample" and any(a.name == "scales" for a in n.attribute):
            scales = next(a for a in n.attribute if a.name == "scales").floats
            name = f"{n.output[0]}_scales"
            g.initializer.append(numpy_helper.from_array(np.asarray(scales, np.float32), name))
            n.input.append(name)
            keep_attrs = [a for a in n.attribute if a.name != "scales"]
            del n.attribute[:]
            n.attribute.extend(keep_attrs)
            fixed += 1
        if n.op_type == "Upsample":
            mode = helper.get_attribute_value(next((a for a in n.attribute if a.name == "mode"), None)) \
                if any(a.name == "mode" for a in n.attribute) else b"nearest"
            if mode in (b"bilinear", "bilinear"):
                for a in n.attribute:
                    if a.name == "mode":
                        a.s = b"linear"
            resize_from_upsample.add(n.output[0])
    if fixed:
        changes.append(f"{fixed} Upsample nodes: 'scales' attribute moved to an input (valid opset-9 form)")

    if m.ir_version < 8:  # before conversion: below IR 4 every initializer must also be a graph input
        changes.append(f"IR version {m.ir_version} -> 8")
        m.ir_version = 8
    if opset < OPSET:
        try:
            m = version_converter.convert_version(m, OPSET)
        except Exception as exc:  # the converter raises plain RuntimeErrors naming the adapter
            raise EdgeError(f"cannot upgrade the graph from opset {opset} to {OPSET}: "
                            f"{str(exc).splitlines()[0][:200]}") from exc
        changes.append(f"opset upgraded from {opset} to {OPSET}")
        g = m.graph

    n_resize = 0
    for n in g.node:
        # A graph below opset 10 has no Resize of its own: every Resize now came from an Upsample
        # (the converter renames outputs, so match by origin, not by name).
        if n.op_type == "Resize" and resize_from_upsample and opset < 10:
            mode = next((a.s for a in n.attribute if a.name == "mode"), b"nearest")
            ctm = b"half_pixel" if mode == b"linear" else b"asymmetric"
            attrs = [a for a in n.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            attrs.append(helper.make_attribute("coordinate_transformation_mode", ctm))
            if mode == b"nearest":
                attrs.append(helper.make_attribute("nearest_mode", "floor"))
            del n.attribute[:]
            n.attribute.extend(attrs)
            n_resize += 1
    if n_resize:
        changes.append(f"{n_resize} Upsample -> Resize with PyTorch's coordinates (linear: half_pixel, "
                       "align_corners=False; nearest: asymmetric floor)")
    try:
        onnx.checker.check_model(m)
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as exc:  # onnx.checker.ValidationError, InferenceError
        raise EdgeError(f"the graph is still invalid after repair: {str(exc).splitlines()[0][:200]}") from exc
    return m, changes
