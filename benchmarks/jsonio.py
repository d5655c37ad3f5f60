"""JSON files of the benchmarks: read one with a one-line error that names the file, write one atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.imageio import write_atomic


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """The parsed JSON of ``path``; :class:`EdgeError` naming ``what`` (e.g. "plan") when it cannot be read or
    parsed, ``hint`` appended to the parse error."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except OSError as exc:
        raise EdgeError(f"cannot read {what}{p} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise EdgeError(f"{what}{p} is not JSON ({exc.msg} at line {exc.lineno}){hint}") from None


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode())
