"""Shared test helpers: the cells under test and a plain Python reference loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import gatedrnn as gr

CELL_FACTORIES = {
    "vanilla_tanh": lambda h: gr.vanilla(h),
    "vanilla_relu": lambda h: gr.vanilla(h, activation="relu"),
    "vanilla_linear": lambda h: gr.vanilla(h, activation="linear"),
    "lstm": lambda h: gr.lstm(h),
    "gru": lambda h: gr.gru(h),
    "gru_reset_before": lambda h: gr.gru(h, reset_after=False),
}


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
