"""benchmarks.a72_profile: the instrument's block dump attributed to a library's functions, on a small aarch64
library built here (blocks placed at a made-up load base, one block outside the library), checked against the
counts the dumps were written with."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmarks.a72_profile import fmt, profile, symbols

pytestmark = pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("llvm-mca-14")),
                                reason="needs aarch64-linux-gnu-gcc and llvm-14: run docker/install/setup.sh")

SRC = """
void fma_loop(float *restrict a, const float *restrict b, const float *restrict c, int n) {
    for (int i = 0; i < n; i++) a[i] += b[i] * c[i];
}
int scalar_add(int x) { return x * 3 + 1; }
"""
BASE = 0x5500000000


def _dump(path, blocks):
    with open(path, "w") as f:
        for va, ex, code in blocks:
            f.write(f"TB {va:x} {ex} {len(code) // 4}\n")
            for i in range(0, len(code), 4):
                f.write(" ".join(f"0x{b:02x}" for b in code[i:i + 4]) + "\n")


def test_cycles_instructions_and_fmlas_land_on_the_right_function(tmp_path):
    (tmp_path / "k.c").write_text(SRC)
    lib = tmp_path / "model.so"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O3", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "k.c")],
                   check=True)
    addrs, names = symbols(lib)
    data = lib.read_bytes()
    nm = subprocess.run(["aarch64-linux-gnu-nm", "-S", "--defined-only", str(lib)], capture_output=True, text=True,
                        check=True).stdout
    size = {ln.split()[3]: int(ln.split()[1], 16) for ln in nm.splitlines() if len(ln.split()) == 4}
    off = {n: a for a, n in zip(addrs, names)}
    fma = data[off["fma_loop"]:off["fma_loop"] + size["fma_loop"]]
    add = data[off["scalar_add"]:off["scalar_add"] + size["scalar_add"]]
    outside = bytes([0x00, 0x04, 0x00, 0x91]) * 3  # add x0, x0, #1 (three times), in no library
    # K=1 and K=4 runs: per inference (K4 - K1) / 3 = 100 fma_loop, 7 scalar_add, 50 outside executions
    _dump(tmp_path / "k1.txt", [(BASE + off["fma_loop"], 10, fma), (BASE + off["scalar_add"], 5, add),
                                (0x7000000000, 1, outside)])
    _dump(tmp_path / "k4.txt", [(BASE + off["fma_loop"], 310, fma), (BASE + off["scalar_add"], 26, add),
                                (0x7000000000, 151, outside)])
    rows = {r.function: r for r in profile(lib, tmp_path / "k1.txt", tmp_path / "k4.txt")}
    assert set(rows) == {"fma_loop", "scalar_add", "outside model.so (runtime, libc, Python)"}
    assert rows["fma_loop"].insns_m == pytest.approx(100 * len(fma) / 4 / 1e6)
    assert rows["fma_loop"].fmla_q128_m == pytest.approx(100 / 1e6)  # its one fmla v.4s, 100 times
    assert rows["scalar_add"].insns_m == pytest.approx(7 * len(add) / 4 / 1e6) and rows["scalar_add"].fmla_q128_m == 0
    assert rows["outside model.so (runtime, libc, Python)"].insns_m == pytest.approx(150 / 1e6)
    assert sum(r.share for r in rows.values()) == pytest.approx(1.0)
    assert all(r.cycles_m > 0 for r in rows.values())
    text = fmt(list(rows.values()))
    assert text.startswith("estimated (emulated A72): llvm-mca cycles of one inference by function") and "fma_loop" in text
