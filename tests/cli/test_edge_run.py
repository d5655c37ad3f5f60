"""edge-run end to end on synthetic fundus photos with a test package: outputs, summaries, errors, exit codes."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_fixtures import build_package, synthetic_fundus, variant  # noqa: E402

from edge.cli import main  # noqa: E402
from edge.imageio import write_image  # noqa: E402
from edge.package import host_arch  # noqa: E402

EDGE_RUN = Path(sys.executable).with_name("edge-run")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture(scope="module")
def arm_pkg(pkg, tmp_path_factory) -> Path:
    return variant(pkg, tmp_path_factory.mktemp("pkg") / "arm", target={"arch": "aarch64", "preset": "arm64"})


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "a.png", synthetic_fundus(150, 200, 0))
    write_image(d / "b.jpg", synthetic_fundus(120, 130, 1))
    write_image(d / "c.tif", synthetic_fundus(70, 90, 2))
    return d


def outputs_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_folder_end_to_end(pkg, images, tmp_path, capsys, backend):
    out, js = tmp_path / "out", tmp_path / "run.json"
    code = main([str(images), "--package", str(pkg), "-o", str(out), "--backend", backend, "--threads", "1",
                 "--overlay", "--float", "--json", str(js)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert outputs_of(out) == sorted(f"{s}_{k}" for s in "abc"
                                     for k in ("prob.png", "mask.png", "prob.tif", "overlay.png"))
    assert "images: 3 ok, 0 failed" in stdout and f"backend: {backend}" in stdout
    assert f"machine {platform.machine()}" in stdout and "per image" in stdout
    s = json.loads(js.read_text())
    assert s["machine"] == platform.machine() and s["ok"] == 3 and s["failed"] == 0 and s["exit_code"] == 0
    assert s["backend"] == {"name": backend, "requested": backend, "fallback": None, "threads": 1, "cores": None,
                            "device": "cpu"}
    a = s["images"][0]
    assert Path(a["input"]).name == "a.png" and a["size"] == [150, 200] and a["tiles"] == 12
    assert all(Path(f).is_file() for f in a["outputs"].values())
    prob = cv2.imread(a["outputs"]["prob"], cv2.IMREAD_UNCHANGED)
    assert prob.shape == (150, 200) and prob.dtype == np.uint8
    assert prob[0, 0] == 0 and prob[75, 100] > 0  # outside / inside the field of view
    fprob = cv2.imread(a["outputs"]["prob_float"], cv2.IMREAD_UNCHANGED)
    assert fprob.dtype == np.float32
    np.testing.assert_array_equal(np.rint(fprob * 255).astype(np.uint8), prob)
    mask = cv2.imread(a["outputs"]["mask"], cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, fprob > 0.5)


def test_auto_fallback_is_announced_and_recorded(arm_pkg, images, tmp_path, capsys):
    js = tmp_path / "run.json"
    code = main([str(images / "a.png"), "--package", str(arm_pkg), "-o", str(tmp_path / "o"), "--json", str(js)])
    cap = capsys.readouterr()
    assert code == 0
    reason = f"using onnxruntime instead of tvm: package library was built for aarch64, this machine is {host_arch()}"
    assert f"note: {reason}" in cap.err
    assert f"fallback: {reason}" in cap.out and "backend: onnxruntime" in cap.out
    assert json.loads(js.read_text())["backend"]["fallback"] == reason


def test_explicit_tvm_for_another_arch_exits_3(arm_pkg, images, tmp_path, capsys):
    code = main([str(images / "a.png"), "--package", str(arm_pkg), "-o", str(tmp_path / "o"), "--backend", "tvm"])
    err = capsys.readouterr().err
    assert code == 3
    assert err == (f"error: package library was built for aarch64, this machine is {host_arch()}; use --backend "
                   f"onnxruntime or export for {host_arch()}\n")


def test_one_bad_image_in_a_batch(pkg, images, tmp_path, capsys):
    (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG header, then nothing
    out, js = tmp_path / "out", tmp_path / "run.json"
    code = main([str(images), "--package", str(pkg), "-o", str(out), "--json", str(js)])
    cap = capsys.readouterr()
    assert code == 4  # InputError's exit code
    assert f"error: {images / 'bad.png'}: {images / 'bad.png'} is a truncated or corrupt PNG file" in cap.err
    assert "images: 3 ok, 1 failed (bad.png)" in cap.out
    assert outputs_of(out) == sorted(f"{s}_{k}" for s in "abc" for k in ("prob.png", "mask.png"))
    s = json.loads(js.read_text())
    bad = [i for i in s["images"] if not i["ok"]]
    assert len(bad) == 1 and bad[0]["exit_code"] == 4 and bad[0]["outputs"] == {}


def test_a_failed_write_leaves_no_partial_outputs(pkg, images, tmp_path, monkeypatch, capsys):
    import edge.imageio as eio
    from edge.errors import InputError

    real = eio.write_atomic

    def fail_on_masks(path, data):
        if path.name.endswith("_mask.png"):
            raise InputError(f"cannot write {path} (No space left on device)")
        return real(path, data)

    monkeypatch.setattr(eio, "write_atomic", fail_on_masks)
    out = tmp_path / "out"
    code = main([str(images / "a.png"), "--package", str(pkg), "-o", str(out)])
    assert code == 4
    assert "No space left on device" in capsys.readouterr().err
    assert outputs_of(out) == []  # a_prob.png was written first, then removed


def test_truth_and_mask_give_metrics(pkg, tmp_path, capsys):
    img = synthetic_fundus(150, 200, 0)
    write_image(tmp_path / "a.png", img)
    fov = np.zeros((150, 200), np.uint8)
    fov[20:130, 30:170] = 255
    cv2.imwrite(str(tmp_path / "fov.png"), fov)
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    from PIL import Image

    Image.fromarray(fov).save(truth_dir / "a_manual.gif")  # GIF like DRIVE's, matched by stem
    js = tmp_path / "run.json"
    code = main([str(tmp_path / "a.png"), "--package", str(pkg), "-o", str(tmp_path / "out"), "--mask",
                 str(tmp_path / "fov.png"), "--truth", str(truth_dir), "--threshold", "0", "--overlay",
                 "--json", str(js)])
    out = capsys.readouterr().out
    assert code == 0
    # threshold 0: every FOV pixel is predicted vessel, and the truth is the whole FOV
    assert "metrics (inside the FOV, pooled over 1 images): dice 1.0000, sensitivity 1.0000, specificity n/a" in out
    m = json.loads(js.read_text())["images"][0]["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (110 * 140, 0, 0, 0)
    ov = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "a_overlay.png")), cv2.COLOR_BGR2RGB)
    assert tuple(ov[75, 100]) == (0, 255, 0)  # true positive colour
    assert tuple(ov[5, 5]) == tuple(img[5, 5])  # outside the FOV: the photo itself


def test_missing_package_is_one_line_exit_3(images, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VESSEL_EDGE_PACKAGE", raising=False)
    code = main([str(images), "--package", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: no package at ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_package_from_environment(pkg, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VESSEL_EDGE_PACKAGE", str(pkg))
    assert main([str(images / "a.png"), "-o", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize("args,message", [
    (["--blend", "gausian"], "error: unknown blend mode 'gausian'; did you mean 'gaussian'? choices: gaussian, "
                             "linear, constant\n"),
    (["--backend", "onnx"], "error: unknown backend 'onnx'; did you mean 'onnxruntime'? choices: auto, tvm, "
                            "onnxruntime\n"),
    (["--threshold", "2"], "error: --threshold 2.0 is outside [0, 1]; pass a probability\n"),
    (["--cores", "x"], "error: --cores 'x' is not a core list; write it like 4,5 or 0-3\n"),
])
def test_bad_options(pkg, images, tmp_path, capsys, args, message):
    code = main([str(images), "--package", str(pkg), "-o", str(tmp_path / "o"), *args])
    assert capsys.readouterr().err == message
    assert code in (2, 4)


def test_unwritable_output_folder(pkg, images, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main([str(images), "--package", str(pkg), "-o", str(blocker)])
    err = capsys.readouterr().err
    assert code == 4 and err.startswith(f"error: cannot write into output folder {blocker}") and err.count("\n") == 1


def test_outputs_that_would_collide(pkg, images, tmp_path, capsys):
    write_image(images / "a.bmp", synthetic_fundus(40, 40))
    code = main([str(images), "--package", str(pkg), "-o", str(tmp_path / "o")])
    assert code == 4 and "share the name 'a'" in capsys.readouterr().err


def test_traceback_only_with_verbose(images, tmp_path, capsys):
    main([str(images), "--package", str(tmp_path / "none")])
    assert "Traceback" not in capsys.readouterr().err
    main([str(images), "--package", str(tmp_path / "none"), "-v"])
    assert "Traceback" in capsys.readouterr().err


def test_console_script_with_cores(pkg, images, tmp_path):
    """The installed entry point, pinned to one core, in its own process (affinity is per process)."""
    import os

    core = min(os.sched_getaffinity(0))
    js = tmp_path / "run.json"
    r = subprocess.run([str(EDGE_RUN), str(images / "a.png"), "--package", str(pkg), "-o", str(tmp_path / "o"),
                        "--cores", str(core), "--json", str(js)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(js.read_text())
    assert s["backend"]["cores"] == [core] and s["backend"]["threads"] == 1 and s["backend"]["name"] == "tvm"
    assert f"threads 1 on cores {core}" in r.stdout


def test_package_overlap_that_does_not_fit_its_tiles(pkg, images, tmp_path, capsys):
    bad = variant(pkg, tmp_path / "bad", tiling={"overlap": 64})
    code = main([str(images / "a.png"), "--package", str(bad), "-o", str(tmp_path / "o")])
    assert code == 3
    assert capsys.readouterr().err == (f"error: package {bad} sets tile overlap 64, which does not fit its 64x64 "
                                       "tiles; pass --overlap below 64\n")
    assert main([str(images / "a.png"), "--package", str(bad), "-o", str(tmp_path / "o"), "--overlap", "32"]) == 0


def test_runs_a_package_made_by_edge_export(images, tmp_path, capsys):
    """The host/device contract end to end: export.pipeline writes the package, edge-run reads it."""
    pipeline = pytest.importorskip("export.pipeline", reason="edge-export is not importable here")
    import warnings

    import torch

    from edge_fixtures import tiny_model

    onnx_path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(tiny_model(), torch.rand(1, 3, 128, 128), str(onnx_path), opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["logits"])
    exported = pipeline.export_model(str(onnx_path), target="x86_64", out=tmp_path / "pkg", log=lambda m: None)
    for backend in ("tvm", "onnxruntime"):
        js = tmp_path / f"{backend}.json"
        code = main([str(images), "--package", str(exported.package), "-o", str(tmp_path / backend),
                     "--backend", backend, "--json", str(js)])
        assert code == 0, capsys.readouterr().err
        s = json.loads(js.read_text())
        assert s["ok"] == 3 and s["backend"]["name"] == backend and s["options"]["tile"] == [128, 128]
    a_tvm = cv2.imread(str(tmp_path / "tvm" / "a_prob.png"), cv2.IMREAD_UNCHANGED).astype(int)
    a_ort = cv2.imread(str(tmp_path / "onnxruntime" / "a_prob.png"), cv2.IMREAD_UNCHANGED).astype(int)
    assert np.abs(a_tvm - a_ort).max() <= 1  # 8-bit maps of the two backends agree


def test_photos_are_resampled_to_the_training_scale_and_the_summary_says_so(pkg, images, tmp_path, capsys):
    """A package that records its training scale (FOV 66.5 px; a.png's FOV measures 133 px): the photo is tiled at
    half its size (4 tiles instead of 12), its outputs keep its size; --native-scale turns it off; each run says
    which."""
    scaled = variant(pkg, tmp_path / "scaled", preprocess={"fov_diameter_px": 66.5})
    a, js = images / "a.png", tmp_path / "run.json"
    assert main([str(a), "--package", str(scaled), "-o", str(tmp_path / "o1"), "--json", str(js), "-v"]) == 0
    cap = capsys.readouterr()
    line = next(ln for ln in cap.out.splitlines() if ln.startswith("scale: "))
    assert line == ("scale: FOV 133 px -> 66.5 px (the weights' training scale), 150x200 processed at 75x100; "
                    "--native-scale to turn off")
    assert "a.png: 4 tiles" in cap.err and "; scale: FOV" in cap.err  # -v: per image
    s = json.loads(js.read_text())
    img = s["images"][0]
    assert img["tiles"] == 4 and img["size"] == [150, 200] and "resample_ms" in img["timings_ms"]
    assert img["scale"]["status"] == "resampled" and img["scale"]["processed"] == [75, 100]
    assert s["scale"] == {"native_scale": False, "training_fov_px": 66.5, "resampled": 1}
    assert cv2.imread(img["outputs"]["prob"], cv2.IMREAD_UNCHANGED).shape == (150, 200)

    assert main([str(a), "--package", str(scaled), "-o", str(tmp_path / "o2"), "--json", str(js),
                 "--native-scale", "--overwrite"]) == 0
    assert "scale: native (--native-scale); the weights were trained at FOV 66.5 px" in capsys.readouterr().out
    img = json.loads(js.read_text())["images"][0]
    assert img["tiles"] == 12 and img["scale"]["status"] == "native-requested"

    # a package without the key (made before it existed): native scale, said once in the summary
    assert main([str(images), "--package", str(pkg), "-o", str(tmp_path / "o3")]) == 0
    out = capsys.readouterr().out
    assert out.count("scale: native; the package records no training scale") == 1 and "--fov-diameter" in out

    # a folder: one line for all; an all-black photo stays native with its reason, announced per image
    write_image(images / "d.png", np.zeros((60, 80, 3), np.uint8))
    assert main([str(images), "--package", str(scaled), "-o", str(tmp_path / "o4")]) == 0
    cap = capsys.readouterr()
    assert "scale: 3 of 4 images resampled by their FOV to 66.5 px (the weights' training scale), factor " in cap.out
    assert "1 at native scale, FOV not measurable: d.png; --native-scale to turn off" in cap.out
    assert "notice: " in cap.err and "d.png: scale: native scale: the field of view is empty" in cap.err
