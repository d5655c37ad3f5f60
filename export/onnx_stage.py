"""Stages 1-2: torch -> ONNX, ONNX checks, onnxsim; each verified against the previous stage."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from edge.errors import EdgeError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    """One verification: ``stage``'s output against ``reference`` on the same input."""

    stage: str
    reference: str
    output: str
    max_abs_diff: float  # on probabilities, sigmoid(logits)
    tolerance: float
    max_abs_diff_logits: float = float("nan")

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance)

    def to_meta(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def require(self) -> "Parity":
        if not self.passed:
            raise EdgeError(f"parity check failed: {self.stage} vs {self.reference} on output '{self.output}': "
                            f"max |diff| of probabilities = {self.max_abs_diff:.3g} > {self.tolerance:g} "
                            f"(logits {self.max_abs_diff_logits:.3g}); nothing was written")
        return self


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))


def compare(stage: str, reference: str, out: np.ndarray, ref: np.ndarray, output: str = OUTPUT_NAME,
            tolerance: float = TOLERANCE) -> Parity:
    """Compare on the probability map (sigmoid of the logits): what the runtime delivers.

    Logits of confident models reach |x| ~ 50, where float32 reordering alone moves them by ~1e-4; the
    logits' own max |diff| is recorded beside the gated figure.
    """
    if out.shape != ref.shape:
        raise EdgeError(f"{stage} output '{output}' has shape {out.shape}, {reference} gives {ref.shape}")
    if not out.size:
        return Parity(stage, reference, output, 0.0, tolerance, 0.0)
    diff = float(np.max(np.abs(_sigmoid(out) - _sigmoid(ref))))
    logits = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    return Parity(stage, reference, output, diff, tolerance, logits)


def sample_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A deterministic input in the models' [0, 1] pixel range."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def ort_run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for invalid graphs
        raise EdgeError(f"ONNX Runtime cannot load the graph: {str(exc).splitlines()[0][:200]}") from exc
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def torch_to_onnx(model, shape: tuple[int, int, int, int], path: Path) -> tuple[onnx.ModelProto, Parity]:
    """Export with a fixed shape, named input/output; verify ONNX Runtime against PyTorch."""
    import torch

    x = sample_input(shape)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False, do_constant_folding=True)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return m, compare("onnx (onnxruntime)", "pytorch", ort_run(m, x), ref).require()


def load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise EdgeError(f"ONNX file not found: {path}")
    try:
        m = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise EdgeError(f"{path} is not a readable ONNX model ({type(exc).__name__}); "
                        "check the file is complete and was written by an ONNX exporter") from exc
    if not m.graph.node or not m.opset_import:
        # protobuf decodes an empty (or any all-defaults) byte string as an empty model without complaint
        raise EdgeError(f"{path} is not an ONNX model (no graph{' nodes' if m.opset_import else ' or opset'}); "
                        "check the file is complete and was written by an ONNX exporter")
    return m


def io_signature(m: onnx.ModelProto) -> tuple[str, list[int], str]:
    """(input name, input shape, output name) of a single-input single-output image model."""
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(m.graph.output) < 1:
        raise EdgeError(f"expected one image input, found {len(inputs)} graph inputs: "
                        f"{', '.join(i.name for i in inputs) or 'none'}; export a model whose only input is the "
                        "image (N, C, H, W)")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims, m.graph.output[0].name


def with_input_shape(m: onnx.ModelProto, name: str, shape: list[int]) -> onnx.ModelProto:
    """Fix the input to ``shape`` and re-infer every other shape from it."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for i in m.graph.input:
        if i.name == name:
            del i.type.tensor_type.shape.dim[:]
            for d in shape:
                i.type.tensor_type.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for o in m.graph.output:
        for d in o.type.tensor_type.shape.dim:
            d.Clear()
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as exc:  # InferenceError: the graph cannot take this shape
        raise EdgeError(f"the ONNX graph cannot take input shape {shape}: {str(exc).splitlines()[0][:160]}") from exc


def simplify(m: onnx.ModelProto, x: np.ndarray) -> tuple[onnx.ModelProto, Parity, tuple[int, int]]:
    """onnxsim with its own check disabled; our check compares outputs on a real-range input."""
    import onnxsim

    try:
        s, ok = onnxsim.simplify(m, check_n=0)
    except Exception as exc:  # onnxsim raises RuntimeError/ValueError for graphs it cannot handle
        raise EdgeError(f"onnxsim could not simplify the graph: {str(exc).splitlines()[0][:200]}") from exc
    if not ok:
        raise EdgeError("onnxsim reported that the simplified graph is invalid")
    p = compare("simplified onnx", "onnx", ort_run(s, x), ort_run(m, x)).require()
    return s, p, (len(m.graph.node), len(s.graph.node))
