"""experiments/distance.py: the distance curve runs end to end in --quick form and writes its
JSON and figure; its summaries (longest distance learned, correlations) are what they say."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import distance as MOD


def test_quick_defaults_run_every_cell_at_one_distance(tmp_path: Path):
    try:
        a = MOD.parse_args(["--quick", "--out", str(tmp_path)])
    finally:
        MOD.cli.release_outputs()
    assert a.cells == MOD.DEFAULT_CELLS  # the ten cells by default
    assert a.distances == [6] and a.seeds == 1 and a.steps == 20
    for name in MOD.DEFAULT_CELLS:  # each builds and its init traces (abstractly: no compile)
        cell = MOD.make_cell(name, 4, t_max=6)
        params = jax.eval_shape(lambda k, cell=cell: cell.init(k, 3), jax.random.PRNGKey(0))
        assert cell.hidden_size == 4 and jax.tree_util.tree_leaves(params)
    # the chrono cells take t_max from the longest distance of the sweep (run_cell builds
    # them with args.chrono_t_max; the end-to-end run below checks chrono_gru's)
    try:
        a = MOD.parse_args(["--quick", "--distances", "3", "5", "--out", str(tmp_path)])
    finally:
        MOD.cli.release_outputs()
    assert a.chrono_t_max == 5
    lstm = MOD.make_cell("chrono_lstm", a.hidden, a.chrono_t_max)
    assert lstm.options["t_max"] == 5 and lstm.options["forget_bias"] == "chrono"


def test_quick_run_writes_json_and_png_with_name_and_per_distance_budget(tmp_path: Path):
    """The one end-to-end run, on a chrono cell (options to check). ``--name`` writes
    ``<name>.{json,png}`` (not ``distance.*``), ``--steps-for`` gives one distance its own
    budget (recorded per run and in the table), the command is kept."""
    cells = ["chrono_gru"]
    argv = ["--quick", "--no-progress", "--out", str(tmp_path), "--cells", *cells]
    argv += ["--distances", "3", "5", "--steps-for", "5=4", "--all-distances", "--name", "dx"]
    argv += ["--decay-batch", "32"]  # = the eval batch: the two draw with one set of programs
    res = MOD.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "dx.json",
        "dx.png",
    ]  # no distance.*, and the partial file is gone once the run is complete
    assert (tmp_path / "dx.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "dx.json").read_text())
    assert set(data) >= {"config", "success_test", "cells", "correlation", "seconds", "table"}
    assert list(data["cells"]) == cells
    distances = data["config"]["distances"]
    assert distances == [3, 5]
    for c in data["cells"].values():
        assert [r["distance"] for r in c["runs"]] == distances
        assert len(c["decay"]) == data["config"]["seeds"] == 1
        assert c["decay_distance"] >= 1 and 0 < c["decay_factor"]
        assert c["longest_solved"] == MOD.longest_solved(c["runs"])
        for r in c["runs"]:
            assert 0.0 <= r["solved_fraction"] <= 1.0
            assert r["run"]  # --all-distances
            assert r["T"] == r["distance"] + 1 and 0 < r["updates_run"] <= 20
            assert len(r["seeds"]) == 1
    # the chrono cells take t_max from the longest distance of the sweep
    assert data["cells"]["chrono_gru"]["options"]["t_max"] == max(distances)
    assert data["cells"]["chrono_gru"]["options"]["update_bias"] == "chrono"
    assert data["correlation"]["n_cells"] == len(cells)
    assert res["table"] == data["table"] and "longest learned" in data["table"]
    runs = data["cells"]["chrono_gru"]["runs"]
    assert [(r["distance"], r["budget"]) for r in runs] == [(3, 20), (5, 4)]
    assert runs[0]["updates_run"] <= 20 and runs[1]["updates_run"] <= 4
    assert data["config"]["steps_for"] == {"5": 4} and data["argv"] == argv
    assert data["command"].startswith("python -m experiments.distance --quick")
    assert "d=5 (4 updates)" in res["table"] and "d=3 (20 updates)" in res["table"]


def test_longest_solved_needs_half_the_seeds():
    rows = [
        {"distance": 10, "solved_fraction": 1.0},
        {"distance": 30, "solved_fraction": 0.5},
        {"distance": 100, "solved_fraction": 0.0},
    ]
    assert MOD.longest_solved(rows) == 30
    assert MOD.longest_solved([{"distance": 10, "solved_fraction": 0.25}]) == 0


def test_correlations_rank_ties_and_log_scale():
    np.testing.assert_array_equal(MOD._ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    c = MOD.correlations([10, 20, 40, 1000], [0, 30, 100, 1000])
    assert c["spearman"] == pytest.approx(1.0) and 0.8 < c["pearson_log10"] < 1.0
    assert MOD.correlations([10, 20, 40], [0, 0, 0])["spearman"] is None  # constant: undefined


def test_help_and_bad_ratio(capsys, tmp_path: Path):
    with pytest.raises(SystemExit) as e:
        MOD.main(["--help"])
    assert e.value.code == 0 and "--distances" in capsys.readouterr().out
    try:
        with pytest.raises(MOD.cli.UsageError, match="ratio"):
            MOD.parse_args(["--quick", "--ratio", "2", "--out", str(tmp_path)])
    finally:
        MOD.cli.release_outputs()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--steps-for", "7=5"], "not in --distances"),
        (["--steps-for", "6"], "DISTANCE=STEPS"),
        (["--steps-for", "6=0"], ">= 1"),
        (["--name", "a/b"], "--name"),
    ],
)
def test_bad_name_and_steps_for(tmp_path: Path, extra: list[str], match: str):
    try:
        with pytest.raises(MOD.cli.UsageError, match=match):
            MOD.parse_args(["--quick", "--distances", "6", "--out", str(tmp_path), *extra])
    finally:
        MOD.cli.release_outputs()


def test_merge_of_runs_split_by_seed_equals_one_run(tmp_path: Path):
    """Issue 24: a study split into one command per seed (so that each fits a sitting)
    and merged with ``--merge`` gives what one command over all seeds gives: the same
    decay measurements, the same per-seed training results (up to float rounding: the
    joint run trains the seeds batched) and the correlation recomputed."""
    # the settings of the d=5 run of the quick-run test above (its cell, length, budget
    # and decay batch): the split runs reuse its compiled programs
    base = ["--quick", "--no-progress", "--cells", "chrono_gru", "--distances", "5"]
    base += ["--steps", "4", "--decay-batch", "32"]
    joint = MOD.main([*base, "--seeds", "2", "--out", str(tmp_path), "--name", "joint"])
    for s in (0, 1):
        MOD.main([*base, "--seed", str(s), "--seeds", "1", "--out", str(tmp_path / f"s{s}")])
    parts = [str(tmp_path / f"s{s}" / "distance.json") for s in (1, 0)]  # any order
    merged = MOD.main(["--merge", *parts, "--out", str(tmp_path), "--name", "merged"])
    cj, cm = joint["cells"]["chrono_gru"], merged["cells"]["chrono_gru"]
    assert cm["decay"] == cj["decay"] and cm["decay_distance"] == cj["decay_distance"]
    (rj,), (rm,) = cj["runs"], cm["runs"]
    assert [s["seed"] for s in rm["seeds"]] == [0, 1] and rm["steps"] == rj["steps"]
    for sj, sm in zip(rj["seeds"], rm["seeds"]):
        assert sm["final_loss"] == pytest.approx(sj["final_loss"], rel=1e-4)
    assert merged["config"]["seeds"] == 2 and merged["correlation"] == joint["correlation"]
    assert len(merged["commands"]) == 2 and "--merge" in merged["command"]
    other = json.loads(Path(parts[0]).read_text())
    other["config"]["distances"] = [4]  # decay at init measured over another length
    (tmp_path / "other.json").write_text(json.dumps(other))
    try:
        with pytest.raises(MOD.cli.UsageError, match="different lengths"):
            MOD.main(["--merge", parts[1], str(tmp_path / "other.json"), "--out", str(tmp_path)])
    finally:
        MOD.cli.release_outputs()
