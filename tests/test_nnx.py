"""gatedrnn.nnx: NNX cells and the fast-path RNN module give the pure functions' numbers."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NestedParams, nested_cell, nnx_with_numpy_params, normal, normal_like
from flax import nnx

import gatedrnn as gr
import gatedrnn.nnx as grx
from gatedrnn._modules import flatten_params
from gatedrnn.cells import CELLS as REGISTRY
from gatedrnn.cells import make_cell

# NumPy inputs: an eager jnp operation compiles a program per shape
X = normal(0, (3, 6, 4))
LENGTHS = np.array([6, 2, 4])  # nnx.RNN picks carry[len - 1]: lengths >= 1 here
MASK = (np.arange(6) < LENGTHS[:, None])[..., None]


def _close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def _pure_init_shapes(cell):
    """Shapes and dtypes of ``cell.init(key, 4)``, traced (nothing compiled)."""
    return jax.eval_shape(lambda k: cell.init(k, 4), jax.random.key(0))


@nnx.jit  # one compiled program per cell: nnx.RNN's loop (padding masked) and gr.scan
def _rnn_and_scan(module, params):
    carry, ys = nnx.RNN(module, return_carry=True)(X, seq_lengths=LENGTHS)
    return (carry, jnp.where(MASK, ys, 0.0)), gr.scan(module.cell, params, X, seq_lengths=LENGTHS)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: grx.VanillaCell(4, 5, activation="relu", rngs=r),
        lambda r: grx.LSTMCell(4, 5, forget_bias=2.0, rngs=r),
        lambda r: grx.GRUCell(4, 5, rngs=r),
    ],
    ids=["vanilla-relu", "lstm", "gru"],
)
def test_cells_in_nnx_rnn_with_seq_lengths_equal_gr_scan(make):
    module = nnx_with_numpy_params(lambda: make(nnx.Rngs(0)))
    params = module.pure_params()
    assert set(nnx.state(module, nnx.Param)) == set(params._fields)
    # drawn by the pure init with the key NNX handed out
    assert _tree_shapes(params) == _tree_shapes(_pure_init_shapes(module.cell))
    (carry, ys), (state, ys_gr) = _rnn_and_scan(module, params)
    _close(ys, ys_gr)
    _close(carry, state)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_cell_runs_as_nnx_cell_with_the_pure_numbers(name):
    """grx.Cell(name, I, H) under nnx.RNN equals gr.scan, for every cell of the registry."""
    module = nnx_with_numpy_params(lambda: grx.Cell(name, 4, 3, rngs=nnx.Rngs(0)))
    assert module.cell == make_cell(name, 3)
    params = module.pure_params()
    assert _tree_shapes(params) == _tree_shapes(_pure_init_shapes(module.cell))
    assert set(nnx.state(module, nnx.Param)) == set(flatten_params(params))
    (carry, ys), (state, ys_gr) = _rnn_and_scan(module, params)
    _close(ys, ys_gr)
    _close(carry, state)


def test_nested_params_as_nnx_params_with_grads_and_load_pure():
    """A custom cell with nested, tied params: one nnx.Param per leaf named by its path,
    drawn by one init call; gradients land there; load_pure checks structure and shapes."""
    cell = nested_cell(3)
    module = grx.Cell(cell, 4, rngs=nnx.Rngs(0))
    assert set(nnx.state(module, nnx.Param)) == {"inp.w", "inp.b", "decay.0"}
    p = module.pure_params()
    assert isinstance(p, NestedParams)
    _close(p.inp.b, -np.asarray(p.inp.w).sum(0), 1e-6)

    @nnx.jit  # outputs and gradients, NNX and pure, in one compiled program
    def outputs_and_grads(module, p):
        return (
            (nnx.RNN(module)(X), gr.scan(cell, p, X)[1]),
            nnx.grad(lambda m: jnp.sum(jnp.sin(nnx.RNN(m)(X))))(module),
            jax.grad(lambda q: jnp.sum(jnp.sin(gr.scan(cell, q, X)[1])))(p),
        )

    (ys, ys_pure), g, g_pure = outputs_and_grads(module, p)
    _close(ys, ys_pure)
    _close({k: v[...] for k, v in g.items()}, flatten_params(g_pure))
    module.load_pure(jax.tree.map(lambda a: a + 1.0, p))
    _close(module.pure_params(), jax.tree.map(lambda a: a + 1.0, p), 0.0)
    with pytest.raises(TypeError, match="NestedParams"):
        module.load_pure(p._replace(decay=p.decay[0]))
    with pytest.raises(ValueError, match="inp.w"):
        module.load_pure(p._replace(inp=p.inp._replace(w=p.inp.w[:2])))
    model = grx.RNN(cell, 4, num_layers=2, rngs=nnx.Rngs(1))
    _close(*nnx.jit(lambda m: (m(X)[1], m.stack.apply(m.pure_params(), X)[1]))(model), 0.0)


def _tree_shapes(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def test_nnx_bidirectional_with_gatedrnn_cells():
    fw = nnx_with_numpy_params(lambda: grx.LSTMCell(4, 5, rngs=nnx.Rngs(1)), 1)
    bw = nnx_with_numpy_params(lambda: grx.LSTMCell(4, 5, rngs=nnx.Rngs(2)), 11)
    bi = nnx.Bidirectional(nnx.RNN(fw), nnx.RNN(bw))
    params = gr.Bidir(fw.pure_params(), bw.pure_params())

    @nnx.jit  # both in one compiled program
    def both(bi, params):
        return (
            jnp.where(MASK, bi(X, seq_lengths=LENGTHS), 0.0),
            gr.bidirectional_scan(fw.cell, params, X, seq_lengths=LENGTHS)[1],
        )

    _close(*both(bi, params))


def test_rnn_module_equals_stack_with_grads_under_nnx_transforms():
    model = nnx_with_numpy_params(
        lambda: grx.RNN("lstm", 4, 5, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    )
    params = model.pure_params()
    st = model.stack
    assert st.num_layers == 2 and st.bidirectional

    def pure_loss(p, x):
        final, ys = st.apply(p, x, seq_lengths=LENGTHS)
        return jnp.sum(jnp.tanh(ys)) + jnp.sum(final[-1].fw.c)

    @nnx.jit  # the NNX and the pure gradients in one compiled program
    def both_losses_and_grads(m, p, x):
        def loss(m, x):
            final, ys = m(x, seq_lengths=LENGTHS)
            return jnp.sum(jnp.tanh(ys)) + jnp.sum(final[-1].fw.c)

        return (
            nnx.value_and_grad(loss, argnums=(0, 1))(m, x),
            jax.value_and_grad(pure_loss, argnums=(0, 1))(p, x),
        )

    (loss, (g_model, g_x)), (loss_p, (g_params, g_x_p)) = both_losses_and_grads(model, params, X)
    _close(loss, loss_p)
    _close(g_x, g_x_p)
    # gradients land in the same nnx.Params the pure fields came from
    for g_m, g_p in zip(g_model["layers"].values(), g_params, strict=True):
        for d in ("fw", "bw"):
            _close({k: v[...] for k, v in g_m[d].items()}, getattr(g_p, d)._asdict())


def test_rnn_module_load_pure_round_trip_reverse_and_dropout():
    model = nnx_with_numpy_params(
        lambda: grx.RNN(
            "vanilla",
            4,
            5,
            num_layers=3,
            dropout=0.5,
            cell_options={"activation": "relu"},
            rngs=nnx.Rngs(0),
        )
    )
    model.rngs = nnx.Rngs(0)["dropout"].fork()  # a real dropout stream (the traced one is not)
    fresh = normal_like(jax.eval_shape(lambda k: model.stack.init(k, 4), jax.random.key(9)), 9)
    model.load_pure(fresh)
    chex.assert_trees_all_equal(model.pure_params(), fresh, strict=True)

    @nnx.jit  # every run below in one compiled program (NNX's modes are Python flags)
    def runs(model, fresh):
        out = {
            "reverse": model(X, reverse=True)[1],
            "reverse-pure": model.stack.apply(fresh, X, reverse=True)[1],
            "off": model(X)[1],  # deterministic by default (dropout off)
            "pure": model.stack.apply(fresh, X)[1],
        }
        model.train()
        out["a"], out["b"] = model(X)[1], model(X)[1]
        model.eval()
        return out

    out = runs(model, fresh)
    _close(out["reverse"], out["reverse-pure"], 0.0)
    assert not np.allclose(out["a"], out["b"])  # a fresh dropout mask per call
    _close(out["off"], out["pure"], 0.0)
    with pytest.raises(ValueError, match="w_x"):
        model.load_pure((fresh[0]._replace(w_x=np.asarray(fresh[0].w_x)[:2]), *fresh[1:]))
    lstm_params = jax.eval_shape(lambda k: gr.stack(gr.lstm(5), 3).init(k, 4), jax.random.key(0))
    with pytest.raises(TypeError, match="VanillaParams"):  # the structure is checked first
        model.load_pure(lstm_params)
    with pytest.raises(ValueError, match="one of"):
        grx.RNN("transformer", 4, 5, rngs=nnx.Rngs(0))


def test_jitted_module_with_a_gr_cell_traces_once():
    """A module holding a gr.Cell (its options dict is not hashable) stays one graphdef:
    nnx.jit compiles once across calls, new param values and clones."""
    model = grx.RNN(gr.gru(5, reset_after=False), 4, num_layers=2, rngs=nnx.Rngs(0))

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def outputs(m, x):
        return m(x, seq_lengths=LENGTHS)[1]

    ys = outputs(model, X)
    chex.assert_shape(ys, (3, 6, 5))
    outputs(model, X + 1.0)
    model.load_pure(model.stack.init(jax.random.key(1), 4))
    outputs(nnx.clone(model), X)
    want = jax.jit(lambda p: model.stack.apply(p, X, seq_lengths=LENGTHS)[1])(model.pure_params())
    _close(outputs(model, X), want)
