"""The emulated RK3399 userland: provisioned by the device image's install script, aarch64, no torch/onnx, a
runtime-only TVM that still runs cross-compiled modules, and a footprint that stays small."""
from __future__ import annotations

import json
import struct
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arm64_userland import A72_TARGET, SCRIPT, install_sha256

pytestmark = [pytest.mark.cross, pytest.mark.slow]

EM_AARCH64 = 183


def provenance(userland) -> dict:
    return json.loads(userland.run("cat", "/opt/vessel-edge/provenance.json").stdout)


def test_provisioned_by_the_device_image_script(userland):
    p = provenance(userland)
    assert p["install_sha256"] == install_sha256(), (
        "the userland's stamp differs from docker/install/device_runtime.sh + versions.env: "
        "the build should have re-provisioned it")
    assert p["machine"] == "aarch64"
    assert any(pkg.startswith("apache-tvm==0.27.0.post1") for pkg in p["packages"])


def test_machine_is_aarch64_and_emulation_is_labelled(userland):
    out = userland.run("python3", "-c", "import os, platform; print(platform.machine(), "
                                        "os.environ.get('VESSEL_EDGE_EMULATED'))").stdout.split()
    assert out == ["aarch64", "qemu-aarch64"]


def test_torch_and_onnx_are_not_importable_inside(userland):
    code = ("import importlib.util as u; "
            "print([m for m in ('torch', 'onnx', 'onnxsim') if u.find_spec(m) is not None])")
    assert userland.run("python3", "-c", code).stdout.strip() == "[]"


def test_tvm_is_runtime_only_and_its_compiler_gone(userland):
    code = ("import os, tvm; from tvm.runtime.vm import VirtualMachine; import tvm.rpc; "
            "print(tvm.base._RUNTIME_ONLY, sorted(tvm.base._LOADED_LIBS), "
            "os.path.exists(os.path.join(os.path.dirname(tvm.__file__), 'lib', 'libtvm_compiler.so')))")
    assert userland.run("python3", "-c", code).stdout.split() == ["True", "['tvm_runtime']", "False"]


def test_onnxruntime_imports_inside(userland):
    # QEMU passes the host's x86 /proc/cpuinfo through and ONNX Runtime's import then segfaults; the
    # userland binds an A72 cpuinfo over it
    code = "import onnxruntime as o; print(o.get_available_providers())"
    assert "CPUExecutionProvider" in userland.run("python3", "-c", code).stdout


def test_footprint(userland):
    """Slimming removed the TVM compiler; with ONNX Runtime (the fallback backend) the runtime is < 200 MB, no
    OpenCV in it (Pillow reads and writes the images)."""
    p = provenance(userland)
    before, after = p["footprint_before_slim"]["venv_bytes"], p["footprint"]["venv_bytes"]
    assert p["tvm_slim"] is True
    assert before - after > 250e6  # libtvm_compiler.so alone is ~240 MB
    largest = p["footprint"]["largest"]
    ort_part = sum(largest.get(k, 0) for k in ("onnxruntime", "google", "flatbuffers"))
    assert ort_part > 50e6  # measured: ONNX Runtime is the biggest single piece
    assert "cv2" not in largest and "opencv_python_headless.libs" not in largest
    assert not any(pkg.lower().startswith("opencv") for pkg in p["packages"]), p["packages"]
    assert after < 200e6, f"device runtime: {after / 1e6:.1f} MB (189.6 MB when measured; goal < 200 MB)"


def test_cross_compiled_module_runs_inside_and_matches_pytorch(userland, cross_cxx, tmp_path):
    """m2unet at 64x64: tvm.compile for the A72 on this host, linked with the cross g++, run by the Relax VM in
    the userland's runtime-only TVM, equal to PyTorch within 1e-4."""
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("tvm")
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    from export.onnx_stage import INPUT_NAME, torch_to_onnx
    from models import create_model

    torch.manual_seed(0)
    net = create_model("m2unet")
    shape = (1, 3, 64, 64)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    m, _ = torch_to_onnx(net, shape, tmp_path / "m2unet.onnx")
    mod = from_onnx(m, shape_dict={INPUT_NAME: list(shape)}, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target(A72_TARGET))
    lib = tmp_path / "m2unet_a72.so"
    ex.export_library(str(lib), fcompile=cc.cross_compiler(cross_cxx))
    assert struct.unpack("<H", lib.read_bytes()[18:20])[0] == EM_AARCH64

    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(textwrap.dedent("""\
        import sys
        import numpy as np
        import tvm
        from tvm.runtime.vm import VirtualMachine  # what relax.VirtualMachine is
        d = sys.argv[1]
        vm = VirtualMachine(tvm.runtime.load_module(d + "/m2unet_a72.so"), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(np.load(d + "/x.npy")))
        np.save(d + "/y.npy", (out if hasattr(out, "numpy") else out[0]).numpy())
        print(tvm.base._RUNTIME_ONLY)
        """))
    r = userland.run("python3", tmp_path / "run.py", tmp_path, binds=[tmp_path])
    assert r.stdout.strip() == "True"
    y = np.load(tmp_path / "y.npy")
    assert y.shape == ref.shape
    assert float(np.max(np.abs(y - ref))) <= 1e-4


def test_run_propagates_exit_status_and_binds_only_what_is_asked(userland, tmp_path):
    (tmp_path / "f.txt").write_text("hello")
    r = userland.run("sh", "-c", f"cat {tmp_path}/f.txt; exit 7", binds=[tmp_path], check=False)
    assert (r.returncode, r.stdout) == (7, "hello")
    r = userland.run("test", "-e", str(tmp_path / "f.txt"), check=False)
    assert r.returncode == 1  # not bound: not visible inside


def test_status_reports_the_install_stamp(userland):
    # (the project line may read stale: sources can change while the session runs in a shared checkout)
    r = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert "binfmt:     qemu-aarch64 enabled" in r.stdout
    assert f"provision:  install_sha256 {install_sha256()} (current)" in r.stdout


def test_winograd_kernels_for_the_a72_run_inside_and_match_onnxruntime(userland, cross_cxx, tmp_path):
    """The hand-written Winograd kernels as the A72 gets them (NEON's 4 lanes, 32 registers: a register tile no
    x86 test builds): 3x3 convolutions (dilated 1 and 2), a 3x1 and a 1x3 at 32 channels, on rows that divide
    into no tile, lowered by export.tvm_stage.lower, cross-linked, run in the userland, equal to ONNX Runtime."""
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("tvm")
    import torch.nn as nn
    from tvm.support import cc

    from export.onnx_stage import ort_run, simplify, torch_to_onnx
    from export.tvm_stage import import_onnx, lower

    torch.manual_seed(0)
    c = 32
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c),
                        nn.ReLU(), nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(),
                        nn.Conv2d(c, c, (3, 1), padding=(1, 0)), nn.ReLU(), nn.Conv2d(c, c, (1, 3), padding=(0, 1)),
                        nn.ReLU(), nn.Conv2d(c, 1, 1)).eval()
    for p in net.parameters():
        p.data = torch.randn(p.shape) * 0.2
    shape = (1, 3, 19, 45)
    m, _ = torch_to_onnx(net, shape, tmp_path / "raw.onnx")
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    m = simplify(m, x)[0]
    mod, _, report = lower(import_onnx(m, m.graph.input[0].name, list(shape)), tvm.target.Target(A72_TARGET))
    wino = sorted((mt.kh, mt.kw) for mt in report.matches.values() if mt.kind == "winograd")
    assert wino == [(1, 3), (3, 1), (3, 3), (3, 3)], report.scheduled
    lib = tmp_path / "k_a72.so"
    tvm.compile(mod, target=tvm.target.Target(A72_TARGET)).export_library(str(lib),
                                                                          fcompile=cc.cross_compiler(cross_cxx))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(textwrap.dedent("""\
        import sys
        import numpy as np
        import tvm
        from tvm.runtime.vm import VirtualMachine
        d = sys.argv[1]
        vm = VirtualMachine(tvm.runtime.load_module(d + "/k_a72.so"), tvm.cpu())
        np.save(d + "/y.npy", vm["main"](tvm.runtime.tensor(np.load(d + "/x.npy"))).numpy())
        """))
    userland.run("python3", tmp_path / "run.py", tmp_path, binds=[tmp_path])
    assert float(np.abs(np.load(tmp_path / "y.npy") - ort_run(m, x)).max()) <= 1e-4
