"""NaN or Inf at padded steps never changes anything; NaN in valid input stays in its own
sequence's outputs but poisons the batch's parameter gradient (docs/bad_input.md).

The property test (hypothesis) draws random ``seq_lengths``, random input values and random
NaN/+Inf/-Inf/huge values at every padded step, for vanilla, LSTM and both GRU variants, on
the default (fused where the cell has a split) and ``fused=False`` paths, forwards and in
reverse, and checks that the outputs, the final state and the gradients with respect to
the params, the inputs and the initial state are exactly those of the same inputs with
finite padding.

Shapes are fixed so that each cell compiles once, as one program of every loop its tests
run, that every test here calls (:func:`run`); hypothesis varies only values and lengths.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st

import gatedrnn as gr

B, T, I, H = 3, 6, 2, 3
CELLS = {
    "vanilla": lambda: gr.vanilla(H),
    "lstm": lambda: gr.lstm(H),
    "gru": lambda: gr.gru(H),
    "gru_reset_before": lambda: gr.gru(H, reset_after=False),
    "min_lstm": lambda: gr.min_lstm(H),
    "min_gru": lambda: gr.min_gru(H),
}
POISON_CELLS = ["gru", "gru_reset_before", "lstm", "vanilla"]
"""The cells of the padding tests (the minimal RNNs run in the initial-state test only)."""
# Values against loops and closed forms, not speed or memory: compiled without most XLA
# optimizations (tests/conftest.py::fast_compile; all pass either way).
pytestmark = pytest.mark.usefixtures("fast_compile")
# What a padded step may hold: NaN, +-inf, a float32 overflow risk, or an ordinary number.
POISON = np.array([np.nan, np.inf, -np.inf, 3e38, -1.0], np.float32)


@functools.cache
def params_of(name: str):
    """The cell, its params (biases made non-zero, so every term of the equations is
    exercised) and its zero initial state ``(B, H)`` leaves, in NumPy."""
    cell = CELLS[name]()

    @jax.jit  # one compile (eagerly, each random draw and sum compiles one)
    def init(key):
        params = cell.init(key, I)
        params = jax.tree_util.tree_map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
        return params, cell.initial_state(params, (B,))

    params, zeros = init(jax.random.PRNGKey(7))
    return cell, params, to_numpy(zeros)


LOOPS = {
    "fused": {},
    "fused_reverse": {"reverse": True},
    "plain": {"fused": False},
    "plain_reverse": {"fused": False, "reverse": True},
    "resets": {"resets": np.eye(B, T, 2, dtype=bool)},
    "remat_steps": {"remat": True},
    "remat_chunks": {"remat": 4},
    "parallel": {"parallel": True},
}
"""The loops of ``gr.scan`` the tests run (keyword arguments): the default (fused where
the cell has a split), the plain loop, each forwards and in reverse, resets, remat per
step and in chunks, the parallel form."""

PATHS = {(None, False): "fused", (None, True): "fused_reverse"}
PATHS |= {(False, False): "plain", (False, True): "plain_reverse"}
"""(fused, reverse) -> loop: the padding tests' paths."""


CELL_LOOPS = {
    n: ["fused", "plain", "plain_reverse", "resets", "remat_steps", "remat_chunks"]
    for n in ("vanilla", "lstm", "gru")
}
CELL_LOOPS |= {"min_lstm": [*CELL_LOOPS["lstm"][1:], "parallel"], "min_gru": ["parallel"]}
"""The loops of the initial-state test, per cell."""

LOOPS_OF = {name: set(CELL_LOOPS.get(name, [])) for name in CELLS}
for name in POISON_CELLS:
    LOOPS_OF[name] |= set(PATHS.values())
LOOPS_OF = {name: tuple(sorted(loops)) for name, loops in LOOPS_OF.items()}
"""Every loop the tests here run on each cell: one compiled program per cell runs them all."""


@functools.partial(jax.jit, static_argnames=("cell", "loops"))
def _run_loops(cell, loops, params, xs, s0, lengths, tail_rows):
    """:func:`run` of each of ``loops``, as one program."""

    def run_one(loop):
        def loss(p, x, s):
            final, ys = gr.scan(cell, p, x, s, seq_lengths=lengths, **LOOPS[loop])
            w = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
            rows = tail_rows[:, None]
            tail = sum(
                jnp.sum(jnp.where(rows, jnp.where(rows, s, 0.0) ** 2, 0.0))
                for s in jax.tree_util.tree_leaves(final)
            )
            return jnp.sum(w * ys) + tail, (final, ys)

        value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
        (_, (final, ys)), grads = value_and_grad(params, xs, s0)
        return final, ys, grads

    return {loop: run_one(loop) for loop in loops}


def run(name, params, xs, s0, lengths, tail_rows):
    """Outputs, final state and d(loss)/d(params, xs, s0) of every loop of :data:`LOOPS`
    that the tests run on cell ``name`` (``{loop: (final, ys, grads)}``, one compile per
    cell, shared by the tests).

    The loss weighs every output and adds the squares of the final state's rows where
    ``tail_rows (B,)`` is true (a NaN row left out reaches no value and no gradient).
    """
    cell = params_of(name)[0]
    return _run_loops(cell, LOOPS_OF[name], params, xs, s0, lengths, tail_rows)


ALL_ROWS = np.ones(B, bool)


@st.composite
def padded_batches(draw):
    """Random lengths in [0, T], finite inputs, and poison values for the padded steps."""
    lengths = np.asarray(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int32)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    xs = rng.normal(size=(B, T, I)).astype(np.float32)
    poison = POISON[rng.integers(0, len(POISON), size=(B, T, I))]
    padded = np.arange(T)[None, :, None] >= lengths[:, None, None]
    return lengths, xs, np.where(padded, poison, xs), padded


@pytest.mark.parametrize("name", POISON_CELLS)
@given(padded_batches())
def test_random_poison_in_padding_never_changes_values_or_gradients(name, batch):
    """Every example on every path (fused or not, forwards or in reverse)."""
    _, params, zeros = params_of(name)
    lengths, clean, dirty, padded = batch
    wants = run(name, params, clean, zeros, lengths, ALL_ROWS)
    gots = run(name, params, dirty, zeros, lengths, ALL_ROWS)
    for path, loop in PATHS.items():
        want, got = wants[loop], gots[loop]
        msg = f"(fused, reverse) = {path}"
        chex.assert_tree_all_finite(got, custom_message=msg)
        # outputs, final state: bit for bit
        chex.assert_trees_all_equal(got[:2], want[:2], custom_message=msg)
        g_params, g_xs, g_s0 = got[2]
        chex.assert_trees_all_equal((g_params, g_s0), (want[2][0], want[2][2]), custom_message=msg)
        # the inputs' gradient: the same at valid steps, exactly zero at padded ones
        np.testing.assert_array_equal(
            np.where(padded, 0.0, g_xs), np.where(padded, 0.0, want[2][1]), err_msg=msg
        )
        assert not np.any(np.where(padded, np.asarray(g_xs), 0.0)), msg


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("name", POISON_CELLS)
def test_nan_in_valid_input_stays_in_its_sequence_but_poisons_the_param_gradient(name, fused):
    """A NaN at valid step 2 of sequence 0: that sequence's outputs from step 2 on and its
    final state are NaN; the other sequences' outputs, states and input gradients are
    unchanged; the params' gradient (a sum over the batch) is NaN."""
    _, params, zeros = params_of(name)
    lengths = np.array([5, 6, 4], np.int32)
    xs = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    bad = xs.copy()
    bad[0, 2, 0] = np.nan
    loop = PATHS[fused, False]
    f_clean, y_clean, (_, gx_clean, _) = run(name, params, xs, zeros, lengths, ALL_ROWS)[loop]
    f_bad, y_bad, (gp_bad, gx_bad, _) = run(name, params, bad, zeros, lengths, ALL_ROWS)[loop]
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


FILLS = (np.nan, np.inf)


@pytest.mark.parametrize("name", sorted(CELL_LOOPS))
def test_nan_initial_state_of_a_length_0_row_reaches_no_gradient(name):
    """A row of length 0 runs no step: its NaN (or inf) initial state comes back as its
    final state, its outputs are zero, and it reaches no other value and no gradient; the
    params' gradient is bit for bit the one with a finite state in that row. On every loop
    of CELL_LOOPS[name]."""
    _, params, zeros = params_of(name)
    xs = np.random.default_rng(1).normal(size=(B, T, I)).astype(np.float32)
    lengths = np.array([T, 0, 3], np.int32)
    finite_rows = np.array([True, False, True])  # the loss leaves the NaN row's state out

    def initial(fill):
        s0 = jax.tree_util.tree_map(np.copy, zeros)
        for a in jax.tree_util.tree_leaves(s0):
            a[0], a[1] = 0.5, fill
        return s0

    finite = run(name, params, xs, initial(0.25), lengths, finite_rows)
    filled = {fill: run(name, params, xs, initial(fill), lengths, finite_rows) for fill in FILLS}
    for loop in CELL_LOOPS[name]:
        f_ok, y_ok, (gp_ok, _, gs_ok) = finite[loop]
        for fill in FILLS:
            final, ys, (g_params, _, g_state) = filled[fill][loop]
            msg = f"{loop}, fill {fill}"
            chex.assert_tree_all_finite((ys, g_params), custom_message=msg)
            chex.assert_trees_all_equal((ys, g_params), (y_ok, gp_ok), custom_message=msg)
            assert not np.asarray(ys)[1].any(), msg
            for leaf, ok in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(f_ok)):
                leaf = np.asarray(leaf)
                assert np.isnan(leaf[1]).all() if np.isnan(fill) else np.isinf(leaf[1]).all(), msg
                np.testing.assert_array_equal(leaf[[0, 2]], np.asarray(ok)[[0, 2]], err_msg=msg)
            chex.assert_trees_all_equal(
                jax.tree_util.tree_map(lambda g: np.asarray(g)[[0, 2]], g_state),
                jax.tree_util.tree_map(lambda g: np.asarray(g)[[0, 2]], gs_ok),
                custom_message=msg,
            )
