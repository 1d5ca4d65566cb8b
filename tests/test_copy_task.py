"""experiments/copy_task.py: the copy study runs end to end in --quick form, writes its JSON
and figure, skips longer lengths after a cell fails, and its table says what the runs did."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments import copy_task as MOD


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


def _row(T: int, seeds: list[int], solved: list[int | None], steps: list[int]) -> dict:
    return {
        "T": T,
        "run": True,
        "solved_fraction": sum(u is not None for u in solved) / len(seeds),
        "updates_run": steps[-1],
        "seconds": 10.0,
        "seeds": [
            {"seed": s, "solved": u is not None, "updates_to_solve": u, "final_accuracy": 0.9}
            for s, u in zip(seeds, solved)
        ],
        "steps": steps,
        "accuracy_curve": [[0.1 * (k + 1) + 0.01 * s for s in seeds] for k in range(len(steps))],
    }


def _part(seed: int, seeds: int, cells: dict, **config) -> dict:
    cfg = {"seed": seed, "seeds": seeds, "steps": 100, "hidden": 8, "lengths": [5], **config}
    return {"config": cfg, "success_test": "t", "cells": cells, "seconds": 20.0, "command": "c"}


def test_merge_results_joins_seeds_cells_and_lengths():
    """A study split by seed and by cell merges into one run: seeds in seed order with
    their curves (NaN after a command stopped), seconds added, fractions recounted."""
    a = _part(0, 1, {"gru": {"description": "G", "runs": [_row(5, [0], [50], [50, 100])]}})
    b = _part(1, 2, {"gru": {"description": "G", "runs": [_row(5, [2, 1], [None, 50], [50])]}})
    c = _part(0, 1, {"lstm": {"description": "L", "runs": [_row(9, [0], [None], [50, 100])]}})
    c["config"]["lengths"] = [9]
    m = MOD.cli.merge_results([a, b, c], "T")
    (r,) = m["cells"]["gru"]["runs"]
    assert [s["seed"] for s in r["seeds"]] == [0, 1, 2]
    assert [s["updates_to_solve"] for s in r["seeds"]] == [50, 50, None]
    assert r["solved_fraction"] == pytest.approx(2 / 3) and r["seconds"] == 20.0
    assert r["steps"] == [50, 100] and r["updates_run"] == 100
    assert r["accuracy_curve"][0] == pytest.approx([0.1, 0.11, 0.12])
    assert r["accuracy_curve"][1][0] == pytest.approx(0.2) and math.isnan(r["accuracy_curve"][1][1])
    assert m["cells"]["lstm"]["runs"][0]["T"] == 9
    assert m["config"]["lengths"] == [5, 9] and m["config"]["cells"] == ["gru", "lstm"]
    assert m["config"]["seeds"] == 3 and m["config"]["seed"] == 0
    assert m["seconds"] == 60.0 and m["commands"] == ["c", "c", "c"]


def test_merge_results_refuses_other_settings_and_a_seed_twice():
    a = _part(0, 1, {"gru": {"description": "G", "runs": [_row(5, [0], [50], [50])]}})
    b = _part(0, 1, {"gru": {"description": "G", "runs": [_row(5, [0], [50], [50])]}}, hidden=16)
    with pytest.raises(ValueError, match="hidden"):
        MOD.cli.merge_results([a, b], "T")
    with pytest.raises(ValueError, match="seed appears in two"):
        MOD.cli.merge_results([a, a], "T")


def test_merge_option_writes_one_json_and_figure(tmp_path: Path):
    a = _part(0, 1, {"gru": {"description": "G", "runs": [_row(5, [0], [50], [50, 100])]}})
    b = _part(1, 1, {"gru": {"description": "G", "runs": [_row(5, [1], [None], [50, 100])]}})
    for name, p in (("a", a), ("b", b)):
        p["config"].update(batch_size=16, learning_rate=0.01, clip_norm=1.0, cells=["gru"])
        for s in p["cells"]["gru"]["runs"][0]["seeds"]:
            s.update(final_loss=1.0, fraction_of_baseline=0.5)
        (tmp_path / f"{name}.json").write_text(json.dumps(p))
    argv = ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    res = MOD.main([*argv, "--name", "both", "--out", str(tmp_path / "o")])
    data = json.loads((tmp_path / "o" / "both.json").read_text())
    assert (tmp_path / "o" / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["command"].startswith("python -m experiments.copy_task --merge")
    assert data["commands"] == ["c", "c"] and res["table"] == data["table"]
    assert "50, >100" in data["table"]
    bad = tmp_path / "missing.json"
    try:
        with pytest.raises(MOD.cli.UsageError, match="cannot read"):
            MOD.main(["--merge", str(bad), "--out", str(tmp_path / "o2")])
    finally:
        MOD.cli.release_outputs()
