"""experiments/long_range.py --quick runs end to end and writes its table, JSON and figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_mode_writes_results(tmp_path) -> None:
    """The one end-to-end run (then resumed): both adding tasks in --quick form, each with
    its own files, table, JSON and figure (adding_hs97: its success test, the within-0.04
    curve). Issue 24: --name keeps each command's files apart, the chrono variants of
    distance.py are cells here, and --checkpoint-dir/--resume continues a run from its
    checkpoint: a finished run, resumed, returns the same results without training."""
    lr = _load("long_range")
    ck = tmp_path / "ck"
    argv = ["--quick", "--tasks", "adding", "adding_hs97", "--cells", "chrono_gru",
            "--no-progress", "--name", "T10", "--out", str(tmp_path),
            "--checkpoint-dir", str(ck)]  # fmt: skip
    summary = lr.main(argv)
    data = json.loads((tmp_path / "long_range_adding_T10.json").read_text())
    assert [(r["task"], r["T"], r["cell"]) for r in data["results"]] == [
        ("adding", 10, "chrono_gru")
    ]
    for r in data["results"]:
        assert r["updates_run"] == 20 and len(r["runs"]) == 1
        run = r["runs"][0]
        assert run["fraction_of_baseline"] == pytest.approx(run["final_loss"] * 6)
        assert len(run["curve"]) == len(r["steps"])
        assert run["diverged"] is False
    assert data["diverged_runs"] == []
    md = (tmp_path / "long_range_adding_T10.md").read_text()
    assert md.count("| adding | 10 | chrono_gru |") == 1
    assert (tmp_path / "long_range_adding_T10.png").stat().st_size > 1000
    assert (tmp_path / "long_range_adding_T10_log.jsonl").read_text().count("\n") == 1
    assert [r["cell"] for r in summary["adding"]] == ["chrono_gru"]
    assert data["config"]["steps"] == 20

    path = tmp_path / "long_range_adding_hs97_T10.json"
    first = json.loads(path.read_text())
    assert "0.04" in first["success_test"] and first["task"] == "adding_hs97"
    (r,) = first["results"]
    (run,) = r["runs"]
    assert len(run["within_tolerance_curve"]) == len(r["steps"])
    assert all(0.0 <= w <= 1.0 for w in run["within_tolerance_curve"])
    assert run["solved"] == (run["within_tolerance_curve"][-1] == 1.0)
    for task in ("adding", "adding_hs97"):  # --name: no unnamed files
        assert not (tmp_path / f"long_range_{task}.json").exists()
    assert (ck / "adding_hs97_T10_T10_chrono_gru").is_dir()
    assert r["cell"] == "chrono_gru" and r["batch_size"] == 32 and r["resumed"] is False
    lr.main([*argv, "--resume"])
    (again,) = json.loads(path.read_text())["results"]
    assert again["resumed"] is True
    for key in ("steps", "updates_run", "runs"):
        assert again[key] == r[key], key


def test_help_lists_the_options(capsys) -> None:
    lr = _load("long_range")
    try:
        lr.parse_args(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--seed", "--out", "--lengths", "--steps"):
        assert opt in out


def _fake_config(calls: list, stop_after: int | None = None):
    """A stand-in for ``run_config`` (no training): one tiny result per configuration;
    Ctrl-C (KeyboardInterrupt) at call ``stop_after``."""

    def run_config(args, task_name, T, cell_name, log):
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append((task_name, T, cell_name))
        run = {"seed": 0, "final_loss": 0.1, "diverged": False, "fraction_of_baseline": 0.6,
               "best_fraction_of_baseline": 0.6, "solved": False, "updates_to_solve": None,
               "curve": [0.1]}  # fmt: skip
        return {"task": task_name, "T": T, "cell": cell_name, "baseline": 1 / 6,
                "steps": [20], "updates_run": 20, "seconds": 0.0, "runs": [run]}  # fmt: skip

    return run_config


def test_interrupted_rerun_keeps_the_previous_complete_results(tmp_path, monkeypatch) -> None:
    """Issue 22: Ctrl-C after the first of 4 configurations used to leave 1 result in place
    of 4 in long_range_adding.json, with nothing saying it was incomplete. Now the
    finished results stay, the partial ones go to their own file marked incomplete, and
    the log keeps every earlier line."""
    lr = _load("long_range")
    argv = ["--tasks", "adding", "--lengths", "10", "20", "--cells", "gru", "lstm",
            "--out", str(tmp_path)]  # fmt: skip
    calls: list = []
    monkeypatch.setattr(lr, "run_config", _fake_config(calls))
    lr.main(argv)
    path = tmp_path / "long_range_adding.json"
    done = json.loads(path.read_text())
    assert done["complete"] is True and len(done["results"]) == 4
    assert not (tmp_path / "long_range_adding.partial.json").exists()
    log = tmp_path / "long_range_adding_log.jsonl"
    log.write_text('{"run": "an earlier run", "step": 20}\n')

    calls.clear()
    monkeypatch.setattr(lr, "run_config", _fake_config(calls, stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        lr.main(argv)
    assert json.loads(path.read_text()) == done  # the complete results, untouched
    partial = json.loads((tmp_path / "long_range_adding.partial.json").read_text())
    assert partial["complete"] is False and len(partial["results"]) == 1
    assert log.read_text() == '{"run": "an earlier run", "step": 20}\n'  # append-only

    calls.clear()
    monkeypatch.setattr(lr, "run_config", _fake_config(calls))
    lr.main(argv)  # a finished rerun replaces the results and removes the partial file
    assert json.loads(path.read_text())["complete"] is True
    assert not (tmp_path / "long_range_adding.partial.json").exists()


def test_replot_into_a_folder_without_results_is_an_error(tmp_path) -> None:
    """Issue 22: --replot into an empty folder used to exit 0 without a word."""
    from experiments import cli

    lr = _load("long_range")
    with pytest.raises(cli.UsageError, match=r"--replot: no results to redraw.*long_range_adding"):
        lr.main(["--replot", "--tasks", "adding", "--out", str(tmp_path)])


def test_resume_needs_a_checkpoint_dir(tmp_path) -> None:
    from experiments import cli

    lr = _load("long_range")
    with pytest.raises(cli.UsageError, match="--resume needs --checkpoint-dir"):
        lr.parse_args(["--resume", "--out", str(tmp_path)])
