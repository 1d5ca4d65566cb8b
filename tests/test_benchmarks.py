"""The benchmark script runs end to end in --quick mode and writes its JSON and table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("rnn_speed", ROOT / "benchmarks" / "rnn_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rnn_speed_quick_writes_json_and_table(tmp_path):
    bench = _load_benchmark()
    bench.main(
        ["--quick", "--out", str(tmp_path), "--rounds", "1", "--shapes", "1", "--threads", "1"]
    )
    results = json.loads((tmp_path / "rnn_speed.json").read_text())
    assert results["device"].startswith(("cpu", "gpu", "cuda", "tpu"))
    assert {r["cell"] for r in results["speed"]} == {"vanilla", "lstm", "gru"}
    for row in results["speed"]:
        for phase in ("forward", "train"):
            assert row[phase]["vs_torch"] > 0 and row[phase]["vs_flax"] > 0
            assert row[phase]["gflops"] > 0
    remat = results["remat"]
    assert remat["sqrt"]["temp_bytes"] < remat["none"]["temp_bytes"]
    assert results["min"]["seconds"]["min_gru"] > 0
    assert results["generate"]["chars_per_second"]["gatedrnn"] > 0
    assert results["compile"]["ratio"] > 0
    table = (tmp_path / "rnn_speed.md").read_text()
    assert "| lstm |" in table and "Generation" in table


def test_flops_count():
    bench = _load_benchmark()
    assert bench.rnn_flops("lstm", 2, 3, 5, 7) == 2 * 2 * 3 * (5 + 7) * 4 * 7
