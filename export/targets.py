"""Target presets as data (TVM target tags): what to compile for, how to link, what the device is."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from edge.errors import EdgeError, look_up_option

AARCH64_CXX = "aarch64-linux-gnu-g++"
DEFAULT_CUDA_ARCH = "sm_89"


@dataclass(frozen=True)
class TargetPreset:
    """One compile target. ``target`` is a TVM target dict; ``mcpu='native'`` means the host's CPU."""

    name: str
    description: str
    target: dict[str, Any]
    arch: str  # the architecture the library runs on, as edge.package.host_arch() spells it
    device: str = "cpu"
    cross_compiler: str | None = None  # C++ driver that links the shared library, None = host default
    host: dict[str, Any] | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def is_cross(self) -> bool:
        from edge.package import host_arch

        return self.arch != host_arch()

    def resolved_target(self, cuda_arch: str | None = None) -> dict[str, Any]:
        """The target dict with host-dependent fields filled in (``native`` CPU, CUDA arch)."""
        t = json.loads(json.dumps(self.target))
        if t.get("mcpu") == "native":
            t["mcpu"] = host_cpu()
        if self.host and self.host.get("mcpu") == "native":
            t["host"] = {**self.host, "mcpu": host_cpu()}
        elif self.host:
            t["host"] = dict(self.host)
        if t.get("kind") == "cuda":
            t["arch"] = cuda_arch or DEFAULT_CUDA_ARCH
        return t

    def tvm_target(self, cuda_arch: str | None = None):
        import tvm

        return tvm.target.Target(self.resolved_target(cuda_arch))

    def check_toolchain(self) -> None:
        """Raise when the linker this preset needs is missing, with the command that installs it."""
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            raise EdgeError(f"target '{self.name}' needs the cross compiler {self.cross_compiler}, which is not on "
                            "PATH; install it with `sudo apt-get install g++-aarch64-linux-gnu`")


def host_cpu() -> str:
    """The host CPU as LLVM names it (never hard-coded: sessions land on different CPUs)."""
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


_A64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}

PRESETS: dict[str, TargetPreset] = {p.name: p for p in [
    TargetPreset("arm64", "RK3399 big cores: 2x Cortex-A72 (aarch64, NEON), cross-linked with aarch64-linux-gnu-g++",
                 {**_A64, "mcpu": "cortex-a72", "num-cores": 2}, "aarch64", cross_compiler=AARCH64_CXX,
                 aliases=("rk3399",)),
    TargetPreset("rk3399-little", "RK3399 little cores: 4x Cortex-A53 (aarch64, NEON)",
                 {**_A64, "mcpu": "cortex-a53", "num-cores": 4}, "aarch64", cross_compiler=AARCH64_CXX),
    TargetPreset("x86_64", "this host's x86-64 CPU (LLVM -mcpu detected at export time)",
                 {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "native"}, "x86_64"),
    TargetPreset("cuda", "NVIDIA GPU (CUDA; --cuda-arch sm_XX, default " + DEFAULT_CUDA_ARCH + "), x86-64 host",
                 {"kind": "cuda"}, "x86_64", device="cuda",
                 host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "native"}),
]}
ALIASES = {a: p.name for p in PRESETS.values() for a in p.aliases}


def list_targets() -> list[str]:
    return list(PRESETS) + list(ALIASES)


def get_target(name_or_json: str) -> TargetPreset:
    """A preset by name (or alias), or a raw TVM target JSON for experts: ``'{"kind": "llvm", ...}'``."""
    s = name_or_json.strip()
    if s.startswith("{"):
        try:
            t = json.loads(s)
        except json.JSONDecodeError as exc:
            raise EdgeError(f"--target looks like JSON but does not parse ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(t, dict) or "kind" not in t:
            raise EdgeError('a raw --target must be a TVM target JSON object with a "kind", e.g. '
                            '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}')
        triple = str(t.get("mtriple", ""))
        arch = "aarch64" if triple.startswith("aarch64") else "x86_64"
        device = "cuda" if t["kind"] == "cuda" else "cpu"
        return TargetPreset("custom", f"raw TVM target {json.dumps(t)}", t, arch, device=device,
                            cross_compiler=AARCH64_CXX if arch == "aarch64" else None)
    name = look_up_option(ALIASES.get(s, s), list_targets(), "target")
    return PRESETS[ALIASES.get(name, name)]


def host_preset() -> TargetPreset:
    """The preset for compiling a host twin of a cross target (numerics checked here before the device)."""
    from edge.package import host_arch

    if host_arch() != "x86_64":
        return TargetPreset("host", "this host", {"kind": "llvm", "mcpu": "native"}, host_arch())
    return PRESETS["x86_64"]
