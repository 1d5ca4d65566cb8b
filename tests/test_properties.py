"""Properties of gr.scan over random shapes, lengths and cells (hypothesis): it equals a
Python loop of cell.step, seq_lengths masking holds (forwards and in reverse), and
gradients through it are finite."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, to_numpy
from hypothesis import given
from hypothesis import strategies as st

import gatedrnn as gr

# Values against loops and closed forms, not speed or memory: compiled without most XLA
# optimizations (tests/conftest.py::fast_compile; all pass either way).
pytestmark = pytest.mark.usefixtures("fast_compile")

# Examples per test: the hypothesis profile (tests/conftest.py: few here, more in CI); each new
# shape compiles a scan.

CELLS = CELL_FACTORIES  # every registered cell and the option variants (conftest)
TOL = {"rtol": 2e-5, "atol": 2e-5}


@functools.cache
def cell_and_params(name: str, hidden: int, inputs: int):
    cell = CELLS[name](hidden)
    # one compiled init (run eagerly, each of its random draws compiles per shape)
    init = jax.jit(cell.init, static_argnums=1)
    return cell, init(jax.random.PRNGKey(hidden * 10 + inputs), inputs)


@st.composite
def problems(draw, max_batch_dims: int = 2):
    """A cell, its params, inputs ``(*batch, T, I)`` and lengths ``(*batch,)``.

    Sizes come from small sets so that compiled scans are reused across examples.
    """
    name = draw(st.sampled_from(sorted(CELLS)))
    hidden = draw(st.sampled_from([1, 3]))
    inputs = draw(st.sampled_from([1, 2]))
    batch = tuple(draw(st.lists(st.sampled_from([0, 1, 3]), max_size=max_batch_dims)))
    steps = draw(st.sampled_from([0, 1, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    cell, params = cell_and_params(name, hidden, inputs)
    xs = jnp.asarray(rng.normal(size=(*batch, steps, inputs)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, steps + 1, size=batch), jnp.int32)
    return cell, params, xs, lengths


def close(a, b) -> None:
    chex.assert_trees_all_close(a, b, **TOL)


# Each test runs one jitted program per example (cell, shapes and options static): run
# eagerly, every jnp operation of a scan, a step or a gradient compiled a program of its
# own per shape (about 150 per test). Lengths go in as static tuples, so that gr.scan sees
# concrete ``seq_lengths`` (checked, not clipped), as in an eager call.


def _static(a) -> tuple:
    """An int array as a hashable ``(shape, values)`` (a static argument of jit)."""
    a = np.asarray(a)
    return a.shape, tuple(a.ravel().tolist())


def _array(static: tuple) -> np.ndarray:
    shape, values = static
    return np.array(values, np.int32).reshape(shape)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _scan_and_loop(cell, params, xs, time_major):
    """``gr.scan`` from a non-zero start state and the Python loop of ``cell.step`` it
    must equal (``xs (*batch, T, I)``; the scan gets it time-major where asked)."""
    batch, steps = xs.shape[:-2], xs.shape[-2]
    state = jax.tree_util.tree_map(lambda a: a + 0.1, cell.initial_state(params, batch))
    final, ys = gr.scan(
        cell, params, jnp.moveaxis(xs, -2, 0) if time_major else xs, state, time_major=time_major
    )
    want = []
    for t in range(steps):
        state, y = cell.step(params, state, xs[..., t, :])
        want.append(y)
    want = jnp.stack(want, axis=-2) if want else jnp.zeros((*batch, 0, cell.hidden_size))
    return final, ys, state, want


@given(problems(), st.booleans())
def test_scan_equals_a_loop_of_steps(problem, time_major):
    cell, params, xs, _ = problem
    final, ys, state, want = to_numpy(_scan_and_loop(cell, params, xs, time_major))
    close(final, state)
    close(np.moveaxis(ys, 0, -2) if time_major else ys, want)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _masked_and_prefixes(cell, params, xs, lengths, reverse):
    """The scan of ``xs (n, T, I)`` (or ``(T, I)``) with ``seq_lengths``, and the scan of
    each sequence's valid prefix alone (``lengths`` static: ``(shape, values)``)."""
    n_seq = len(lengths[1])
    masked = gr.scan(cell, params, xs, seq_lengths=_array(lengths), reverse=reverse)
    flat_x = xs.reshape(n_seq, *xs.shape[-2:])
    prefixes = [
        gr.scan(cell, params, flat_x[b, :n], reverse=reverse) for b, n in enumerate(lengths[1])
    ]
    return masked, prefixes


@given(problems(max_batch_dims=1), st.booleans())
def test_lengths_mask_equals_scanning_each_valid_prefix(problem, reverse):
    cell, params, xs, lengths = problem
    (final, ys), prefixes = to_numpy(
        _masked_and_prefixes(cell, params, xs, _static(lengths), reverse)
    )
    lengths = np.asarray(lengths)
    # outputs at or past each length are exactly zero
    pad = np.arange(xs.shape[-2]) >= lengths[..., None]
    assert not np.any(np.where(pad[..., None], ys != 0, False))
    # the valid part and the final state are those of a scan over the prefix alone
    n_seq = int(np.prod(lengths.shape))
    flat_len = lengths.reshape(n_seq)
    flat_y = ys.reshape(n_seq, *ys.shape[-2:])
    flat_final = jax.tree_util.tree_map(lambda a: a.reshape(n_seq, a.shape[-1]), final)
    for b, (f_b, y_b) in enumerate(prefixes):
        n = int(flat_len[b])
        close(jax.tree_util.tree_map(lambda a, b=b: a[b], flat_final), f_b)
        close(flat_y[b, :n], y_b)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _grads(cell, params, xs, lengths, reverse, truncate):
    """d(loss)/d(params, xs) through the scan (``lengths`` static: ``(shape, values)``)."""

    def loss(p, x):
        final, ys = gr.scan(
            cell, p, x, seq_lengths=_array(lengths), reverse=reverse, truncate=truncate
        )
        return jnp.sum(ys**2) + sum(jnp.sum(s) for s in jax.tree_util.tree_leaves(final))

    return jax.grad(loss, argnums=(0, 1))(params, xs)


@given(problems(max_batch_dims=1), st.booleans(), st.sampled_from([None, 1, 3]))
def test_gradients_are_finite(problem, reverse, truncate):
    cell, params, xs, lengths = problem
    gp, gx = to_numpy(_grads(cell, params, xs, _static(lengths), reverse, truncate))
    assert gx.shape == xs.shape
    for g in jax.tree_util.tree_leaves((gp, gx)):
        assert np.all(np.isfinite(g))
    # padding steps get no gradient
    pad = np.arange(xs.shape[-2]) >= np.asarray(lengths)[..., None]
    assert not np.any(np.where(pad[..., None], gx != 0, False))
