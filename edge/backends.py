"""Inference backends over a package: the TVM Relax VM on ``model.so`` and ONNX Runtime on ``model.onnx``.

Each backend is a callable ``(1, C, th, tw) float32 -> (1, K, th, tw) float32 logits`` with ``name`` and
``threads``. ``tvm`` and ``onnxruntime`` are imported only inside the backend that needs them.

TVM notes: when tvm is not imported yet, the backend sets ``TVM_USE_RUNTIME_LIB=1`` (unless the caller set
it) so only ``libtvm_runtime`` is loaded, not the compiler with LLVM (about 100 MB less resident memory on
the device); ``TVM_NUM_THREADS`` is set before the first import because the TVM thread pool is sized once
(on x86 it otherwise takes half the cores); with an explicit core set (``--cores``) TVM is told not to pin
its workers (``TVM_BIND_THREADS=0``) so they stay inside the process's affinity mask.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.errors import EdgeError, PackageError, look_up_option
from edge.package import Package, elf_arch, host_arch

CHOICES = ("auto", "tvm", "onnxruntime")


class Backend(Protocol):
    name: str
    threads: int
    device: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def available_cores() -> int:
    """Cores this process may run on (its affinity set), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_cores(cores: list[int]) -> None:
    """Pin this process (and the threads it creates later) to ``cores``; call before creating a backend."""
    if not hasattr(os, "sched_setaffinity"):
        raise EdgeError("--cores needs Linux (sched_setaffinity); leave it out on this system")
    try:
        os.sched_setaffinity(0, cores)
    except (OSError, ValueError) as exc:
        raise EdgeError(f"cannot run on cores {','.join(map(str, cores))} ({exc}); this machine has cores "
                        f"0-{(os.cpu_count() or 1) - 1}") from exc


def installed_tvm_version() -> str | None:
    """The installed TVM version without importing tvm (None when TVM is not installed)."""
    from importlib import metadata

    for dist in ("apache-tvm", "tvm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "tvm" in sys.modules:
        return getattr(sys.modules["tvm"], "__version__", None)
    return None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_tvm(pkg: Package) -> None:
    """Raise :class:`PackageError` saying why the package's TVM library cannot run here."""
    if pkg.library is None and pkg.meta.get("quantization"):
        raise PackageError(f"package {pkg.path} is {pkg.meta['quantization'].get('dtype', 'quantized')} for ONNX "
                           "Runtime and has no TVM library; use --backend onnxruntime or export fp32 for TVM")
    if pkg.library is None:
        raise PackageError(f"package {pkg.path} has no compiled TVM library (ONNX only); use --backend "
                           "onnxruntime or re-export it with a TVM target")
    if pkg.arch != host_arch():
        raise PackageError(f"package library was built for {pkg.arch}, this machine is {host_arch()}; "
                           f"use --backend onnxruntime or export for {host_arch()}")
    have = installed_tvm_version()
    if have is None:
        raise PackageError("TVM is not installed; install it with `pip install 'vessel-edge[tvm]'` "
                           "or use --backend onnxruntime")
    built = pkg.info.target.tvm_version
    if built and _major_minor(built) != _major_minor(have):
        raise PackageError(f"package library was built with TVM {built}, this machine has TVM {have}; "
                           f"install TVM {'.'.join(_major_minor(built))} or re-export the package with TVM {have}")
    if not pkg.library.is_file():
        raise PackageError(f"package {pkg.path} is missing its library {pkg.library.name}; re-export it")
    real = elf_arch(pkg.library)
    if real is not None and real != host_arch():  # meta.json says this machine, the file says otherwise
        raise PackageError(f"package library {pkg.library.name} is built for {real}, but meta.json says "
                           f"{pkg.arch}; the package is inconsistent: use --backend onnxruntime or re-export it")


class TVMBackend:
    """The package's compiled library run by the Relax virtual machine."""

    name = "tvm"

    def __init__(self, pkg: Package, threads: int, pinned: bool = False) -> None:
        check_tvm(pkg)
        self.threads = threads
        self.device = pkg.device_kind
        if "tvm" not in sys.modules:
            os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
            os.environ["TVM_NUM_THREADS"] = str(threads)
        if pinned:
            os.environ["TVM_BIND_THREADS"] = "0"
        import tvm
        from tvm.runtime.vm import VirtualMachine

        # Resizes the pool when it already exists (it can only shrink below its creation size).
        tvm.get_global_func("runtime.config_threadpool")(1, threads)
        self._tvm = tvm
        self._dev = tvm.cuda(0) if self.device == "cuda" else tvm.cpu(0)
        if self.device == "cuda" and not self._dev.exist:
            raise PackageError(f"package {pkg.path} was compiled for CUDA but no CUDA device is visible; "
                               "use --backend onnxruntime or export for a CPU target")
        try:
            lib = tvm.runtime.load_module(str(pkg.library))
            self._vm = VirtualMachine(lib, self._dev)
        except Exception as exc:  # TVM raises its own error types for unloadable libraries
            raise PackageError(f"TVM cannot load {pkg.library} ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[-1][:200]}); re-export the package") from exc
        self._main = self._vm["main"]
        self.input_shape = tuple(pkg.input_shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._main(self._tvm.runtime.tensor(x, self._dev))
        if not hasattr(out, "numpy"):  # a tuple of outputs: the first is the logits
            out = out[0]
        return out.numpy()


class ONNXRuntimeBackend:
    """The package's ``model.onnx`` run by ONNX Runtime (CPU, or CUDA for a CUDA package when available)."""

    name = "onnxruntime"

    def __init__(self, pkg: Package, threads: int, pinned: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise PackageError("ONNX Runtime is not installed; install it with "
                               "`pip install 'vessel-edge[onnxruntime]'` or use --backend tvm") from exc
        if not pkg.onnx.is_file():
            raise PackageError(f"package {pkg.path} has no {pkg.onnx.name}; re-export it")
        self.threads = threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.device = "cpu"
        self.note = None
        if pkg.device_kind == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
                self.device = "cuda"
            else:
                self.note = "the package targets CUDA but ONNX Runtime has no CUDA provider here: running on CPU"
        try:
            self._session = ort.InferenceSession(str(pkg.onnx), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (non-Python-hierarchy) exception types
            raise PackageError(f"ONNX Runtime cannot load {pkg.onnx} ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0][:200]}); re-export the package") from exc
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._session.run([self._output], {self._input: x})[0]


BACKENDS: dict[str, Callable[..., Any]] = {"tvm": TVMBackend, "onnxruntime": ONNXRuntimeBackend}


@dataclass
class Choice:
    """The backend in use, what was asked for, and why another one was used (None: no fallback)."""

    backend: Backend
    requested: str
    fallback: str | None = None


def create_backend(pkg: Package, name: str = "auto", threads: int | None = None,
                   pinned: bool = False, announce: Callable[[str], None] | None = None) -> Choice:
    """Create the backend ``name`` (``auto``: TVM when the package's library can run here, else ONNX Runtime).

    A fallback is announced through ``announce`` (default: a ``note:`` line on stderr) and returned in
    :attr:`Choice.fallback`; an explicit backend that cannot run raises :class:`PackageError`.
    """
    name = look_up_option(name, CHOICES, "backend")
    threads = threads or available_cores()
    if announce is None:
        def announce(msg: str) -> None:
            print(f"note: {msg}", file=sys.stderr)
    reasons = []
    if name == "auto":
        try:
            backend = TVMBackend(pkg, threads, pinned)
        except PackageError as exc:
            reasons.append(f"using onnxruntime instead of tvm: {str(exc).split('; ')[0]}")
            backend = ONNXRuntimeBackend(pkg, threads, pinned)
    else:
        backend = BACKENDS[name](pkg, threads, pinned)
    if getattr(backend, "note", None):
        reasons.append(backend.note)
    for reason in reasons:
        announce(reason)
    return Choice(backend, name, "; ".join(reasons) or None)
