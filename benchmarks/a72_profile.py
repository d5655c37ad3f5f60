"""Where one inference's estimated A72 cycles go: the arm64proxy block dump of a TVM library, per kernel.

The instrument (../shared/tools/arm64proxy) weights every executed translated block by llvm-mca's cycles for
``-mcpu=cortex-a72`` and prints the total. This attributes the same blocks to the functions of the package's
``model.so`` (found by matching each block's bytes in the file, then its symbol table), so a kernel's share of
the total, its instructions, its 4-lane FMLAs and its cycles per FMLA can be read off: the figures that say which
kernel to improve. Everything is ``estimated (emulated A72)``.

  python -m benchmarks.a72_profile --library PKG/model.so --tb K1.txt K4.txt [--top 20]

K1/K4 are the instrument's ``a72_tb_<i>_tvm_{1,4}.txt`` dumps (runs with one and four inferences) from the rig's
``rootfs/opt/job``, as a72count left them after its ``--mca`` pass; ``--json`` keeps the table.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import EdgeError, run_cli

LABEL = "estimated (emulated A72)"
FMLA_Q = re.compile(r"^\s*fmla\s+v\d+\.4s")
POST = re.compile(r"^(\s*\S+\s+.*)\[(\w+)\],\s*(#?)(-?(?:0x[0-9a-f]+|\d+)|[xw]\d+)$")
PRE = re.compile(r"^(\s*\S+\s+.*)\[(\w+),\s*#(-?(?:0x[0-9a-f]+|\d+))\]!$")


@dataclass
class KernelRow:
    function: str
    cycles_m: float
    share: float
    insns_m: float
    fmla_q128_m: float
    blocks: int

    @property
    def cycles_per_fmla(self) -> float | None:
        return self.cycles_m / self.fmla_q128_m if self.fmla_q128_m else None


def parse_tb(path: Path) -> dict[tuple[int, int], tuple[int, list[str]]]:
    """(vaddr, n instructions) -> (executions, instruction byte lines) of one tbdump file."""
    out: dict[tuple[int, int], tuple[int, list[str]]] = {}
    cur = None
    for line in path.read_text().splitlines():
        if line.startswith("TB "):
            _, va, ex, n = line.split()
            cur = (int(va, 16), int(n))
            out[cur] = (int(ex), [])
        elif cur is not None:
            out[cur][1].append(line.strip())
    return out


def _unwriteback(lines: list[str]) -> list[str]:
    """The instrument's rewrite of pre/post-indexed addressing as access + add (LLVM's A57 model, used for the A72,
    otherwise makes the base update wait for the load): same figures as its total."""
    def bump(base: str, v: str) -> str:
        if v[0] in "xw":
            return f"add {base}, {base}, {v}"
        n = int(v, 0)
        return f"{'add' if n >= 0 else 'sub'} {base}, {base}, #{abs(n)}"

    out = []
    for ln in lines:
        ln = ln.split("//")[0].rstrip()
        if m := POST.match(ln):
            out += [f"{m.group(1)}[{m.group(2)}]", bump(m.group(2), m.group(4))]
        elif m := PRE.match(ln):
            out += [bump(m.group(2), m.group(3)), f"{m.group(1)}[{m.group(2)}]"]
        else:
            out.append(ln)
    return out


def _disassemble(blocks: list[list[str]]) -> list[list[str] | None]:
    """Each block's instructions as llvm-mc prints them (None when a block does not decode)."""
    out = []
    for code in blocks:
        r = subprocess.run(["llvm-mc-14", "--disassemble", "-triple=aarch64", "-mattr=+neon,+fp-armv8,+crc,+crypto"],
                           input="\n".join(code) + "\n", capture_output=True, text=True, check=False)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.strip().startswith(".text")]
        out.append(lines if len(lines) == len(code) else None)
    return out


def _mca(blocks: list[list[str]]) -> list[float]:
    """llvm-mca's steady-state cycles per execution of each block (Cortex-A72)."""
    regions = "".join(f"# LLVM-MCA-BEGIN r{i}\n" + "\n".join(_unwriteback(b)) + "\n# LLVM-MCA-END\n"
                      for i, b in enumerate(blocks))
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write(regions)
        f.flush()
        r = subprocess.run(["llvm-mca-14", "-mtriple=aarch64", "-mcpu=cortex-a72", "-iterations=100", f.name],
                           capture_output=True, text=True, check=False)
    cyc = [int(x) / 100 for x in re.findall(r"Total Cycles:\s+(\d+)", r.stdout)]
    if len(cyc) != len(blocks):
        raise EdgeError(f"llvm-mca-14 modelled {len(cyc)} of {len(blocks)} blocks: {r.stderr.strip()[-200:]}")
    return cyc


def symbols(library: Path) -> tuple[list[int], list[str]]:
    """Sorted start addresses and names of the library's functions (aarch64-linux-gnu-nm)."""
    r = subprocess.run(["aarch64-linux-gnu-nm", "--defined-only", "-n", str(library)], capture_output=True,
                       text=True, check=False)
    if r.returncode:
        raise EdgeError(f"aarch64-linux-gnu-nm cannot read {library}: install g++-aarch64-linux-gnu (setup.sh does)")
    addrs, names = [], []
    for ln in r.stdout.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return addrs, names


def load_base(library: Path, blocks: dict, top: list) -> int:
    """Where the guest mapped ``library``: the base most of the heaviest blocks' bytes agree on."""
    data = library.read_bytes()
    votes: collections.Counter[int] = collections.Counter()
    for key in top[:60]:
        code = bytes(int(b, 16) for ln in blocks[key][1] for b in ln.split())
        off = data.find(code)
        if off >= 0 and data.find(code, off + 1) < 0:  # a unique match
            votes[key[0] - off] += 1
    if not votes:
        raise EdgeError(f"no executed block matches {library.name}: these dumps are not of this library's run")
    return votes.most_common(1)[0][0]


def profile(library: str | Path, tb1: str | Path, tb4: str | Path, runs: int = 3) -> list[KernelRow]:
    """Per-function llvm-mca cycles, instructions and 4-lane FMLAs of one inference (K4 - K1 over ``runs``)."""
    library = Path(library)
    a, b = parse_tb(Path(tb1)), parse_tb(Path(tb4))
    w = {k: ((ex - a.get(k, (0, []))[0]) / runs, code) for k, (ex, code) in b.items() if ex > a.get(k, (0, []))[0]}
    order = sorted(w, key=lambda k: -w[k][0] * k[1])
    base = load_base(library, w, order)
    addrs, names = symbols(library)
    size = library.stat().st_size
    keys = order
    dis = _disassemble([w[k][1] for k in keys])
    ok = [(k, d) for k, d in zip(keys, dis) if d is not None]
    cyc = _mca([d for _, d in ok])
    total_insn = sum(w[k][0] * k[1] for k in keys)
    modelled_insn = sum(w[k][0] * k[1] for k, _ in ok)
    est = sum(w[k][0] * c for (k, _), c in zip(ok, cyc))
    cpi = est / modelled_insn if modelled_insn else 0.0
    agg: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    per_block = {k: (c, sum(1 for ln in d if FMLA_Q.match(ln))) for (k, d), c in zip(ok, cyc)}
    for k in keys:
        off = k[0] - base
        if 0 <= off < size:
            i = bisect.bisect_right(addrs, off) - 1
            fn = names[i] if i >= 0 else "model.so (no symbol)"
        else:
            fn = "outside model.so (runtime, libc, Python)"
        ex = w[k][0]
        c, nf = per_block.get(k, (k[1] * cpi, 0))  # an undecodable block: at the average CPI
        row = agg[fn]
        row[0] += ex * c
        row[1] += ex * k[1]
        row[2] += ex * nf
        row[3] += 1
    total = sum(r[0] for r in agg.values())
    rows = [KernelRow(fn, r[0] / 1e6, r[0] / total, r[1] / 1e6, r[2] / 1e6, int(r[3])) for fn, r in agg.items()]
    rows.sort(key=lambda r: -r.cycles_m)
    if abs(sum(r.insns_m for r in rows) * 1e6 - total_insn) > 1:
        raise EdgeError("the per-function instruction counts do not add up to the dump's total")
    return rows


def fmt(rows: list[KernelRow], top: int = 20) -> str:
    total = sum(r.cycles_m for r in rows)
    out = [f"{LABEL}: llvm-mca cycles of one inference by function, total {total:.1f} M",
           "| function | cycles | share | instructions | 4-lane FMLA | cycles per FMLA |", "|---|---|---|---|---|---|"]
    for r in rows[:top]:
        cpf = "" if r.cycles_per_fmla is None else f"{r.cycles_per_fmla:.2f}"
        out.append(f"| {r.function} | {r.cycles_m:.1f} M | {100 * r.share:.1f} % | {r.insns_m:.1f} M | "
                   f"{r.fmla_q128_m:.1f} M | {cpf} |")
    rest = rows[top:]
    if rest:
        out.append(f"| ({len(rest)} more) | {sum(r.cycles_m for r in rest):.1f} M | "
                   f"{100 * sum(r.share for r in rest):.1f} % | {sum(r.insns_m for r in rest):.1f} M | "
                   f"{sum(r.fmla_q128_m for r in rest):.1f} M | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", required=True, help="the aarch64 model.so the dumps were taken of")
    ap.add_argument("--tb", nargs=2, required=True, metavar=("K1", "K4"), help="a72count's tb dumps (K=1, K=4)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    a = ap.parse_args(argv)

    def body() -> int:
        for f in (a.library, *a.tb):
            if not Path(f).is_file():
                raise EdgeError(f"{f} does not exist")
        rows = profile(a.library, *a.tb)
        if a.json:
            Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
        print(fmt(rows, a.top))
        return 0

    return run_cli(body, a.verbose)


if __name__ == "__main__":
    sys.exit(main())
