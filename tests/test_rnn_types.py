"""Tests for experiments/rnn_types.py: each kind of RNN task, in --quick form, reaches its
stated accuracy, well above chance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import rnn_types as MOD  # noqa: E402

TASKS = {t.name: t for t in MOD.make_tasks(quick=True)}


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


def test_batches_have_the_stated_labels():
    rng = jax.random.PRNGKey(0)
    (d, prev), y = TASKS["times_table"].batch(rng, 5)
    np.testing.assert_array_equal(y[:, 2], (3 * d) % 10)
    np.testing.assert_array_equal(prev[:, 0], MOD.START)
    np.testing.assert_array_equal(prev[:, 1:], y[:, :-1])
    (x, lengths), y = TASKS["sum_sign"].batch(jax.random.fold_in(rng, 1), 50)
    np.testing.assert_array_equal(y, x.sum((1, 2)) > 0)
    assert (x[np.arange(x.shape[1])[None] >= lengths[:, None]] == 0).all()
    (x,), y = TASKS["running_mod3"].batch(jax.random.fold_in(rng, 2), 5)
    np.testing.assert_array_equal(y[:, -1], x.sum(1) % 3)
    (x, _), y = TASKS["reverse"].batch(jax.random.fold_in(rng, 3), 5)
    np.testing.assert_array_equal(y, x[:, ::-1])
    assert jnp.asarray(y).shape == x.shape
