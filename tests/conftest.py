"""Shared test helpers: the cells under test and a plain Python reference loop.

:data:`CELL_FACTORIES` is built from the registry (``gatedrnn.cells.CELLS``), so every
registered cell runs through the generic tests (test_scan, test_cells, test_linen,
test_nnx, test_diagnostics, ...) with no edit here; a few option variants are added. Tests
that only make sense for some cells select them by capability (``cell.split``,
``cell.parallel``, ``cell.gates``, the state's fields), never by name.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import gatedrnn as gr
from gatedrnn.cells import CELLS
from gatedrnn.cells.base import Cell, make_config

VARIANTS = {
    "vanilla_relu": lambda h: gr.vanilla(h, activation="relu"),
    "vanilla_linear": lambda h: gr.vanilla(h, activation="linear"),
    "gru_reset_before": lambda h: gr.gru(h, reset_after=False),
}
"""Option variants tested besides each registered cell's defaults."""

CELL_FACTORIES = {
    **{name: (lambda h, factory=factory: factory(h)) for name, factory in CELLS.items()},
    **VARIANTS,
}
"""Every registered cell (by its registry name, default options) and :data:`VARIANTS`."""


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell_name(request: pytest.FixtureRequest) -> str:
    return request.param


def make(cell_name: str, hidden: int = 5, inp: int = 3, dtype=jnp.float32, seed: int = 0):
    """A cell, random params (biases made non-zero) and a key for inputs."""
    cell = CELL_FACTORIES[cell_name](hidden)
    k_init, k_bias, k_x = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k_init, inp, dtype)
    # Non-zero biases so that every term of the equations is exercised.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(k_bias, len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) if leaf.ndim == 1 else leaf
        for leaf, k in zip(leaves, keys)
    ]
    return cell, jax.tree_util.tree_unflatten(treedef, leaves), k_x


def loop_scan(cell, params, xs_tm, state):
    """Reference: a Python loop of ``cell.step`` over a time-major ``xs (T, *batch, I)``."""
    ys = []
    for t in range(xs_tm.shape[0]):
        state, y = cell.step(params, state, xs_tm[t])
        ys.append(y)
    if ys:
        return state, jnp.stack(ys)
    return state, jnp.zeros((0, *xs_tm.shape[1:-1], cell.hidden_size), xs_tm.dtype)


# ------------------------------------------- a custom cell with nested params (not registered)


class NestedInput(NamedTuple):
    w: jax.Array  # (I, H)
    b: jax.Array  # (H,), drawn as -column sums of w: tied to w at init


class NestedParams(NamedTuple):
    inp: NestedInput
    decay: tuple  # (logit (H,),): a tuple field


def nested_cell(hidden_size: int) -> Cell:
    """A diagonal linear cell ``h' = sigmoid(d) * h + x w + b`` whose params are nested
    (a NamedTuple in a field, a tuple field) and tied at init (``b = -sum_i w_i``): what the
    Flax modules must handle for any cell, not only ``w_x/w_h/b`` layouts."""
    H = hidden_size

    def init(key, input_size, dtype=jnp.float32):
        kw, kd = jax.random.split(key)
        w = jax.random.normal(kw, (input_size, H), dtype)
        d = jax.random.normal(kd, (H,), dtype)
        return NestedParams(NestedInput(w, -w.sum(0)), (d,))

    def project(params, x):
        return x @ params.inp.w + params.inp.b

    def recur(params, h, xp):
        h = jax.nn.sigmoid(params.decay[0]) * h + xp
        return h, h

    return Cell(
        init=init,
        initial_state=lambda params, batch_shape=(): jnp.zeros(
            (*batch_shape, H), params.inp.w.dtype
        ),
        project=project,
        recur=recur,
        output=lambda params, h, xp: h,
        hidden_size=H,
        name="nested",
        config=make_config(hidden_size=H),
    )
