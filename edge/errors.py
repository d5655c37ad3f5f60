"""The one exception family of vessel-edge, the option parsers every command shares (a choice with a did-you-mean
hint, an HxW size) and the CLI guard."""
from __future__ import annotations

import difflib
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


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


def parse_size(text: str, option: str = "--size", minimum: int = 1) -> tuple[int, int]:
    """``'544'`` or ``'544x960'`` (HxW) -> (H, W); ``option`` names the flag in the error, each side >= ``minimum``.

    >>> parse_size("544x960")
    (544, 960)
    >>> parse_size("128")
    (128, 128)
    """
    parts = str(text).strip().lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < minimum:
        least = f", at least {minimum}" if minimum > 1 else ""
        raise EdgeError(f"{option} must look like 544 or 544x960 (HxW{least}), got '{text}'")
    return dims[0], dims[1]


EXIT_INTERRUPTED = 130

# Ctrl-C raises KeyboardInterrupt in Python code, but a native library running a Python callback (TVM's pass
# pipeline does) can swallow it and carry on, or re-raise it as an error of its own (TVM's FFI: RuntimeError).
# run_cli latches the signal so that the atomic writers (edge.imageio.write_atomic, edge.package.write_package)
# refuse to put an output in place after one, and any error after it ends the command as interrupted.
_interrupted = False


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came during this command, even when something swallowed it."""
    if _interrupted:
        raise KeyboardInterrupt


def run_cli(body: Callable[[], int], verbose: bool = False) -> int:
    """Run a command's body: an :class:`EdgeError` becomes one ``error: ...`` line on stderr and its exit code.

    Tracebacks are shown only with ``verbose`` (``-v``). Every console script goes through here. Ctrl-C ends it
    with exit 130 and one line, even when a native library swallowed the KeyboardInterrupt.
    """
    global _interrupted
    import signal
    import threading

    _interrupted = False
    previous = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = body()
        raise_if_interrupted()
        return code
    except EdgeError as exc:
        if _interrupted:
            return _interrupted_exit()
        if verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted_exit()
    except Exception:
        if _interrupted:  # a native library turned the KeyboardInterrupt into its own error (TVM: RuntimeError)
            return _interrupted_exit()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_parsed(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int],
               argv: list[str] | None = None) -> int:
    """A ``main(argv)`` in one line: add ``-v/--verbose`` to ``parser``, parse ``argv`` and run ``body(args)`` under
    :func:`run_cli`."""
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    return run_cli(lambda: body(args), args.verbose)


def _interrupted_exit() -> int:
    print("error: interrupted; outputs in progress were not kept", file=sys.stderr)
    return EXIT_INTERRUPTED
