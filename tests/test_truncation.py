"""experiments/truncation.py --quick runs all three forms and writes table, JSON and figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from experiments.cli import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "truncation", ROOT / "experiments" / "truncation.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_mode_writes_results(tmp_path) -> None:
    tr = _load()
    tr.main(["--quick", "--delays", "1", "--no-progress", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "truncation.json").read_text())
    forms = [(r["form"], r["k"], r["within_window"]) for r in data["results"]]
    assert forms == [("full", None, True), ("scan", 2, True), ("stateful", 2, True)]
    for r in data["results"]:
        assert r["steps"][-1] == 20 and 0.0 <= r["accuracy"][0] <= 1.0
        assert r["diverged"] == [False]
    assert data["diverged_runs"] == []
    assert "stateful k=2" in (tmp_path / "truncation.md").read_text()
    assert (tmp_path / "truncation.png").stat().st_size > 1000


def test_windows_must_divide_the_sequence() -> None:
    tr = _load()
    with pytest.raises(UsageError, match="must be a multiple of every window"):
        tr.parse_args(["--seq-len", "10", "--windows", "4"])
