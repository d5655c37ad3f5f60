"""Fixtures of the benchmark tests: run records built from the real record types (so they follow the schema)."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from benchmarks.complexity import ComplexityRecord
from benchmarks.latency import LABELS, LatencyStats
from benchmarks.memory import MemoryRecord
from benchmarks.power import EnergyRecord, unavailable
from benchmarks.child import CaseRecord


def make_run(label: str, p50: dict[str, float], device: str = "cpu", energy_j: float | None = None,
             hrf: bool = True) -> dict:
    """A run of m2unet at 544 on ``p50``'s backends (plus a full HRF image), as run_plan returns it."""
    cases = []
    inputs = [("tile", None, [544, 544], 1)] + ([("image", "hrf", [2336, 3504], 40)] if hrf else [])
    for kind, image, hw, tiles in inputs:
        for b, ms in p50.items():
            scale = tiles if kind == "image" else 1
            lat = LatencyStats.from_samples([ms * scale * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)], 3)
            en = (EnergyRecord(meter="rapl", kind="measured", status="ok", source="RAPL package-0", images=5,
                               duration_s=1.0, energy_j=energy_j, mean_power_w=energy_j,
                               energy_per_image_j=energy_j / 5) if energy_j
                  else unavailable("auto", "no meter can read here"))
            cases.append(asdict(CaseRecord(
                model="m2unet", backend=b, backend_label=LABELS[b], kind=kind, tile_hw=[544, 544], image=image,
                image_hw=hw, tiles=tiles, status="ok", device=device, threads=2, cores=[0, 1],
                latency=lat.to_json(), memory=MemoryRecord(300.0, 250.0, 280.0).to_json(), energy=en.to_json())))
    cases.append(asdict(CaseRecord(model="m2unet", backend="torch-cuda", backend_label=LABELS["torch-cuda"],
                                   kind="tile", tile_hw=[544, 544], image=None, image_hw=[544, 544], tiles=1,
                                   status="unavailable: no CUDA device")))
    cx = ComplexityRecord(model="m2unet", input_shape=[1, 3, 544, 544], params=549_748, params_source="pytorch",
                          macs=1_418_860_528, gmacs=1.418860528, macs_by_op={"Conv": 1_418_860_528},
                          other_ops={"Resize": 55_044_096, "Clip": 38_092_512}, other_gops=0.093,
                          macs_torch_flopcounter=1_418_860_528, weights_file="M2UNetDRIVE.pth",
                          weights_bytes=2_306_102, weights_bytes_source="file", onnx_bytes=2_180_000,
                          library_bytes=2_720_000, paper_params=550_000, paper_gmacs=1.4,
                          paper_gmacs_note="published at 544x544", tvm_planned_mib=69.6, tvm_unplanned_mib=233.8,
                          tvm_planned_status="static plan")
    return {"run_id": f"{label}-2026-01-01T00:00:00Z", "label": label, "created_utc": "2026-01-01T00:00:00Z",
            "tool": "edge-bench",
            "machine": {"hostname": label, "arch": "x86_64", "cpu_model": f"{label} CPU", "llvm_cpu": "znver4",
                        "cores_logical": 2, "cores_physical": 2, "memory_total_mib": 8192.0, "gpus": [],
                        "versions": {"torch": "2.13.0", "onnxruntime": "1.32.0", "tvm": "0.27.0"},
                        "meter_sources": ["RAPL package-0"] if energy_j else []},
            "settings": {"runs": 5, "threads": 2, "cores": [0, 1], "interleave": False},
            "idle_power": None, "dice": {}, "complexity": [cx.to_json()], "cases": cases,
            "notes": ["a note with <html> & characters"]}


@pytest.fixture
def run_factory():
    return make_run


def write_onnx_package(out, tile: tuple[int, int] = (32, 32), seed: int = 0, segmentable: bool = False):
    """An ONNX-only package (no TVM library) of two 3x3 convolutions with random weights, built with onnx.helper:
    no torch, no compiler, so it costs milliseconds. ``segmentable``: with the preprocess section edge.segment
    needs to run it on photographs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.package import host_arch, write_package

    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    inits = {"w1": r(4, 3, 3, 3), "b1": r(4), "w2": r(1, 4, 3, 3), "b2": r(1)}
    shape = [1, 3, *tile]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2", "b2"], ["logits"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, *tile])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    src = out.parent / f"{out.name}.onnx"
    onnx.save(m, str(src))
    meta = {
        "model": {"name": "tiny", "divisor": 16, "overlap": 8, "output": "logits", "untrained": True, "weights": None},
        "input": {"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "kind": "logits", "activation": "sigmoid"},
        "tiling": {"tile": list(tile), "overlap": 8, "blend": "gaussian"},
        "target": {"preset": "host", "arch": host_arch(), "device": "cpu", "library": None},
        "versions": {}, "parity": [], "complexity": {},
    }
    if segmentable:
        meta["preprocess"] = {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}
    return write_package(out, meta, {"model.onnx": src})


@pytest.fixture(scope="session")
def onnx_package(tmp_path_factory):
    return write_onnx_package(tmp_path_factory.mktemp("pkg") / "tiny")
