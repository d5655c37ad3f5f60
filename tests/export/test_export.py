"""The export pipeline end to end: stages verified, packages complete and atomic, errors one line."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.errors import EdgeError
from edge.package import load_package, sha256_file
from export.cli import main
from export.pipeline import export_model
from export.tvm_stage import run_library
from models import create_model, get_spec, list_models


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return struct.unpack("<H", head[18:20])[0]


EM_X86_64, EM_AARCH64 = 62, 183


@pytest.fixture(scope="module")
def x86_package(tmp_path_factory, drive_weights):
    out = tmp_path_factory.mktemp("pkg") / "m2unet-x86"
    return export_model("m2unet", "x86_64", weights=drive_weights, input_size=(128, 160), out=out)


def test_x86_package_is_complete_and_verified(x86_package, drive_weights):
    pkg = load_package(x86_package.package)
    meta = pkg.meta
    assert sorted(meta["files"]) == ["model.onnx", "model.so"]
    assert meta["input"]["shape"] == [1, 3, 128, 160] and pkg.tile == (128, 160)
    assert meta["model"]["name"] == "m2unet" and meta["model"]["untrained"] is False
    assert meta["model"]["weights"]["file"] == "M2UNetDRIVE.pth"
    assert meta["output"] == {"name": "logits", "kind": "logits", "activation": "sigmoid"}
    assert meta["preprocess"]["scale"] == pytest.approx(1 / 255) and meta["postprocess"]["threshold"] == 0.5
    assert meta["target"]["arch"] == "x86_64" and meta["target"]["tvm_target"]["mcpu"] != "native"
    stages = [p["stage"] for p in meta["parity"]]
    assert stages == ["onnx (onnxruntime)", "simplified onnx", "tvm x86_64"]
    assert all(p["passed"] and p["max_abs_diff"] <= 1e-4 for p in meta["parity"])
    assert meta["complexity"]["params"] == 549_748
    for key in ("torch", "onnx", "onnxsim", "onnxruntime", "tvm", "tvm_ffi"):
        assert meta["versions"][key], key
    assert elf_machine(pkg.library) == EM_X86_64
    # the library really computes the model: compare with PyTorch on a fresh input
    x = np.random.default_rng(7).random((1, 3, 128, 160), dtype=np.float32)
    with torch.inference_mode():
        ref = create_model("m2unet", weights=drive_weights)(torch.from_numpy(x)).numpy()
    assert np.abs(run_library(pkg.library, x) - ref).max() <= 1e-4


@pytest.mark.cross
def test_arm64_package_is_an_aarch64_library_checked_by_a_host_twin(tmp_path, drive_weights):
    r = export_model("m2unet", "arm64", weights=drive_weights, input_size=(64, 64), out=tmp_path / "a")
    pkg = load_package(r.package)
    assert elf_machine(pkg.library) == EM_AARCH64
    assert pkg.meta["target"]["tvm_target"]["mcpu"] == "cortex-a72"
    twin = pkg.meta["parity"][-1]
    assert twin["ran_on"] == "host twin" and twin["passed"]


def test_without_weights_m2unet_exports_the_shipped_default_weights(tmp_path):
    from models.weights import shipped_weights

    r = export_model("m2unet", "x86_64", input_size=(32, 32), out=tmp_path / "d")
    assert r.meta["model"]["untrained"] is False
    assert r.meta["model"]["weights"]["sha256"] == sha256_file(shipped_weights("m2unet"))


def test_untrained_export_is_loud_and_recorded(tmp_path, capsys):
    # erfnet has no shipped weights (m2unet has: models/weights/m2unet.pth)
    r = export_model("erfnet", "x86_64", input_size=(32, 32), out=tmp_path / "u")
    assert r.meta["model"]["untrained"] is True and r.meta["model"]["weights"] is None
    assert "RANDOM weights" in capsys.readouterr().err
    assert any("RANDOM" in w for w in r.meta["warnings"])


def test_existing_package_is_not_replaced_without_force(x86_package, tmp_path):
    before = (x86_package.package / "meta.json").read_text()
    assert main(["m2unet", "--input-size", "32", "--out", str(x86_package.package)]) == 3
    assert (x86_package.package / "meta.json").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["m2unet", "--target", "arm46"], "did you mean 'arm64'"),
    (["m2unet2"], "unknown model 'm2unet2'; did you mean 'm2unet'"),
    (["m2unet", "--input-size", "500"], "pad to 512x512 (the nearest valid size) or crop to 496x496"),
    (["m2unet", "--input-size", "abc"], "--input-size must look like 544"),
    (["nothere.onnx"], "ONNX file not found"),
    (["m2unet", "--image-size", "2336by3504"], "--image-size must look like 544 or 544x960"),
    (["m2unet", "--image-size", "2336x3504", "--input-size", "544"], "--input-size and --image-size both set"),
    (["m2unet", "--image-size", "2336x3504", "--max-tile-mpx", "0.01"], "no tile of at most 0.01 Mpx fits an "
                                                                        "overlap of 224 px"),
    (["m2unet", "--image-size", "2336x3504", "--max-tile-mpx", "-1"], "--max-tile-mpx -1.0 must be above 0"),
    (["some.onnx", "--image-size", "2336x3504"], "--image-size needs a registered model"),
    (["m2unet", "--fov-diameter", "0"], "--fov-diameter 0.0 must be a positive number of pixels"),
    (["nothere.onnx", "--fov-diameter", "big"], "--fov-diameter 'big' is not a number"),
])
def test_bad_input_is_one_line_with_nonzero_exit(argv, message, capsys, tmp_path):
    rc = main(argv + ["--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "p").exists()


def test_corrupt_onnx_and_wrong_weights(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x03garbage" * 10)
    assert main([str(bad), "--out", str(tmp_path / "p")]) != 0
    assert "is not a readable ONNX model" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1), "decode1.ir1.conv.0.weight": torch.zeros(5, 33, 1, 1)}, wrong)
    assert main(["m2unet", "--weights", str(wrong), "--out", str(tmp_path / "p")]) != 0
    err = capsys.readouterr().err
    assert "missing keys: conv1.0.0.weight" in err and "unexpected keys: conv.weight" in err
    assert not (tmp_path / "p").exists()


def test_unwritable_output_directory(tmp_path, capsys):
    if os.geteuid() == 0:
        target = Path("/proc/vessel-edge-package")  # not writable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro / "p"
    assert main(["m2unet", "--input-size", "32", "--out", str(target)]) != 0
    assert "choose a writable --out" in capsys.readouterr().err


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    import export.onnx_stage as st
    from edge.errors import EdgeError

    monkeypatch.setattr(st, "TOLERANCE", -1.0)  # every comparison now fails
    monkeypatch.setattr(st.compare, "__defaults__", ("logits", -1.0))
    with pytest.raises(EdgeError, match="parity check failed: onnx"):
        export_model("m2unet", "x86_64", input_size=(32, 32), out=tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


def test_legacy_onnx_file_exports(tmp_path):
    from tests.export.test_legacy import legacy_graph
    import onnx

    m, _, _ = legacy_graph()
    src = tmp_path / "legacy.onnx"
    onnx.save(m, str(src))
    r = export_model(str(src), "x86_64", out=tmp_path / "p")
    assert r.meta["model"]["repairs"] and r.meta["parity"][-1]["passed"]
    assert r.meta["input"]["shape"] == [1, 3, 8, 10]


def _small_size(name: str) -> tuple[int, int]:
    d = get_spec(name).divisor
    return (max(64, d), max(64, d) + d)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86_64", pytest.param("arm64", marks=pytest.mark.cross)])
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports(name, target, tmp_path):
    r = export_model(name, target, input_size=_small_size(name), out=tmp_path / "p")
    meta = json.loads((r.package / "meta.json").read_text())
    assert all(p["passed"] for p in meta["parity"])
    assert elf_machine(r.package / "model.so") == (EM_AARCH64 if target == "arm64" else EM_X86_64)


def test_image_size_plans_the_tile_for_a_camera():
    """--image-size for HRF photographs compiles the tile edge-run will cut 4 of (1.17x the image's pixels)."""
    from export.cli import plan_for_image

    tile, plan = plan_for_image("m2unet", "2336x3504", 2.5)
    assert tile == (1280, 1872)
    assert plan == {"image": [2336, 3504], "tiles": 4, "cost_factor": 1.171, "max_tile_pixels": 2_500_000,
                    "overlap": get_spec("m2unet").overlap}


@pytest.mark.slow
def test_image_size_export_records_the_plan_and_edge_run_uses_it(tmp_path, capsys):
    """A real export with --image-size: the package's tile is the planned one, meta.json records the plan, and
    edge-run on an image of that size cuts exactly the planned tiles; on a much smaller image it says so."""
    from edge.cli import main as edge_run
    from edge.imageio import write_image

    out = tmp_path / "pkg"
    assert main(["erfnet", "--image-size", "100x180", "--max-tile-mpx", "0.012", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    planned = meta["tiling"]["planned_for"]
    assert planned["image"] == [100, 180] and f"for 100x180 images: {planned['tiles']} tiles" in err
    assert meta["input"]["shape"][2] * meta["input"]["shape"][3] <= 12_000
    rng = np.random.default_rng(0)
    write_image(tmp_path / "cam.png", rng.integers(0, 255, (100, 180, 3), dtype=np.uint8))
    write_image(tmp_path / "tiny.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    assert edge_run([str(tmp_path / "cam.png"), "--package", str(out), "-o", str(tmp_path / "o1"),
                     "--json", str(tmp_path / "run.json")]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["images"][0]["tiles"] == planned["tiles"]
    capsys.readouterr()
    assert edge_run([str(tmp_path / "tiny.png"), "--package", str(out), "-o", str(tmp_path / "o2")]) == 0
    assert "was planned for 100x180 images" in capsys.readouterr().err


def test_training_scale_comes_from_the_sidecar_and_fov_diameter_overrides_it(tmp_path, capsys):
    """The weights' sidecar (best.json beside best.pth) records the FOV diameter they were trained at: it lands
    in meta.json as preprocess.fov_diameter_px, for edge-run to resample to; --fov-diameter overrides it."""
    from export.pipeline import Run, load_source

    weights = tmp_path / "best.pth"
    torch.save(create_model("m2unet").state_dict(), weights)
    (tmp_path / "best.json").write_text(json.dumps({"model": "m2unet", "scale": {"fov_diameter_px": 960}}))
    assert main(["m2unet", "--weights", str(weights), "--input-size", "32", "--out", str(tmp_path / "p")]) == 0
    assert "training scale: FOV 960 px (sidecar best.json)" in capsys.readouterr().out
    assert load_package(tmp_path / "p").info.preprocess.fov_diameter_px == 960.0
    run = Run(lambda m: None)
    src = load_source("m2unet", weights, (32, 32), tmp_path, run, fov_diameter=540)
    assert (src.fov_diameter_px, src.scale_source) == (540.0, "--fov-diameter")
    (tmp_path / "best.json").write_text("{not json")  # the sidecar is not even read when the flag is given
    assert load_source("m2unet", weights, (32, 32), tmp_path, run, fov_diameter=3300).fov_diameter_px == 3300.0
    with pytest.raises(EdgeError, match="sidecar .*best.json is not readable JSON.*--fov-diameter"):
        load_source("m2unet", weights, (32, 32), tmp_path, run)
    (tmp_path / "best.json").write_text(json.dumps({"scale": {"fov_diameter_px": -1}}))
    with pytest.raises(EdgeError, match="scale.fov_diameter_px -1, not a positive number"):
        load_source("m2unet", weights, (32, 32), tmp_path, run)
    (tmp_path / "best.json").unlink()
    assert load_source("m2unet", weights, (32, 32), tmp_path, run).fov_diameter_px is None


def test_an_onnx_file_records_the_scale_only_when_given(tmp_path, capsys):
    import warnings

    from export.pipeline import Run, fmt_summary, load_source

    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(torch.nn.Conv2d(3, 1, 3, padding=1), torch.rand(1, 3, 32, 32), str(onnx_path),
                          opset_version=17, dynamo=False, input_names=["input"], output_names=["logits"])
    run = Run(lambda m: None)
    assert load_source(str(onnx_path), None, None, tmp_path, run).fov_diameter_px is None
    assert load_source(str(onnx_path), None, None, tmp_path, run, fov_diameter=540).fov_diameter_px == 540.0
    r = export_model(str(onnx_path), "x86_64", out=tmp_path / "p", log=lambda m: None)
    assert r.meta["preprocess"]["fov_diameter_px"] is None
    assert "training scale: unknown (runtime works at native scale; pass --fov-diameter)" in fmt_summary(r)
