"""experiments/copy_task.py: the copy study runs end to end in --quick form, writes its JSON
and figure, skips longer lengths after a cell fails, and its table says what the runs did."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import copy_task as MOD  # noqa: E402


def test_quick_defaults_are_two_cells_and_one_length(tmp_path: Path):
    try:
        a = MOD.parse_args(["--quick", "--out", str(tmp_path)])
    finally:
        MOD.cli.release_outputs()
    assert a.cells == ["chrono_gru", "lstm"] and a.lengths == [5] and a.steps == 20


def test_quick_run_writes_json_and_png_and_skips_longer_lengths_after_a_failure(tmp_path: Path):
    """The one end-to-end run: two cells, 2 updates (which solve nothing), so the longer
    length is skipped for both."""
    args = ["--quick", "--no-progress", "--out", str(tmp_path), "--lengths", "5", "6"]
    res = MOD.main([*args, "--steps", "2"])
    data = json.loads((tmp_path / "copy_task.json").read_text())
    assert (tmp_path / "copy_task.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(data) >= {"config", "success_test", "cells", "seconds", "table"}
    assert list(data["cells"]) == ["chrono_gru", "lstm"]  # the --quick cells
    assert data["config"]["lengths"] == [5, 6]
    for c in data["cells"].values():
        r, skipped = c["runs"]
        assert r["run"] and r["T"] == 5 and 0 < r["updates_run"] <= 2
        assert r["solved_fraction"] == 0.0  # 2 updates solve nothing
        assert skipped == {"T": 6, "run": False, "solved_fraction": 0.0}
        assert r["baseline"] == pytest.approx(10 * math.log(8) / 25)
        assert len(r["steps"]) == len(r["accuracy_curve"]) and len(r["accuracy_curve"][0]) == 1
        (s,) = r["seeds"]
        assert 0.0 <= s["final_accuracy"] <= 1.0
        assert s["fraction_of_baseline"] == pytest.approx(s["final_loss"] / r["baseline"])
        assert s["solved"] == (s["updates_to_solve"] is not None)
    # the chrono GRU takes t_max from the run's T
    assert data["cells"]["chrono_gru"]["runs"][0]["options"]["t_max"] == 5
    assert res["table"] == data["table"] and "updates to solve" in data["table"]
    assert "skipped" in data["table"]
