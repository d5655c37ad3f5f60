"""Hostile packages: corrupt copies of one small, real package, made in a test's tmp_path at run time.

Every maker takes the good package and a destination and returns the hostile package's path; nothing is
downloaded and nothing comes from ../shared. (Imported by name from tests/hostile, hence not in conftest.py.)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_fixtures import TILE, build_package, synthetic_fundus, variant  # noqa: F401  (re-exported)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def meta_of(pkg: Path) -> dict[str, Any]:
    return json.loads((pkg / "meta.json").read_text())


def write_meta(pkg: Path, meta: Any) -> None:
    (pkg / "meta.json").write_text(json.dumps(meta, indent=2))


def edit_meta(src: Path, dst: Path, change: Callable[[dict], Any], replace: bool = False) -> Path:
    """A copy whose meta.json is changed in place by ``change(meta)`` (with ``replace``: becomes its return
    value); the members and their checksums are untouched, as a hand edit leaves them."""
    copy(src, dst)
    meta = meta_of(dst)
    new = change(meta)
    write_meta(dst, new if replace else meta)
    return dst


def remove_member(src: Path, dst: Path, name: str, from_inventory: bool = False) -> Path:
    """A copy without member ``name``; with ``from_inventory`` also without its entry in meta.json's files."""
    copy(src, dst)
    (dst / name).unlink()
    if from_inventory and name != "meta.json":
        meta = meta_of(dst)
        meta["files"].pop(name)
        if meta["target"].get("library") == name:
            meta["target"]["library"] = None
        write_meta(dst, meta)
    return dst


def flip_byte(src: Path, dst: Path, name: str, offset: int = -100) -> Path:
    """A copy whose member ``name`` has one byte changed (same size): only the checksum can tell."""
    copy(src, dst)
    data = bytearray((dst / name).read_bytes())
    data[offset] ^= 0xFF
    (dst / name).write_bytes(bytes(data))
    return dst


def add_extra(src: Path, dst: Path, name: str = "model_v2.so", data: bytes = b"not in the inventory") -> Path:
    copy(src, dst)
    (dst / name).write_bytes(data)
    return dst


def outside_symlink(src: Path, dst: Path, name: str, elsewhere: Path) -> Path:
    """A copy whose member ``name`` is a symlink to an identical file outside the package (the checksum
    matches: only the link can tell)."""
    copy(src, dst)
    elsewhere.mkdir(parents=True, exist_ok=True)
    shutil.move(str(dst / name), str(elsewhere / name))
    os.symlink(elsewhere / name, dst / name)
    return dst


def archive(src: Path, dst: Path) -> Path:
    """``src`` packed as ``dst`` (.tar, .tar.gz, .tgz or .zip), with the package folder at the top."""
    if dst.name.endswith(".zip"):
        with zipfile.ZipFile(dst, "w") as z:
            for f in sorted(src.iterdir()):
                z.write(f, f"{src.name}/{f.name}")
    else:
        mode = "w:gz" if dst.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(dst, mode) as t:
            t.add(src, arcname=src.name)
    return dst


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file (62 x86-64, 183 AArch64)."""
    data = path.read_bytes()[:20]
    return int.from_bytes(data[18:20], "little")


def build_arm64_library(package: Path, out: Path) -> Path:
    """The package's model.onnx compiled for aarch64 (linked with aarch64-linux-gnu-g++): a real arm64 library."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    meta = meta_of(package)
    mod = from_onnx(onnx.load(str(package / "model.onnx")), shape_dict={"input": meta["input"]["shape"]})
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    tvm.compile(mod, target=target).export_library(str(out), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return out


def with_library(src: Path, dst: Path, library: Path, **changes: dict) -> Path:
    """A re-checksummed package (written by write_package) with ``library`` as its model.so."""
    from edge.package import write_package

    meta = meta_of(src)
    for section, values in changes.items():
        meta[section] = {**meta.get(section, {}), **values}
    meta.pop("files")
    return write_package(dst, meta, {"model.onnx": src / "model.onnx", "model.so": library})
