"""Peak memory and time of segmenting one HRF-sized photo (2336x3504): edge-run with 544x544 tiles vs whole-image
PyTorch.

Each case runs in its own process and reports its own peak resident set size (``VmHWM`` of /proc/self/status,
the high-water mark of its address space after exec), cross-checked by polling its RSS with psutil from here.
(``ru_maxrss`` from ``wait4`` is not used: Linux folds the parent's high-water mark into it at exec.) The edge
cases run ``edge-run`` as on the device: torch, onnx and the host packages are blocked from import, and TVM
loads its runtime library only. Goal: the tiled runtime stays below 600 MB.

    .venv/bin/python -m benchmarks.memory_tiled [--package DIR] [--weights M2UNetHRF.pth]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import EdgeError, InputError, look_up_option, run_parsed

ROOT = Path(__file__).resolve().parents[1]
HRF_WEIGHTS = ROOT.parent / "shared" / "models" / "m2unet" / "M2UNetHRF.pth"
GOAL_MB = 600

VMHWM = (
    "def vmhwm_kb():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
)

BLOCK = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'onnx', 'onnxsim', 'models', 'export', 'benchmarks'):\n"
    "            raise ImportError(name + ' is blocked (device runtime)')\n"
    "sys.meta_path.insert(0, _Block())\n"
)

TORCH_CASE = VMHWM + (
    "import json, sys, time\n"
    "import cv2, numpy as np, torch\n"
    "from edge.package import Preprocess\n"
    "from models import create_model\n"
    "threads, weights, image = int(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
    "torch.set_num_threads(threads)\n"
    "model = create_model('m2unet', weights=weights)\n"
    "t0 = time.perf_counter()\n"
    "img = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)\n"
    "x = torch.from_numpy(Preprocess.from_spec(model.spec).image(img))\n"
    "with torch.inference_mode():\n"
    "    prob = torch.sigmoid(model(x))[0, 0].numpy()\n"
    "mask = prob > 0.5\n"
    "print(json.dumps({'seconds': time.perf_counter() - t0, 'vmhwm_kb': vmhwm_kb()}))\n"
)


@dataclass
class MemoryCase:
    case: str
    peak_rss_mb: float
    peak_rss_polled_mb: float
    seconds_per_image: float
    wall_s: float
    detail: str


def run_case(name: str, cmd: list[str], env: dict[str, str], detail: str) -> tuple[MemoryCase, str]:
    """Run ``cmd``; its stdout's last JSON line must hold ``seconds`` (time per image) and ``vmhwm_kb``."""
    import psutil

    t0 = time.perf_counter()
    polled = 0
    # Output goes to files, not pipes: nobody reads a pipe while we poll, and a full pipe would block the child.
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, text=True, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                polled = max(polled, ps.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.01)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1][:300]
        raise EdgeError(f"case {name} failed (exit {proc.returncode}): {last}")
    report = json.loads(out.strip().splitlines()[-1])
    peak = report["vmhwm_kb"] * 1024
    return MemoryCase(name, peak / 2**20, polled / 2**20, report["seconds"], time.perf_counter() - t0, detail), err


def edge_command(image: Path, package: Path, backend: str, out: Path, threads: int) -> list[str]:
    code = (BLOCK + VMHWM + "import json, sys\nfrom edge.cli import main\n"
            f"code = main([{str(image)!r}, '--package', {str(package)!r}, '--backend', {backend!r}, "
            f"'-o', {str(out)!r}, '--threads', '{threads}', '--json', {str(out / 'run.json')!r}])\n"
            f"s = json.load(open({str(out / 'run.json')!r}))\n"
            "print(json.dumps({'seconds': s['per_image_s'], 'backend': s['backend']['name'], "
            "'vmhwm_kb': vmhwm_kb()}))\n"
            "sys.exit(code)\n")
    return [sys.executable, "-c", code]


def make_package(weights: Path, out: Path, tile: tuple[int, int] = (544, 544)) -> Path:
    """An m2unet package for this machine: torch -> ONNX (opset 17) -> TVM (host CPU), in the package format.

    Built here rather than with edge-export so the benchmark does not depend on the exporter's checks (its
    torch-vs-ONNX parity gate is tighter than the HRF checkpoint's logit range allows today).
    """
    import warnings

    import onnx
    import torch
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edge.package import Preprocess, build_meta, host_arch, sha256_file, versions, write_package
    from models import create_model

    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    model = create_model("m2unet", weights=weights)
    shape = [1, 3, *tile]
    onnx_path, lib_path = work / "model.onnx", work / "model.so"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.rand(*shape), str(onnx_path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={"input": shape})
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    tvm.compile(mod, target=target).export_library(str(lib_path))
    spec = model.spec
    meta = build_meta(
        model={**spec.to_meta(), "untrained": False, "weights": {"file": Path(weights).name,
                                                                 "sha256": sha256_file(weights)}},
        input_name="input", shape=shape, output_name="logits", preprocess=Preprocess.from_spec(spec),
        threshold=spec.threshold, overlap=spec.overlap,
        target={"preset": "host", "tvm_target": {"kind": "llvm"}, "arch": host_arch(), "device": "cpu",
                "library": "model.so"},
        versions=versions(("tvm", "torch")))
    write_package(out, meta, {"model.onnx": onnx_path, "model.so": lib_path})
    return out


CASES = ("edge-tvm", "edge-onnxruntime", "torch-whole")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_tiled", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(HRF_WEIGHTS), help="M2U-Net checkpoint (default: the HRF one)")
    p.add_argument("--package", default=None, help="an m2unet 544x544 package for this machine; built there when "
                                                   "missing (default: built in a temporary folder)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--cases", default=",".join(CASES), help=f"comma separated, of {', '.join(CASES)}")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), _run, argv)


def _run(a: argparse.Namespace) -> int:
    cases = [look_up_option(c.strip(), CASES, "case") for c in a.cases.split(",") if c.strip()]
    weights = Path(a.weights)
    if not weights.is_file():
        raise InputError(f"no checkpoint at {weights}; pass --weights")

    from benchmarks.overlap import fundus_image
    from edge.imageio import write_image

    with tempfile.TemporaryDirectory(prefix="memory-tiled-") as tmpd:
        tmp = Path(tmpd)
        image = tmp / "fundus.png"
        write_image(image, fundus_image())
        package = Path(a.package) if a.package else tmp / "pkg"
        if not (package / "meta.json").is_file():
            t0 = time.perf_counter()
            make_package(weights, package)
            print(f"built {package} in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {k: v for k, v in os.environ.items() if k not in ("TVM_USE_RUNTIME_LIB", "VESSEL_EDGE_PACKAGE")}
        env["PYTHONPATH"] = str(ROOT)
        results = []
        for case in cases:
            if case.startswith("edge-"):
                backend = case[len("edge-"):]
                cmd = edge_command(image, package, backend, tmp / case, a.threads)
                detail = f"edge-run --backend {backend}, 544x544 tiles, image read + FOV + tiles + PNG writes"
            else:  # torch-whole
                cmd = [sys.executable, "-c", TORCH_CASE, str(a.threads), str(weights), str(image)]
                detail = "PyTorch 2336x3504 in one pass (inference_mode), image read + sigmoid + threshold"
            r, _ = run_case(case, cmd, env, detail)
            results.append(r)
            print(f"{r.case:<17} peak RSS {r.peak_rss_mb:7.0f} MB (polled {r.peak_rss_polled_mb:5.0f})  "
                  f"{r.seconds_per_image:6.2f} s per image  [{r.detail}]", flush=True)
    print(f"goal: tiled runtime below {GOAL_MB} MB; threads {a.threads}")
    if a.json:
        from edge.imageio import write_atomic

        write_atomic(a.json, json.dumps([asdict(r) for r in results], indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
