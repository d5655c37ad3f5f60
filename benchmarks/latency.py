"""Latency: warm-up, then single-inference samples until N runs or T seconds; percentiles; the backends timed.

Each sample is one inference (one tile, or one full image tiled through :func:`edge.tiling.
sliding_window_inference`), never the mean of a batch. Backends: PyTorch eager (``torch.inference_mode``,
threads set), ONNX Runtime and TVM through :mod:`edge.backends` (the device runtime's own code), and the GPU
baselines PyTorch CUDA, ONNX Runtime's CUDA provider and a TVM ``cuda`` package. OpenVINO (CPU plugin, the
package's ``model.onnx``) is a further CPU peer when the ``openvino`` package is installed. GPU samples include the
copy of the input to the device and of the output back, and synchronise the device before the clock stops.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError, look_up_option

PEER_BACKENDS = ("ncnn", "mnn", "tflite")  # benchmarks.peers: converted from the package's model.onnx
CPU_BACKENDS = ("torch", "onnxruntime", "tvm", "openvino", *PEER_BACKENDS)
# TVM's default lowering of the same graph (no hand-written kernels, export.schedules): only when asked for, slow
EXTRA_CPU_BACKENDS = ("tvm-default",)
CUDA_BACKENDS = ("torch-cuda", "onnxruntime-cuda", "tvm-cuda")
BACKENDS = CPU_BACKENDS + EXTRA_CPU_BACKENDS + CUDA_BACKENDS
OPTIONAL_BACKENDS = ("openvino", *PEER_BACKENDS)  # in the default list only when installed (see default_backends)
LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tvm": "TVM", "tvm-default": "TVM default lowering",
          "openvino": "OpenVINO",
          "ncnn": "ncnn", "mnn": "MNN", "tflite": "LiteRT XNNPACK",
          "torch-cuda": "PyTorch CUDA",
          "onnxruntime-cuda": "ONNX Runtime CUDA", "tvm-cuda": "TVM CUDA",
          "tvm-rpc": "TVM RPC"}

# Full-image sizes (H, W) of the paper's datasets (seeds/002, Tables 2-4).
IMAGES: dict[str, tuple[int, int]] = {"drive": (544, 544), "chase": (960, 960), "hrf": (2336, 3504)}
NO_CUDA = "no CUDA device"
OPENVINO_MISSING = ("OpenVINO is not installed; install it with `pip install openvino` "
                    "(or `pip install 'vessel-edge[bench]'`)")


def missing(backend: str) -> str | None:
    """Why an optional CPU backend cannot be imported here (None: it can)."""
    if backend == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return OPENVINO_MISSING
    if backend in PEER_BACKENDS:
        from benchmarks.peers import missing as peer_missing

        return peer_missing(backend)
    return None


def default_backends(announce: Callable[[str], None] | None = None) -> list[str]:
    """The CPU backends; an optional one that is not installed is left out and ``announce``d."""
    out = []
    for b in CPU_BACKENDS:
        reason = missing(b) if b in OPTIONAL_BACKENDS else None
        if reason is None:
            out.append(b)
        elif announce is not None:
            announce(f"note: backend {b} skipped: {reason}")
    return out


def parse_backends(text: str | list[str]) -> list[str]:
    """Comma-separated backend names, each checked with a did-you-mean hint."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [look_up_option(b.strip(), BACKENDS, "backend") for b in items if b.strip()]
    if not out:
        raise EdgeError(f"no backend given; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of single-inference samples, milliseconds. ``std_ms`` is the sample standard deviation
    (n - 1); percentiles interpolate linearly between order statistics (numpy's default)."""

    n_samples: int
    warmup_runs: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    total_s: float

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray, warmup_runs: int = 0) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        p10, p50, p90, p99 = np.percentile(a, [10, 50, 90, 99])
        return cls(n_samples=int(a.size), warmup_runs=int(warmup_runs), min_ms=float(a.min()),
                   mean_ms=float(a.mean()), std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   p10_ms=float(p10), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   max_ms=float(a.max()),
                   total_s=float(a.sum() / 1e3))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(fn: Callable[[], Any], runs: int, seconds: float, warmup: int = 0,
            clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """``warmup`` untimed calls, then timed single calls until ``runs`` samples or ``seconds`` of sampling
    (whichever comes first; always at least one sample). Returns milliseconds."""
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    deadline = clock() + seconds
    while len(samples) < max(1, runs):
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        if t1 >= deadline:
            break
    return samples


def collect_interleaved(fns: dict[str, Callable[[], Any]], runs: int, seconds: float, warmup: int = 0,
                        clock: Callable[[], float] = time.perf_counter,
                        pause_s: float = 0.0, budget_ms: float | None = None,
                        min_samples: int = 3) -> dict[str, list[float]]:
    """Like :func:`collect` for several backends in one process: each round times every backend once, the
    order rotated round by round, so drifting machine load hits all of them alike. Rounds stop at ``runs`` or
    after ``seconds`` (a started round is finished, so all get the same number of samples). ``pause_s`` of
    untimed sleep before each sample lets the previous runtime's spinning worker threads park. With
    ``budget_ms``, a backend whose median sample exceeds it sits out the later rounds once it has ``min_samples``
    samples (so TVM's unscheduled default lowering does not hold the others' run for an hour)."""
    names = list(fns)
    for _ in range(max(0, warmup)):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    deadline = clock() + seconds
    r = 0
    while r < max(1, runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            if budget_ms is not None and len(out[n]) >= min_samples and np.median(out[n]) > budget_ms:
                continue
            if pause_s > 0:
                time.sleep(pause_s)
            t0 = clock()
            fns[n]()
            out[n].append((clock() - t0) * 1e3)
        r += 1
        if clock() >= deadline:
            break
    return out


def cuda_device_present(proc_root: str | Path = "/proc/driver/nvidia/gpus", dev: str | Path = "/dev/nvidia0") -> bool:
    """Whether the NVIDIA driver sees a GPU, without importing any framework."""
    p = Path(proc_root)
    return (p.is_dir() and any(p.iterdir())) or Path(dev).exists()


def cuda_unavailable(backend: str) -> str | None:
    """None when ``backend`` can run on a CUDA GPU here, else the reason (starting with 'no CUDA device'
    when the machine has no GPU at all)."""
    if not cuda_device_present():
        return NO_CUDA
    try:
        if backend == "torch-cuda":
            import torch

            if not torch.cuda.is_available():
                return f"{NO_CUDA} visible to PyTorch {torch.__version__}" + (
                    " (a CPU-only build)" if torch.version.cuda is None else "")
        elif backend == "onnxruntime-cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        elif backend == "tvm-cuda":
            import tvm

            if not tvm.runtime.enabled("cuda"):
                return "this TVM build has no CUDA runtime"
            if not tvm.cuda(0).exist:
                return f"{NO_CUDA} visible to TVM"
    except ImportError as exc:
        return f"{exc.name} is not installed"
    return None


def cuda_arch() -> str | None:
    """``sm_XY`` of GPU 0 (for compiling the TVM cuda package), or None."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception as exc:  # reporting aid only; the export then uses its default arch and says so
        print(f"note: could not read the GPU's compute capability ({exc})", file=sys.stderr)
    return None


@dataclass
class Runner:
    """One backend ready to time: ``runner(x)`` runs one (1, C, H, W) float32 input to numpy logits and
    synchronises the device."""

    backend: str
    device: str
    threads: int | None
    fn: Callable[[np.ndarray], np.ndarray]
    sync: Callable[[], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(x)
        if self.sync is not None:
            self.sync()
        return out


def _torch_runner(backend: str, model: str | None, weights: str | None, threads: int) -> Runner:
    if model is None:
        raise EdgeError("no PyTorch model: an ONNX file or package was given without a registered model name")
    import torch

    from models import create_model

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process (interleaved runs create two torch runners)
        pass
    net = create_model(model, weights=weights)
    cuda = backend == "torch-cuda"
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    net = net.to(dev)

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x).to(dev)).cpu().numpy()

    info = {"version": torch.__version__, "weights": Path(weights).name if weights else "random (untrained)",
            "intra_op_threads": torch.get_num_threads()}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
    return Runner(backend, "cuda" if cuda else "cpu", threads, fn, torch.cuda.synchronize if cuda else None, info)


def _ort_cuda_runner(package: str, threads: int) -> Runner:
    import onnxruntime as ort

    from edge.package import load_package

    pkg = load_package(package)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(pkg.onnx), sess_options=opts,
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise EdgeError("ONNX Runtime did not enable its CUDA provider for this graph")
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def fn(x: np.ndarray) -> np.ndarray:  # numpy in and out: includes both copies, returns after the GPU is done
        return sess.run([out], {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return Runner("onnxruntime-cuda", "cuda", threads, fn, None,
                  {"version": ort.__version__, "providers": sess.get_providers()})


def _openvino_runner(package: str, threads: int) -> Runner:
    """The package's model.onnx compiled by OpenVINO's CPU plugin for latency, ``threads`` inference threads."""
    reason = missing("openvino")
    if reason:
        raise EdgeError(reason)
    import openvino as ov

    from edge.package import load_package

    pkg = load_package(package)
    if not pkg.onnx.is_file():
        raise EdgeError(f"package {pkg.path} has no {pkg.onnx.name}; re-export it")
    core = ov.Core()
    # f32 explicitly: on CPUs with AVX512-BF16 or AMX the CPU plugin otherwise computes in bf16 (diffs ~0.2 on
    # logits of ~20), which is neither parity with the other backends nor the same work.
    compiled = core.compile_model(str(pkg.onnx), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": int(threads),
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def fn(x: np.ndarray) -> np.ndarray:  # outputs are copied out of the request (share_outputs=False)
        return request.infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True)[0]

    info = {"version": ov.__version__, "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    return Runner("openvino", "cpu", threads, fn, None, info)


def _peer_runner(backend: str, package: str | None, threads: int) -> Runner:
    """ncnn, MNN or LiteRT XNNPACK running the package's model.onnx, converted at its input shape (benchmarks.peers)."""
    from benchmarks.peers import convert, runner
    from edge.package import load_package

    if package is None:
        raise EdgeError(f"{backend} needs a package with model.onnx")
    pkg = load_package(package)
    fn, info = runner(backend, convert(backend, pkg.onnx, list(pkg.input_shape)), threads)
    return Runner(backend, "cpu", threads, fn, None, info)


def create_runner(backend: str, *, model: str | None = None, weights: str | None = None,
                  package: str | None = None, cuda_package: str | None = None, threads: int | None = None,
                  pinned: bool = False, default_library: str | None = None) -> Runner:
    """Load ``backend`` for timing. ``package``: a CPU package for this host (ONNX Runtime, OpenVINO, TVM);
    ``cuda_package``: a TVM ``cuda`` package (tvm-cuda); ``default_library``: the package's graph built with TVM's
    default lowering (tvm-default, :func:`benchmarks.packages.ensure_default_library`). Raises
    :class:`EdgeError` when it cannot run."""
    from edge.backends import available_cores

    backend = look_up_option(backend, BACKENDS, "backend")
    threads = threads or available_cores()
    if backend in CUDA_BACKENDS:
        reason = cuda_unavailable(backend)
        if reason:
            raise EdgeError(f"{backend}: {reason}")
    if backend in ("torch", "torch-cuda"):
        return _torch_runner(backend, model, weights, threads)
    if backend == "onnxruntime-cuda":
        if package is None:
            raise EdgeError("onnxruntime-cuda needs a package with model.onnx")
        return _ort_cuda_runner(package, threads)
    if backend == "openvino":
        if package is None:
            raise EdgeError("openvino needs a package with model.onnx")
        return _openvino_runner(package, threads)
    if backend in PEER_BACKENDS:
        return _peer_runner(backend, package, threads)
    from edge.backends import ONNXRuntimeBackend, TVMBackend
    from edge.package import load_package

    path = cuda_package if backend == "tvm-cuda" else package
    if path is None:
        raise EdgeError(f"{backend} needs a {'cuda ' if backend == 'tvm-cuda' else ''}package")
    pkg = load_package(path)
    if backend == "tvm-default":
        if default_library is None:
            raise EdgeError("tvm-default needs the package's default-lowering library (edge-bench builds it)")
        # the same package run with the other library: TVMBackend's checks and thread setup apply unchanged
        pkg = pkg.with_library(Path(default_library))
    if backend == "onnxruntime":
        import onnxruntime as ort

        b = ONNXRuntimeBackend(pkg, threads, pinned)
        return Runner(backend, b.device, threads, b, None, {"version": ort.__version__, "intra_op_threads": threads})
    b = TVMBackend(pkg, threads, pinned)
    import tvm

    sync = tvm.cuda(0).sync if backend == "tvm-cuda" else None
    info = {"version": tvm.__version__, "runtime_only": os.environ.get("TVM_USE_RUNTIME_LIB") == "1",
            "num_threads_env": os.environ.get("TVM_NUM_THREADS"),
            "target": pkg.info.target.tvm_target,
            "lowering": "TVM default (no hand-written kernels)" if backend == "tvm-default" else "package library",
            "library": str(pkg.library)}
    return Runner(backend, b.device, threads, b, sync, info)


def tiled(runner: Callable[[np.ndarray], np.ndarray], image_chw: np.ndarray, tile: tuple[int, int], overlap: int,
          divisor: int, blend: str = "gaussian") -> Callable[[], np.ndarray]:
    """One full-image inference as the device runs it: :func:`edge.tiling.sliding_window_inference`."""
    from edge.tiling import sliding_window_inference

    def run() -> np.ndarray:
        return sliding_window_inference(image_chw, runner, tile, overlap, divisor, blend)

    return run
