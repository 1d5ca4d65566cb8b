"""The cells compute exactly the equations docs/api.md fixes, with the fixed layouts."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make, normal, sigmoid

import gatedrnn as gr

_step = jax.jit(lambda cell, p, s, x: cell.step(p, s, x), static_argnums=0)
"""``cell.step`` compiled once per cell and shapes (eagerly, each operation compiles)."""


def test_vanilla_step_matches_numpy_equation():
    for act, f in [
        ("tanh", np.tanh),
        ("relu", lambda z: np.maximum(z, 0)),
        ("linear", lambda z: z),
    ]:
        cell, p, k = make(
            {"tanh": "vanilla", "relu": "vanilla_relu", "linear": "vanilla_linear"}[act]
        )
        x = normal(0, (4, 3))
        h = normal(9, (4, 5))
        h2, y = _step(cell, p, h, x)
        want = f(x @ np.asarray(p.w_x) + h @ np.asarray(p.w_h) + np.asarray(p.b))
        chex.assert_trees_all_close(h2, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(h2, y)


def test_lstm_step_matches_numpy_equation_gate_order_ifgo():
    cell, p, k = make("lstm")
    x = normal(0, (4, 3))
    h = normal(1, (4, 5))
    c = normal(2, (4, 5))
    z = x @ np.asarray(p.w_x) + h @ np.asarray(p.w_h) + np.asarray(p.b)
    i, f, g, o = np.split(z, 4, axis=-1)
    c2 = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h2 = sigmoid(o) * np.tanh(c2)
    state, y = _step(cell, p, gr.LSTMState(h, c), x)
    chex.assert_trees_all_close(state.c, c2, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state.h, h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, state.h)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_step_matches_numpy_equation(reset_after):
    cell, p, k = make("gru" if reset_after else "gru_reset_before")
    x = normal(0, (4, 3))
    h = normal(1, (4, 5))
    wx, wh, bx, bh = (np.asarray(a) for a in p)
    xr, xz, xn = np.split(x @ wx + bx, 3, axis=-1)
    whr, whz, whn = np.split(wh, 3, axis=-1)
    bhr, bhz, bhn = np.split(bh, 3)
    r = sigmoid(xr + h @ whr + bhr)
    z = sigmoid(xz + h @ whz + bhz)
    if reset_after:
        n = np.tanh(xn + r * (h @ whn + bhn))
    else:
        n = np.tanh(xn + (r * h) @ whn + bhn)
    want = (1 - z) * n + z * h
    h2, y = _step(cell, p, h, x)
    chex.assert_trees_all_close(h2, want, rtol=1e-5, atol=1e-6)


def test_gru_reset_forms_differ():
    _, p, k = make("gru")
    x = normal(0, (4, 3))
    h = normal(3, (4, 5))
    a, _ = _step(gr.gru(5), p, h, x)
    b, _ = _step(gr.gru(5, reset_after=False), p, h, x)
    assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) > 1e-4


@pytest.mark.parametrize(
    "factory, gates, fields",
    [
        (lambda: gr.vanilla(5), 1, ("w_x", "w_h", "b")),
        (lambda: gr.lstm(5), 4, ("w_x", "w_h", "b")),
        (lambda: gr.gru(5), 3, ("w_x", "w_h", "b_x", "b_h")),
    ],
)
def test_param_layout_and_init(factory, gates, fields):
    cell = factory()
    p = cell.init(jax.random.PRNGKey(0), 3)  # the sizes of conftest.make: no new compile
    assert type(p)._fields == fields
    assert p.w_x.shape == (3, gates * 5) and p.w_h.shape == (5, gates * 5)
    for name in fields[2:]:
        assert getattr(p, name).shape == (gates * 5,)
    assert all(leaf.dtype == jnp.float32 for leaf in p)
    # Recurrent weights are orthogonal gate block by gate block.
    for blk in np.split(np.asarray(p.w_h), gates, axis=1):
        chex.assert_trees_all_close(blk.T @ blk, np.eye(5), atol=1e-5)
    # Input weights are scaled by fan-in: variance about 1/I.
    big = cell.init(jax.random.PRNGKey(1), 400)
    assert 0.8 / 400 < float(np.var(np.asarray(big.w_x))) < 1.2 / 400


def test_lstm_forget_bias_only_on_forget_block():
    p = gr.lstm(5, forget_bias=2.5).init(jax.random.PRNGKey(0), 3)  # conftest.make's sizes
    np.testing.assert_array_equal(p.b, np.r_[np.zeros(5), 2.5 * np.ones(5), np.zeros(10)])


def test_init_dtype_and_custom_initializers():
    def ones(key, shape, dtype):
        return jnp.ones(shape, dtype)

    with jax.enable_x64(True):
        p = gr.gru(4, recurrent_init=ones, bias_init=ones).init(
            jax.random.PRNGKey(0), 3, dtype=jnp.float64
        )
        assert p.w_x.dtype == jnp.float64
        np.testing.assert_array_equal(p.w_h, np.ones((4, 12)))
        np.testing.assert_array_equal(p.b_h, np.ones(12))


@pytest.mark.parametrize("factory", [gr.vanilla, gr.lstm, gr.gru])
def test_initial_state_shapes(factory):
    cell = factory(5)
    p = cell.init(jax.random.PRNGKey(0), 3)
    for batch in [(), (4,), (2, 3)]:
        s = cell.initial_state(p, batch_shape=batch)
        for leaf in jax.tree_util.tree_leaves(s):
            assert leaf.shape == (*batch, 5)
            assert not np.any(np.asarray(leaf))


def test_step_is_project_then_recur(cell_name):
    cell, p, k = make(cell_name)
    x = normal(0, (2, 3))

    @jax.jit  # one compile for both forms
    def both(p, x):
        s = cell.initial_state(p, (2,))
        return cell.step(p, s, x), cell.recur(p, s, cell.project(p, x))

    a, b = both(p, x)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
@pytest.mark.parametrize("factory", [gr.vanilla, gr.lstm, gr.gru])
def test_bad_hidden_size_raises(factory, bad):
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1"):
        factory(bad)


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoid'.*linear.*relu.*tanh"):
        gr.vanilla(4, activation="sigmoid")


def test_bad_input_size_raises():
    with pytest.raises(ValueError, match="input_size must be an integer >= 1, got 0"):
        gr.lstm(4).init(jax.random.PRNGKey(0), 0)


def test_step_feature_size_mismatch_raises():
    cell = gr.lstm(4)
    p = jax.eval_shape(lambda k: cell.init(k, 3), jax.random.PRNGKey(0))  # shapes only
    with pytest.raises(ValueError, match="has 5 features.*input_size=3"):  # the same checks
        jax.eval_shape(lambda p: cell.step(p, cell.initial_state(p, (2,)), jnp.ones((2, 5))), p)


def test_step_integer_and_dtype_mismatch_raise_typeerror():
    cell = gr.gru(4)
    p = jax.eval_shape(lambda k: cell.init(k, 3), jax.random.PRNGKey(0))  # shapes only
    for dtype, match in [
        (jnp.int32, "floating point"),
        (jnp.float16, "dtype float16 but the params are float32"),
    ]:
        with pytest.raises(TypeError, match=match):  # the same checks, on shapes alone
            jax.eval_shape(
                lambda p, dtype=dtype: cell.step(
                    p, cell.initial_state(p, (2,)), jnp.ones((2, 3), dtype)
                ),
                p,
            )


@pytest.mark.parametrize("reset_after", [True, False])
def test_gate_helpers_match_the_step_with_biases(reset_after):
    """``lstm_gates``/``gru_gates`` (what diagnostics read) see the same biases as the step,
    wherever the cell adds them (the LSTM's bias is added in ``hidden``, not ``project``)."""
    x, h, c = normal(1, (2, 3)), normal(2, (2, 5)), normal(3, (2, 5))  # conftest.make's sizes
    k4 = jax.random.PRNGKey(4)

    lstm = gr.lstm(5)
    p = lstm.init(k4, 3)
    p = p._replace(b=normal(4, p.b.shape))
    gru = gr.gru(5, reset_after=reset_after)
    q = gru.init(k4, 3)
    q = q._replace(b_x=normal(5, q.b_x.shape), b_h=normal(6, q.b_h.shape))

    @jax.jit  # one compile: the helpers and the steps of both cells
    def run(p, q):
        lstm_out = gr.cells.lstm_gates(p, h, lstm.project(p, x))
        state, _ = lstm.step(p, gr.cells.LSTMState(h=h, c=c), x)
        gru_out = gr.cells.gru_gates(q, h, gru.project(q, x), reset_after)
        new_h, _ = gru.step(q, h, x)
        return lstm_out, state, gru_out, new_h

    (i, f, g, o), state, (r, u, n), new_h = jax.device_get(run(p, q))
    p, q = jax.device_get((p, q))
    z = x @ p.w_x + h @ p.w_h + p.b
    for got, want in zip(
        (i, f, g, o),
        (sigmoid(z[:, :5]), sigmoid(z[:, 5:10]), np.tanh(z[:, 10:15]), sigmoid(z[:, 15:])),
        strict=True,
    ):
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state.c, f * c + i * g, rtol=1e-5, atol=1e-6)

    chex.assert_trees_all_close(new_h, (1 - u) * n + u * h, rtol=1e-5, atol=1e-6)
    zx = x @ q.w_x + q.b_x
    zh = h @ q.w_h + q.b_h
    chex.assert_trees_all_close(r, sigmoid(zx[:, :5] + zh[:, :5]), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(u, sigmoid(zx[:, 5:10] + zh[:, 5:10]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- the Cell type

ALL_FACTORIES = {  # the sizes of conftest.make (H = 5, input size 3): no new init compiles
    "vanilla": lambda: gr.vanilla(5, activation="relu"),
    "lstm": lambda: gr.lstm(5, forget_bias=2.0),
    "gru": lambda: gr.gru(5),
    "gru_reset_before": lambda: gr.gru(5, reset_after=False),
    "min_gru": lambda: gr.min_gru(5),
    "min_lstm": lambda: gr.min_lstm(5),
}


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_cell_is_hashable_and_a_static_jit_argument(name):
    cell = ALL_FACTORIES[name]()
    assert isinstance(hash(cell), int)
    # The same factory call gives an equal cell, so jit does not retrace for it.
    assert ALL_FACTORIES[name]() == cell and hash(ALL_FACTORIES[name]()) == hash(cell)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = normal(1, (2, 5, 3))

    @chex.assert_max_traces(n=1)
    def run(cell, params, xs):
        return gr.scan(cell, params, xs)

    run_jit = jax.jit(run, static_argnums=0)
    final, ys = run_jit(cell, params, xs)
    chex.assert_shape(ys, (2, 5, 5))
    chex.assert_trees_all_close((final, ys), gr.scan(cell, params, xs), rtol=1e-6, atol=1e-6)
    run_jit(ALL_FACTORIES[name](), params, 2.0 * xs)  # no retrace
    chex.clear_trace_counter()


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_options_are_a_dict_from_hashable_config(name):
    cell = ALL_FACTORIES[name]()
    assert isinstance(cell.config, tuple) and dict(cell.config) == cell.options
    assert cell.options["hidden_size"] == cell.hidden_size == 5
    assert gr.cells.make_cell(cell.name, **{**cell.options}) == cell


@pytest.mark.parametrize(
    "name, has_split",
    [
        ("vanilla", True),
        ("lstm", True),
        ("gru", True),
        ("gru_reset_before", False),
        ("min_gru", False),
        ("min_lstm", False),
    ],
)
def test_the_fast_path_is_one_typed_field(name, has_split):
    cell = ALL_FACTORIES[name]()
    assert isinstance(cell.recur, gr.Split) == has_split
    assert (cell.hidden is not None) == has_split == (cell.pointwise is not None)
    if has_split:
        params = cell.init(jax.random.PRNGKey(0), 3)

        @jax.jit  # one compile for both forms
        def both(params):
            s = jax.tree_util.tree_map(lambda z: z + 0.3, cell.initial_state(params, (2,)))
            xp = cell.project(params, jnp.ones((2, 3)))
            return cell.recur(params, s, xp), cell.pointwise(s, xp, cell.hidden(params, s))

        got, want = both(params)
        chex.assert_trees_all_equal(got, want)
    # Replacing recur by a plain function drops the split.
    plain = cell._replace(recur=lambda p, s, xp: cell.recur(p, s, xp))
    assert plain.hidden is None and plain.pointwise is None and plain != cell


def test_a_custom_cell_from_a_split():
    """A user's cell: a leaky vanilla RNN built from parts, fast path included."""
    H = 3

    def init(key, input_size, dtype=jnp.float32):
        kx, kh = jax.random.split(key)
        return gr.VanillaParams(
            w_x=jax.random.normal(kx, (input_size, H), dtype),
            w_h=0.5 * jax.random.normal(kh, (H, H), dtype),
            b=jnp.zeros(H, dtype),
        )

    cell = gr.Cell(
        init=init,
        initial_state=lambda p, batch_shape=(): jnp.zeros((*batch_shape, H), p.w_h.dtype),
        project=lambda p, x: x @ p.w_x,
        recur=gr.Split(
            hidden=lambda p, h: h @ p.w_h + p.b,
            pointwise=lambda h, xp, a: (0.5 * h + 0.5 * jnp.tanh(xp + a),) * 2,
        ),
        output=lambda p, h, xp: h,
        hidden_size=H,
        name="leaky",
        config=(("hidden_size", H),),
    )
    hash(cell)
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = normal(1, (4, 6, 2))

    @jax.jit  # one compile: both paths' values and gradients, and a step
    def run(params):
        fast = jax.value_and_grad(lambda p: jnp.sum(gr.scan(cell, p, xs)[1] ** 2))(params)
        slow = jax.value_and_grad(lambda p: jnp.sum(gr.scan(cell, p, xs, fused=False)[1] ** 2))(
            params
        )
        return fast, slow, cell.step(params, cell.initial_state(params, (4,)), xs[:, 0])

    fast, slow, (s, y) = run(params)
    chex.assert_trees_all_close(fast, slow, rtol=1e-5, atol=1e-6)
    chex.assert_shape((s, y), (4, H))


# ------------------------------------------------------------ chrono initialization


def test_lstm_chrono_forget_bias_spreads_characteristic_times():
    """Tallec & Ollivier 2018: b_f = log U(1, t_max - 1), b_i = -b_f, so the forget
    gate's characteristic times 1 / (1 - f) = 1 + exp(b_f) lie in [2, t_max], spread."""
    H, t_max = 256, 100
    assert gr.lstm(H, forget_bias="chrono", t_max=t_max).options == {
        "hidden_size": H,
        "forget_bias": "chrono",
        "t_max": t_max,
    }
    cell = gr.lstm(H, forget_bias="chrono", t_max=t_max, recurrent_init=gr.cells.base.zeros)
    b = cell.init(jax.random.PRNGKey(0), 3).b
    b_i, b_f, b_g, b_o = np.split(np.asarray(b), 4)
    chex.assert_trees_all_close(b_i, -b_f)
    assert not b_g.any() and not b_o.any()
    times = 1.0 / (1.0 - sigmoid(b_f.astype(np.float64)))
    assert times.min() >= 2.0 - 1e-4 and times.max() <= t_max + 1e-3
    # Uniform on [1, t_max - 1] in exp(b_f): a quarter of the units below ~26 steps.
    assert 0.15 < np.mean(np.exp(b_f) < 1 + (t_max - 2) / 4) < 0.35
    assert np.mean(times > t_max / 2) > 0.3


def test_gru_update_bias_number_and_chrono():
    H, t_max, fast = 256, 50, {"recurrent_init": gr.cells.base.zeros}
    p = gr.gru(H, update_bias=1.5, **fast).init(jax.random.PRNGKey(0), 3)
    chex.assert_trees_all_close(p.b_x, np.r_[np.zeros(H), 1.5 * np.ones(H), np.zeros(H)])
    assert gr.gru(H).options == {"hidden_size": H, "reset_after": True}
    cell = gr.gru(H, update_bias="chrono", t_max=t_max, **fast)
    b_z = np.asarray(cell.init(jax.random.PRNGKey(0), 3).b_x[H : 2 * H], np.float64)
    times = 1.0 / (1.0 - sigmoid(b_z))  # z keeps the state: h' = (1 - z) n + z h
    assert times.min() >= 2.0 - 1e-4 and times.max() <= t_max + 1e-3
    assert times.max() > 0.8 * t_max and times.min() < 6.0
    chrono = gr.gru(H, update_bias="chrono", t_max=t_max)
    assert gr.cells.make_cell("gru", **chrono.options) == chrono


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: gr.lstm(4, forget_bias="chrono"), ValueError, "needs t_max"),
        (lambda: gr.lstm(4, forget_bias="chrono", t_max=1), ValueError, "needs t_max"),
        (lambda: gr.lstm(4, forget_bias="chrono", t_max=2.5), ValueError, "needs t_max"),
        (lambda: gr.lstm(4, forget_bias=1.0, t_max=10), ValueError, "only used with"),
        (lambda: gr.lstm(4, forget_bias="Chrono", t_max=10), TypeError, "real number"),
        (lambda: gr.gru(4, update_bias="chrono"), ValueError, "needs t_max"),
        (lambda: gr.gru(4, update_bias=float("inf")), ValueError, "finite"),
        (lambda: gr.gru(4, update_bias=None), TypeError, "real number"),
        (lambda: gr.gru(4, t_max=10), ValueError, "only used with"),
    ],
)
def test_bad_gate_biases_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()
