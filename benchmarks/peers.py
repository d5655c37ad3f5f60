"""The engines people run on ARM CPUs, as peers of the compiled package: ncnn, MNN and LiteRT with XNNPACK.

Each peer is converted on the host from the package's own ``model.onnx`` (same graph, same weights, fp32) with
its project's converter, then timed on this host (``edge-bench --backends ncnn,mnn,tflite``) or counted on the
emulated Cortex-A72 (``edge-bench --a72-proxy --a72-peers ncnn,mnn,tflite``, benchmarks.a72_proxy):

- ``ncnn``: pnnx (``pnnx model.onnx inputshape=[1,3,H,W] fp16=0``: fp32 weights; pnnx's default fp16=1 alone
  moves M2U-Net's logits by ~4e-2), run by ncnn's Python binding, no Vulkan, ncnn's default options.
- ``mnn``: MNNConvert (``mnnconvert -f ONNX``), run by MNN's CPU backend, precision normal (fp32).
- ``tflite``: onnx2tf (an NHWC float32 .tflite), run by ai-edge-litert's Interpreter with its default XNNPACK
  delegate. onnx2tf needs TensorFlow, whose pins clash with TVM's, so it lives in its own virtualenv
  (``.venv-onnx2tf``, made by docker/install/setup.sh; ``$VESSEL_EDGE_ONNX2TF`` names another executable).

Converted models are cached under ``~/.cache/vessel-edge/peers`` by the ONNX file's hash, the input shape and the
converter's version. A converter that fails, or a runtime that is not installed, is an :class:`EdgeError` naming
the fix; nothing half-converted stays in the cache.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Peer:
    """One peer engine: how its model is made from ONNX and how it runs here."""

    name: str  # the edge-bench backend and the arm64proxy engine
    label: str
    runtime: str  # the Python module that runs it (and the distribution its version comes from)
    distribution: str
    converter: str  # the distribution whose version keys the cache
    suffix: str  # the model file handed to the runtime (and to arm64proxy)
    convert: Callable[[Path, list[int], Path], Path]  # (onnx in a scratch folder, NCHW shape, folder) -> model
    install: str  # what to run when the runtime or converter is missing


def _exe(name: str) -> str | None:
    """A converter's executable: beside this interpreter (a venv's bin/), or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _run(cmd: list[str], what: str, cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode:
        tail = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise EdgeError(f"{what} failed (exit {r.returncode}): {tail[0][:240]}")


def _ncnn(onnx: Path, shape: list[int], folder: Path) -> Path:
    _run([_exe("pnnx"), str(onnx), "inputshape=[" + ",".join(map(str, shape)) + "]", "fp16=0"],
         "pnnx (ONNX -> ncnn)", folder)
    param = folder / f"{onnx.stem}.ncnn.param"
    if not param.is_file() or not param.with_suffix(".bin").is_file():
        raise EdgeError(f"pnnx wrote no {param.name} / .bin for {onnx.name}")
    return param


# MNN's `mnnconvert` script sends a usage log to Alibaba's cloud after each conversion, and `pip install`s its
# client (aliyun-log-python-sdk, which downgrades protobuf below what onnx needs) when that is missing. The
# converter itself is the native _tools.mnnconvert, called here directly: no network, nothing installed.
MNNCONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv)"  # its return value is no status: the file is


def _mnn(onnx: Path, shape: list[int], folder: Path) -> Path:
    out = folder / f"{onnx.stem}.mnn"
    _run([sys.executable, "-c", MNNCONVERT, "-f", "ONNX", "--modelFile", str(onnx), "--MNNModel", str(out), "--bizCode", "vessel-edge"],
         "MNNConvert (ONNX -> MNN)", folder)
    if not out.is_file() or out.stat().st_size == 0:  # MNNConvert exits 0 on some failures
        raise EdgeError(f"MNNConvert wrote no {out.name} for {onnx.name}")
    return out


def onnx2tf_exe() -> str | None:
    """onnx2tf: ``$VESSEL_EDGE_ONNX2TF``, the project's ``.venv-onnx2tf``, or on PATH."""
    own = ROOT / ".venv-onnx2tf" / "bin" / "onnx2tf"
    if os.environ.get("VESSEL_EDGE_ONNX2TF"):
        return os.environ["VESSEL_EDGE_ONNX2TF"]
    return str(own) if own.is_file() else shutil.which("onnx2tf")


def _tflite(onnx: Path, shape: list[int], folder: Path) -> Path:
    # onnx2tf checks its TF graph against ONNX Runtime on a sample batch it downloads unless the file is in its
    # working folder; this machine may be offline, so the check gets random images in [0, 1] of the same shape.
    rng = np.random.default_rng(0)
    np.save(folder / "calibration_image_sample_data_20x128x128x3_float32.npy",
            rng.random((20, 128, 128, 3), dtype=np.float32))
    _run([onnx2tf_exe(), "-i", str(onnx), "-o", str(folder / "tf"), "-n"], "onnx2tf (ONNX -> TFLite)", folder)
    out = folder / "tf" / f"{onnx.stem}_float32.tflite"
    if not out.is_file():
        raise EdgeError(f"onnx2tf wrote no {out.name} for {onnx.name}")
    return out


PEERS: dict[str, Peer] = {
    "ncnn": Peer("ncnn", "ncnn", "ncnn", "ncnn", "pnnx", ".param", _ncnn, "pip install ncnn pnnx"),
    "mnn": Peer("mnn", "MNN", "MNN", "MNN", "MNN", ".mnn", _mnn, "pip install MNN"),
    "tflite": Peer("tflite", "LiteRT XNNPACK", "ai_edge_litert", "ai-edge-litert", "onnx2tf", ".tflite", _tflite,
                   "pip install ai-edge-litert"),
}


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _converter_version(peer: Peer) -> str:
    if peer.converter == "onnx2tf":
        exe = onnx2tf_exe()
        if exe is None:
            return "missing"
        site = list((Path(exe).resolve().parent.parent / "lib").glob("python3*/site-packages/onnx2tf-*.dist-info"))
        return site[0].name[len("onnx2tf-"):-len(".dist-info")] if site else "unknown"
    return version(peer.converter) or "missing"


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot be converted and run on this host (None: it can)."""
    peer = PEERS[name]
    try:
        __import__(peer.runtime)
    except ImportError:
        return f"{peer.label} is not installed; run `{peer.install}` (or `pip install 'vessel-edge[bench]'`)"
    return missing_converter(name)


def missing_converter(name: str) -> str | None:
    """Why peer ``name`` cannot be converted on this host (None: it can)."""
    if name == "ncnn" and _exe("pnnx") is None:
        return "pnnx (the ncnn converter) is not installed; run `pip install pnnx` (setup.sh installs it)"
    if name == "mnn" and importlib.util.find_spec("_tools") is None:
        return "MNNConvert is not installed; run `pip install MNN` (setup.sh installs it)"
    if name == "tflite" and onnx2tf_exe() is None:
        return ("onnx2tf is not installed; run `bash docker/install/setup.sh --no-demo` (it makes .venv-onnx2tf) "
                "or set VESSEL_EDGE_ONNX2TF")
    return None


def convert(name: str, onnx: str | Path, shape: list[int], cache: str | Path | None = None) -> Path:
    """Peer ``name``'s model of ``onnx`` at the NCHW input ``shape``: converted once, then read from the cache."""
    peer = PEERS[name]
    onnx = Path(onnx)
    if not onnx.is_file():
        raise EdgeError(f"{onnx} does not exist; a peer is converted from the package's model.onnx (re-export it)")
    reason = missing_converter(name)
    if reason:
        raise EdgeError(reason)
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()[:16]
    key = f"{name}-{_converter_version(peer)}-{digest}-{'x'.join(map(str, shape))}"
    root = Path(cache or os.environ.get("VESSEL_EDGE_PEER_CACHE") or Path.home() / ".cache" / "vessel-edge" / "peers")
    done = root / key
    if not done.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=root) as tmpd:
            work = Path(tmpd)
            src = work / "model.onnx"
            shutil.copyfile(onnx, src)
            model = peer.convert(src, list(shape), work)
            keep = work / "out"
            keep.mkdir()
            for f in [model, *([model.with_suffix(".bin")] if name == "ncnn" else [])]:
                shutil.move(str(f), keep / f.name)
            try:
                os.replace(keep, done)
            except OSError:  # another process converted it meanwhile
                if not done.is_dir():
                    raise
    return next(done.glob(f"*{peer.suffix}"))


def runner(name: str, model: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(fn, info): fn maps an NCHW float32 batch to the peer's NCHW logits, ``threads`` threads."""
    reason = missing(name)
    if reason:
        raise EdgeError(reason)
    if name == "ncnn":
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = threads
        net.opt.use_vulkan_compute = False
        if net.load_param(str(model)) or net.load_model(str(model.with_suffix(".bin"))):
            raise EdgeError(f"ncnn could not load {model}; delete it from the peer cache and convert again")
        iname, oname = net.input_names()[0], net.output_names()[0]

        def fn(x: np.ndarray) -> np.ndarray:
            xc = np.ascontiguousarray(x[0], dtype=np.float32)  # ncnn.Mat borrows this memory: keep it alive
            with net.create_extractor() as ex:
                ex.input(iname, ncnn.Mat(xc))
                _, o = ex.extract(oname)
                return np.array(o, copy=True)[None]

        info = {"version": version("ncnn"), "converter": f"pnnx {version('pnnx')}", "threads": threads,
                "fp16_storage": bool(net.opt.use_fp16_storage), "winograd": bool(net.opt.use_winograd_convolution)}
        return fn, info
    if name == "mnn":
        import MNN

        interp = MNN.Interpreter(str(model))
        sess = interp.createSession({"backend": "CPU", "numThread": threads, "precision": "normal"})
        ti, to = interp.getSessionInput(sess), interp.getSessionOutput(sess)
        shape_out = tuple(to.getShape())

        def fn(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            ti.copyFrom(MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe))
            interp.runSession(sess)
            host = MNN.Tensor(shape_out, MNN.Halide_Type_Float, np.zeros(shape_out, np.float32),
                              MNN.Tensor_DimensionType_Caffe)
            to.copyToHostTensor(host)
            return np.array(host.getNumpyData(), copy=True).reshape(shape_out)

        return fn, {"version": version("MNN"), "converter": f"MNNConvert {version('MNN')}", "threads": threads,
                    "precision": "normal"}
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    di, do = it.get_input_details()[0], it.get_output_details()[0]

    nhwc = len(di["shape"]) == 4 and di["shape"][-1] in (1, 3) and di["shape"][1] not in (1, 3)

    def fn(x: np.ndarray) -> np.ndarray:  # NCHW in and out: onnx2tf's model is NHWC (the transposes are timed too)
        it.set_tensor(di["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nhwc else x, dtype=np.float32))
        it.invoke()
        y = it.get_tensor(do["index"])
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2) if nhwc and y.ndim == 4 else y)

    return fn, {"version": version("ai-edge-litert"), "converter": f"onnx2tf {_converter_version(PEERS['tflite'])}",
                "threads": threads, "delegate": "XNNPACK (default)", "layout": "NHWC" if nhwc else "NCHW"}


def parse_peers(text: str | list[str]) -> list[str]:
    """Comma-separated peer names (``all``: every peer), each checked with a did-you-mean hint."""
    from edge.errors import look_up_option

    items = text.split(",") if isinstance(text, str) else list(text)
    items = [i.strip() for i in items if i.strip()]
    if items == ["all"]:
        return list(PEERS)
    out = [look_up_option(i, PEERS, "peer engine") for i in items]
    if not out:
        raise EdgeError(f"no peer engine given; choose from {', '.join(PEERS)} or all")
    return list(dict.fromkeys(out))
