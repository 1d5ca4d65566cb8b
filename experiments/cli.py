"""What every experiment script shares: its command line, user errors, float64, results.

Scripts import it as ``from experiments import cli``; they run as modules from the repo
root, ``python -m experiments.NAME`` (``experiments`` is a package; no script edits
``sys.path``).

* :func:`run` runs a script's ``main(argv)``; a user error (bad option, nonsense number,
  missing/empty/non-UTF-8 input file, unwritable output folder, incompatible checkpoint,
  invalid value caught by the library's checks) prints one line ``prog: error: ...`` on
  stderr and exits with status 2, without a traceback (set ``GATEDRNN_DEBUG=1`` to see it).
  A training run whose loss became NaN/inf exits with status 1 and one line naming the
  step.
* :class:`ArgumentParser`: ``argparse.ArgumentParser`` whose errors are one line (no usage
  dump) and go through :func:`run`; argument types :func:`positive_int`,
  :func:`nonneg_int`, :func:`seed`, :func:`positive_float`, :func:`finite_float`, :func:`fraction`,
  :func:`text_file`, :func:`output_dir`, :func:`output_file` check values when the command
  line is parsed.
* :func:`atomic_path`, :func:`write_text` (from :mod:`gatedrnn.training.io`),
  :func:`write_json`, :func:`write_results`: write an output under a temporary name in the
  same folder and rename it into place only when it is complete, so an interrupted or
  failed run never leaves a truncated file that looks finished; JSON never holds a bare
  NaN (:func:`to_jsonable`). A study that saves as it goes writes its results so far to
  ``name.partial.json`` (``"complete": false``, :func:`write_partial_json`) and the
  finished results once, at the end (:func:`write_final_json`), so an interrupted rerun
  leaves the previous complete results in place. Logs are appended to, never deleted;
  :data:`RUN_ID` tags a run's lines.
* :func:`parser`: the options every study has (``--quick``, ``--seed``, ``--out``).
* One ``--quick`` rule (:meth:`ArgumentParser.honour_quick`): ``--quick`` gives small
  values to the options it shrinks, except those given on the command line, which win
  (``--quick --steps 100`` runs 100 steps). Options checked against each other
  (:meth:`ArgumentParser.refuse`) and names that match nothing are one-line errors.
* One writer per output: when :class:`ArgumentParser` has parsed the command line, the
  run claims every :func:`output_dir` option's folder (and every :func:`output_file`
  option's file) with a lock file holding its pid (:func:`claim_output`); a second run
  into the same folder exits 2 naming the folder and the holder's pid. The claims end
  when :func:`run` returns or the process exits; a claim left by a dead process is taken
  over with a one-line notice.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gatedrnn.training.io import LOCK_NAME, FolderLock, atomic_path, write_text
from gatedrnn.training.io import jsonable as to_jsonable

RESULTS = Path(__file__).resolve().parent / "results"

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if "prog" not in kwargs and spec is not None and spec.name.startswith("experiments."):
            kwargs["prog"] = f"python -m {spec.name}"  # usage and --help show how it was run
        super().__init__(*args, **kwargs)
        self.given: frozenset[str] = frozenset()  # dests the last parse found on the line
        self.quick_values: dict[str, Any] = {}  # what honour_quick was asked to set

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, note which options were given (:attr:`given`), then claim the folders of
        :func:`output_dir` options and the files of :func:`output_file` options (defaults
        included) for this run (:func:`claim_output`).
        """
        ns, rest = super().parse_known_args(args, namespace)
        self.given = self._given_options(args)
        if rest:  # parse_args is about to refuse them: claim nothing for a run that won't be
            return ns, rest
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            if value is not None and action.type in (output_dir, output_file):
                claim_output(value, file=action.type is output_file)
        return ns, rest

    def _given_options(self, args: Sequence[str] | None) -> frozenset[str]:
        """The dests set from the command line: the same parse with every default hidden
        (subcommands' too)."""
        saved = [(a, a.default) for a in _all_actions(self)]
        try:
            for action, _ in saved:
                action.default = argparse.SUPPRESS
            ns, _ = super().parse_known_args(args, None)
        finally:
            for action, default in saved:
                action.default = default
        return frozenset(vars(ns))

    def honour_quick(self, args: argparse.Namespace, **small: Any) -> argparse.Namespace:
        """The one ``--quick`` rule: with ``--quick``, every option in ``small`` takes its
        small value unless it was given on the command line (explicit options win)."""
        self.quick_values = dict(small)
        if getattr(args, "quick", False):
            for dest, value in small.items():
                if dest not in self.given:
                    setattr(args, dest, value)
        return args

    def refuse(self, condition: bool, message: str) -> None:
        """A check between options: if ``condition`` holds, a one-line usage error."""
        if condition:
            self.error(message)


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions and those of its subcommands' parsers, recursively."""
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                actions += _all_actions(sub)
    return actions


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


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The shell command that runs the script ``module`` (``experiments.<name>``) with
    ``argv`` (default: this process's arguments) from the repo root, as recorded in a
    results file: ``python -m experiments.<name> ARGS``."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def result_name(text: str) -> str:
    """An argparse type: a results file name (``--name``): letters, digits, '-' and '_'."""
    if not text or not text.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"expected letters, digits, '-' and '_', got {text!r}")
    return text


def nonneg_int(text: str) -> int:
    """An argparse type: an integer >= 0 (seeds, counts that may be zero)."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def seed(text: str) -> int:
    """An argparse type: a random seed, an integer in ``[0, 2**32)``: the library's one
    check (:func:`gatedrnn.training.check_seed`), so ``--seed 4294967296`` is refused
    rather than training exactly as ``--seed 0``."""
    from gatedrnn.training.loop import check_seed

    value = _number(int, text, "an integer in [0, 2**32)")
    try:
        return check_seed(value, "the seed")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (learning rates, clip norms, temperatures)."""
    value = _number(float, text, "a finite number > 0")
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (temperatures, where 0 has a meaning)."""
    value = _number(float, text, "a finite number >= 0")
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
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


def _not_empty(text: str, what: str) -> None:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected {what}, got an empty name {text!r} (give a path; '.' for the current folder)"
        )


def output_dir(text: str) -> Path:
    """An argparse type: a folder outputs can be written to (created if missing); an empty
    name is refused (``Path("")`` is the current folder: ``--out ""`` is a slip)."""
    _not_empty(text, "an output folder")
    path = Path(text)
    try:
        check_output_dir(path)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def output_file(text: str) -> Path:
    """An argparse type: a file path whose folder can be written to (created if missing)."""
    _not_empty(text, "an output file name")
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

_CLAIMS: list[FolderLock] = []


def claim_output(path: str | Path, *, file: bool = False) -> FolderLock:
    """Claim an output folder (or, with ``file=True``, one output file) for this run.

    The claim is a lock file (``<folder>/.gatedrnn.lock``, or ``<folder>/.<name>.lock``
    for a file) holding this process's pid and host (see
    :class:`gatedrnn.training.io.FolderLock`); it ends when :func:`run` returns or
    the process exits. Claiming again what this process holds is a no-op.

    Raises:
      gatedrnn.training.io.FolderInUseError: another live run holds it (exit
        status 2 through :func:`run`), naming the folder and the holder's pid.
    """
    path = Path(path)
    if file:
        lock = FolderLock(path.parent, name=f".{path.name}.lock", what=f"output file {path}")
    else:
        lock = FolderLock(path, name=LOCK_NAME, what=f"output folder {path}")
    _CLAIMS.append(lock.acquire())
    return lock


def release_outputs() -> None:
    """End every claim :func:`claim_output` made in this process (newest first)."""
    while _CLAIMS:
        _CLAIMS.pop().release()


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; NaN/inf become strings
    (:func:`to_jsonable`), so the file is always valid JSON."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n")


def partial_path(path: str | Path) -> Path:
    """Where a run's unfinished results go: ``name.json`` -> ``name.partial.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def write_partial_json(path: str | Path, obj: dict[str, Any], *, indent: int = 2) -> Path:
    """Write the results so far of a run that is not finished to ``partial_path(path)``,
    with ``"complete": false``, atomically; ``path`` itself (the last complete results)
    is left as it is, so an interrupted rerun never replaces finished results."""
    return write_json(partial_path(path), {"complete": False, **obj}, indent=indent)


def write_final_json(path: str | Path, obj: dict[str, Any], *, indent: int = 2) -> Path:
    """Write a finished run's results to ``path`` once, atomically, with
    ``"complete": true``, and remove its ``partial_path`` file."""
    out = write_json(path, {"complete": True, **obj}, indent=indent)
    partial_path(path).unlink(missing_ok=True)
    return out


RUN_ID = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
"""This process's run id: tags its lines in a log that several runs append to."""


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
    ``ValueError`` such as the library's input checks or a checkpoint mismatch, an output
    folder another run holds, a missing or unreadable file); 1 with one line for a
    non-finite training loss; 130 on Ctrl-C. The run's output claims end here.
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
        try:
            status = main(argv)
        finally:
            release_outputs()
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


# ------------------------------------------------------------------------- studies


def parser(description: str) -> ArgumentParser:
    """An argparse parser with the options every experiment has: --quick, --seed, --out.

    Its errors are one line with exit status 2 when the script runs through
    :func:`run`; ``--out`` must be a folder that can be written to.
    """
    p = ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="a small, fast run (for tests and smoke checks)"
    )
    p.add_argument("--seed", type=seed, default=0, help="base random seed, in [0, 2**32)")
    p.add_argument(
        "--out", type=output_dir, default=RESULTS, help="directory for the JSON and PNG results"
    )
    return p


def in_float64(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with float64 on (``jax.enable_x64``, so tiny gradients do not underflow
    to zero), the process-wide setting untouched outside the call."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        import jax

        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


def until_unsolved(
    values: Sequence[int],
    train: Callable[[int], dict[str, Any]],
    skipped: Callable[[int], dict[str, Any]],
    *,
    run_all: bool = False,
) -> list[dict[str, Any]]:
    """One row per value, in order: ``train(v)`` until a row has ``solved_fraction`` 0,
    then ``skipped(v)`` for the rest (longer distances or lengths a cell that failed a
    shorter one is not trained on), or ``train`` for all of them with ``run_all``."""
    rows: list[dict[str, Any]] = []
    failed = False
    for v in values:
        if failed and not run_all:
            rows.append(skipped(v))
            continue
        rows.append(train(v))
        failed = rows[-1]["solved_fraction"] == 0.0
    return rows


SPLIT_OPTIONS = frozenset(
    {"seed", "seeds", "cells", "lengths", "distances", "steps_for", "name", "out", "merge"}
    | {"no_progress", "all_lengths", "all_distances"}
)
"""The options that may differ between the commands a study was split into."""


def _merge_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of one (cell, length) from several commands as one: seeds joined in seed
    order, seconds added, the solved fraction recounted and the accuracy curves joined on
    the evaluation steps (NaN where a command had already stopped); rows that were skipped
    count only when no command ran that configuration."""
    ran = [r for r in rows if r["run"]]
    if not ran:
        return rows[0]
    joined = [s for r in ran for s in r["seeds"]]
    order = np.argsort([s["seed"] for s in joined], kind="stable")
    seeds = [joined[i] for i in order]
    if len({s["seed"] for s in seeds}) < len(seeds):
        raise ValueError(
            f"a seed appears in two of the merged results: {[s['seed'] for s in seeds]}"
        )
    steps = max((r["steps"] for r in ran), key=len)
    curve = np.full((len(steps), len(seeds)), np.nan)
    col = 0
    for r in ran:
        if r["steps"] != steps[: len(r["steps"])]:
            raise ValueError(f"evaluation steps differ: {r['steps'][:3]}... vs {steps[:3]}...")
        acc = np.asarray(r["accuracy_curve"], dtype=float).reshape(len(r["steps"]), -1)
        curve[: len(r["steps"]), col : col + acc.shape[1]] = acc
        col += acc.shape[1]
    return {
        **ran[0],
        "solved_fraction": float(np.mean([s["solved"] for s in seeds])),
        "updates_run": max(r["updates_run"] for r in ran),
        "seconds": float(sum(r["seconds"] for r in ran)),
        "seeds": seeds,
        "steps": steps,
        "accuracy_curve": curve[:, order].tolist(),
    }


def merge_results(parts: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The results of one study that was split into several commands (by cell, by length
    or by seed, so that each fits one sitting) as the results of one run.

    Args:
      parts: the results files' contents (``cells`` -> ``runs``, each row with ``key``).
      key: what a row is run at: ``"T"`` (copy) or ``"distance"``.

    Returns:
      ``config`` (the first part's, with the cells, seeds and ``key`` values of all parts),
      ``success_test``, ``cells`` (per cell: the first part's fields and the merged
      ``runs`` in increasing ``key``), ``seconds`` (summed) and ``commands`` (the parts').

    Raises:
      ValueError: if the parts differ in a setting other than :data:`SPLIT_OPTIONS`, or
        a seed of one configuration appears in two parts.
    """
    if not parts:
        raise ValueError("nothing to merge: expected at least one results file")
    config = dict(parts[0]["config"])
    for p in parts[1:]:
        diff = sorted(
            k
            for k in set(config) | set(p["config"])
            if k not in SPLIT_OPTIONS and config.get(k) != p["config"].get(k)
        )
        if diff:
            raise ValueError(f"the results differ in settings other than the split: {diff}")
    cells: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for p in parts:
        for name, c in p["cells"].items():
            cells.setdefault(name, dict(c))
            for r in c["runs"]:
                rows.setdefault(name, {}).setdefault(r[key], []).append(r)
    for name, by_key in rows.items():
        cells[name]["runs"] = [_merge_rows(by_key[v]) for v in sorted(by_key)]
    values = sorted({v for by_key in rows.values() for v in by_key})
    seeds = {s["seed"] for c in cells.values() for r in c["runs"] if r["run"] for s in r["seeds"]}
    per_row = [len(r["seeds"]) for c in cells.values() for r in c["runs"] if r["run"]]
    config.update(
        cells=list(cells), seed=min(seeds, default=config["seed"]), seeds=max(per_row, default=0)
    )
    config["lengths" if key == "T" else "distances"] = values
    steps_for = {k: v for p in parts for k, v in p["config"].get("steps_for", {}).items()}
    if steps_for:
        config["steps_for"] = steps_for
    return {
        "config": config,
        "success_test": parts[0]["success_test"],
        "cells": cells,
        "seconds": float(sum(p["seconds"] for p in parts)),
        "commands": [c for p in parts for c in p.get("commands", [p.get("command", "")])],
    }


def add_name_option(p: ArgumentParser, default: str | None, help: str) -> None:
    """Add ``--name NAME`` (:func:`result_name`): which files a run writes."""
    p.add_argument("--name", type=result_name, default=default, help=help)


def add_merge_option(p: ArgumentParser) -> None:
    """Add ``--merge JSON ...``: no training, the results of several commands of the study
    (split by cell, length or seed) written as one ``<name>.json`` and ``.png``."""
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="no training: merge these results of the study (commands split by cell, length "
        "or seed, same settings otherwise) into <NAME>.json and <NAME>.png in --out",
    )


def merge_files(
    args: argparse.Namespace, key: str
) -> tuple[dict[str, Any], argparse.Namespace, list[dict[str, Any]]]:
    """Read ``args.merge`` and merge them (:func:`merge_results`); return the results,
    the options they were run with (as the table and plot of a study read them; ``out``
    and ``name`` from ``args``) and the parts as read."""
    parts = []
    for path in args.merge:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UsageError(f"--merge: cannot read results from {path}: {e}") from None
    try:
        results = merge_results(parts, key)
    except (KeyError, ValueError) as e:
        raise UsageError(f"--merge: {e}") from None
    keep = {"out": args.out, "name": args.name, "merge": [str(p) for p in args.merge]}
    merged = argparse.Namespace(**{**results["config"], **keep})
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(merged).items()}
    return results, merged, parts


def write_results(out: Path, name: str, results: dict[str, Any], fig: Any) -> tuple[Path, Path]:
    """Write ``out/name.json`` and ``out/name.png`` atomically; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / f"{name}.json", out / f"{name}.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    write_text(js, json.dumps(to_jsonable(results), indent=1) + "\n")
    pyplot().close(fig)
    print(f"wrote {js} and {png}")
    return js, png


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def add_cells_option(p: ArgumentParser, default: Sequence[str], extra: Sequence[str] = ()) -> None:
    """Add ``--cells NAME ...``: any registered cell (``gatedrnn.cells.CELLS``), or one of
    the script's own ``extra`` variants (e.g. ``chrono_lstm``); ``default`` when not given."""
    from gatedrnn.cells import CELLS

    choices = [*sorted(CELLS), *extra]
    p.add_argument(
        "--cells",
        nargs="+",
        default=list(default),
        choices=choices,
        metavar="CELL",
        help=f"cells to run, any of: {' '.join(choices)}",
    )


def label(name: str, labels: dict[str, str]) -> str:
    """A cell's display label: ``labels[name]``, else the registry name itself."""
    return labels.get(name, name)


def geomean(a: Any, axis: int = 0) -> np.ndarray:
    """Geometric mean along ``axis`` (zeros count as 1e-300)."""
    return np.exp(np.mean(np.log(np.maximum(np.asarray(a, np.float64), 1e-300)), axis=axis))


__all__ = [
    "ArgumentParser",
    "UsageError",
    "add_cells_option",
    "atomic_path",
    "check_output_dir",
    "check_text_file",
    "claim_output",
    "finite_float",
    "fraction",
    "geomean",
    "in_float64",
    "label",
    "nonneg_float",
    "nonneg_int",
    "output_dir",
    "output_file",
    "parser",
    "partial_path",
    "positive_float",
    "positive_int",
    "pyplot",
    "release_outputs",
    "run",
    "seed",
    "table",
    "text_file",
    "timed",
    "to_jsonable",
    "write_final_json",
    "write_json",
    "write_partial_json",
    "write_results",
    "write_text",
]
