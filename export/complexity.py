"""Parameter and multiply-accumulate counts read off an ONNX graph (with shape inference).

Written by hand: the existing counters (thop, fvcore, ptflops) count torch modules, not ONNX graphs, and
the package records what the deployed graph costs. Convolutions (grouped/depthwise included), ConvTranspose,
MatMul and Gemm make the headline; everything else is counted per operator type on the side. The one counter
of the project: the package metadata and the benchmark reports (:mod:`benchmarks.complexity`) both use it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import shape_inference

from edge.errors import EdgeError

HEADLINE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# per output element: cost of the cheap ops, counted apart from the headline
ELEMENTWISE_COST = {"BatchNormalization": 1, "Resize": 4, "Add": 1, "Mul": 1, "Sub": 1, "Div": 1, "Clip": 1,
                    "Relu": 1, "Sigmoid": 1, "Concat": 0}


@dataclass
class Complexity:
    params: int
    macs: int  # headline: Conv, ConvTranspose, MatMul, Gemm
    macs_by_op: dict[str, int] = field(default_factory=dict)
    other_ops: dict[str, int] = field(default_factory=dict)  # element operations of the non-headline ops

    def to_meta(self) -> dict:
        return {"params": self.params, "macs": self.macs, "gmacs": round(self.macs / 1e9, 4),
                "macs_by_op": self.macs_by_op, "other_ops": self.other_ops}


def _shapes(m: onnx.ModelProto) -> dict[str, list[int]]:
    """Every known tensor shape; a dimension shape inference could not fix is 0."""
    inferred = shape_inference.infer_shapes(m)
    out: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
    for init in m.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _sized(shape: list[int] | None) -> bool:
    return bool(shape) and min(shape) > 0  # type: ignore[type-var]


def _headline_macs(n: onnx.NodeProto, shapes: dict[str, list[int]], nout: int) -> int:
    """Multiply-accumulates of one headline operator (its output has ``nout`` elements)."""
    w = shapes.get(n.input[1]) if len(n.input) > 1 else None
    if n.op_type == "Conv":  # w: Cout, Cin/groups, kh, kw
        return nout * int(np.prod(w[1:]))
    if n.op_type == "ConvTranspose":  # w: Cin, Cout/groups, kh, kw
        return int(np.prod(shapes[n.input[0]])) * int(np.prod(w[1:]))
    a = shapes[n.input[0]]  # MatMul, Gemm
    k = a[0] if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute) else a[-1]
    return nout * k


def macs_by_node(m: onnx.ModelProto) -> dict[str, int]:
    """MACs of each headline operator (Conv, ConvTranspose, MatMul, Gemm) that shape inference sized, by node
    name (int8 packages: the share of the work that runs in int8)."""
    shapes = _shapes(m)
    out = {}
    for n in m.graph.node:
        if n.op_type in HEADLINE_OPS and n.output and _sized(shapes.get(n.output[0])) and len(n.input) > 1 \
                and all(_sized(shapes.get(n.input[i])) for i in (0, 1)):
            out[n.name] = _headline_macs(n, shapes, int(np.prod(shapes[n.output[0]])))
    return out


def count(m: onnx.ModelProto) -> Complexity:
    """Parameters and MACs of ``m`` (fixed input shapes; see ``benchmarks.complexity.fix_input_shape``).

    Raises :class:`EdgeError` when shape inference leaves a headline operator (or its weight) without a
    concrete shape: it would silently count as 0. A shapeless cheap operator is left out of ``other_ops``.
    """
    shapes = _shapes(m)
    params = int(sum(np.prod(i.dims) for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT))
    macs: Counter[str] = Counter()
    other: Counter[str] = Counter()
    unknown: list[str] = []
    for n in m.graph.node:
        out = shapes.get(n.output[0]) if n.output else None
        if n.op_type in HEADLINE_OPS:
            operands = [shapes.get(n.input[i]) for i in (0, 1)] if len(n.input) > 1 else [None]
            if not (_sized(out) and all(_sized(s) for s in operands)):
                unknown.append(f"{n.op_type} {n.name or (n.output[0] if n.output else '?')}")
                continue
        elif not out:
            continue
        nout = int(np.prod(out))
        if n.op_type in HEADLINE_OPS:
            macs[n.op_type] += _headline_macs(n, shapes, nout)
        else:
            other[n.op_type] += nout * ELEMENTWISE_COST.get(n.op_type, 1)
    if unknown:
        raise EdgeError(f"shape inference could not size {len(unknown)} operator(s) ({', '.join(unknown[:3])}); "
                        "their MACs cannot be counted; export the graph with a fixed input shape")
    return Complexity(params, int(sum(macs.values())), dict(macs), dict(other))
