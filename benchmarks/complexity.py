"""Model complexity: parameters, multiply-accumulates per ONNX operator (shape-inferred), bytes on disk.

The per-operator counting is :func:`export.complexity.count` (one counter for the package metadata and the
benchmark reports, not two): Conv (grouped/depthwise: ``N*Cout*Hout*Wout*(Cin/groups)*kh*kw``), ConvTranspose,
MatMul and Gemm make the headline MAC figure; Resize, BatchNormalization and element-wise operators are counted
apart, per operator type, and never added to the headline; a headline operator without an inferred shape is
refused there, not counted as 0. This module adds what a report needs around it: fixed input shapes (a
symbolic dimension would count as 0), PyTorch parameter counts, a cross-check against
``torch.utils.flop_counter.FlopCounterMode`` (which counts FLOPs = 2 x MACs), the bytes of the weights file, the
ONNX file and the compiled library, and the paper's published figures for comparison.
"""
from __future__ import annotations

import io
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError


@dataclass
class ComplexityRecord:
    """What one model costs at one input shape. Counts are plain integers; bytes are bytes."""

    model: str
    input_shape: list[int]
    params: int
    params_source: str  # "pytorch" (trainable tensors) or "onnx initializers" (BN folded into convs)
    macs: int  # headline: Conv + ConvTranspose + MatMul + Gemm
    gmacs: float
    macs_by_op: dict[str, int] = field(default_factory=dict)
    other_ops: dict[str, int] = field(default_factory=dict)  # element operations of non-headline ops, per type
    other_gops: float = 0.0
    nodes_by_op: dict[str, int] = field(default_factory=dict)
    macs_torch_flopcounter: int | None = None  # FlopCounterMode FLOPs / 2, the independent cross-check
    weights_file: str | None = None
    weights_bytes: int | None = None
    weights_bytes_source: str | None = None  # "file" or "serialized state_dict" (no weights file given)
    onnx_bytes: int | None = None
    library_bytes: int | None = None
    paper_params: int | None = None
    paper_gmacs: float | None = None
    paper_gmacs_note: str | None = None
    tvm_planned_mib: float | None = None  # TVM's static memory plan for activations (see benchmarks.memory)
    tvm_unplanned_mib: float | None = None
    tvm_planned_status: str = "not measured"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load(model) -> Any:
    """A ModelProto as it is; a path through :func:`export.onnx_stage.load_onnx` (one loader, one set of errors)."""
    if isinstance(model, (str, Path)):
        from export.onnx_stage import load_onnx

        return load_onnx(Path(model))
    return model


def _graph_inputs(m) -> list:
    inits = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


def fix_input_shape(m, input_shape: list[int] | tuple[int, ...] | None):
    """A copy of ``m`` whose (single) image input has the concrete ``input_shape``.

    A symbolic dimension would count as 0 MACs, so one is either filled in from ``input_shape`` or refused;
    the other shapes are re-inferred (:func:`export.onnx_stage.with_input_shape`). A graph already fixed at
    another shape is refused too: its Reshape/Resize constants were traced at that shape.
    """
    inputs = _graph_inputs(m)
    dims_of = {i.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                        for d in i.type.tensor_type.shape.dim] for i in inputs}
    symbolic = [n for n, dims in dims_of.items() if None in dims]
    if input_shape is None:
        if symbolic:
            raise EdgeError(f"graph input(s) {', '.join(symbolic)} have symbolic dimensions; pass a fixed input "
                            "shape (e.g. 1x3x544x544) so the MACs can be counted")
        return m
    if len(inputs) != 1:
        raise EdgeError(f"an input shape applies to a one-input graph; this one has {len(inputs)} inputs")
    want = [int(d) for d in input_shape]
    have = dims_of[inputs[0].name]
    if len(have) != len(want) or any(h is not None and h != w for h, w in zip(have, want)):
        shown = "x".join("?" if h is None else str(h) for h in have)
        raise EdgeError(f"the ONNX graph's input is fixed at {shown}, not {'x'.join(map(str, want))}; "
                        "export it at the shape to count")
    if not symbolic:
        return m
    from export.onnx_stage import with_input_shape

    return with_input_shape(m, inputs[0].name, want)


def count_onnx(model, input_shape: list[int] | tuple[int, ...] | None = None):
    """Per-operator counts of an ONNX model (path or ModelProto): :class:`export.complexity.Complexity`.

    Raises :class:`EdgeError` when a dimension is symbolic and no ``input_shape`` is given, or when shape
    inference leaves a Conv/Gemm/MatMul without an output shape (it would silently count as 0).
    """
    from export.complexity import count

    return count(fix_input_shape(_load(model), input_shape))


def nodes_by_op(model) -> dict[str, int]:
    m = _load(model)
    return dict(sorted(Counter(n.op_type for n in m.graph.node).items()))


def torch_params(net) -> int:
    """Trainable parameters of a torch module (what papers call Params)."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def torch_flopcounter_macs(net, shape: tuple[int, ...]) -> int:
    """MACs by PyTorch's own counter: ``FlopCounterMode`` FLOPs / 2 (it counts conv, conv-transpose, mm)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(*shape))
    return int(counter.get_total_flops()) // 2


def state_dict_bytes(net) -> int:
    """Size of ``torch.save(state_dict)``: the weights-file size when no file is given."""
    import torch

    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getbuffer().nbytes


def export_onnx(net, shape: tuple[int, int, int, int], path: Path) -> Path:
    """torch -> ONNX with the export stage's settings (opset 17, ``input``/``logits``, checked vs PyTorch)."""
    from export.onnx_stage import torch_to_onnx

    torch_to_onnx(net, shape, path)
    return path


def paper_figures(model: str, hw: tuple[int, int]) -> tuple[int | None, float | None, str | None]:
    """(params, GMACs at ``hw``, note) from the model's registry spec; MACs of a fully convolutional network
    scale with the pixel count, so a figure published at another size is scaled and the note says so."""
    try:
        from models import get_spec

        spec = get_spec(model)
    except (EdgeError, ImportError):
        return None, None, None
    gmacs, note = None, None
    if spec.gmacs_expected is not None and spec.gmacs_at is not None:
        h0, w0 = spec.gmacs_at
        if (h0, w0) == tuple(hw):
            gmacs, note = spec.gmacs_expected, f"published at {h0}x{w0}"
        else:
            gmacs = spec.gmacs_expected * hw[0] * hw[1] / (h0 * w0)
            note = f"published {spec.gmacs_expected} at {h0}x{w0}, scaled by pixel count"
    return spec.params_expected, gmacs, note


def measure(model: str, input_shape: tuple[int, int, int, int], *, onnx_path: str | Path | None = None,
            net=None, weights: str | Path | None = None, library: str | Path | None = None,
            cross_check: bool = True) -> ComplexityRecord:
    """Everything about one model at one shape.

    Args:
        model: a name for the record (a registered name also fetches the paper's figures).
        input_shape: NCHW.
        onnx_path: the graph to count; exported from ``net`` into a temporary file when None.
        net: the torch module (parameters, FlopCounterMode cross-check, ONNX when no ``onnx_path``).
        weights: the weights file whose size is reported (else a serialized state_dict's size).
        library: the compiled TVM library whose size is reported.
    """
    shape = tuple(int(d) for d in input_shape)
    with tempfile.TemporaryDirectory(prefix="edge-bench-onnx-") as tmpd:
        if onnx_path is None:
            if net is None:
                raise EdgeError(f"counting {model} needs its ONNX graph or its PyTorch module")
            onnx_path = export_onnx(net, shape, Path(tmpd) / "model.onnx")  # type: ignore[arg-type]
            onnx_bytes = None  # a temporary export is not a deployed file
        else:
            onnx_bytes = Path(onnx_path).stat().st_size
        m = fix_input_shape(_load(onnx_path), shape)
        c = count_onnx(m)
        nodes = nodes_by_op(m)
    params, source = c.params, "onnx initializers"
    flop_macs = None
    if net is not None:
        params, source = torch_params(net), "pytorch"
        if cross_check:
            flop_macs = torch_flopcounter_macs(net, shape)
    wfile, wbytes, wsource = None, None, None
    if weights is not None:
        wfile, wbytes, wsource = Path(weights).name, Path(weights).stat().st_size, "file"
    elif net is not None:
        wbytes, wsource = state_dict_bytes(net), "serialized state_dict"
    pp, pg, note = paper_figures(model, shape[2:])
    return ComplexityRecord(
        model=model, input_shape=list(shape), params=int(params), params_source=source, macs=int(c.macs),
        gmacs=c.macs / 1e9, macs_by_op=dict(c.macs_by_op), other_ops=dict(c.other_ops),
        other_gops=sum(c.other_ops.values()) / 1e9, nodes_by_op=nodes, macs_torch_flopcounter=flop_macs,
        weights_file=wfile, weights_bytes=wbytes, weights_bytes_source=wsource, onnx_bytes=onnx_bytes,
        library_bytes=Path(library).stat().st_size if library is not None and Path(library).is_file() else None,
        paper_params=pp, paper_gmacs=pg, paper_gmacs_note=note)
