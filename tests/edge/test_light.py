"""The device runtime works without torch, onnx, onnxsim, OpenCV and the host-side packages (models, export,
benchmarks): they are blocked in a subprocess by a meta-path finder installed from sitecustomize."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_fixtures import synthetic_fundus

ROOT = Path(__file__).resolve().parents[2]
EDGE_RUN = Path(sys.executable).with_name("edge-run")
BLOCKED = ("torch", "onnx", "onnxsim", "cv2", "scipy", "models", "export", "benchmarks")

SITECUSTOMIZE = textwrap.dedent(f"""
    import sys

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"{{name}} is blocked: the device runtime must not import it")
            return None

    sys.meta_path.insert(0, _Block())
""")


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("block")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("VESSEL_EDGE_PACKAGE", "TVM_USE_RUNTIME_LIB")}
    env["PYTHONPATH"] = os.pathsep.join([str(d), str(ROOT)])
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def test_the_blocker_blocks(blocked_env, tmp_path):
    r = run([sys.executable, "-c", "import torch"], blocked_env, tmp_path)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_import_and_help_without_torch(blocked_env, tmp_path):
    code = ("import sys, edge, edge.cli, edge.segment, edge.backends, edge.imageio, edge.fov, edge.tiling, "
            "edge.metrics, edge.package\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnx', 'onnxsim', 'tvm', 'onnxruntime', 'models', 'export', 'benchmarks'))\n"
            "assert not heavy, heavy\n")
    r = run([sys.executable, "-c", code], blocked_env, tmp_path)
    assert r.returncode == 0, r.stderr
    r = run([str(EDGE_RUN), "--help"], blocked_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: edge-run" in r.stdout and "--backend" in r.stdout


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_segmentation_without_torch(package, blocked_env, tmp_path, backend):
    from edge.imageio import write_image

    write_image(tmp_path / "f.png", synthetic_fundus())
    r = run([str(EDGE_RUN), "f.png", "--package", str(package), "--backend", backend, "-o", "out",
             "--json", "s.json"], blocked_env, tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["backend"]["name"] == backend and s["ok"] == 1
    assert (tmp_path / "out" / "f_mask.png").is_file()
