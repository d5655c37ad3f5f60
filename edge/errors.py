"""The one exception family of vessel-edge and the option lookup that names valid choices."""
from __future__ import annotations

import difflib
import sys
import traceback
from collections.abc import Callable, Iterable


class EdgeError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""

    exit_code = 2


class PackageError(EdgeError):
    """A package directory that this runtime cannot load or run."""

    exit_code = 3


class InputError(EdgeError):
    """An input image, mask or option value that cannot be used."""

    exit_code = 4


def look_up_option(value: str, choices: Iterable[str], what: str = "option") -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise with a did-you-mean hint.

    >>> look_up_option("arm46", ["arm64", "x86_64"], "target")
    Traceback (most recent call last):
    ...
    edge.errors.EdgeError: unknown target 'arm46'; did you mean 'arm64'? choices: arm64, x86_64
    """
    options = list(choices)
    if value in options:
        return value
    lowered = {o.lower(): o for o in options}
    if value.lower() in lowered:
        return lowered[value.lower()]
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    raise EdgeError(f"unknown {what} '{value}'{hint} choices: {', '.join(options)}")


EXIT_INTERRUPTED = 130


def run_cli(body: Callable[[], int], verbose: bool = False) -> int:
    """Run a command's body: an :class:`EdgeError` becomes one ``error: ...`` line on stderr and its exit code.

    Tracebacks are shown only with ``verbose`` (``-v``). Every console script goes through here.
    """
    try:
        return body()
    except EdgeError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; outputs in progress were not kept", file=sys.stderr)
        return EXIT_INTERRUPTED
