"""gatedrnn.linen and gatedrnn.nnx agree: the same option names and defaults (compared from
their signatures, so they cannot drift), and the same weights give the same numbers through
Linen, NNX and the pure ``gr.scan`` / ``gr.stack``."""

from __future__ import annotations

import inspect

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import nnx_with_numpy_params, normal, normal_like
from flax import nnx

import gatedrnn as gr
import gatedrnn.linen as grl
import gatedrnn.nnx as grx

# NumPy inputs: an eager jnp operation compiles a program per shape
X = normal(0, (3, 6, 4))
LENGTHS = np.array([6, 2, 4])
MASK = (np.arange(6) < LENGTHS[:, None])[..., None]

LINEN_ONLY = {"self", "parent", "name"}  # every Linen module has them
NNX_ONLY = {"self", "in_features", "rngs"}  # NNX makes params eagerly


def _signature(cls, drop: set[str]) -> list[tuple[str, object]]:
    """``[(name, default), ...]`` of a module's constructor, in order, without ``drop``."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [(p.name, p.default) for p in params if p.name not in drop]


def test_rnn_modules_take_the_same_options_with_the_same_defaults():
    linen, nnx_ = _signature(grl.RNN, LINEN_ONLY), _signature(grx.RNN, NNX_ONLY)
    assert linen == nnx_
    defaults = dict(linen)
    assert defaults["dropout"] == 0.0 and defaults["deterministic"] is None  # dropout off
    assert defaults["cell"] is inspect.Parameter.empty and defaults["hidden_size"] is None


@pytest.mark.parametrize("name", ["Cell", "VanillaCell", "LSTMCell", "GRUCell"])
def test_cell_modules_take_the_same_options_with_the_same_defaults(name):
    linen = dict(_signature(getattr(grl, name), LINEN_ONLY))
    nnx_ = dict(_signature(getattr(grx, name), NNX_ONLY))
    assert linen == nnx_
    assert "hidden_size" in linen  # the name gr.lstm(hidden_size=...) uses, in both


def _random_params(init, seed):
    """Params of the structure, shapes and dtypes ``init(key, 4)`` gives, drawn by NumPy
    (scale 0.5; nothing compiled): the weights the tests load into both modules."""
    return normal_like(jax.eval_shape(lambda k: init(k, 4), jax.random.key(0)), seed)


RNN_CASES = {
    "vanilla-relu-2-layers": (
        ("vanilla", 5),
        dict(num_layers=2, cell_options={"activation": "relu"}),
    ),
    "lstm-bidir-forget-bias": (
        ("lstm", 5),
        dict(bidirectional=True, cell_options={"forget_bias": 2.0}),
    ),
    "gru-reset-before-reverse": (("gru", 5), dict(cell_options={"reset_after": False})),
    "a-gr-Cell-min-gru": ((gr.min_gru(5), None), dict(num_layers=2)),
    "a-gr-Cell-lstm-time-major": ((gr.lstm(5), 5), dict(time_major=True, unroll=2)),
}


@pytest.mark.parametrize("case", list(RNN_CASES))
def test_same_weights_same_outputs_through_linen_nnx_and_gr_stack(case):
    (cell, hidden), options = RNN_CASES[case]
    # the module as shapes (its init is tested in test_nnx), then the random weights loaded
    model = nnx_with_numpy_params(lambda: grx.RNN(cell, 4, hidden, **options, rngs=nnx.Rngs(0)))
    layer = grl.RNN(cell, hidden, **options)
    st = model.stack
    assert layer.make_stack().cell.options == st.cell.options
    params = _random_params(st.init, 1)
    model.load_pure(params)
    time_major = options.get("time_major", False)
    x = np.swapaxes(X, 0, 1) if time_major else X
    call = {} if time_major else dict(seq_lengths=LENGTHS)
    if case.endswith("reverse"):
        call["reverse"] = True
    one_layer = st.num_layers == 1 and not st.bidirectional  # one layer is exactly gr.scan

    @nnx.jit  # the three (four) runs in one compiled program
    def run(model, params, x):
        return (
            model(x, **call),
            layer.apply(layer.from_pure(params), x, **call),
            st.apply(params, x, time_major=time_major, **call),
            gr.scan(st.cell, params[0], x, time_major=time_major, **call) if one_layer else None,
        )

    (final_nnx, ys_nnx), (final_lin, ys_lin), (final, ys), scanned = run(model, params, x)
    chex.assert_shape(ys, (*x.shape[:-1], (2 if options.get("bidirectional") else 1) * 5))
    chex.assert_trees_all_close((final_nnx, ys_nnx), (final, ys), atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close((final_lin, ys_lin), (final, ys), atol=1e-6, rtol=1e-6)
    if one_layer:
        chex.assert_trees_all_close((final[0], ys), scanned, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "linen_cell, nnx_cell",
    [
        (
            lambda: grl.VanillaCell(5, activation="relu"),
            lambda r: grx.VanillaCell(4, 5, activation="relu", rngs=r),
        ),
        (lambda: grl.LSTMCell(5), lambda r: grx.LSTMCell(4, 5, rngs=r)),
        (
            lambda: grl.GRUCell(5, reset_after=False),
            lambda r: grx.GRUCell(4, 5, reset_after=False, rngs=r),
        ),
    ],
    ids=["vanilla-relu", "lstm", "gru-reset-before"],
)
def test_same_weights_same_steps_through_flax_loops_and_gr_scan(linen_cell, nnx_cell):
    """Cells under Flax's own nn.RNN and nnx.RNN loops give gr.scan's numbers."""
    lin, m = linen_cell(), nnx_with_numpy_params(lambda: nnx_cell(nnx.Rngs(0)))
    params = _random_params(m.cell.init, 3)
    m.load_pure(params)

    @nnx.jit  # the three loops in one compiled program
    def run(m, params):
        carry_lin, ys_lin = nn.RNN(lin, return_carry=True).apply(
            {"params": {"cell": lin.from_pure(params)["params"]}}, X, seq_lengths=LENGTHS
        )
        carry_nnx, ys_nnx = nnx.RNN(m, return_carry=True)(X, seq_lengths=LENGTHS)
        return (
            (carry_lin, jnp.where(MASK, ys_lin, 0.0)),
            (carry_nnx, jnp.where(MASK, ys_nnx, 0.0)),
            gr.scan(m.cell, params, X, seq_lengths=LENGTHS),
        )

    got_lin, got_nnx, (state, ys) = run(m, params)
    chex.assert_trees_all_close(got_lin, (state, ys), atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(got_nnx, (state, ys), atol=1e-6, rtol=1e-6)


def test_dropout_is_off_by_default_in_both_and_on_when_asked():
    model = nnx_with_numpy_params(
        lambda: grx.RNN("lstm", 4, 5, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    )
    model.rngs = nnx.Rngs(0)["dropout"].fork()  # the shell's dropout stream is shapes only
    layer = grl.RNN("lstm", 5, num_layers=2, dropout=0.5)
    training = grl.RNN("lstm", 5, num_layers=2, dropout=0.5, deterministic=False)
    params = _random_params(model.stack.init, 7)
    model.load_pure(params)
    variables = layer.from_pure(params)

    @nnx.jit  # every call below in one compiled program (NNX's modes are Python flags)
    def run(model, params, variables):
        out = {"pure": model.stack.apply(params, X)[1]}
        out["nnx-default"] = model(X)[1]  # no .train(): deterministic
        out["linen-default"] = layer.apply(variables, X)[1]  # no "dropout" rng needed
        model.train()
        out["nnx-train"] = model(X)[1]
        model.eval()
        out["nnx-eval"] = model(X)[1]
        out["nnx-deterministic-false"] = model(X, deterministic=False)[1]
        dropout = {"dropout": jax.random.key(1)}
        out["linen-training"] = training.apply(variables, X, rngs=dropout)[1]
        out["linen-training-deterministic"] = training.apply(variables, X, deterministic=True)[1]
        return out

    out = run(model, params, variables)
    ys = out["pure"]
    for kept in ("nnx-default", "linen-default", "nnx-eval", "linen-training-deterministic"):
        chex.assert_trees_all_close(out[kept], ys)
    for dropped in ("nnx-train", "nnx-deterministic-false", "linen-training"):
        assert not np.allclose(out[dropped], ys), dropped


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("transformer", 5), {}, "one of"),
        (("lstm", None), {}, "needs hidden_size"),
        ((gr.lstm(3), 4), {}, "hidden size 3"),
        ((gr.lstm(5), None), dict(cell_options={"forget_bias": 2.0}), "ready-made Cell"),
        (("gru", 5), dict(cell_options={"forget_bias": 2.0}), "takes no \\['forget_bias'\\]"),
        (
            ("min_gru", 5),
            dict(cell_options={"recurrent_init": jax.nn.initializers.zeros}),
            "recurrent_init",
        ),
        (("lstm", 5), dict(cell_options={"update_bias": 1.0}), "takes no \\['update_bias'\\]"),
        (("vanilla", 5), dict(cell_options={"t_max": 10}), "takes no \\['t_max'\\]"),
        (("lstm", 5), dict(cell_options={"forget_bias": "chrono"}), "needs t_max"),
        (("gru", 5), dict(cell_options={"t_max": 10}), "only used with"),
    ],
    ids=[
        "unknown-name",
        "no-hidden-size",
        "size-mismatch",
        "options-with-Cell",
        "gru-forget-bias",
        "min-gru-recurrent-init",
        "lstm-update-bias",
        "vanilla-t-max",
        "chrono-without-t-max",
        "t-max-without-chrono",
    ],
)
def test_both_refuse_the_same_bad_options_with_the_same_message(args, kwargs, match):
    with pytest.raises(ValueError, match=match) as e_nnx:
        grx.RNN(args[0], 4, args[1], **kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match) as e_lin:
        grl.RNN(*args, **kwargs).init(jax.random.key(0), X)
    assert str(e_nnx.value) == str(e_lin.value)


def test_forward_mode_through_both_modules_equals_the_pure_stack():
    """jax.jvp through Linen and NNX RNNs, against the pure stack's unfused jvp."""
    model = nnx_with_numpy_params(lambda: grx.RNN("lstm", 4, 5, num_layers=2, rngs=nnx.Rngs(0)))
    layer = grl.RNN("lstm", 5, num_layers=2)
    params = _random_params(model.stack.init, 5)
    model.load_pure(params)
    variables = layer.from_pure(params)
    tangent = np.ones_like(X)

    @nnx.jit  # the three jvps in one compiled program
    def run(model, params, variables):
        _, want = jax.jvp(lambda x: model.stack.apply(params, x, fused=False)[1], (X,), (tangent,))
        _, lin = jax.jvp(lambda x: layer.apply(variables, x)[1], (X,), (tangent,))
        _, nnx_ = jax.jvp(lambda x: model(x)[1], (X,), (tangent,))
        return (lin, nnx_), (want, want)

    got, want = run(model, params, variables)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------- chrono gate-bias initialization

H_CHRONO, T_MAX = 64, 100


def _times(params) -> np.ndarray:
    """Characteristic times ``1 / (1 - gate) = 1 + exp(b)`` of the gate that keeps the state
    (LSTM forget gate, GRU update gate), one per unit, at init (zero recurrent input)."""
    if isinstance(params, gr.LSTMParams):
        b_i, b_f = np.split(np.asarray(params.b, np.float64), 4)[:2]
        np.testing.assert_allclose(b_i, -b_f)  # chrono: the input gate's bias is -b_f
        b = b_f
    else:
        b = np.asarray(params.b_x, np.float64)[H_CHRONO : 2 * H_CHRONO]
    return 1.0 + np.exp(b)


def _check_spread(times: np.ndarray) -> None:
    """``1 + U(1, t_max - 1)``: inside ``[2, t_max]`` and spread over it."""
    assert times.min() >= 2.0 - 1e-4 and times.max() <= T_MAX + 1e-3
    assert times.min() < 0.1 * T_MAX and times.max() > 0.8 * T_MAX


CHRONO = {
    "lstm": (
        gr.lstm(H_CHRONO, forget_bias="chrono", t_max=T_MAX),
        dict(forget_bias="chrono", t_max=T_MAX),
    ),
    "gru": (
        gr.gru(H_CHRONO, update_bias="chrono", t_max=T_MAX),
        dict(update_bias="chrono", t_max=T_MAX),
    ),
}


@pytest.mark.parametrize("kind", list(CHRONO))
def test_chrono_init_through_linen_and_nnx_modules_spans_the_pure_cells_range(kind):
    """Cells and RNN modules, Linen and NNX, built with chrono options run the same pure
    cell, and their params at init have the characteristic times the pure cell draws."""
    pure, options = CHRONO[kind]
    _check_spread(_times(pure.init(jax.random.key(0), 4)))
    name = {"lstm": "LSTMCell", "gru": "GRUCell"}[kind]
    lin_cell = getattr(grl, name)(H_CHRONO, **options)
    assert lin_cell.make_cell() == pure
    variables = nn.RNN(lin_cell).init(jax.random.key(1), X)
    _check_spread(_times(lin_cell.to_pure(variables["params"]["cell"])))
    nnx_cell = getattr(grx, name)(4, H_CHRONO, **options, rngs=nnx.Rngs(1))
    assert nnx_cell.cell == pure
    _check_spread(_times(nnx_cell.pure_params()))
    layer = grl.RNN(kind, H_CHRONO, num_layers=2, cell_options=options)
    assert layer.make_stack().cell == pure
    for p in layer.to_pure(layer.init(jax.random.key(2), X)):
        _check_spread(_times(p))
    model = grx.RNN(kind, 4, H_CHRONO, num_layers=2, cell_options=options, rngs=nnx.Rngs(2))
    assert model.cell == pure
    for p in model.pure_params():
        _check_spread(_times(p))

    # and they run it: the NNX module's weights through Linen give the pure stack's numbers
    @nnx.jit  # the three runs in one compiled program
    def run(model, params):
        return (
            model.stack.apply(params, X)[1],
            model(X)[1],
            layer.apply(layer.from_pure(params), X)[1],
        )

    ys, ys_nnx, ys_lin = run(model, model.pure_params())
    chex.assert_trees_all_close(ys_nnx, ys, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(ys_lin, ys, atol=1e-6, rtol=1e-6)
