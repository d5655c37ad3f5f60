"""The package directory: the contract between the host (edge-export) and the device (edge-run).

A package is a directory with fixed member names::

    meta.json    everything the runtime needs (see ``Package`` and docs in README)
    model.onnx   the simplified ONNX graph (ONNX Runtime backend, provenance)
    model.so     the TVM-compiled library for ``meta["target"]["arch"]`` (absent for ONNX-only packages)

The runtime trusts ``meta.json``, not file names, and refuses a package it cannot run with one sentence.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import PackageError

FORMAT = "vessel-edge-package"
FORMAT_VERSION = 1
META = "meta.json"
ONNX = "model.onnx"
LIBRARY = "model.so"
ENV_VAR = "VESSEL_EDGE_PACKAGE"
DEFAULT_DIR = Path.home() / ".local" / "share" / "vessel-edge" / "package"

# platform.machine() spellings -> the architecture names used in meta.json
_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Package:
    """A validated package directory. ``meta`` is the parsed ``meta.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def model_name(self) -> str:
        return self.meta["model"]["name"]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.meta["input"]["shape"])  # type: ignore[return-value]

    @property
    def tile(self) -> tuple[int, int]:
        return tuple(self.meta["input"]["shape"][2:])  # type: ignore[return-value]

    @property
    def library(self) -> Path | None:
        lib = self.meta.get("target", {}).get("library")
        return self.path / lib if lib else None

    @property
    def onnx(self) -> Path:
        return self.path / ONNX

    @property
    def arch(self) -> str | None:
        return self.meta.get("target", {}).get("arch")

    @property
    def device_kind(self) -> str:
        return self.meta.get("target", {}).get("device", "cpu")

    def tvm_runnable_here(self) -> tuple[bool, str]:
        """Whether the compiled library can run on this machine, and why not."""
        if self.library is None:
            return False, "the package has no compiled library (ONNX only)"
        if self.arch != host_arch():
            return False, f"its library was built for {self.arch}, this machine is {host_arch()}"
        return True, ""


def find_package(path: str | Path | None) -> Path:
    """``path``, else $VESSEL_EDGE_PACKAGE, else the default place; a helpful error when none exists."""
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_DIR
    p = Path(path)
    if not (p / META).is_file():
        raise PackageError(
            f"no package at {p} (no {META}); make one with `edge-export m2unet --target arm64 --out {p}` "
            f"and pass it with --package DIR or ${ENV_VAR}")
    return p


def load_package(path: str | Path | None = None, verify: bool = True) -> Package:
    """Read and validate a package directory; checksums are verified when ``verify``."""
    p = find_package(path)
    try:
        meta = json.loads((p / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{p / META} is not readable JSON ({exc}); re-export the package") from exc
    if meta.get("format") != FORMAT:
        raise PackageError(f"{p} is not a vessel-edge package ({META} has format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{p} has package format version {meta.get('format_version')}, this runtime reads "
                           f"version {FORMAT_VERSION}; re-export it with this release of edge-export")
    for name, info in meta.get("files", {}).items():
        f = p / name
        if not f.is_file():
            raise PackageError(f"package {p} is missing member {name}; re-export it")
        if verify and info.get("sha256") and sha256_file(f) != info["sha256"]:
            raise PackageError(f"package member {name} in {p} does not match its sha256 in {META} "
                               "(corrupt or modified); re-export or re-copy the package")
    return Package(p, meta)


def write_package(out: str | Path, meta: dict[str, Any], members: dict[str, Path], force: bool = False) -> Path:
    """Write a package atomically: members are copied into a temporary sibling directory, checksummed,
    then renamed into place. An existing package is replaced only with ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise PackageError(f"{out} already exists; pass --force to replace it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise PackageError(f"cannot write into {out.parent} ({exc.strerror}); choose a writable --out") from exc
    try:
        files = {}
        for name, src in members.items():
            shutil.copyfile(src, tmp / name)
            files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
