"""The arm64 path end to end: edge-export for arm64 on this host, edge-run inside the emulated RK3399 userland on
a real fundus photograph, the same probability map as the x86_64 package gives on this host."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.cross, pytest.mark.slow]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, drive_weights, cross_cxx, retina_rgb) -> Path:
    d = tmp_path_factory.mktemp("arm64-e2e")
    for target in ("arm64", "x86_64"):
        r = subprocess.run([BIN / "edge-export", "m2unet", "--target", target, "--weights", drive_weights,
                            "--out", d / f"pkg-{target}"], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"edge-export --target {target} failed:\n{r.stderr[-3000:]}"
    assert cv2.imwrite(str(d / "retina.png"), retina_rgb[:, :, ::-1])
    return d


def test_edge_run_in_userland_equals_host_run(userland, workdir):
    d = workdir
    host = subprocess.run([BIN / "edge-run", d / "retina.png", "--package", d / "pkg-x86_64", "-o", d / "host",
                           "--float", "--json", d / "host.json"], capture_output=True, text=True, timeout=600)
    assert host.returncode == 0, host.stderr[-3000:]
    # 9 tiles of 544x544 under QEMU: about 2 minutes on two cores
    userland.run("edge-run", d / "retina.png", "--package", d / "pkg-arm64", "-o", d / "arm", "--float",
                 "--json", d / "arm.json", binds=[d], timeout=1200)

    arm = json.loads((d / "arm.json").read_text())
    assert arm["machine"] == "aarch64"
    assert arm["package"]["arch"] == "aarch64"
    assert arm["backend"]["name"] == "tvm" and arm["backend"]["fallback"] is None
    assert arm["ok"] == 1 and arm["failed"] == 0
    assert json.loads((d / "host.json").read_text())["machine"] == "x86_64"

    a = cv2.imread(str(d / "arm" / "retina_prob.tif"), cv2.IMREAD_UNCHANGED)
    h = cv2.imread(str(d / "host" / "retina_prob.tif"), cv2.IMREAD_UNCHANGED)
    assert a is not None and h is not None
    assert a.dtype == h.dtype == np.float32
    assert a.shape == h.shape == (1411, 1411)
    assert float(a.max()) > 0.5  # vessels were found, not an empty map
    assert float(np.max(np.abs(a - h))) <= 1e-4


def test_int8_package_for_arm64_runs_in_userland_on_onnxruntime_like_on_this_host(userland, tmp_path, retina_rgb):
    """`--quantize int8 --target arm64` needs no cross compiler (ONNX Runtime runs it); the emulated board's
    ONNX Runtime (NEON int8 kernels) gives the masks this host's (x86 int8 kernels) gives."""
    d = tmp_path
    r = subprocess.run([BIN / "edge-export", "m2unet", "--target", "arm64", "--quantize", "int8", "--out",
                        d / "pkg"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((d / "pkg" / "meta.json").read_text())["target"]["arch"] == "aarch64"
    assert cv2.imwrite(str(d / "retina.png"), retina_rgb[::2, ::2, ::-1])
    host = subprocess.run([BIN / "edge-run", d / "retina.png", "--package", d / "pkg", "-o", d / "host", "--float"],
                          capture_output=True, text=True, timeout=600)
    assert host.returncode == 0, host.stderr[-3000:]
    userland.run("edge-run", d / "retina.png", "--package", d / "pkg", "-o", d / "arm", "--float", "--json",
                 d / "arm.json", binds=[d], timeout=1200)
    arm = json.loads((d / "arm.json").read_text())
    assert arm["machine"] == "aarch64" and arm["backend"]["name"] == "onnxruntime" and arm["ok"] == 1
    a = cv2.imread(str(d / "arm" / "retina_prob.tif"), cv2.IMREAD_UNCHANGED)
    h = cv2.imread(str(d / "host" / "retina_prob.tif"), cv2.IMREAD_UNCHANGED)
    assert a.shape == h.shape and float(a.max()) > 0.5
    ma, mh = a > 0.5, h > 0.5
    assert 2 * (ma & mh).sum() / (ma.sum() + mh.sum()) >= 0.995, float(np.abs(a - h).max())
