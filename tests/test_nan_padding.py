"""NaN or Inf at padded steps never changes anything; NaN in valid input stays in its own
sequence's outputs but poisons the batch's parameter gradient (docs/bad_input.md).

The property test (hypothesis) draws random ``seq_lengths``, random input values and random
NaN/+Inf/-Inf/huge values at every padded step, for vanilla, LSTM and both GRU variants, on
the default (fused where the cell has a split) and ``fused=False`` paths, forwards and in
reverse, and checks that the outputs, the final state and the gradients with respect to
the params and the inputs are exactly those of the same inputs with finite padding.

Shapes are fixed so that each cell compiles once (all its paths and directions in one
program); hypothesis varies only values and lengths.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gatedrnn as gr

B, T, I, H = 3, 6, 2, 3
CELLS = {
    "vanilla": lambda: gr.vanilla(H),
    "lstm": lambda: gr.lstm(H),
    "gru": lambda: gr.gru(H),
    "gru_reset_before": lambda: gr.gru(H, reset_after=False),
}
# Values against loops and closed forms, not speed or memory: compiled without most XLA
# optimizations (tests/conftest.py::fast_compile; all pass either way).
pytestmark = pytest.mark.usefixtures("fast_compile")
# What a padded step may hold: NaN, +-inf, a float32 overflow risk, or an ordinary number.
POISON = np.array([np.nan, np.inf, -np.inf, 3e38, -1.0], np.float32)


@functools.cache
def params_of(name: str):
    cell = CELLS[name]()
    params = cell.init(jax.random.PRNGKey(7), I)
    # non-zero biases, so every term of the equations is exercised
    params = jax.tree_util.tree_map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
    return cell, params


PATHS = [(fused, reverse) for fused in (None, False) for reverse in (False, True)]
"""(fused, reverse): the default (fused where the cell has a split) and the plain loop,
forwards and in reverse."""


@functools.partial(jax.jit, static_argnames=("cell",))
def run(cell, params, xs, lengths):
    """Outputs, final state and d(loss)/d(params, xs) on every path of :data:`PATHS`, in
    its order (one compile per cell)."""

    def loss(p, x, fused, reverse):
        final, ys = gr.scan(cell, p, x, seq_lengths=lengths, reverse=reverse, fused=fused)
        w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        tail = sum(jnp.sum(s * s) for s in jax.tree_util.tree_leaves(final))
        return jnp.sum(w * ys) + tail, (final, ys)

    out = []
    for fused, reverse in PATHS:
        value_and_grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (_, (final, ys)), grads = value_and_grad(params, xs, fused, reverse)
        out.append((final, ys, grads))
    return out


@st.composite
def padded_batches(draw):
    """Random lengths in [0, T], finite inputs, and poison values for the padded steps."""
    lengths = np.asarray(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int32)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    xs = rng.normal(size=(B, T, I)).astype(np.float32)
    poison = POISON[rng.integers(0, len(POISON), size=(B, T, I))]
    padded = np.arange(T)[None, :, None] >= lengths[:, None, None]
    return lengths, xs, np.where(padded, poison, xs), padded


@pytest.mark.parametrize("name", sorted(CELLS))
@given(padded_batches())
def test_random_poison_in_padding_never_changes_values_or_gradients(name, batch):
    """Every example on every path (fused or not, forwards or in reverse)."""
    cell, params = params_of(name)
    lengths, clean, dirty, padded = batch
    wants = run(cell, params, clean, lengths)
    gots = run(cell, params, dirty, lengths)
    for path, want, got in zip(PATHS, wants, gots):
        msg = f"(fused, reverse) = {path}"
        chex.assert_tree_all_finite(got, custom_message=msg)
        # outputs, final state: bit for bit
        chex.assert_trees_all_equal(got[:2], want[:2], custom_message=msg)
        g_params, g_xs = got[2]
        chex.assert_trees_all_equal(g_params, want[2][0], custom_message=msg)
        # the inputs' gradient: the same at valid steps, exactly zero at padded ones
        np.testing.assert_array_equal(
            np.where(padded, 0.0, g_xs), np.where(padded, 0.0, want[2][1]), err_msg=msg
        )
        assert not np.any(np.where(padded, np.asarray(g_xs), 0.0)), msg


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_nan_in_valid_input_stays_in_its_sequence_but_poisons_the_param_gradient(name, fused):
    """A NaN at valid step 2 of sequence 0: that sequence's outputs from step 2 on and its
    final state are NaN; the other sequences' outputs, states and input gradients are
    unchanged; the params' gradient (a sum over the batch) is NaN."""
    cell, params = params_of(name)
    lengths = np.array([5, 6, 4], np.int32)
    xs = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    bad = xs.copy()
    bad[0, 2, 0] = np.nan
    path = PATHS.index((fused, False))
    f_clean, y_clean, (_, gx_clean) = run(cell, params, xs, lengths)[path]
    f_bad, y_bad, (gp_bad, gx_bad) = run(cell, params, bad, lengths)[path]
    y_bad, y_clean = np.asarray(y_bad), np.asarray(y_clean)
    np.testing.assert_array_equal(y_bad[1:], y_clean[1:])  # other sequences untouched
    np.testing.assert_array_equal(y_bad[0, :2], y_clean[0, :2])  # before the NaN: untouched
    assert np.isnan(y_bad[0, 2:5]).all()  # from the NaN to the sequence's end
    assert (y_bad[0, 5:] == 0).all()  # padding stays zero
    for s_bad, s_clean in zip(jax.tree_util.tree_leaves(f_bad), jax.tree_util.tree_leaves(f_clean)):
        assert np.isnan(np.asarray(s_bad)[0]).all()
        np.testing.assert_array_equal(np.asarray(s_bad)[1:], np.asarray(s_clean)[1:])
    np.testing.assert_array_equal(np.asarray(gx_bad)[1:], np.asarray(gx_clean)[1:])
    assert all(np.isnan(np.asarray(g)).any() for g in jax.tree_util.tree_leaves(gp_bad))


LOOPS = {
    "fused": {},
    "plain": {"fused": False},
    "plain_reverse": {"fused": False, "reverse": True},
    "resets": {"resets": np.eye(B, T, 2, dtype=bool)},
    "remat_steps": {"remat": True},
    "remat_chunks": {"remat": 4},
    "parallel": {"parallel": True},
}
CELL_LOOPS = {n: [loop for loop in LOOPS if loop != "parallel"] for n in ("vanilla", "lstm", "gru")}
CELL_LOOPS |= {"min_lstm": [loop for loop in LOOPS if loop != "fused"], "min_gru": ["parallel"]}


@pytest.mark.parametrize("name", sorted(CELL_LOOPS))
def test_nan_initial_state_of_a_length_0_row_reaches_no_gradient(name):
    """A row of length 0 runs no step: its NaN (or inf) initial state comes back as its
    final state, its outputs are zero, and it reaches no other value and no gradient; the
    params' gradient is bit for bit the one with a finite state in that row. On every loop
    of CELL_LOOPS[name]."""
    cell = {"min_lstm": gr.min_lstm, "min_gru": gr.min_gru}.get(name, lambda h: CELLS[name]())(H)
    params = cell.init(jax.random.PRNGKey(7), I)
    params = jax.tree_util.tree_map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
    xs = np.random.default_rng(1).normal(size=(B, T, I)).astype(np.float32)
    lengths = np.array([T, 0, 3], np.int32)
    loops = CELL_LOOPS[name]

    @jax.jit  # one compile for the three fills and every loop
    def run(fill):
        s0 = jax.tree_util.tree_map(lambda a: a.at[1].set(fill), cell.initial_state(params, (B,)))
        s0 = jax.tree_util.tree_map(lambda a: a.at[0].set(0.5), s0)

        def loss(p, s0, loop):
            final, ys = gr.scan(cell, p, xs, s0, seq_lengths=lengths, **LOOPS[loop])
            w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
            tail = sum(jnp.sum(s[0] ** 2) for s in jax.tree_util.tree_leaves(final))
            return jnp.sum(w * ys) + tail, (final, ys)

        value_and_grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        return [value_and_grad(params, s0, loop) for loop in loops]

    oks = run(np.float32(0.25))
    for fill in (np.nan, np.inf):
        for loop, ok, got in zip(loops, oks, run(np.float32(fill))):
            (_, (f_ok, y_ok)), (gp_ok, gs_ok) = ok
            (_, (final, ys)), (g_params, g_state) = got
            msg = f"{loop}, fill {fill}"
            chex.assert_tree_all_finite((ys, g_params), custom_message=msg)
            chex.assert_trees_all_equal((ys, g_params), (y_ok, gp_ok), custom_message=msg)
            assert not np.asarray(ys)[1].any(), msg
            for leaf, ok in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(f_ok)):
                leaf = np.asarray(leaf)
                assert np.isnan(leaf[1]).all() if np.isnan(fill) else np.isinf(leaf[1]).all(), msg
                np.testing.assert_array_equal(leaf[[0, 2]], np.asarray(ok)[[0, 2]], err_msg=msg)
            chex.assert_trees_all_equal(
                jax.tree_util.tree_map(lambda g: g[np.array([0, 2])], g_state),
                jax.tree_util.tree_map(lambda g: g[np.array([0, 2])], gs_ok),
                custom_message=msg,
            )
