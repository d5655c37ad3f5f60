"""Target presets: lookup with suggestions, raw JSON, aliases, cross-compiler checks."""
from __future__ import annotations

import pytest

from edge.errors import EdgeError
from export.targets import PRESETS, get_target, host_cpu


def test_unknown_target_suggests_the_nearest_preset():
    with pytest.raises(EdgeError, match=r"unknown target 'arm46'; did you mean 'arm64'\? choices: arm64, "):
        get_target("arm46")


def test_alias_and_presets():
    assert get_target("rk3399") is PRESETS["arm64"]
    a72 = PRESETS["arm64"].resolved_target()
    assert a72["mtriple"] == "aarch64-linux-gnu" and a72["mcpu"] == "cortex-a72" and "+neon" in a72["mattr"]
    assert PRESETS["rk3399-little"].resolved_target()["mcpu"] == "cortex-a53"
    assert PRESETS["cuda"].resolved_target("sm_80")["arch"] == "sm_80"


def test_x86_cpu_is_detected_not_hard_coded():
    t = PRESETS["x86_64"].resolved_target()
    assert t["mcpu"] == host_cpu() and t["mcpu"] != "native"


def test_raw_target_json():
    p = get_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55"}')
    assert p.arch == "aarch64" and p.cross_compiler == "aarch64-linux-gnu-g++"
    with pytest.raises(EdgeError, match="does not parse"):
        get_target('{"kind": llvm}')
    with pytest.raises(EdgeError, match='with a "kind"'):
        get_target('{"mcpu": "x"}')


def test_missing_cross_compiler_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EdgeError, match=r"apt-get install g\+\+-aarch64-linux-gnu"):
        PRESETS["arm64"].check_toolchain()
