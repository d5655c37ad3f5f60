"""The hostile-input corpus's checks (shared by its tests and conftest): every console script against inputs a clinic's staff or a careless script makes.

Each case goes through :func:`expect_refusal`: a non-zero exit, exactly one ``error: ...`` line that names the
problem (and, by the house style, the fix), no traceback, and no file left behind in the folders the case
watches. The tally of cases is printed at the end of the run (``hostile corpus: N cases, tracebacks 0, partial
outputs 0``), which is what the session notes quote.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TALLY: dict[str, int] = {"cases": 0, "tracebacks": 0, "partial_outputs": 0}


def snapshot(folders: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """Every file under ``folders`` with (size, mtime_ns): what a refused run must leave exactly as it was."""
    seen: dict[Path, tuple[int, int]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for p in [folder, *folder.rglob("*")] if folder.is_dir() else [folder]:
            if p.is_file() or p.is_symlink():
                st = p.lstat()
                seen[p] = (st.st_size, st.st_mtime_ns)
    return seen


@dataclass
class Refusal:
    rc: int
    line: str
    stderr: str
    stdout: str
    changed: list[Path] = field(default_factory=list)


def check_refusal(rc: int, out: str, err: str, before: dict, after: dict, *,
                  match: str | None = None, rc_expected: int | None = None) -> Refusal:
    """The assertions shared by in-process and subprocess cases (see the module docstring)."""
    TALLY["cases"] += 1
    text = out + err
    if "Traceback (most recent call last)" in text:
        TALLY["tracebacks"] += 1
        pytest.fail(f"traceback instead of a one-line error:\n{text[-3000:]}")
    changed = sorted({p for p in after if before.get(p) != after[p]} | {p for p in before if p not in after})
    if changed:
        TALLY["partial_outputs"] += 1
        pytest.fail(f"a refused run changed or left files: {[str(p) for p in changed]}\n{text[-2000:]}")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc != 0, f"exit 0 for a hostile input:\n{text[-2000:]}"
    if rc_expected is not None:
        assert rc == rc_expected, f"exit {rc}, expected {rc_expected}:\n{text[-2000:]}"
    assert len(errors) == 1, f"expected exactly one 'error:' line, got {len(errors)}:\n{err[-2000:]}"
    line = errors[0]
    if match is not None:
        assert re.search(match, line), f"{line!r} does not match {match!r}"
    return Refusal(rc, line, err, out, changed)
