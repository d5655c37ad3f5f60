"""Hostile packages for edge-run, edge-bench PACKAGE and edge-eval PACKAGE: corrupt copies of one small real
package (missing or extra members, checksums, meta.json that is not JSON or not the schema, a library for another
architecture or TVM version, symlinks out of the package, files and archives instead of folders). Each is refused
with one line naming the problem and the fix, exit 3, and nothing written.

Decisions: the inventory (meta.json "files") is authoritative, so a member it does not list is refused, not
ignored; a package folder that is itself a symlink is fine (it is where the user keeps it), a member that links
out of the package is refused; archives are not unpacked (a clear "unpack it" refusal).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import hostile_corpus as H
import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from edge.cli import main as run_main
from edge.package import host_arch
from models.train.evaluate import main as eval_main

X86 = host_arch() == "x86_64"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """The one real package of this module (two 3x3 convolutions, compiled for this host in ~3 s)."""
    return H.build_package(tmp_path_factory.mktemp("hostile-pkg") / "tiny")


@pytest.fixture(scope="module")
def arm_library(good, tmp_path_factory) -> Path:
    """The package's graph as an aarch64 library: really cross-compiled when aarch64-linux-gnu-g++ is here,
    else the host library with its ELF header saying AArch64 (what the loader and the runtime look at)."""
    out = tmp_path_factory.mktemp("arm-lib") / "model.so"
    if shutil.which("aarch64-linux-gnu-g++"):
        H.build_arm64_library(good, out)
    else:
        data = bytearray((good / "model.so").read_bytes())
        data[18:20] = (183).to_bytes(2, "little")
        out.write_bytes(bytes(data))
    assert H.elf_machine(out) == 183
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from edge.imageio import write_image

    p = tmp_path_factory.mktemp("photo") / "eye.png"
    write_image(p, H.synthetic_fundus(80, 90))
    return p


def _meta(change, replace: bool = False):
    return lambda good, d, tmp: H.edit_meta(good, d, change, replace)


def _write_meta(data: bytes):
    def make(good, d, tmp):
        H.copy(good, d)
        (d / "meta.json").write_bytes(data)
        return d
    return make


def _extra_folder(good, d, tmp):
    H.copy(good, d)
    (d / "old").mkdir()
    (d / "old" / "model.so").write_bytes((good / "model.so").read_bytes())
    return d


def _traversal(good, d, tmp):
    def change(m):
        m["files"]["../model.so"] = m["files"].pop("model.so")
        m["target"]["library"] = "../model.so"
    return H.edit_meta(good, d, change)


def _archive(suffix: str):
    def make(good, d, tmp):
        return H.archive(good, d.with_name(d.name + suffix))
    return make


def _missing(good, d, tmp):
    return d  # never created


def _empty(good, d, tmp):
    d.mkdir()
    return d


def _elsewhere(member: str):
    return lambda good, d, tmp: H.outside_symlink(good, d, member, tmp / f"elsewhere-{member}")


# id: (make(good, dst, tmp_path) -> path given to the tool, regex the one error line must match)
REFUSED = {
    "meta.json missing": (lambda g, d, t: H.remove_member(g, d, "meta.json"), r"has no meta\.json.*re-export"),
    "model.so missing": (lambda g, d, t: H.remove_member(g, d, "model.so"), r"missing member model\.so; re-export"),
    "model.onnx missing": (lambda g, d, t: H.remove_member(g, d, "model.onnx"), r"missing member model\.onnx"),
    "model.onnx gone from the inventory": (lambda g, d, t: H.remove_member(g, d, "model.onnx", from_inventory=True),
                                           r"no model\.onnx in its inventory.*re-export"),
    "extra member": (lambda g, d, t: H.add_extra(g, d),
                     r"holds model_v2\.so, which its inventory .* does not list; remove it or re-export"),
    "extra folder": (_extra_folder, r"holds old, which its inventory"),
    "library checksum": (lambda g, d, t: H.flip_byte(g, d, "model.so"), r"model\.so .* does not match its sha256"),
    "onnx checksum": (lambda g, d, t: H.flip_byte(g, d, "model.onnx"), r"model\.onnx .* does not match its sha256"),
    "meta.json not JSON": (_write_meta(b'{"format": "vessel-edge-package",'), r"meta\.json is not readable JSON"),
    "meta.json empty": (_write_meta(b""), r"meta\.json is not readable JSON"),
    "meta.json binary": (_write_meta(np.random.default_rng(0).bytes(512)), r"meta\.json is not readable JSON"),
    "meta.json a list": (_meta(lambda m: [m], replace=True), r"holds a JSON list, not an object"),
    "another format": (_meta(lambda m: m.update(format="onnx-bundle")), r"is not a vessel-edge package"),
    "schema version 2": (_meta(lambda m: m.update(format_version=2)),
                         r"format version 2, this runtime reads version 1; re-export"),
    "schema version a string": (_meta(lambda m: m.update(format_version="1")), r"format version '1'"),
    "no input section": (_meta(lambda m: m.pop("input")), r"lacks the required key 'input'"),
    "no model name": (_meta(lambda m: m["model"].pop("name")), r"lacks the required key 'model\.name'"),
    "shape a string": (_meta(lambda m: m["input"].update(shape="64x64")), r"'input\.shape' must be a list of 4"),
    "shape 3-d": (_meta(lambda m: m["input"].update(shape=[1, 3, 64])), r"'input\.shape' must be a list of 4"),
    "shape zero": (_meta(lambda m: m["input"].update(shape=[1, 3, 0, 64])), r"'input\.shape' must be"),
    "scale a string": (_meta(lambda m: m["preprocess"].update(scale="1/255")), r"'preprocess\.scale' must be a number"),
    "std zero": (_meta(lambda m: m["preprocess"].update(std=[1, 0, 1])), r"'preprocess\.std' must be"),
    "fov diameter a string": (_meta(lambda m: m["preprocess"].update(fov_diameter_px="960px")),
                              r"'preprocess\.fov_diameter_px' must be a positive number .*; re-export the package"),
    "fov diameter zero": (_meta(lambda m: m["preprocess"].update(fov_diameter_px=0)),
                          r"'preprocess\.fov_diameter_px' must be a positive number"),
    "fov diameter negative": (_meta(lambda m: m["preprocess"].update(fov_diameter_px=-960)),
                              r"'preprocess\.fov_diameter_px' must be a positive number"),
    "fov diameter true": (_meta(lambda m: m["preprocess"].update(fov_diameter_px=True)),
                          r"'preprocess\.fov_diameter_px' must be a positive number"),
    "fov diameter NaN": (_meta(lambda m: m["preprocess"].update(fov_diameter_px=float("nan"))),
                         r"'preprocess\.fov_diameter_px' must be a positive number .*got NaN"),
    "threshold above 1": (_meta(lambda m: m["postprocess"].update(threshold=1.5)),
                          r"'postprocess\.threshold' must be a number in \[0, 1\]"),
    "overlap negative": (_meta(lambda m: m["tiling"].update(overlap=-16)), r"'tiling\.overlap' must be an integer"),
    "tvm version a number": (_meta(lambda m: m["versions"].update(tvm=0.27)), r"'versions\.tvm' must be"),
    "files a list": (_meta(lambda m: m.update(files=list(m["files"]))), r"'files' must be an object"),
    "no checksum": (_meta(lambda m: m["files"]["model.so"].pop("sha256")), r"member model\.so has no sha256"),
    "library outside the inventory": (_meta(lambda m: m["target"].update(library="../tiny/model.so")),
                                      r"names library '\.\./tiny/model\.so', which is not among its members"),
    "member name with ..": (_traversal, r"lists member '\.\./model\.so', which is not a file name inside"),
    "onnx links outside": (_elsewhere("model.onnx"), r"model\.onnx .* is a symlink to .*, outside the package"),
    "library links outside": (_elsewhere("model.so"), r"model\.so .* is a symlink to .*, outside the package"),
    "meta.json links outside": (_elsewhere("meta.json"), r"meta\.json .* is a symlink to .*, outside the package"),
    "meta.json given": (lambda g, d, t: H.copy(g, d) / "meta.json",
                        r"is the package's meta\.json, not the package; pass its folder"),
    "a member given": (lambda g, d, t: H.copy(g, d) / "model.so", r"is a file, not a package folder"),
    "tar": (_archive(".tar"), r"is an archive, not a package folder; unpack it \(`tar -xf"),
    "tar.gz": (_archive(".tar.gz"), r"is an archive, not a package folder; unpack it \(`tar -xf"),
    "zip": (_archive(".zip"), r"is an archive, not a package folder; unpack it \(`unzip"),
    "empty folder": (_empty, r"no package at .*edge-export"),
    "no such path": (_missing, r"no package at .*edge-export"),
}

# edge-eval reads a folder without meta.json as predictions and a path that is not there as any of its sources
EVAL_MATCH = {"empty folder": r"no prediction for", "no such path": r"no such path"}


def _tvm_cases(arm_library: Path) -> dict:
    return {
        "arm64 package": (lambda g, d, t: H.with_library(g, d, arm_library, target={"arch": "aarch64"}),
                          r"built for aarch64, this machine is x86_64"),
        "arm64 library, meta says x86_64": (lambda g, d, t: H.with_library(g, d, arm_library),
                                            r"model\.so is built for aarch64, but meta\.json says x86_64"),
        "another TVM version": (lambda g, d, t: H.variant(g, d, versions={"tvm": "0.18.0"}),
                                r"built with TVM 0\.18\.0, this machine has TVM"),
        "ONNX only": (lambda g, d, t: H.variant(g, d, drop=("model.so",), target={"library": None}),
                      r"no compiled TVM library \(ONNX only\)"),
    }


TVM_IDS = ["arm64 package", "arm64 library, meta says x86_64", "another TVM version", "ONNX only"]


def argv_for(tool: str, pkg: Path, out: Path, photo: Path, tvm: bool) -> tuple:
    if tool == "edge-run":
        return run_main, [photo, "--package", pkg, "-o", out, "--threads", "1", *(["--backend", "tvm"] if tvm else [])]
    if tool == "edge-bench":
        return bench_main, [pkg, "--backends", "tvm" if tvm else "onnxruntime", "--images", "none", "--runs", "1",
                            "--warmup", "0", "-o", out]
    return eval_main, [pkg, "--dataset", "synthetic", "--synthetic-count", "1", "--synthetic-size", "64",
                       "--out", out, "--threads", "1", *(["--backend", "tvm"] if tvm else [])]


TOOLS = ["edge-run", "edge-bench", "edge-eval"]


def test_the_good_package_runs_with_every_tool(good, photo, tmp_path, capsys):
    """The control: the arguments the refusals below use work on the intact package."""
    for tool in TOOLS:
        main, argv = argv_for(tool, good, tmp_path / tool, photo, tvm=False)
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err[-2000:]
    main, argv = argv_for("edge-run", good, tmp_path / "tvm", photo, tvm=True)
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err[-2000:]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", list(REFUSED))
def test_hostile_package_is_refused(case, tool, good, photo, tmp_path, expect_refusal):
    make, match = REFUSED[case]
    pkg = make(good, tmp_path / "pkg", tmp_path)
    main, argv = argv_for(tool, pkg, tmp_path / "out", photo, tvm=False)
    if tool == "edge-eval" and case in EVAL_MATCH:
        expect_refusal(main, argv, watch=[tmp_path], match=EVAL_MATCH[case], rc=2)
        return
    expect_refusal(main, argv, watch=[tmp_path], match=match, rc=3)
    assert not (tmp_path / "out").exists()  # refused before the output folder was made


@pytest.mark.skipif(not X86, reason="the foreign architecture of these cases is aarch64, seen from x86_64")
@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", TVM_IDS)
def test_library_that_cannot_run_here_is_refused_for_tvm(case, tool, good, arm_library, photo, tmp_path,
                                                         expect_refusal):
    """--backend tvm (edge-bench: --backends tvm) asked for a library this machine cannot run."""
    make, match = _tvm_cases(arm_library)[case]
    pkg = make(good, tmp_path / "pkg", tmp_path)
    main, argv = argv_for(tool, pkg, tmp_path / "out", photo, tvm=True)
    r = expect_refusal(main, argv, watch=[tmp_path], match=match, rc=3)
    assert re.search(r"[;:] (use --backend onnxruntime|install TVM|leave tvm out of --backends)", r.line), r.line


@pytest.mark.skipif(not X86, reason="the foreign architecture of these cases is aarch64, seen from x86_64")
@pytest.mark.parametrize("case", TVM_IDS)
def test_auto_backend_falls_back_and_says_why(case, good, arm_library, photo, tmp_path, capsys):
    """Without --backend the same packages run on ONNX Runtime, announced on stderr and in the summary."""
    make, _ = _tvm_cases(arm_library)[case]
    pkg = make(good, tmp_path / "pkg", tmp_path)
    js = tmp_path / "run.json"
    assert run_main([str(photo), "--package", str(pkg), "-o", str(tmp_path / "out"), "--json", str(js)]) == 0
    err = capsys.readouterr().err
    note = [ln for ln in err.splitlines() if ln.startswith("note: using onnxruntime instead of tvm")]
    assert len(note) == 1 and "error:" not in err, err
    summary = json.loads(js.read_text())
    assert summary["backend"]["name"] == "onnxruntime" and summary["backend"]["fallback"]


def test_package_folder_that_is_a_symlink_is_fine(good, photo, tmp_path, capsys):
    """Where the user keeps the package is their business: a link to a package folder runs like the folder."""
    link = tmp_path / "current-package"
    os.symlink(good, link)
    out = tmp_path / "out"
    assert run_main([str(photo), "--package", str(link), "-o", str(out), "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eye_mask.png", "eye_prob.png"]
    assert "error:" not in capsys.readouterr().err


def test_an_extra_member_is_named_not_ignored(good, tmp_path):
    """The inventory is authoritative: a library swapped in under another name is refused by name, so the
    user sees which file to remove."""
    from edge.errors import PackageError
    from edge.package import load_package

    pkg = H.add_extra(good, tmp_path / "pkg", "model.so.bak", b"\x7fELF old")
    with pytest.raises(PackageError, match=r"holds model\.so\.bak"):
        load_package(pkg)
    (pkg / "model.so.bak").unlink()
    assert load_package(pkg).model_name == "tiny"
