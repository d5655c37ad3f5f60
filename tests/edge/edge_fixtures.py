"""Helpers for the runtime tests: a test package built from a tiny torch model, package variants, a
synthetic fundus-like photo. (Imported by name from tests/edge and tests/cli, hence not in conftest.py.)"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

TILE = (64, 64)


def tiny_model():
    """Two 3x3 convolutions, fixed seed: fully convolutional like M2U-Net, compiles in a second."""
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    return m.eval()


def build_package(out: Path, tile: tuple[int, int] = TILE) -> Path:
    """torch -> ONNX (opset 17) -> TVM Relax (host CPU) -> package written by edge.package.write_package."""
    import onnx
    import torch
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edge.package import host_arch, write_package

    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    shape = [1, 3, *tile]
    onnx_path, lib_path = work / "model.onnx", work / "model.so"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as export/ uses it
        torch.onnx.export(model, torch.rand(*shape), str(onnx_path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={"input": shape})
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    tvm.compile(mod, target=target).export_library(str(lib_path))
    meta = {
        "created_utc": "2026-01-01T00:00:00Z",
        "model": {"name": "tiny", "paper": "test fixture", "in_channels": 3, "divisor": 16, "mean": [0, 0, 0],
                  "std": [1, 1, 1], "output": "logits", "default_tile": list(tile), "threshold": 0.5,
                  "overlap": 16, "params_expected": None, "untrained": True, "weights": None},
        "input": {"name": "input", "shape": shape, "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "kind": "logits", "activation": "sigmoid"},
        "preprocess": {"channel_order": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "postprocess": {"threshold": 0.5},
        "tiling": {"tile": list(tile), "overlap": 16, "blend": "gaussian"},
        "target": {"preset": "host", "tvm_target": {"kind": "llvm"}, "arch": host_arch(), "device": "cpu",
                   "library": "model.so"},
        "versions": {"tvm": tvm.__version__, "torch": torch.__version__},
        "parity": [],
        "complexity": {},
    }
    write_package(out, meta, {"model.onnx": onnx_path, "model.so": lib_path})
    shutil.rmtree(work)
    return out


def variant(src: Path, dst: Path, drop: tuple[str, ...] = (), **changes: dict) -> Path:
    """A copy of package ``src`` with meta.json sections updated (``target={"arch": "aarch64"}``)."""
    from edge.package import write_package

    meta = json.loads((src / "meta.json").read_text())
    for section, values in changes.items():
        meta[section] = {**meta.get(section, {}), **values}
    members = {name: src / name for name in meta.pop("files") if name not in drop}
    return write_package(dst, meta, members)


def synthetic_fundus(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    """A fundus-like RGB uint8 photo: an orange disc on black with darker curved 'vessels'."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    cy, cx, r = h // 2, w // 2, int(min(h, w) * 0.45)
    cv2.circle(img, (cx, cy), r, (200, 90, 40), thickness=-1)
    for k in range(6):
        pts = np.stack([np.linspace(cx - r, cx + r, 20),
                        cy + (k - 3) * r / 4 + 8 * np.sin(np.linspace(0, 3, 20) + k)], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, (120, 30, 20), thickness=2)
    noise = rng.integers(0, 6, img.shape, dtype=np.uint8)
    inside = np.zeros((h, w), np.uint8)
    cv2.circle(inside, (cx, cy), r, 1, thickness=-1)
    return np.where(inside[..., None] > 0, img + noise, img).astype(np.uint8)
