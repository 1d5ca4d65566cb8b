"""The benchmark script runs end to end in --quick mode and writes its JSON and table; each
of its other sections runs in --quick form as a function."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("rnn_speed", ROOT / "benchmarks" / "rnn_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quick_args(tmp_path: Path) -> argparse.Namespace:
    """What ``main(["--quick", "--rounds", "1", "--shapes", "0"])`` hands each section."""
    return argparse.Namespace(
        quick=True,
        out=str(tmp_path),
        seed=0,
        rounds=1,
        memory_only=False,
        shapes="0",
        save=None,
        cells_given=None,
        cells=list(_benchmark_default_cells()),
    )


def _benchmark_default_cells() -> tuple[str, ...]:
    """The benchmark's default cells (what ``main`` puts in ``args.cells``)."""
    return tuple(_load_benchmark().DEFAULT_CELLS)


def _table(bench, **sections) -> str:
    """The markdown table of a run that measured only ``sections``."""
    return bench.markdown({"device": "cpu:cpu", "threads": 1, "rounds": 1, **sections})


def test_rnn_speed_quick_writes_json_and_table(tmp_path):
    """The one end-to-end run of the script (two sections); the other sections are run
    below as functions, with the arguments main would give them."""
    bench = _load_benchmark()
    bench.main(
        [
            "--quick",
            "--out",
            str(tmp_path),
            "--rounds",
            "1",
            "--shapes",
            "0",
            "--threads",
            "1",
            "--sections",
            "speed,generate",
        ]
    )
    results = json.loads((tmp_path / "rnn_speed.json").read_text())
    assert results["device"].startswith(("cpu", "gpu", "cuda", "tpu"))
    assert {r["cell"] for r in results["speed"]} == {"vanilla", "lstm", "gru"}
    for row in results["speed"]:
        for phase in ("forward", "train"):
            assert row[phase]["vs_torch"] > 0 and row[phase]["vs_flax"] > 0
            assert row[phase]["gflops"] > 0
    assert results["generate"]["chars_per_second"]["gatedrnn"] > 0
    table = (tmp_path / "rnn_speed.md").read_text()
    assert "| lstm |" in table and "Generation" in table


def test_rnn_speed_remat_min_and_compile_sections_quick(tmp_path):
    bench = _load_benchmark()
    args = _quick_args(tmp_path)
    remat = bench.bench_remat(args)
    assert remat["sqrt"]["temp_bytes"] < remat["none"]["temp_bytes"]
    assert bench.bench_min(args)["seconds"]["min_gru"] > 0
    assert bench.bench_compile(args)["ratio"] > 0


def test_flops_count():
    bench = _load_benchmark()
    assert bench.rnn_flops("lstm", 2, 3, 5, 7) == 2 * 2 * 3 * (5 + 7) * 4 * 7
    assert bench.rnn_flops("min_gru", 2, 3, 5, 7) == 2 * 2 * 3 * 5 * 2 * 7  # no w_h


def test_rnn_speed_takes_any_registered_cell(tmp_path):
    """--cells: a cell without a PyTorch or Flax counterpart is timed on its own ("-" in
    the table where a reference is missing)."""
    bench = _load_benchmark()
    argv = ["--quick", "--sections", "speed", "--cells", "min_gru", "--rounds", "1"]
    bench.main([*argv, "--shapes", "1", "--threads", "1", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "rnn_speed.json").read_text())["speed"]
    assert row["cell"] == "min_gru" and row["train"]["gflops"] > 0
    assert "vs_torch" not in row["train"] and "vs_flax" not in row["forward"]
    assert "| min_gru |" in (tmp_path / "rnn_speed.md").read_text()


def test_profile_step_lists_the_loop_ops(capsys, monkeypatch):
    # the script adds a flag to XLA_FLAGS when imported: restored after the test
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    spec = importlib.util.spec_from_file_location(
        "profile_step", ROOT / "benchmarks" / "profile_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--cell", "gru", "--shape", "2,6,3,4", "--calls", "2", "--top", "5"])
    assert rows and all(ms >= 0 and runs > 0 for _, ms, runs in rows)
    # the loop body's ops run once per time step
    assert any(runs == 6 for _, _, runs in rows)
    assert "training step" in capsys.readouterr().out


def _git_head() -> bool:
    """Whether this tree is a git checkout with a HEAD (compare_revisions reads git)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            check=False,
        )
    except OSError:  # no git on this machine
        return False
    return proc.returncode == 0


def test_compare_revisions_quick_runs_two_versions_side_by_side(tmp_path):
    if not _git_head():
        pytest.skip("compare_revisions reads another revision with git: not a git checkout")
    spec = importlib.util.spec_from_file_location(
        "compare_revisions", ROOT / "benchmarks" / "compare_revisions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--ref", "HEAD", "--quick", "--out", str(tmp_path)])
    assert {r["cell"] for r in results["rows"]} == {"vanilla", "lstm", "gru"}
    for row in results["rows"]:
        assert row["revision_vs_this"] > 0 and row["ms"]["revision"] > 0
    saved = json.loads((tmp_path / "compare_revisions.json").read_text())
    assert saved["ref"] == "HEAD"
    assert "| lstm |" in (tmp_path / "compare_revisions.md").read_text()


def test_rnn_speed_unroll_and_crossover_sections_quick(tmp_path):
    """The unroll sweep and the crossover, in --quick form, land in the table: minGRU's
    crossover always, and (--cells naming cells with a parallel form) each such cell its
    own sweep (a cell without one, the GRU, is left out), read by the table and the docs'
    renderer."""
    bench = _load_benchmark()
    args = _quick_args(tmp_path)
    unroll = bench.bench_unroll(args)
    assert {r["cell"] for r in unroll} == {"vanilla", "lstm", "gru"}
    for row in unroll:
        assert row["speedup_vs_1"]["1_train"] == 1.0 and row["default"] >= 1
    args.cells_given = args.cells = ["gru", "lru"]
    crossover = bench.bench_crossover(args)
    assert crossover["cell"] == "min_gru" and [r["T"] for r in crossover["rows"]] == [8, 32]
    [lru] = crossover["by_cell"]
    assert lru["cell"] == "lru" and [r["T"] for r in lru["rows"]] == [8, 32]
    assert lru["library_picks_parallel_from"] == bench.gr.parallel_crossover("lru")
    table = _table(bench, unroll=unroll, crossover=crossover)
    assert "unroll, lstm" in table and "lru parallel form vs step by step" in table
    from experiments import report

    assert report._form_ratio(lru["rows"][0], "train") != "skipped"
    assert report._form_ratio({"T": 8, "skipped": "too large"}, "train") == "skipped"


def test_rnn_speed_shard_and_bf16_sections_quick(tmp_path):
    """One loop per core (a fresh process with two host devices) and bfloat16, in --quick
    form, land in the table."""
    bench = _load_benchmark()
    args = _quick_args(tmp_path)
    shard, bf16 = bench.bench_shard(args), bench.bench_bf16(args)
    assert shard and all(r["devices"] >= 2 and r["speedup"] > 0 for r in shard)
    assert bf16["bf16_speedup"]["lstm"] > 0
    table = _table(bench, shard=shard, bf16=bf16)
    assert "bfloat16" in table and "host devices" in table


def test_repeated_runs_combine_into_medians_and_ranges():
    bench = _load_benchmark()
    runs = []
    for v in (1.0, 3.0, 2.0):
        phase = {"vs_torch": v, "vs_flax": 2 * v, "gflops": 10 * v, "fraction_of_matmul": v / 10}
        runs.append({"speed": [{"forward": dict(phase), "train": dict(phase)}]})
    out = bench.combine_runs(runs)
    assert out["repeat"] == 3
    train = out["speed"][0]["train"]
    assert train["vs_torch"] == 2.0 and train["vs_torch_repeats"] == [1.0, 3.0]
    assert train["vs_flax"] == 4.0 and "vs_cudnn" not in train
    assert bench.ratio_text(train, "vs_torch") == "2.00x (1.00-3.00)"
    assert bench._without(["--repeat", "3", "--quick", "--repeat=2"], "--repeat") == ["--quick"]
