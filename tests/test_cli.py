"""experiments/cli.py: user errors are one line on stderr with exit status 2 and no traceback, and
outputs appear only when complete (checked on a small script run as a real subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments import cli

ROOT = Path(__file__).resolve().parents[1]

# A script shaped like the experiments: parser with checked types, reads a text file,
# "trains" (may fail half-way), writes JSON and a second file at the end.
SCRIPT = textwrap.dedent(
    """
    import sys
    from experiments import cli

    def main(argv=None):
        p = cli.ArgumentParser(description="demo")
        p.add_argument("--text", type=cli.text_file)
        p.add_argument("--steps", type=cli.positive_int, default=3)
        p.add_argument("--hidden-size", type=cli.positive_int, default=4)
        p.add_argument("--lr", type=cli.positive_float, default=0.1)
        p.add_argument("--dropout", type=cli.fraction, default=0.0)
        p.add_argument("--out", type=cli.output_dir, required=True)
        p.add_argument("--fail-at", type=int, default=-1)
        p.add_argument("--nan-at", type=int, default=-1)
        args = p.parse_args(argv)
        log = []
        for step in range(args.steps):
            if step == args.fail_at:
                raise ValueError(f"bad value at step {step}")
            if step == args.nan_at:
                raise FloatingPointError(f"training loss became non-finite (nan) at step {step}")
            log.append(step)
        with cli.atomic_path(args.out / "notes.txt") as tmp:
            tmp.write_text("partial")
            if args.fail_at == args.steps:
                raise ValueError("failed while writing notes.txt")
        cli.write_json(args.out / "result.json", {"log": log})
        print("done")

    if __name__ == "__main__":
        cli.run(main)
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "demo.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture
def demo(script, monkeypatch, capsys):
    """Run the demo's ``cli.run(main, argv)`` in this process (same code path as the
    script, without paying for a new interpreter each time)."""
    namespace: dict = {}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    monkeypatch.setattr(sys, "argv", ["demo.py"])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def call(*args: str) -> subprocess.CompletedProcess:
        with pytest.raises(SystemExit) as exit_info:
            cli.run(namespace["main"], list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, out, err)

    return call


def run(script: Path | str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a script as a real subprocess from the repo root (no GATEDRNN_DEBUG unless asked):
    a file by its path, an experiment by its module name (``python -m experiments.NAME``, as
    the docs run it; the repo root is the working directory, so ``-m`` finds the package)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if not env or cli.DEBUG_ENV not in env:
        environ.pop(cli.DEBUG_ENV, None)
    target = ["-m", script] if isinstance(script, str) else [str(script)]
    return subprocess.run(
        [sys.executable, *target, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        cwd=ROOT,
    )


def assert_user_error(
    proc: subprocess.CompletedProcess, *needles: str, name: str = "demo.py"
) -> None:
    """Exit status 2, one line ``name: error: ...`` holding every needle, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"{name}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == ""


def test_subprocess_success_writes_complete_outputs(script, tmp_path):
    proc = run(script, "--out", str(tmp_path / "a" / "b"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a" / "b" / "result.json").read_text()) == {"log": [0, 1, 2]}
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == [
        "notes.txt",
        "result.json",
    ]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--stepz", "3"], ["unrecognized arguments: --stepz"]),
        (["--steps", "-5"], ["argument --steps", "expected an integer >= 1, got -5"]),
        (["--steps", "0"], ["expected an integer >= 1, got 0"]),
        (["--steps", "ten"], ["expected an integer >= 1, got 'ten'"]),
        (["--hidden-size", "0"], ["argument --hidden-size", "got 0"]),
        (["--lr", "nan"], ["argument --lr", "expected a finite number > 0"]),
        (["--lr=-1e-3"], ["expected a finite number > 0, got -1e-3"]),
        (["--dropout", "1"], ["expected a number in [0, 1), got 1"]),
        ([], ["the following arguments are required: --out"]),
    ],
)
def test_bad_options_and_numbers(demo, tmp_path, args, needles):
    out = ["--out", str(tmp_path)] if args else []
    assert_user_error(demo(*args, *out), *needles)
    assert not (tmp_path / "result.json").exists()


def test_bad_input_files(demo, tmp_path):
    missing = tmp_path / "nope.txt"
    assert_user_error(demo("--text", str(missing), "--out", str(tmp_path)), "not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert_user_error(demo("--text", str(empty), "--out", str(tmp_path)), "is empty")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    assert_user_error(
        demo("--text", str(latin), "--out", str(tmp_path)),
        "not UTF-8",
        "0xe9 at offset 3",
    )
    assert_user_error(demo("--text", str(tmp_path), "--out", str(tmp_path)), "regular")


def test_unwritable_output_folder(demo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(demo("--out", str(blocker)), "not a folder")
    assert_user_error(demo("--out", str(blocker / "sub")), "cannot write")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_user_error(demo("--out", str(locked)), "cannot write")


def test_failure_mid_run_leaves_no_output(demo, tmp_path):
    assert_user_error(demo("--out", str(tmp_path), "--fail-at", "1"), "bad value at step 1")
    assert list(tmp_path.iterdir()) == []
    # failing while an output is being written: no file under the final name, no temp file
    assert_user_error(demo("--out", str(tmp_path), "--fail-at", "3"), "notes.txt")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_is_exit_1_naming_the_step(demo, tmp_path):
    proc = demo("--out", str(tmp_path), "--nan-at", "2")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "demo.py: error: training loss became non-finite (nan) at step 2"
    assert list(tmp_path.iterdir()) == []


def test_debug_env_shows_the_traceback(script, tmp_path, monkeypatch):
    """GATEDRNN_DEBUG=1: cli.run re-raises what it would report in one line, so Python
    prints the whole traceback (in this process: the exception reaches the caller)."""
    namespace: dict = {}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="bad value at step 0"):
        cli.run(namespace["main"], ["--out", str(tmp_path), "--fail-at", "0"])


def test_subprocess_user_error_is_one_line_without_traceback(script, tmp_path):
    assert_user_error(run(script, "--steps", "-5", "--out", str(tmp_path)), "got -5")


def test_help_still_works(demo):
    proc = demo("--help")
    assert proc.returncode == 0 and "--steps" in proc.stdout


# ------------------------------------------------------------------- in-process units


def test_types_accept_good_values():
    assert cli.positive_int("3") == 3
    assert cli.nonneg_int("0") == 0
    assert cli.positive_float("1e-3") == 1e-3
    assert cli.fraction("0.5") == 0.5
    for fn, bad in [
        (cli.positive_int, "1.5"),
        (cli.nonneg_int, "-1"),
        (cli.positive_float, "inf"),
        (cli.positive_float, "0"),
        (cli.fraction, "-0.1"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)


def test_seeds_outside_the_prngs_range_are_one_clear_error_everywhere():
    """Issue 22: ``--seed 4294967296`` trained exactly as ``--seed 0`` (PRNGKey keeps 32
    bits) and seeds past 2**63 ended in an OverflowError traceback. One check
    (``training.check_seed``) for the scripts' ``--seed`` and the library's seeds."""
    import jax

    from gatedrnn import gru, training
    from gatedrnn.training import tasks

    assert cli.seed("0") == 0 and cli.seed(str(2**32 - 1)) == 2**32 - 1
    for bad in (str(2**32), str(2**64), "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 2\*\*32\)"):
            cli.seed(bad)
    p = cli.parser("demo")
    with pytest.raises(cli.UsageError, match=r"--seed.*4294967296"):
        p.parse_args(["--seed", "4294967296"])
    # the library: fit's seeds (one, or one per member), its eval_seed, init_state
    task, cell = tasks.adding(4), gru(2)
    for kwargs in ({"seed": 2**32}, {"seed": [0, 2**64]}, {"eval_seed": -1}):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
            training.fit(task, cell, num_steps=1, progress=False, **kwargs)
    with pytest.raises(TypeError, match="seed must be an integer"):
        training.fit(task, cell, num_steps=1, progress=False, seed=True)
    with pytest.raises(ValueError, match="got 4294967296"):
        training.init_state({"w": jax.numpy.zeros(2)}, training.make_optimizer(0.1), 2**32)


def test_an_empty_output_name_is_an_error(demo, tmp_path, monkeypatch):
    """Issue 22: ``--out ""`` exited 0 and wrote into the current folder."""
    monkeypatch.chdir(tmp_path)
    assert_user_error(demo("--out", ""), "--out", "empty name")
    assert list(tmp_path.iterdir()) == []
    for fn in (cli.output_dir, cli.output_file):
        with pytest.raises(argparse.ArgumentTypeError, match="empty name"):
            fn("")


def test_ctrl_c_during_a_save_leaves_no_orbax_traceback_after_interrupted(tmp_path, monkeypatch):
    """Issue 22: Ctrl-C during a checkpoint save printed orbax's background thread's
    traceback (through the ``absl`` logger) after "interrupted". The abandoned save now
    drops orbax's log records; the interrupt itself still propagates (exit 130 via
    ``cli.run``), and other records still pass. (Seen by hand: SIGINT at 0.7 s, 1.1 s,
    1.5 s into repeated 24 MB saves gave 46 lines of traceback before, 1 line after.)"""
    import logging

    import numpy as np
    import orbax.checkpoint as ocp

    from gatedrnn.training import checkpoint

    logger = logging.getLogger("absl")
    monkeypatch.setattr(logger, "filters", [])  # restored after the test

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.CheckpointManager, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 1, {"w": np.zeros(3, np.float32)})

    def record(path: str) -> logging.LogRecord:
        return logging.LogRecord("absl", logging.ERROR, path, 1, "raised", None, None)

    assert not logger.filter(record("/site-packages/orbax/checkpoint/_src/futures/future.py"))
    assert logger.filter(record("/work/gatedrnn/training/loop.py"))
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    cli.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with cli.atomic_path(target) as tmp:
            assert tmp.suffix == ".json" and tmp.parent == tmp_path
            tmp.write_text("{")
            raise RuntimeError
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    # never a bare NaN: non-finite numbers are written as strings, the file stays valid JSON
    cli.write_json(target, {"a": float("nan"), "b": [float("inf"), -float("inf")]})
    assert json.loads(target.read_text()) == {"a": "nan", "b": ["inf", "-inf"]}


def test_check_text_file_returns_the_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo", encoding="utf-8")
    assert cli.check_text_file(path) == "héllo"
    with pytest.raises(cli.UsageError, match="file not found"):
        cli.check_text_file(tmp_path / "missing")


# ------------------------------------------------------------- the experiment scripts

EXPERIMENTS = sorted(
    p
    for p in (ROOT / "experiments").glob("*.py")
    if p.name[0] != "_" and p.name not in ("cli.py", "report.py")  # report.py: not a study
)


def test_report_unknown_option_is_one_line_exit_2(monkeypatch, capsys):
    report = load_experiment(ROOT / "experiments" / "report.py")
    monkeypatch.setattr(sys, "argv", ["report.py"])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(report.main, ["--no-such-option"])
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert exit_info.value.code == 2 and err.out == "", err
    assert len(lines) == 1 and lines[0].startswith("report.py: error: "), lines
    assert "--no-such-option" in lines[0], lines


def prefix(path: Path) -> list[str]:
    """The subcommand to put first for scripts that have subcommands."""
    return ["train"] if "add_subparsers" in path.read_text() else []


def test_experiment_unknown_option_is_one_line_exit_2_in_a_real_process():
    proc = run("experiments.after_training", "--quick", "--no-such-option")
    assert_user_error(proc, "--no-such-option", name="after_training.py")
    assert "(see python -m experiments.after_training --help)" in proc.stderr


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_unknown_option_is_one_line_exit_2(path, monkeypatch, capsys):
    """Every experiment, in this process (the real process: the test above)."""
    module = load_experiment(path)
    monkeypatch.setattr(sys, "argv", [path.name])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(getattr(module, "cli_main", module.main), [*prefix(path), "--quick", "--x"])
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert exit_info.value.code == 2 and err.out == "", err
    assert len(lines) == 1 and lines[0].startswith(f"{path.name}: error: "), lines
    assert "unrecognized arguments: --x" in lines[0], lines


def load_experiment(path: Path):
    import importlib.util

    name = f"_exp_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_nonsense_numbers_files_and_unwritable_out(path, tmp_path, monkeypatch, capsys):
    """In this process (parsing fails before any work): each is one line, exit 2."""
    module = load_experiment(path)
    source = path.read_text()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [(["--out", str(blocker / "x")], "a-file")]
    for option, value in [
        ("--seed", "-1"),
        ("--hidden", "0"),
        ("--hidden-size", "0"),
        ("--steps", "-5"),
        ("--train-steps", "-5"),
        ("--T", "0"),
        ("--batch", "0"),
        ("--batch-size", "0"),
        ("--learning-rate", "nan"),
    ]:
        if f'"{option}"' in source:
            cases.append(([option, value], f"argument {option}"))
    if '"--text"' in source:
        empty, latin = tmp_path / "empty.txt", tmp_path / "latin.txt"
        empty.write_text("")
        latin.write_bytes("caf\u00e9".encode("latin-1"))
        cases += [
            (["--text", str(tmp_path / "missing.txt")], "file not found"),
            (["--text", str(empty)], "file is empty"),
            (["--text", str(latin)], "not UTF-8"),
        ]
    monkeypatch.setattr(sys, "argv", [path.name])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    main = getattr(module, "cli_main", module.main)
    for args, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, [*prefix(path), "--quick", *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (blocker, tmp_path / "empty.txt", tmp_path / "latin.txt") if p.exists()
    )


# ------------------------------------------------- options against each other, --quick


class _Stop(Exception):
    """Raised at the script's first random key: by then its options have been acted on."""


def _read_options(path: Path, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run an experiment's main on ``argv`` up to its first PRNG key and return the parsed
    options as the script left them. The namespace refuses (AssertionError) any change
    the script makes to an option given on the command line."""
    module = load_experiment(path)
    seen: list[argparse.Namespace] = []
    parse = cli.ArgumentParser.parse_known_args

    def guarded_parse(self, args=None, namespace=None):
        ns, rest = parse(self, args, namespace)
        given = self.given

        class Guarded(argparse.Namespace):
            def __setattr__(self, key, value):
                old = self.__dict__.get(key, value)
                assert key not in given or old == value, (
                    f"{path.name} changed --{key} from {old!r} (given) to {value!r}"
                )
                object.__setattr__(self, key, value)

        ns.__class__ = Guarded
        seen.append(ns)
        return ns, rest

    def stop(*args, **kwargs):
        raise _Stop

    import jax

    monkeypatch.setattr(cli.ArgumentParser, "parse_known_args", guarded_parse)
    monkeypatch.setattr(jax.random, "PRNGKey", stop)
    monkeypatch.setattr(jax.random, "key", stop)
    try:
        getattr(module, "cli_main", module.main)(argv)
    except _Stop:
        pass
    finally:
        cli.release_outputs()
    return seen[-1]


def _doubled(value):
    """Every number in an option's value doubled (keeps the options consistent)."""
    if isinstance(value, list):
        return [_doubled(v) for v in value]
    return 2 * value


def _explicit_numbers(path: Path, options: argparse.Namespace) -> tuple[dict, list[str]]:
    """Every numeric option of the script with a value: ``{dest: twice the value}`` and the
    command-line arguments that give those values."""
    source = path.read_text()
    explicit, argv = {}, []
    for dest, value in vars(options).items():
        names = (dest.replace("_", "-"), dest)
        flag = next((f"--{n}" for n in names if f'"--{n}"' in source), None)
        items = value if isinstance(value, list) else [value]
        numbers = bool(items) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in items
        )
        if flag is None or not numbers:
            continue
        explicit[dest] = _doubled(value)
        shown = explicit[dest] if isinstance(value, list) else [explicit[dest]]
        argv += [flag, *map(str, shown)]
    return explicit, argv


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_quick_honours_every_explicit_number_option(path, tmp_path, monkeypatch):
    """The one --quick rule: explicit options win over --quick's small values. Every
    numeric option, given explicitly (twice its --quick value) together with --quick, is
    what the script runs with, and no script changes an option it was given."""
    out = ["--out", str(tmp_path / ("x.json" if path.name == "flax_model.py" else "a"))]
    quick = _read_options(path, [*prefix(path), "--quick", *out], monkeypatch)
    explicit, argv = _explicit_numbers(path, quick)
    assert explicit, f"{path.name}: no numeric option found"
    got = _read_options(path, [*prefix(path), "--quick", *out, *argv], monkeypatch)
    for dest, want in explicit.items():
        assert getattr(got, dest) == want, (path.name, dest, getattr(got, dest), want)


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        ("gradient_decay.py", ["--T", "10", "--T-jac", "20"], "--T-jac 20 must be <= --T 10"),
        ("gradient_decay.py", ["--batch", "2", "--jac-batch", "3"], "--jac-batch 3 must be <="),
        ("weight_scale.py", ["--train-T", "5", "--lag", "5"], "--lag 5 must be < --train-T 5"),
        ("truncation.py", ["--seq-len", "8", "--delays", "8"], "every delay must be < --seq-len"),
        ("truncation.py", ["--seq-len", "8", "--windows", "16"], "multiple of every window"),
        ("long_range.py", ["--tasks", "adding", "nope"], "invalid choice: 'nope'"),
        ("long_range.py", ["--cells", "lstmm"], "invalid choice: 'lstmm'"),
        ("gradient_decay.py", ["--cells", "lstmm"], "invalid choice: 'lstmm'"),
        ("distance.py", ["--cells", "chrono_min_gru"], "invalid choice: 'chrono_min_gru'"),
        ("rnn_types.py", ["--tasks", "nope"], "invalid choice: 'nope'"),
        ("flax_model.py", ["--task", "nope"], "invalid choice: 'nope'"),
        ("char_lm.py", ["compare", "--cells", "lstmm"], "invalid choice: 'lstmm'"),
        ("char_lm.py", ["sample", "--temperature", "inf"], "argument --temperature"),
    ],
)
def test_options_that_contradict_or_match_nothing_are_one_line_exit_2(
    script, args, needle, tmp_path, monkeypatch, capsys
):
    path = ROOT / "experiments" / script
    module = load_experiment(path)
    monkeypatch.setattr(sys, "argv", [script])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    out = str(tmp_path / ("x.json" if script == "flax_model.py" else "out"))
    argv = [*args, "--quick"] if script == "char_lm.py" else ["--quick", *args, "--out", out]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(getattr(module, "cli_main", module.main), argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
