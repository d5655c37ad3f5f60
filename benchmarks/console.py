"""edge-bench's progress lines: one prefix, on stderr, flushed (stdout carries only the summary)."""
from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"[edge-bench] {msg}", file=sys.stderr, flush=True)
