"""Backend choice (TVM / ONNX Runtime), announced fallbacks, refusals that say why, numerical agreement."""
from __future__ import annotations

import numpy as np
import pytest

from edge_fixtures import TILE, tiny_model, variant
from edge.backends import available_cores, create_backend
from edge.errors import EdgeError, PackageError
from edge.package import host_arch, load_package


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, *TILE), dtype=np.float32)


@pytest.mark.parametrize("name", ["tvm", "onnxruntime"])
def test_backends_match_torch(package, x, name):
    import torch

    ref = tiny_model()(torch.from_numpy(x)).detach().numpy()
    choice = create_backend(load_package(package), name, threads=2)
    assert choice.backend.name == name and choice.fallback is None and choice.backend.threads == 2
    out = choice.backend(x)
    assert out.shape == (1, 1, *TILE) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_auto_uses_tvm_when_the_library_runs_here(package, capsys):
    choice = create_backend(load_package(package), "auto", threads=1)
    assert (choice.backend.name, choice.requested, choice.fallback) == ("tvm", "auto", None)
    assert "note:" not in capsys.readouterr().err


def test_auto_falls_back_to_onnxruntime_and_says_so(arm_package, capsys):
    choice = create_backend(load_package(arm_package), "auto", threads=1)
    assert choice.backend.name == "onnxruntime"
    msg = f"using onnxruntime instead of tvm: package library was built for aarch64, this machine is {host_arch()}"
    assert choice.fallback == msg
    assert f"note: {msg}" in capsys.readouterr().err


def test_explicit_tvm_for_another_arch_is_refused(arm_package):
    with pytest.raises(PackageError) as e:
        create_backend(load_package(arm_package), "tvm")
    assert str(e.value) == (f"package library was built for aarch64, this machine is {host_arch()}; "
                            f"use --backend onnxruntime or export for {host_arch()}")


def test_tvm_version_mismatch_names_both_versions(package, tmp_path):
    import tvm

    old = variant(package, tmp_path / "old", versions={"tvm": "0.20.0"})
    with pytest.raises(PackageError, match=rf"built with TVM 0\.20\.0, this machine has TVM {tvm.__version__}"):
        create_backend(load_package(old), "tvm")
    choice = create_backend(load_package(old), "auto")
    assert choice.backend.name == "onnxruntime" and "TVM 0.20.0" in choice.fallback


def test_onnx_only_package(package, tmp_path):
    onnx_only = variant(package, tmp_path / "onnx", drop=("model.so",), target={"library": None})
    choice = create_backend(load_package(onnx_only), "auto")
    assert choice.backend.name == "onnxruntime" and "no compiled TVM library" in choice.fallback
    with pytest.raises(PackageError, match="no compiled TVM library"):
        create_backend(load_package(onnx_only), "tvm")


def test_cuda_package_without_a_gpu(package, tmp_path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA device")
    cuda = variant(package, tmp_path / "cuda", target={"device": "cuda"})
    with pytest.raises(PackageError, match="compiled for CUDA but no CUDA device"):
        create_backend(load_package(cuda), "tvm")
    choice = create_backend(load_package(cuda), "auto")
    assert choice.backend.name == "onnxruntime" and choice.backend.device == "cpu"
    assert "no CUDA device" in choice.fallback and "no CUDA provider" in choice.fallback


def test_unknown_backend_suggests(package):
    with pytest.raises(EdgeError, match="unknown backend 'onnxrt'; did you mean 'onnxruntime'"):
        create_backend(load_package(package), "onnxrt")


def test_default_threads_are_the_affinity_set(package):
    assert create_backend(load_package(package), "onnxruntime").backend.threads == available_cores()
