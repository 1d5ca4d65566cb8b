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
    lr = _load("long_range")
    argv = ["--quick", "--tasks", "adding", "--cells", "gru", "--no-progress"]
    summary = lr.main([*argv, "--out", str(tmp_path)])
    data = json.loads((tmp_path / "long_range_adding.json").read_text())
    assert [(r["task"], r["T"], r["cell"]) for r in data["results"]] == [("adding", 10, "gru")]
    for r in data["results"]:
        assert r["updates_run"] == 20 and len(r["runs"]) == 1
        run = r["runs"][0]
        assert run["fraction_of_baseline"] == pytest.approx(run["final_loss"] * 6)
        assert len(run["curve"]) == len(r["steps"])
        assert run["diverged"] is False
    assert data["diverged_runs"] == []
    md = (tmp_path / "long_range_adding.md").read_text()
    assert md.count("| adding | 10 | gru |") == 1
    assert (tmp_path / "long_range_adding.png").stat().st_size > 1000
    assert (tmp_path / "long_range_adding_log.jsonl").read_text().count("\n") == 1
    assert [r["cell"] for r in summary["adding"]] == ["gru"]
    assert data["config"]["steps"] == 20


def test_help_lists_the_options(capsys) -> None:
    lr = _load("long_range")
    try:
        lr.parse_args(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--seed", "--out", "--lengths", "--steps"):
        assert opt in out


def test_quick_adding_by_hochreiter_schmidhuber_criterion(tmp_path) -> None:
    """--tasks adding_hs97: its own files, their success test, the within-0.04 curve."""
    lr = _load("long_range")
    argv = ["--quick", "--tasks", "adding_hs97", "--cells", "gru", "--no-progress"]
    lr.main([*argv, "--out", str(tmp_path)])
    data = json.loads((tmp_path / "long_range_adding_hs97.json").read_text())
    assert "0.04" in data["success_test"] and data["task"] == "adding_hs97"
    (r,) = data["results"]
    (run,) = r["runs"]
    assert len(run["within_tolerance_curve"]) == len(r["steps"])
    assert all(0.0 <= w <= 1.0 for w in run["within_tolerance_curve"])
    assert run["solved"] == (run["within_tolerance_curve"][-1] == 1.0)
    assert not (tmp_path / "long_range_adding.json").exists()
