"""Stacked and bidirectional layers equal their hand-written compositions of gr.scan."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

import gatedrnn as gr
from gatedrnn.cells import CELLS, make_cell


def close(a, b):
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_bidirectional_equals_forward_plus_flipped_backward(name):
    cell = make_cell(name, 4)
    kf, kb = jax.random.split(jax.random.PRNGKey(0))
    params = gr.Bidir(cell.init(kf, 3), cell.init(kb, 3))
    xs = normal(0, (3, 7, 3))
    lengths = np.array([7, 5, 2])

    @jax.jit  # one compile: the layer and its per-sequence references
    def run(params, xs):
        got = gr.bidirectional_scan(cell, params, xs, seq_lengths=lengths)
        refs = [
            (gr.scan(cell, params.fw, xs[b, :n]), gr.scan(cell, params.bw, jnp.flip(xs[b, :n], 0)))
            for b, n in enumerate(lengths.tolist())
        ]
        return got, refs

    (states, ys), refs = jax.device_get(run(params, xs))  # compared in numpy: no more compiles
    chex.assert_shape(ys, (3, 7, 8))
    for b, (n, ((s_f, y_f), (s_b, y_b))) in enumerate(zip(lengths.tolist(), refs)):
        close(ys[b, :n], np.concatenate([y_f, np.flip(y_b, 0)], -1))
        assert not np.any(ys[b, n:])
        close(jax.tree_util.tree_map(lambda a, b=b: a[b], states.fw), s_f)
        close(jax.tree_util.tree_map(lambda a, b=b: a[b], states.bw), s_b)


def test_bidirectional_with_different_backward_cell():
    fw, bw = gr.lstm(4), gr.gru(2)
    params = gr.Bidir(fw.init(jax.random.PRNGKey(0), 3), bw.init(jax.random.PRNGKey(1), 3))
    xs = normal(2, (5, 3))

    @jax.jit  # one compile: the layer and its reference
    def run(params, xs):
        ys = gr.bidirectional_scan(fw, params, xs, cell_bw=bw)[1]
        return ys, jnp.flip(gr.scan(bw, params.bw, jnp.flip(xs, 0))[1], 0)

    ys, want_bw = jax.device_get(run(params, xs))
    assert ys.shape == (5, 6)
    close(ys[:, 4:], want_bw)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_stack_equals_layer_by_layer(name):
    """Unidirectional and bidirectional stacks (one compile for both) equal their layers."""
    cell = make_cell(name, 4)
    stacks = {bidir: gr.stack(cell, 2, bidirectional=bidir) for bidir in (False, True)}
    params = {bidir: st.init(jax.random.PRNGKey(0), 3) for bidir, st in stacks.items()}
    xs = normal(1, (2, 6, 3))
    lengths = np.array([6, 3])

    @jax.jit  # one compile: both stacks and their layer-by-layer references
    def run(params, xs):
        out = {}
        for bidirectional, st in stacks.items():
            h, refs = xs, []
            for layer in range(2):
                p = params[bidirectional][layer]
                if bidirectional:
                    s, h = gr.bidirectional_scan(cell, p, h, seq_lengths=lengths)
                else:
                    s, h = gr.scan(cell, p, h, seq_lengths=lengths)
                refs.append(s)
            out[bidirectional] = st.apply(params[bidirectional], xs, seq_lengths=lengths), (refs, h)
        return out

    for bidirectional, ((states, ys), (refs, h)) in jax.device_get(run(params, xs)).items():
        assert len(params[bidirectional]) == 2
        for layer in range(2):
            close(states[layer], refs[layer])
        close(ys, h)
        assert ys.shape == (2, 6, 8 if bidirectional else 4)
        # Later layers take D*H features: their params are the cell's for input size D*H.
        later = params[bidirectional][1].fw if bidirectional else params[bidirectional][1]
        size = 8 if bidirectional else 4
        want = jax.eval_shape(lambda k, size=size: cell.init(k, size), jax.random.key(0))
        chex.assert_trees_all_equal_shapes(later, want)


def test_stack_initial_state_is_used_and_time_major():
    cell = gr.gru(4)
    st = gr.stack(cell, 2)
    params = st.init(jax.random.PRNGKey(0), 3)
    xs = normal(1, (5, 3, 3))  # (T, B, I)
    s0 = tuple(np.full((3, 4), 0.5, np.float32) for _ in range(2))

    @jax.jit  # one compile: the stack and its layer-by-layer reference
    def run(params, xs, s0):
        s_a, h = gr.scan(cell, params[0], xs, s0[0], time_major=True)
        s_b, h = gr.scan(cell, params[1], h, s0[1], time_major=True)
        return st.apply(params, xs, s0, time_major=True), ((s_a, s_b), h)

    (states, ys), (want_states, h) = jax.device_get(run(params, xs, s0))
    close(states, want_states)
    close(ys, h)
    zero = st.initial_state(params, (3,))
    assert len(zero) == 2 and zero[0].shape == (3, 4)


def test_stack_dropout_only_with_key_and_only_between_layers():
    cell = gr.lstm(4)
    st = gr.stack(cell, 2, dropout=0.5)
    params = st.init(jax.random.PRNGKey(0), 3)
    xs = normal(1, (2, 5, 3))
    one = gr.stack(cell, 1, dropout=0.5)
    p1 = one.init(jax.random.PRNGKey(0), 3)

    @jax.jit  # one compile for every run below
    def run(params, p1, xs, key):
        return (
            st.apply(params, xs)[1],
            st.apply(params, xs, dropout_key=key)[1],
            one.apply(p1, xs, dropout_key=key),
            one.apply(p1, xs),
        )

    plain, dropped, one_dropped, one_plain = jax.device_get(
        run(params, p1, xs, jax.random.PRNGKey(3))
    )
    again = jax.device_get(run(params, p1, xs, jax.random.PRNGKey(4))[0])  # no key: no randomness
    close(plain, again)
    assert float(np.max(np.abs(dropped - plain))) > 1e-3
    # One layer: nothing to drop between.
    close(one_dropped, one_plain)


def test_stack_gradients_flow_to_every_layer():
    st = gr.stack(gr.lstm(4), 2, bidirectional=True)
    params = st.init(jax.random.PRNGKey(0), 3)
    xs = normal(1, (2, 5, 3))
    g = jax.device_get(jax.jit(jax.grad(lambda p: jnp.sum(st.apply(p, xs)[1] ** 2)))(params))
    for leaf in jax.tree_util.tree_leaves(g):
        assert float(np.sum(np.abs(leaf))) > 0


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(num_layers=0), "num_layers must be an int >= 1"),
        (dict(num_layers=2, dropout=1.0), r"dropout must be in \[0, 1\)"),
    ],
)
def test_stack_bad_options(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        gr.stack(gr.gru(3), **kwargs)


def test_stack_wrong_params_raise():
    st = gr.stack(gr.gru(4), 2)
    params = st.init(jax.random.PRNGKey(0), 3)  # the sizes of the other tests: no new compile
    with pytest.raises(ValueError, match="tuple of 2 layer params"):
        st.apply(params[:1], np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="Bidir"):
        gr.bidirectional_scan(gr.gru(4), params[0], np.ones((4, 3), np.float32))
