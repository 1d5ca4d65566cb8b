"""Each experiment's --quick mode runs, writes its JSON and PNG, and shows its effect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import pytest

from experiments import after_training, forget_bias, gradient_decay, weight_scale


@pytest.fixture(autouse=True)
def _x64_is_never_switched_globally():
    """The scripts measure in float64 inside ``jax.enable_x64`` (cli.in_float64): the
    process-wide setting is the same after a run."""
    before = jax.config.jax_enable_x64
    yield
    assert jax.config.jax_enable_x64 == before


def _outputs(out: Path, name: str) -> dict:
    png = out / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


def test_gradient_decay_quick_orders_the_cells_and_takes_any_registered_cell(tmp_path):
    """The one end-to-end run: the classical three (the default also runs the modern
    cells; kept fast here) and, through --cells, a cell of the registry without a label
    (shown by its name)."""
    argv = ["--quick", "--cells", "vanilla", "lstm", "gru", "min_lstm"]
    # the Jacobian and gate windows = the whole batch (T=60, 4 sequences): the inputs are
    # moved to time-major once for all three measurements (and forget_bias's below)
    argv += ["--T-jac", "60", "--jac-batch", "4"]
    gradient_decay.main([*argv, "--out", str(tmp_path)])
    res = _outputs(tmp_path, "gradient_decay")
    cells = res["cells"]
    assert list(cells) == ["vanilla (tanh)", "LSTM (forget bias 1)", "GRU", "min_lstm"]
    factors = {k: v["decay_factor_mean"] for k, v in cells.items()}
    assert all(0 < f < 1 for f in factors.values())
    # At init with forget bias 1 the LSTM's gradient decays more slowly than vanilla's.
    assert factors["LSTM (forget bias 1)"] > factors["vanilla (tanh)"] + 0.05
    assert len(cells["GRU"]["relative_grad_norm_geomean"]) == res["config"]["T"] + 1
    assert "decay factor / step" in res["table"]
    # per-field curves for states with several fields (the LSTM's h and c), none for one
    assert "relative_grad_norm_c_geomean" in cells["LSTM (forget bias 1)"]
    assert not any(k.startswith("relative_grad_norm_h") for k in cells["GRU"])
    assert 0.0 < cells["min_lstm"]["mean_forget_gate"] < 1.0  # read from the cell's own gates


def test_weight_scale_quick_linear_law_and_clipping(tmp_path):
    weight_scale.main(["--quick", "--out", str(tmp_path)])
    res = _outputs(tmp_path, "weight_scale")
    for r in res["linear"]:
        assert r["max_rel_error_vs_s_power_k"] < 1e-4
        assert r["decay_factor"] == pytest.approx(r["s"], rel=1e-4)
    plain, clipped = res["training"]["plain"], res["training"]["clipped"]
    # Unclipped SGD diverges: to Inf/NaN, or (the path is chaotic, so rounding decides
    # which) at least to a loss many orders of magnitude above where it started.
    assert plain["first_nonfinite_step"] is not None or (
        plain["final_loss"] > 1e6 * plain["initial_loss"]
    )
    assert clipped["first_nonfinite_step"] is None
    assert plain["diverged"] and not clipped["diverged"]  # flagged in the summary
    assert clipped["final_loss"] < clipped["initial_loss"]


def test_forget_bias_quick_decay_grows_with_the_bias(tmp_path):
    forget_bias.main(["--quick", "--out", str(tmp_path)])
    res = _outputs(tmp_path, "forget_bias")
    low, high = res["biases"]["0.0"], res["biases"]["3.0"]
    assert low["decay_factor_mean"] + 0.2 < high["decay_factor_mean"]
    for b in (low, high):
        assert abs(b["mean_forget_gate"] - b["sigmoid_bias"]) < 0.1


def test_after_training_quick_measures_before_and_after(tmp_path):
    # fewer updates than --quick (the assertions need a trained model and one measurement
    # each); width and measuring length those of the gradient-decay run above (H=16, T=60,
    # 4 sequences), so that the per-step gradient norms reuse the programs it compiled
    argv = ["--quick", "--steps", "10", "--hidden", "16", "--T-measure", "60"]
    after_training.main([*argv, "--out", str(tmp_path)])
    res = _outputs(tmp_path, "after_training")
    for c in res["cells"].values():
        for when in ("before", "after"):
            assert len(c[when]["relative_grad_norm"]) == res["config"]["T_measure"] + 1
            assert math.isfinite(c[when]["decay_factor"])
        assert c["history"]


def test_every_experiment_has_help(capsys):
    """In this process (the real-process path of cli.run is test_cli's)."""
    from experiments import cli

    for module in (gradient_decay, weight_scale, forget_bias, after_training):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(getattr(module, "cli_main", module.main), ["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "--quick" in out and "--seed" in out and "--out" in out
