"""gatedrnn.interop.flax: Flax's own cells (Linen and NNX) give the same numbers in gatedrnn.

The oracles are Flax's cells under their own RNN loops, with random weights (biases
included); round trips must be exact, the conversions must work under jit and be
differentiable, and every conversion that cannot be exact must raise a ValueError.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal
from flax import nnx

import gatedrnn as gr
from gatedrnn import interop


def _close(a, b, tol: float = 1e-5) -> None:
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def _randomize(tree, seed, scale=0.5):
    """Every leaf replaced by random normals, so zero-initialized biases are tested too
    (drawn in NumPy and put on the device as they are: nothing compiled)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [
        jax.device_put(normal(seed + i, x.shape, np.dtype(x.dtype), scale))
        for i, x in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


def _normal(seed, shape):
    """(shape) standard normal JAX array drawn in NumPy (jax.random compiles per shape)."""
    return jax.device_put(normal(seed, shape))


def _init_shapes(cell, input_size=3):
    """Shapes and dtypes of ``cell.init(key, input_size)``, traced (nothing compiled): for
    params that :func:`_randomize` replaces anyway."""
    return jax.eval_shape(lambda k: cell.init(k, input_size), jax.random.key(0))


# --------------------------------------------------------------------------- Flax Linen

FLAX_CELLS = {
    "SimpleCell-tanh": lambda: nn.SimpleCell(5),
    "LSTMCell": lambda: nn.LSTMCell(5),
    "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(5),
    "GRUCell": lambda: nn.GRUCell(5),
}


def _losses(flax_cell, cell, lengths, mask):
    """The same loss through Flax's nn.RNN and through gr.scan of the converted params."""
    rnn = nn.RNN(flax_cell, return_carry=True)

    def flax_loss(fp, x):
        carry, ys = rnn.apply({"params": {"cell": fp}}, x, seq_lengths=lengths)
        state = interop.carry_from_flax(cell, carry)
        ys = jnp.where(mask, ys, 0.0)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state)), (
            state,
            ys,
        )

    def gr_loss(fp, x):  # differentiates through the conversion itself
        state, ys = gr.scan(cell, interop.from_flax(flax_cell, fp)[1], x, seq_lengths=lengths)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state)), (
            state,
            ys,
        )

    return flax_loss, gr_loss


@pytest.mark.parametrize("name", list(FLAX_CELLS))
def test_flax_linen_cells_match_outputs_states_and_grads(name):
    """Gradients too, except for OptimizedLSTMCell (LSTMCell's math and layout)."""
    flax_cell = FLAX_CELLS[name]()
    x = _normal(0, (3, 6, 4))
    lengths = jnp.array([6, 2, 4])
    variables = jax.eval_shape(nn.RNN(flax_cell).init, jax.random.key(1), x)  # shapes only
    flax_params = _randomize(variables, 2)["params"]["cell"]
    optimized = name == "OptimizedLSTMCell"
    seen = {}

    @jax.jit  # conversions, both losses (and grads) and the way back in one compiled program
    def run(flax_params, x):
        cell, params = interop.from_flax(flax_cell, flax_params)
        mask = (jnp.arange(6) < lengths[:, None])[..., None]
        flax_loss, gr_loss = _losses(flax_cell, cell, lengths, mask)
        if optimized:
            out = flax_loss(flax_params, x), gr_loss(flax_params, x)
        else:
            grad = lambda f: jax.value_and_grad(f, argnums=(0, 1), has_aux=True)  # noqa: E731
            out = grad(flax_loss)(flax_params, x), grad(gr_loss)(flax_params, x)
        # and the other way: to_flax gives back the very same Flax params
        seen["module"], back = interop.to_flax(cell, params, optimized=optimized)
        return out, back

    (f_out, g_out), back = run(flax_params, x)
    if not optimized:
        chex.assert_shape(g_out[0][1][1], (3, 6, 5))
    _close(f_out, g_out)  # loss, final state, outputs (and grads w.r.t. Flax params and x)
    assert type(seen["module"]) is type(flax_cell)
    chex.assert_trees_all_equal(back, {"params": flax_params}, strict=True)


@pytest.mark.parametrize(
    "cell", [gr.vanilla(4), gr.vanilla(4, "relu"), gr.lstm(4), gr.gru(4)], ids=lambda c: c.name
)
def test_gatedrnn_to_flax_linen_round_trip_is_exact(cell):
    params = _randomize(_init_shapes(cell), 1)
    if cell.name == "gru":  # Flax has no b_hr, b_hz: exact round trip needs them zero
        params = params._replace(b_h=params.b_h.at[:8].set(0.0))
    seen = {}

    @jax.jit  # both conversions in one compiled program (ConversionsUnderJit: eager = jit)
    def round_trip(params):
        module, variables = interop.to_flax(cell, params)
        seen["cell"], params2 = interop.from_flax(module, variables)
        return params2

    params2 = round_trip(params)
    cell2 = seen["cell"]
    assert cell2.name == cell.name and cell2.options == {**cell2.options, **cell.options}
    chex.assert_trees_all_equal(params2, params, strict=True)


@pytest.mark.parametrize(
    "cell",
    [gr.lstm(4, forget_bias="chrono", t_max=50), gr.gru(4, update_bias="chrono", t_max=50)],
    ids=["lstm-chrono", "gru-chrono"],
)
def test_flax_round_trips_of_chrono_initialized_params_are_exact(cell):
    """Chrono init sets only input-side biases (the GRU's b_hr, b_hz stay zero), so the
    Linen and NNX round trips keep the params bit for bit and compute the same steps."""
    params = cell.init(jax.random.key(0), 3)
    x = _normal(1, (2, 5, 3))
    seen = {}

    @jax.jit  # both conversions in one compiled program (ConversionsUnderJit: eager = jit)
    def round_trip(params):
        seen["module"], variables = interop.to_flax(cell, params)
        cell2, params2 = interop.from_flax(seen["module"], variables)
        seen["cell"] = cell2
        return variables, params2

    variables, params2 = round_trip(params)
    module, cell2 = seen["module"], seen["cell"]
    chex.assert_trees_all_equal(params2, params, strict=True)
    nnx_module = interop.to_flax_nnx(cell, params)
    cell3, params3 = interop.from_flax(nnx_module)
    chex.assert_trees_all_equal(params3, params, strict=True)

    @nnx.jit  # the four runs in one compiled program
    def runs(nnx_module, params, params2, variables):
        return (
            gr.scan(cell, params, x)[1],
            gr.scan(cell2, params2, x)[1],
            nn.RNN(module).apply({"params": {"cell": variables["params"]}}, x),
            nnx.RNN(nnx_module)(x),
        )

    ys, ys2, ys_linen, ys_nnx = runs(nnx_module, params, params2, variables)
    chex.assert_trees_all_equal(ys2, ys)
    _close(ys_linen, ys, 1e-6)
    _close(ys_nnx, ys, 1e-6)


class ConversionsUnderJit(chex.TestCase):
    """The Flax conversions are pure jax: the same under jit as without it."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_gru_recurrent_r_z_biases_are_folded_for_flax(self):
        cell = gr.gru(4)
        params = _randomize(_init_shapes(cell), 1)
        module, _ = interop.to_flax(cell, params)
        x, h = _normal(2, (2, 3)), _normal(3, (2, 4))
        step = self.variant(lambda p: module.apply(interop.to_flax(cell, p)[1], h, x))
        h_flax, _ = step(params)
        h_gr, _ = cell.step(params, h, x)
        chex.assert_shape(h_flax, (2, 4))
        _close(h_flax, h_gr, 1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_linen_params_round_trip_under_jit(self):
        cell = gr.lstm(4)
        params = _randomize(_init_shapes(cell), 1)
        module, _ = interop.to_flax(cell, params)
        round_trip = self.variant(
            lambda p: interop.from_flax(module, interop.to_flax(cell, p)[1])[1]
        )
        chex.assert_trees_all_equal(round_trip(params), params)


def test_flax_conversions_that_cannot_be_exact_raise():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="reset_after"):
        interop.to_flax(gr.gru(4, reset_after=False), _init_shapes(gr.gru(4, False)))
    with pytest.raises(ValueError, match="residual"):
        interop.from_flax(nn.SimpleCell(4, residual=True), {})
    with pytest.raises(ValueError, match="gate_fn"):
        interop.from_flax(nn.LSTMCell(4, gate_fn=nn.hard_sigmoid), {})
    with pytest.raises(ValueError, match="activation_fn"):
        interop.from_flax(nn.SimpleCell(4, activation_fn=nn.gelu), {})
    x = jnp.ones((2, 3))
    v = _randomize(  # Flax's LSTMCell params, drawn in NumPy on its shapes
        jax.eval_shape(
            lambda: nn.LSTMCell(4).init(key, nn.LSTMCell(4).initialize_carry(key, x.shape), x)
        ),
        0,
    )
    with pytest.raises(ValueError, match="'ir'"):
        interop.from_flax(nn.GRUCell(4), v)  # LSTM params given for a GRU
    with pytest.raises(ValueError, match="features"):
        interop.from_flax(nn.LSTMCell(5), v)
    with pytest.raises(ValueError, match="bfloat16"):
        interop.from_flax(nn.LSTMCell(4, dtype=jnp.bfloat16), v)
    with pytest.raises(TypeError, match="SimpleCell"):
        interop.from_flax(nn.Dense(4), v)
    with pytest.raises(ValueError, match="only vanilla, lstm and gru"):
        interop.to_flax(gr.min_lstm(4), _init_shapes(gr.min_lstm(4)))


def test_linear_vanilla_round_trips_through_flax_identity():
    cell = gr.vanilla(4, "linear")
    params = _randomize(_init_shapes(cell), 0)
    module, variables = interop.to_flax(cell, params)
    assert module.activation_fn is interop.identity
    cell2, params2 = interop.from_flax(module, variables)
    assert cell2.options["activation"] == "linear"
    chex.assert_trees_all_equal(params2, params, strict=True)


# --------------------------------------------------------------------------- Flax NNX

NNX_CELLS = {
    "SimpleCell": lambda r: nnx.SimpleCell(4, 5, rngs=r),
    "LSTMCell": lambda r: nnx.LSTMCell(4, 5, rngs=r),
    "OptimizedLSTMCell": lambda r: nnx.OptimizedLSTMCell(4, 5, rngs=r),
    "GRUCell": lambda r: nnx.GRUCell(4, 5, rngs=r),
}


@pytest.mark.parametrize("name", list(NNX_CELLS))
def test_flax_nnx_cells_match_and_round_trip(name):
    module = nnx.eval_shape(lambda: NNX_CELLS[name](nnx.Rngs(0)))  # shapes only
    graphdef, state = nnx.split(module)
    module = nnx.merge(graphdef, _randomize(state, 1))
    cell, params = interop.from_flax(module)
    x = _normal(2, (3, 6, 4))
    run = nnx.jit(lambda m, p: (nnx.RNN(m, return_carry=True)(x), gr.scan(cell, p, x)))
    (carry, ys_f), (state, ys_g) = run(module, params)  # both in one compiled program
    chex.assert_shape(ys_g, (3, 6, 5))
    _close(ys_f, ys_g)
    _close(interop.carry_from_flax(cell, carry), state)
    # and back: the gatedrnn state as the Flax carry, same structure (LSTM (c, h))
    chex.assert_trees_all_equal(
        interop.carry_to_flax(cell, interop.carry_from_flax(cell, carry)), carry
    )
    back = interop.to_flax_nnx(cell, params, optimized=name == "OptimizedLSTMCell")
    assert type(back) is type(module)
    chex.assert_trees_all_equal(
        nnx.to_pure_dict(nnx.state(back, nnx.Param)),
        nnx.to_pure_dict(nnx.state(module, nnx.Param)),
        strict=True,
    )


def test_flax_nnx_gru_without_b_hn_refuses_nonzero_b_hn():
    cell = gr.gru(4)
    params = cell.init(jax.random.key(0), 3)
    interop.to_flax_nnx(cell, params)  # zero biases: fine
    bad = params._replace(b_h=params.b_h.at[-1].set(0.3))
    with pytest.raises(ValueError, match="b_hn"):
        interop.to_flax_nnx(cell, bad)
    # b_hr, b_hz fold into b_x: allowed, same function
    ok = params._replace(b_h=params.b_h.at[0].set(0.3))
    m = interop.to_flax_nnx(cell, ok)
    x, h = jnp.ones((2, 3)), jnp.full((2, 4), 0.5)
    _close(*nnx.jit(lambda m, ok: (m(h, x)[0], cell.step(ok, h, x)[0]))(m, ok), 1e-6)


@pytest.mark.parametrize("name", ["SimpleCell-tanh", "LSTMCell", "GRUCell"])
def test_flax_params_with_extra_or_missing_entries_are_refused_by_name(name):
    """Params with entries the cell does not have (a Dense too many, a LayerNorm scale
    beside a kernel) would be ignored: refused, naming them; a missing kernel is one
    ValueError naming the entry, not a KeyError."""
    module = FLAX_CELLS[name]()
    cell = {"SimpleCell-tanh": gr.vanilla, "LSTMCell": gr.lstm, "GRUCell": gr.gru}[name](5)
    _, variables = interop.to_flax(cell, _randomize(_init_shapes(cell), 0))
    p = variables["params"]
    interop.from_flax(module, variables)  # exactly the cell's entries: fine
    with pytest.raises(ValueError, match=r"unexpected entries \['extra'\]"):
        interop.from_flax(module, {**p, "extra": {"kernel": jnp.ones((3, 5))}})
    first = sorted(p)[0]
    with pytest.raises(ValueError, match=rf"{first}.*unexpected entries \['scale'\]"):
        interop.from_flax(module, {**p, first: {**p[first], "scale": jnp.ones(5)}})
    with pytest.raises(ValueError, match=rf"{first}.*no 'kernel'"):
        interop.from_flax(
            module, {**p, first: {k: v for k, v in p[first].items() if k != "kernel"}}
        )
