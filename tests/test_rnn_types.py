"""Tests for experiments/rnn_types.py: each kind of RNN task, in --quick form, reaches its
stated accuracy, well above chance."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import to_numpy

from experiments import rnn_types as MOD

TASKS = {t.name: t for t in MOD.make_tasks(quick=True)}
N = 64  # the training batch size of run_task


def test_the_four_kinds_are_covered():
    kinds = {t.kind for t in TASKS.values()}
    assert kinds == {
        "one-to-many",
        "many-to-one",
        "many-to-many (aligned)",
        "many-to-many (encoder-decoder)",
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_quick_task_reaches_its_stated_accuracy(name: str, tmp_path: Path):
    task = TASKS[name]
    res = MOD.main(["--quick", "--out", str(tmp_path), "--tasks", name])
    r = res["results"][0]
    assert r["task"] == name
    assert r["accuracy"] >= task.target > task.chance + 0.3, r
    saved = json.loads((tmp_path / "rnn_types_quick.json").read_text())
    assert saved["results"][0]["accuracy"] == r["accuracy"]
    # the figure: one held-out example's input, output and target, saved beside the JSON
    ex = saved["results"][0]["example"]
    assert np.shape(ex["output"]) == np.shape(ex["target"])
    assert (tmp_path / "rnn_types_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@cache
def _batch_fn(name: str):
    """``TASKS[name].batch(key, N)`` as one compiled program (eagerly, each operation of
    the batch maker compiles one)."""
    return jax.jit(lambda key: TASKS[name].batch(key, N))


def _batch(name: str, key: jax.Array):
    """``TASKS[name].batch(key, N)`` as NumPy arrays (checked in NumPy: no new programs)."""
    return to_numpy(_batch_fn(name)(key))


def test_batches_have_the_stated_labels():
    rng = jax.random.PRNGKey(0)
    (d, prev), y = _batch("times_table", rng)
    np.testing.assert_array_equal(y[:, 2], (3 * d) % 10)
    np.testing.assert_array_equal(prev[:, 0], MOD.START)
    np.testing.assert_array_equal(prev[:, 1:], y[:, :-1])
    (x, lengths), y = _batch("sum_sign", jax.random.fold_in(rng, 1))
    np.testing.assert_array_equal(y, x.sum((1, 2)) > 0)
    assert (x[np.arange(x.shape[1])[None] >= lengths[:, None]] == 0).all()
    (x,), y = _batch("running_mod3", jax.random.fold_in(rng, 2))
    np.testing.assert_array_equal(y[:, -1], x.sum(1) % 3)
    (x, _), y = _batch("reverse", jax.random.fold_in(rng, 3))
    np.testing.assert_array_equal(y, x[:, ::-1])
    assert y.shape == x.shape


def test_the_figure_has_one_panel_per_kind_with_input_output_and_target():
    """plot_examples draws each kind's example (here with output = target, no training)."""
    rows = []
    for i, task in enumerate(TASKS.values()):
        inputs, y = _batch(task.name, jax.random.PRNGKey(i))
        ex = MOD.example(task, inputs, y, y)
        assert ex["output"] == ex["target"]
        rows.append({"task": task.name, "kind": task.kind, "accuracy": 1.0, "chance": 0.1,
                     "example": ex})  # fmt: skip
    fig = MOD.plot_examples(rows)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        labels = ax.get_legend_handles_labels()[1]
        assert {"input", "target", "model output"} <= set(labels)
