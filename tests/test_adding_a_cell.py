"""docs/adding_a_cell.md: its worked example runs (a cell used by gr.scan, the parallel form,
grad, jvp, diagnostics, gr.stack, Linen and NNX with no other code) and is the cell its
equations say."""

from __future__ import annotations

import jax
import numpy as np
from _readme import readme_block


def test_the_worked_example_runs_and_follows_its_equations():
    ns: dict = {}
    exec(compile(readme_block("adding-a-cell"), "docs/adding_a_cell.md", "exec"), ns)
    cell, params = ns["cell"], ns["params"]
    # in NumPy from here (indexing a JAX array compiles a program per index pattern)
    xs, lengths, ys = (np.asarray(ns[k]) for k in ("xs", "lengths", "ys"))
    # h' = a h + (1 - a) tanh(x w + b), a = sigmoid(decay), by a NumPy loop
    w, b, d = (np.asarray(a, np.float64) for a in params)
    a = 1.0 / (1.0 + np.exp(-d))
    for row, n in enumerate(lengths.tolist()):
        h = np.zeros(cell.hidden_size)
        for t in range(n):
            h = a * h + (1.0 - a) * np.tanh(xs[row, t] @ w + b)
            np.testing.assert_allclose(ys[row, t], h, rtol=1e-5, atol=1e-6)
        assert not np.any(ys[row, n:])
    stats = ns["stats"]
    np.testing.assert_allclose(stats["forget"], np.full(xs.shape[1], a.mean()), rtol=1e-6)
    assert set(ns["variables"]["params"]["cell"]) == {"w", "b", "decay"}
    ys3, ys4 = ns["ys3"], ns["ys4"]
    assert ys3.shape == ys4.shape == (2, 7, 4) and ns["ys2"].shape == (2, 7, 8)
    assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(ns["grads"])[0])))
