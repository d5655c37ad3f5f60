"""The hostile-input corpus: every console script against inputs a clinic's staff or a careless script makes.

The checks live in ``hostile_harness`` (importable by the tests); this file holds the fixture and the tally line
printed at the end of the run (``hostile corpus: N cases, tracebacks 0, partial outputs 0``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from hostile_harness import TALLY, Refusal, check_refusal, snapshot  # noqa: F401  (re-exported for the tests)


@pytest.fixture
def expect_refusal(capsys) -> Callable[..., Refusal]:
    """Run ``main(argv)`` in-process and check it refuses cleanly.

    ``watch``: folders whose files must be unchanged afterwards (the output folder, the package, the inputs).
    """
    def run(main: Callable[[list[str]], int], argv: Sequence[str], *, watch: Iterable[Path] = (),
            match: str | None = None, rc: int | None = None) -> Refusal:
        watch = list(watch)
        capsys.readouterr()
        before = snapshot(watch)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        if code is None:
            code = 0
        # argparse prints "prog: error: ..." and a usage line; normalise to our one-line form for the check
        err = re.sub(r"^[\w.-]+: error: ", "error: ", err, flags=re.M)
        err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("usage:") and not ln.startswith(" "))
        return check_refusal(code, out, err, before, snapshot(watch), match=match, rc_expected=rc)

    return run


def pytest_terminal_summary(terminalreporter) -> None:  # pragma: no cover - reporting only
    if TALLY["cases"]:
        terminalreporter.write_line(
            f"hostile corpus: {TALLY['cases']} cases, tracebacks {TALLY['tracebacks']}, "
            f"partial outputs {TALLY['partial_outputs']}")
