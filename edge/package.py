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
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.errors import PackageError, raise_if_interrupted
from edge.imageio import current_umask

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


# the distributions whose versions meta.json, benchmark runs and training runs record (key -> distribution)
DISTRIBUTIONS = {"numpy": "numpy", "torch": "torch", "onnx": "onnx", "onnxsim": "onnxsim",
                 "onnxruntime": "onnxruntime", "openvino": "openvino", "tvm": "apache-tvm",
                 "tvm_ffi": "apache-tvm-ffi", "matplotlib": "matplotlib", "psutil": "psutil",
                 "ncnn": "ncnn", "pnnx": "pnnx", "mnn": "MNN", "ai_edge_litert": "ai-edge-litert",
                 "vessel_edge": "vessel-edge"}


def versions(keys: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """Python's version and the installed version of each ``keys`` distribution (all of
    :data:`DISTRIBUTIONS` by default; None when not installed), read from package metadata without importing
    anything."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for key in DISTRIBUTIONS if keys is None else keys:
        try:
            out[key] = metadata.version(DISTRIBUTIONS[key])
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSection:
    name: str
    divisor: int = 1  # tile sides must be multiples of it
    overlap: int = 0  # the model's receptive-field overlap, the tiling default
    untrained: bool = False
    weights_sha256: str | None = None


@dataclass(frozen=True)
class InputSection:
    name: str
    shape: tuple[int, int, int, int]  # N, C, H, W


@dataclass(frozen=True)
class Preprocess:
    """``x = (pixel[channel_order] * scale - mean) / std``, per channel, float32 NCHW (meta.json 'preprocess').

    ``fov_diameter_px``: the field-of-view diameter in pixels of the images the weights were trained at; the
    runtime resamples each photograph by its FOV to it (:mod:`edge.scale`). None: not recorded (native scale)."""

    channel_order: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fov_diameter_px: float | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> Preprocess:
        """The scaling of a model spec (``models.ModelSpec``: RGB pixels 0..255, ``(x / 255 - mean) / std``), what
        edge-export records in meta.json; PyTorch runs on the host use it to feed a model as the runtime does."""
        return cls("RGB", 1.0 / 255.0, tuple(map(float, spec.mean)), tuple(map(float, spec.std)))

    def to_meta(self) -> dict[str, Any]:
        """The ``preprocess`` section of meta.json."""
        return {"channel_order": self.channel_order, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "fov_diameter_px": self.fov_diameter_px}

    def image(self, image_hwc: Any) -> Any:
        """An (H, W, C) image -> the (1, C, H, W) float32 network input."""
        import numpy as np

        return self(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)[None]))

    def __call__(self, tile_nchw: Any) -> Any:
        import numpy as np

        # (p * scale - mean) / std as one multiply-add per pixel: p * (scale / std) + (-mean / std)
        mean = np.asarray(self.mean, np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float64).reshape(1, -1, 1, 1)
        gain = (self.scale / std).astype(np.float32)
        offset = (-mean / std).astype(np.float32)
        src = tile_nchw[:, ::-1] if self.channel_order == "BGR" else tile_nchw
        x = np.multiply(src, gain, dtype=np.float32)
        x += offset
        return x


@dataclass(frozen=True)
class TilingSection:
    overlap: int
    blend: str = "gaussian"
    threshold: float = 0.5  # meta.json 'postprocess.threshold'
    planned_for: dict[str, Any] | None = None  # edge-export --image-size: the image size the tile was planned for


@dataclass(frozen=True)
class TargetSection:
    preset: str | None = None
    arch: str | None = None
    device: str = "cpu"
    library: str | None = None  # member name of the compiled library; None for an ONNX-only package
    tvm_target: dict[str, Any] = field(default_factory=dict)
    tvm_version: str | None = None  # meta.json 'versions.tvm': the TVM the library was built with


@dataclass(frozen=True)
class PackageMeta:
    """``meta.json`` read once: every section the runtime and the benchmarks use, typed, with the defaults of
    optional keys decided here and nowhere else. ``raw`` is the JSON as written (provenance: parity,
    complexity, tuning, versions), for reports only."""

    model: ModelSection
    input: InputSection
    activation: str
    preprocess: Preprocess | None  # None: a package that only benchmarks (it cannot segment a photograph)
    tiling: TilingSection
    target: TargetSection
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, p: Path, raw: Any) -> PackageMeta:
        """Validate ``raw`` (format, schema version, every key's type: :func:`check_meta`) and build the sections."""
        check_meta(p, raw)
        m, i, t, tg = raw["model"], raw["input"], raw.get("tiling", {}), raw["target"]
        pre = raw.get("preprocess")
        order = str((pre or {}).get("channel_order", "RGB")).upper()
        if order not in ("RGB", "BGR"):
            raise PackageError(f"package {p} asks for channel order {order!r}; this runtime knows RGB and BGR; "
                               "re-export it")
        weights = m.get("weights")
        return cls(
            model=ModelSection(m["name"], int(m.get("divisor", 1)), int(m.get("overlap", 0)),
                               bool(m.get("untrained", False)),
                               weights.get("sha256") if isinstance(weights, dict) else None),
            input=InputSection(i["name"], tuple(i["shape"])),  # type: ignore[arg-type]
            activation=str(raw.get("output", {}).get("activation", "sigmoid")).lower(),
            preprocess=None if pre is None else Preprocess(
                order, float(pre["scale"]), tuple(map(float, pre["mean"])), tuple(map(float, pre["std"])),
                None if pre.get("fov_diameter_px") is None else float(pre["fov_diameter_px"])),
            tiling=TilingSection(int(t.get("overlap", m.get("overlap", 0))), str(t.get("blend", "gaussian")),
                                 float(raw.get("postprocess", {}).get("threshold", 0.5)), t.get("planned_for")),
            target=TargetSection(tg.get("preset"), tg.get("arch"), tg.get("device", "cpu"), tg.get("library"),
                                 dict(tg.get("tvm_target") or {}), raw.get("versions", {}).get("tvm")),
            files=raw["files"], raw=raw)


def build_meta(*, model: dict[str, Any], input_name: str, shape: list[int], output_name: str,
               preprocess: Preprocess, threshold: float, overlap: int, target: dict[str, Any],
               planned_for: dict[str, Any] | None = None, **provenance: Any) -> dict[str, Any]:
    """The ``meta.json`` sections every package has, in one place (edge-export and the benchmarks' hand-built
    packages both write through here, then :func:`write_package` adds the format, version and inventory);
    ``provenance`` sections (parity, complexity, tuning, versions, ...) are recorded as given."""
    return {
        "model": model,
        "input": {"name": input_name, "shape": list(shape), "dtype": "float32", "layout": "NCHW"},
        "output": {"name": output_name, "kind": "logits", "activation": "sigmoid"},
        "preprocess": preprocess.to_meta(),
        "postprocess": {"threshold": threshold},
        "tiling": {"tile": list(shape[2:]), "overlap": overlap, "blend": "gaussian",
                   **({"planned_for": planned_for} if planned_for else {})},
        "target": target,
        **provenance,
    }


@dataclass(frozen=True)
class Package:
    """A validated package directory: its typed ``info`` (:class:`PackageMeta`); ``meta`` is the raw JSON."""

    path: Path
    info: PackageMeta

    @property
    def meta(self) -> dict[str, Any]:
        return self.info.raw

    @property
    def model_name(self) -> str:
        return self.info.model.name

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.info.input.shape

    @property
    def tile(self) -> tuple[int, int]:
        return self.info.input.shape[2], self.info.input.shape[3]

    @property
    def library(self) -> Path | None:
        lib = self.info.target.library
        return self.path / lib if lib else None

    @property
    def onnx(self) -> Path:
        return self.path / ONNX

    @property
    def arch(self) -> str | None:
        return self.info.target.arch

    @property
    def device_kind(self) -> str:
        return self.info.target.device

    def with_library(self, library: Path) -> Package:
        """The same package run with another compiled library (benchmarks: TVM's default lowering of its graph)."""
        return replace(self, info=replace(self.info, target=replace(self.info.target, library=str(library))))

    def tvm_runnable_here(self) -> tuple[bool, str]:
        """Whether the compiled library can run on this machine, and why not."""
        if self.library is None:
            return False, "the package has no compiled library (ONNX only)"
        if self.arch != host_arch():
            return False, f"its library was built for {self.arch}, this machine is {host_arch()}"
        return True, ""


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".zip")

# ELF e_machine -> the architecture names used in meta.json (what a library was really built for)
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}


def elf_arch(path: str | Path) -> str | None:
    """The architecture an ELF shared library was built for (``x86_64``, ``aarch64``, ...), None for non-ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def find_package(path: str | Path | None) -> Path:
    """``path``, else $VESSEL_EDGE_PACKAGE, else the default place; a helpful error when none exists."""
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_DIR
    p = Path(path)
    if p.is_dir() and ((p / META).is_file() or (p / META).is_symlink()):
        return p
    if p.is_file():
        if p.name.lower().endswith(ARCHIVE_SUFFIXES):
            unpack = f"unzip {p}" if p.name.lower().endswith(".zip") else f"tar -xf {p}"
            raise PackageError(f"{p} is an archive, not a package folder; unpack it (`{unpack}`) and pass the "
                               f"folder that holds {META}")
        if p.name == META:
            raise PackageError(f"{p} is the package's {META}, not the package; pass its folder {p.parent}")
        raise PackageError(f"{p} is a file, not a package folder; pass the folder made by edge-export "
                           f"(it holds {META}, {ONNX} and {LIBRARY})")
    if p.is_dir() and any((p / m).exists() for m in (ONNX, LIBRARY)):
        raise PackageError(f"package folder {p} has no {META} (its settings and checksums); re-export the "
                           "package or copy its meta.json back")
    raise PackageError(
        f"no package at {p} (no {META}); make one with `edge-export m2unet --target arm64 --out {p}` "
        f"and pass it with --package DIR or ${ENV_VAR}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_positive_number(v: Any) -> bool:
    """A finite number above 0 (not a bool): a pixel count such as ``preprocess.fov_diameter_px``."""
    return _is_number(v) and v > 0


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


# (section, key, required, check, what it must be): what the runtime reads from meta.json, checked once here
# so that a hand-edited or truncated meta.json is refused with the key's name instead of failing later.
_SCHEMA: tuple[tuple[str, str | None, bool, Any, str], ...] = (
    ("model", None, True, lambda v: isinstance(v, dict), "an object"),
    ("model", "name", True, lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    ("model", "divisor", False, lambda v: _is_int(v, 1), "an integer >= 1"),
    ("model", "overlap", False, lambda v: _is_int(v, 0), "an integer >= 0"),
    ("input", None, True, lambda v: isinstance(v, dict), "an object"),
    ("input", "name", True, lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    ("input", "shape", True, lambda v: isinstance(v, list) and len(v) == 4 and all(_is_int(d, 1) for d in v),
     "a list of 4 positive integers (N, C, H, W)"),
    ("output", None, False, lambda v: isinstance(v, dict), "an object"),
    ("output", "activation", False, lambda v: isinstance(v, str), "a string"),
    ("preprocess", None, False, lambda v: isinstance(v, dict), "an object"),
    ("preprocess", "channel_order", False, lambda v: isinstance(v, str), "a string"),
    ("preprocess", "scale", True, _is_number, "a number"),
    ("preprocess", "mean", True, lambda v: isinstance(v, list) and bool(v) and all(map(_is_number, v)),
     "a list of numbers"),
    ("preprocess", "std", True, lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) and x != 0 for x in v),
     "a list of non-zero numbers"),
    # absent or null in packages made before it was recorded: the runtime then works at native scale
    ("preprocess", "fov_diameter_px", False, lambda v: v is None or is_positive_number(v),
     "a positive number of pixels (the training images' FOV diameter) or null"),
    ("postprocess", None, False, lambda v: isinstance(v, dict), "an object"),
    ("postprocess", "threshold", False, lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("tiling", None, False, lambda v: isinstance(v, dict), "an object"),
    ("tiling", "overlap", False, lambda v: _is_int(v, 0), "an integer >= 0"),
    ("tiling", "blend", False, lambda v: isinstance(v, str), "a string"),
    ("target", None, True, lambda v: isinstance(v, dict), "an object"),
    ("target", "library", False, lambda v: v is None or isinstance(v, str), "a member name or null"),
    ("target", "arch", False, lambda v: v is None or isinstance(v, str), "a string"),
    ("target", "device", False, lambda v: isinstance(v, str), "a string"),
    ("versions", None, False, lambda v: isinstance(v, dict), "an object"),
    ("versions", "tvm", False, lambda v: v is None or isinstance(v, str), "a version string or null"),
    ("files", None, True, lambda v: isinstance(v, dict) and bool(v), "an object naming every member"),
)


def check_meta(p: Path, meta: Any) -> None:
    """Refuse a ``meta.json`` of another format, version or shape, naming the first key that does not fit."""
    where = p / META
    if not isinstance(meta, dict):
        raise PackageError(f"{where} holds a JSON {type(meta).__name__}, not an object; re-export the package")
    if meta.get("format") != FORMAT:
        raise PackageError(f"{p} is not a vessel-edge package ({META} has format={meta.get('format')!r}, "
                           f"expected {FORMAT!r}); pass a folder made by edge-export")
    version = meta.get("format_version")
    if not _is_int(version, 0) or version != FORMAT_VERSION:
        raise PackageError(f"{p} has package format version {version!r}, this runtime reads version "
                           f"{FORMAT_VERSION}; re-export it with this release of edge-export")
    missing = object()
    for section, key, required, ok, what in _SCHEMA:
        sec = meta.get(section, missing)
        if key is None:
            value, name = sec, section
        elif sec is missing:
            continue  # an optional section that is absent (a required one failed above)
        else:
            value, name = sec.get(key, missing), f"{section}.{key}"
        if value is missing:
            if required:
                raise PackageError(f"{where} lacks the required key '{name}'; re-export the package with edge-export")
            continue
        if not ok(value):
            raise PackageError(f"{where}: '{name}' must be {what}, got {json.dumps(value)[:60]}; re-export the "
                               "package with edge-export")
    for name, info in meta["files"].items():
        if name in ("", ".", "..", META) or "/" in name or "\\" in name:
            raise PackageError(f"{where} lists member {name!r}, which is not a file name inside the package; "
                               "re-export the package")
        sha = info.get("sha256") if isinstance(info, dict) else None
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise PackageError(f"{where}: member {name} has no sha256 checksum; re-export the package (every "
                               "member is verified against it)")
    if ONNX not in meta["files"]:
        raise PackageError(f"package {p} has no {ONNX} in its inventory ({META} 'files'); re-export it")
    lib = meta["target"].get("library")
    if lib is not None and lib not in meta["files"]:
        raise PackageError(f"{where} names library {lib!r}, which is not among its members "
                           f"({', '.join(meta['files'])}); re-export the package")


def check_members(p: Path, meta: dict[str, Any], verify: bool = True) -> None:
    """The folder holds exactly the members of the inventory, as regular files inside it, with their sha256."""
    root = p.resolve()
    files = meta["files"]
    extra = sorted(e.name for e in p.iterdir() if e.name != META and e.name not in files)
    if extra:
        raise PackageError(f"package {p} holds {', '.join(extra)}, which its inventory ({META} 'files') does not "
                           "list; remove it or re-export the package (only checksummed members are trusted)")
    for name in (META, *files):
        f = p / name
        if f.is_symlink() and not f.resolve().is_relative_to(root):
            raise PackageError(f"package member {name} in {p} is a symlink to {os.readlink(f)}, outside the "
                               "package; copy the real file into the package (e.g. `cp -L`) or re-export it")
        if name == META:
            continue
        if not f.is_file():
            raise PackageError(f"package {p} is missing member {name}; re-export it")
        if verify and sha256_file(f) != files[name]["sha256"]:
            raise PackageError(f"package member {name} in {p} does not match its sha256 in {META} "
                               "(corrupt or modified); re-export or re-copy the package")


def load_package(path: str | Path | None = None, verify: bool = True) -> Package:
    """Read and validate a package directory: the format, the keys the runtime reads, an inventory that lists
    every member (nothing more, no links out of the package); checksums are verified when ``verify``."""
    p = find_package(path)
    try:
        meta = json.loads((p / META).read_bytes())
    except OSError as exc:
        raise PackageError(f"cannot read {p / META} ({exc.strerror}); check its permissions or re-copy the "
                           "package") from exc
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise PackageError(f"{p / META} is not readable JSON ({exc}); re-export the package") from exc
    info = PackageMeta.from_json(p, meta)
    check_members(p, meta, verify)
    return Package(p, info)


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
        # mkdtemp makes the folder 0700: a package is an ordinary folder (0777 less the umask), readable by the
        # service account that runs edge-run on the board
        os.chmod(tmp, 0o777 & ~current_umask())
        raise_if_interrupted()  # Ctrl-C during the export (TVM's pipeline can swallow it): keep no package
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
