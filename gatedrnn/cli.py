"""What every experiment script shares on its command line: user errors and atomic outputs.

* :func:`run` runs a script's ``main(argv)``; a user error (bad option, nonsense number,
  missing/empty/non-UTF-8 input file, unwritable output folder, incompatible checkpoint,
  invalid value caught by the library's checks) prints one line ``prog: error: ...`` on
  stderr and exits with status 2, without a traceback (set ``GATEDRNN_DEBUG=1`` to see it).
  A training run whose loss became NaN/inf exits with status 1 and one line naming the
  step.
* :class:`ArgumentParser`: ``argparse.ArgumentParser`` whose errors are one line (no usage
  dump) and go through :func:`run`; argument types :func:`positive_int`,
  :func:`nonneg_int`, :func:`positive_float`, :func:`finite_float`, :func:`fraction`,
  :func:`text_file`, :func:`output_dir`, :func:`output_file` check values when the command
  line is parsed.
* :func:`atomic_path`, :func:`write_text`, :func:`write_json`: write an output under a
  temporary name in the same folder and rename it into place only when it is complete, so
  an interrupted or failed run never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

DEBUG_ENV = "GATEDRNN_DEBUG"


class UsageError(Exception):
    """A mistake in how the script was called; :func:`run` reports it in one line, exit 2."""


# ------------------------------------------------------------------------------- parser


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises :class:`UsageError` instead of printing the
    usage and exiting, so that :func:`run` reports every user error the same way."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` with argparse's message (plus a pointer to ``--help``)."""
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(kind: type, text: str, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and value != value:  # NaN
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (steps, sizes, batch sizes)."""
    value = _number(int, text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    """An argparse type: an integer >= 0 (seeds, counts that may be zero)."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (learning rates, clip norms, temperatures)."""
    value = _number(float, text, "a finite number > 0")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: any finite number (biases, scales that may be zero or negative)."""
    value = _number(float, text, "a finite number")
    if not abs(value) < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number in ``[0, 1)`` (dropout, validation share)."""
    value = _number(float, text, "a number in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def text_file(text: str) -> Path:
    """An argparse type: an existing, non-empty, UTF-8 text file; returns its path."""
    path = Path(text)
    check_text_file(path, lambda msg: argparse.ArgumentTypeError(msg))
    return path


def check_text_file(path: str | Path, error: Callable[[str], Exception] = UsageError) -> str:
    """Read a UTF-8 text file, raising ``error(message)`` if it is missing, empty or not
    UTF-8 (the message names the file and the byte offset of the first bad byte).

    Returns:
      the file's text.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"file not found: {path}")
    if not path.is_file():
        raise error(f"not a regular file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    if not data.strip():
        raise error(f"file is empty: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{path} is not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def output_dir(text: str) -> Path:
    """An argparse type: a folder outputs can be written to (created if missing)."""
    path = Path(text)
    try:
        check_output_dir(path)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def output_file(text: str) -> Path:
    """An argparse type: a file path whose folder can be written to (created if missing)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; expected a file name")
    output_dir(str(path.parent))
    return path


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed and prove a file can be written in it.

    Raises:
      UsageError: it is a file, sits under a file, or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to output folder {path}: {e.strerror or e}") from None
    return path


# ------------------------------------------------------------------------------ outputs


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix (``.curve.1234.tmp.png``) so that writers that
    look at the extension (matplotlib) still work. On an exception it is deleted and
    ``path`` is left as it was.

    Example::

        with atomic_path(out / "curve.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; NaN/inf are refused (invalid JSON)."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


# ---------------------------------------------------------------------------------- run


def _user_error(e: BaseException) -> bool:
    if isinstance(e, (UsageError, ValueError, UnicodeError)):
        return True
    # files and folders: missing, not a folder, permission, disk full
    return isinstance(e, OSError) and e.errno is not None


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` as a script's entry point and exit with a clean status.

    Exit status: 0 on success (or ``main``'s int return value); 2 with one line
    ``prog: error: message`` on stderr for a user error (:class:`UsageError`, any
    ``ValueError`` such as the library's input checks or a checkpoint mismatch, a missing
    or unreadable file); 1 with one line for a non-finite training loss; 130 on Ctrl-C.
    Other exceptions are bugs and keep their traceback. ``GATEDRNN_DEBUG=1`` re-raises
    everything.

    Args:
      main: the script's ``main(argv)``; an int it returns is the exit status, anything
        else (None, a results dict) means 0.
      argv: the arguments (default: ``sys.argv[1:]``).
    """
    prog = Path(sys.argv[0]).name or "gatedrnn"
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        status = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except FloatingPointError as e:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if debug or not _user_error(e):
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


__all__ = [
    "ArgumentParser",
    "UsageError",
    "atomic_path",
    "check_output_dir",
    "check_text_file",
    "finite_float",
    "fraction",
    "nonneg_int",
    "output_dir",
    "output_file",
    "positive_float",
    "positive_int",
    "run",
    "text_file",
    "write_json",
    "write_text",
]
