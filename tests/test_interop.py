"""gatedrnn.interop: PyTorch and Flax weights give the same numbers in gatedrnn.

The oracles are the libraries themselves: torch.nn.RNN/LSTM/GRU with random weights (outputs,
final states, and gradients w.r.t. inputs and every weight), Flax Linen and NNX cells under
their own RNN loops; round trips must be exact, and every conversion that cannot be exact
must raise a ValueError.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _readme import readme_block
from flax import nnx

import gatedrnn as gr
from gatedrnn import interop

torch = pytest.importorskip("torch")


def _tree_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


def _assert_close(a, b, tol: float, what: str) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=what)


# --------------------------------------------------------------------------- PyTorch


def _torch_module(kind: str, I: int, H: int, L: int, bidir: bool, dtype, **kw):
    common = dict(num_layers=L, bidirectional=bidir, batch_first=True, dtype=dtype, **kw)
    if kind.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=kind[4:], **common)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H, **common)


def _expected_torch_grads(kind: str, stack: gr.Stack, grads: tuple) -> dict[str, np.ndarray]:
    """d loss / d torch weight from d loss / d gatedrnn params (the conversion's chain rule)."""
    out = {}
    for layer, g in enumerate(grads):
        parts = [("", g.fw), ("_reverse", g.bw)] if stack.bidirectional else [("", g)]
        for d, gp in parts:
            sfx = f"_l{layer}{d}"
            out["weight_ih" + sfx] = np.asarray(gp.w_x).T
            out["weight_hh" + sfx] = np.asarray(gp.w_h).T
            if kind == "gru":
                out["bias_ih" + sfx], out["bias_hh" + sfx] = gp.b_x, gp.b_h
            else:  # b = bias_ih + bias_hh: both get d loss / d b
                out["bias_ih" + sfx] = out["bias_hh" + sfx] = gp.b
    return out


def _check_torch_parity(kind, I, H, L, bidir, batch, T, tdtype, tol, seed=0):
    torch.manual_seed(seed)
    module = _torch_module(kind, I, H, L, bidir, tdtype)
    stack, params = interop.from_torch(module)
    assert stack.num_layers == L and stack.bidirectional == bidir
    D = 2 if bidir else 1
    rng = np.random.default_rng(seed)
    npdt = np.float64 if tdtype == torch.float64 else np.float32
    bshape = () if batch is None else (batch,)
    x = rng.normal(size=(*bshape, T, I)).astype(npdt)
    h0 = rng.normal(size=(L * D, *bshape, H)).astype(npdt)
    c0 = rng.normal(size=(L * D, *bshape, H)).astype(npdt)
    w_y = rng.normal(size=(*bshape, T, D * H)).astype(npdt)
    w_h = rng.normal(size=(L * D, *bshape, H)).astype(npdt)

    # torch: outputs, final state, gradients w.r.t. x and every weight
    xt = torch.tensor(x, requires_grad=True)
    state_t = (torch.tensor(h0), torch.tensor(c0)) if kind == "lstm" else torch.tensor(h0)
    ys_t, fin_t = module(xt, state_t)
    h_t = fin_t[0] if kind == "lstm" else fin_t
    loss_t = (ys_t * torch.tensor(w_y)).sum() + (h_t * torch.tensor(w_h)).sum()
    if kind == "lstm":
        loss_t = loss_t + (fin_t[1] * torch.tensor(w_h)).sum()
    loss_t.backward()

    # gatedrnn with the converted weights and state
    init = interop.state_from_torch(stack, h0, c0 if kind == "lstm" else None)

    def loss_fn(params, x):
        fin, ys = stack.apply(params, x, init)
        flat = [s for f in fin for s in ((f.fw, f.bw) if bidir else (f,))]
        hs = jnp.stack([s.h if kind == "lstm" else s for s in flat])
        loss = jnp.sum(ys * w_y) + jnp.sum(hs * w_h)
        if kind == "lstm":
            loss = loss + jnp.sum(jnp.stack([s.c for s in flat]) * w_h)
        return loss, (fin, ys)

    (loss, (fin, ys)), (g_params, g_x) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    )(params, jnp.asarray(x))

    _assert_close(ys, ys_t.detach().numpy(), tol, "outputs")
    got = interop.state_to_torch(stack, fin)
    want = (fin_t[0], fin_t[1]) if kind == "lstm" else (fin_t,)
    for g, w in zip(got if kind == "lstm" else (got,), want, strict=True):
        _assert_close(g, w.detach().numpy(), tol, "final state")
    _assert_close(loss, loss_t.item(), tol, "loss")
    _assert_close(g_x, xt.grad.numpy(), tol, "d loss / d x")
    expected = _expected_torch_grads(kind, stack, g_params)
    named = dict(module.named_parameters())
    assert set(expected) == set(named)
    for name, g in expected.items():
        _assert_close(g, named[name].grad.numpy(), tol, f"d loss / d {name}")


TORCH_CASES = [
    # kind, input_size, hidden, layers, bidirectional, batch (None: unbatched), T
    ("lstm", 4, 6, 2, True, 3, 5),
    ("lstm", 2, 3, 3, False, None, 4),
    ("gru", 3, 5, 3, False, 2, 6),
    ("gru", 4, 3, 2, True, 1, 4),
    ("rnn_tanh", 3, 4, 2, True, 2, 5),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_torch_outputs_states_and_grads_match_float32(case):
    _check_torch_parity(*case, tdtype=torch.float32, tol=2e-5)


@pytest.mark.parametrize(
    "case",
    [
        ("lstm", 3, 4, 2, True, 2, 5),
        ("gru", 3, 4, 1, True, 2, 5),
        ("rnn_relu", 3, 4, 2, False, 2, 5),
    ],
    ids=lambda c: "-".join(map(str, c)),
)
def test_torch_outputs_states_and_grads_match_float64(case):
    with jax.enable_x64(True):
        _check_torch_parity(*case, tdtype=torch.float64, tol=1e-11, seed=1)


def test_torch_packed_sequences_match_seq_lengths(kind="lstm"):
    """Variable lengths: torch's packed sequences == gr seq_lengths, both directions."""
    torch.manual_seed(2)
    module = _torch_module(kind, 3, 4, 2, True, torch.float32)
    stack, params = interop.from_torch(module)
    lengths = np.array([5, 2, 4])
    x = np.random.default_rng(2).normal(size=(3, 5, 3)).astype(np.float32)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(x), torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    out, fin_t = module(packed)
    ys_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=5)
    fin, ys = stack.apply(params, jnp.asarray(x), seq_lengths=jnp.asarray(lengths))
    _assert_close(ys, ys_t.detach().numpy(), 2e-5, "outputs")
    got = interop.state_to_torch(stack, fin)
    for g, w in zip(got if kind == "lstm" else (got,), fin_t if kind == "lstm" else (fin_t,)):
        _assert_close(g, w.detach().numpy(), 2e-5, "final state")


@pytest.mark.parametrize(
    "ctor",
    [
        lambda: torch.nn.LSTMCell(3, 4),
        lambda: torch.nn.GRUCell(3, 4),
        lambda: torch.nn.RNNCell(3, 4, nonlinearity="relu"),
    ],
    ids=["LSTMCell", "GRUCell", "RNNCell-relu"],
)
def test_torch_single_cells_match_and_round_trip(ctor):
    torch.manual_seed(3)
    module = ctor()
    cell, params = interop.from_torch(module)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    h = rng.normal(size=(2, 4)).astype(np.float32)
    c = rng.normal(size=(2, 4)).astype(np.float32)
    if cell.name == "lstm":
        h_t, c_t = module(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
        state, _ = cell.step(params, gr.LSTMState(jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
        _assert_close(state.c, c_t.detach().numpy(), 1e-5, "c")
        state = state.h
    else:
        h_t = module(torch.tensor(x), torch.tensor(h))
        state, _ = cell.step(params, jnp.asarray(h), jnp.asarray(x))
    _assert_close(state, h_t.detach().numpy(), 1e-5, "h")
    # gatedrnn -> torch -> gatedrnn is exact
    back = interop.to_torch(cell, params)
    assert type(back) is type(module)
    assert _tree_equal(interop.from_torch(back)[1], params)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_torch_round_trips_are_exact(kind):
    torch.manual_seed(4)
    module = _torch_module(kind, 3, 4, 2, True, torch.float32)
    stack, params = interop.from_torch(module)
    # gatedrnn -> torch -> gatedrnn: bit for bit
    rebuilt = interop.to_torch(stack, params)
    assert type(rebuilt) is type(module) and rebuilt.batch_first
    assert _tree_equal(interop.from_torch(rebuilt)[1], params)
    # torch -> gatedrnn -> torch: same weights; GRU biases identical, others re-split
    named, back = dict(module.named_parameters()), dict(rebuilt.named_parameters())
    for name, p in named.items():
        if name.startswith("weight") or kind == "gru":
            assert torch.equal(back[name], p), name
        elif name.startswith("bias_hh"):
            assert not back[name].any()  # documented rule: bias_ih = b, bias_hh = 0
    # loading into an existing module, with a fresh gatedrnn init
    fresh = stack.init(jax.random.key(0), 3)
    interop.to_torch(stack, fresh, module)
    assert _tree_equal(interop.from_torch(module)[1], fresh)


def test_torch_bias_false_converts_with_zero_biases():
    module = torch.nn.LSTM(3, 4, bias=False)
    stack, params = interop.from_torch(module)
    assert not np.any(params[0].b)
    interop.to_torch(stack, params, module)  # zero biases: nothing lost
    nonzero = (params[0]._replace(b=params[0].b + 1.0),)
    with pytest.raises(ValueError, match="bias"):
        interop.to_torch(stack, nonzero, module)


def test_torch_conversions_that_cannot_be_exact_raise():
    with pytest.raises(ValueError, match="proj_size"):
        interop.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    key = jax.random.key(0)
    gru_before = gr.stack(gr.gru(4, reset_after=False))
    with pytest.raises(ValueError, match="reset_after"):
        interop.to_torch(gru_before, gru_before.init(key, 3))
    linear = gr.stack(gr.vanilla(4, "linear"))
    with pytest.raises(ValueError, match="linear"):
        interop.to_torch(linear, linear.init(key, 3))
    lstm2 = gr.stack(gr.lstm(4), 2)
    with pytest.raises(ValueError, match="num_layers"):
        interop.to_torch(lstm2, lstm2.init(key, 3), torch.nn.LSTM(3, 4, num_layers=1))
    with pytest.raises(ValueError, match="GRU"):
        interop.to_torch(lstm2, lstm2.init(key, 3), torch.nn.GRU(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="float64"):
        interop.from_torch(torch.nn.GRU(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"torch\.nn\.RNN"):
        interop.from_torch(torch.nn.Linear(3, 4))


# --------------------------------------------------------------------------- Flax Linen


def _randomize(tree, key, scale=0.5):
    """Every leaf replaced by random normals, so zero-initialized biases are tested too."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


FLAX_CELLS = {
    "SimpleCell-tanh": lambda: nn.SimpleCell(5),
    "LSTMCell": lambda: nn.LSTMCell(5),
    "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(5),
    "GRUCell": lambda: nn.GRUCell(5),
}


@pytest.mark.parametrize("name", list(FLAX_CELLS))
def test_flax_linen_cells_match_outputs_states_and_grads(name):
    """Gradients too, except for OptimizedLSTMCell (LSTMCell's math and layout)."""
    flax_cell = FLAX_CELLS[name]()
    rnn = nn.RNN(flax_cell, return_carry=True)
    x = jax.random.normal(jax.random.key(0), (3, 6, 4))
    lengths = jnp.array([6, 2, 4])
    variables = _randomize(rnn.init(jax.random.key(1), x), jax.random.key(2))
    flax_params = variables["params"]["cell"]
    cell, params = interop.from_flax(flax_cell, flax_params)
    mask = (jnp.arange(6) < lengths[:, None])[..., None]

    def flax_loss(fp, x):
        carry, ys = rnn.apply({"params": {"cell": fp}}, x, seq_lengths=lengths)
        state = interop.carry_from_flax(cell, carry)
        return jnp.sum(jnp.where(mask, ys, 0.0) ** 2) + sum(
            jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state)
        ), (state, ys)

    def gr_loss(fp, x):  # differentiates through the conversion itself
        state, ys = gr.scan(cell, interop.from_flax(flax_cell, fp)[1], x, seq_lengths=lengths)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state)), (
            state,
            ys,
        )

    with_grads = name != "OptimizedLSTMCell"
    grad = lambda f: jax.jit(  # noqa: E731
        jax.value_and_grad(f, argnums=(0, 1), has_aux=True)
        if with_grads
        else lambda *a: (f(*a), None)
    )
    (l_f, (s_f, ys_f)), g_f = grad(flax_loss)(flax_params, x)
    (l_g, (s_g, ys_g)), g_g = grad(gr_loss)(flax_params, x)
    _assert_close(jnp.where(mask, ys_f, 0.0), ys_g, 1e-5, "outputs")
    close_tree = lambda a, b, w: jax.tree.map(lambda u, v: _assert_close(u, v, 1e-5, w), a, b)  # noqa: E731
    close_tree(s_f, s_g, "final state")
    _assert_close(l_f, l_g, 1e-5, "loss")
    if with_grads:
        close_tree(g_f, g_g, "grads w.r.t. Flax params and x")
    # and the other way: to_flax gives back the very same Flax params
    module, back = interop.to_flax(cell, params, optimized=name == "OptimizedLSTMCell")
    assert type(module) is type(flax_cell)
    assert _tree_equal(back, {"params": flax_params})


@pytest.mark.parametrize(
    "cell", [gr.vanilla(4), gr.vanilla(4, "relu"), gr.lstm(4), gr.gru(4)], ids=lambda c: c.name
)
def test_gatedrnn_to_flax_linen_round_trip_is_exact(cell):
    params = _randomize(cell.init(jax.random.key(0), 3), jax.random.key(1))
    if cell.name == "gru":  # Flax has no b_hr, b_hz: exact round trip needs them zero
        params = params._replace(b_h=params.b_h.at[:8].set(0.0))
    module, variables = interop.to_flax(cell, params)
    cell2, params2 = interop.from_flax(module, variables)
    assert cell2.name == cell.name and cell2.options == {**cell2.options, **cell.options}
    assert _tree_equal(params2, params)


def test_gru_recurrent_r_z_biases_are_folded_for_flax():
    cell = gr.gru(4)
    params = _randomize(cell.init(jax.random.key(0), 3), jax.random.key(1))
    module, variables = interop.to_flax(cell, params)
    x = jax.random.normal(jax.random.key(2), (2, 3))
    h = jax.random.normal(jax.random.key(3), (2, 4))
    h_flax, _ = module.apply(variables, h, x)
    h_gr, _ = cell.step(params, h, x)
    _assert_close(h_flax, h_gr, 1e-6, "GRU step with folded biases")


def test_flax_conversions_that_cannot_be_exact_raise():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="reset_after"):
        interop.to_flax(gr.gru(4, reset_after=False), gr.gru(4, False).init(key, 3))
    residual = nn.SimpleCell(4, residual=True)
    with pytest.raises(ValueError, match="residual"):
        interop.from_flax(residual, {})
    with pytest.raises(ValueError, match="gate_fn"):
        interop.from_flax(nn.LSTMCell(4, gate_fn=nn.hard_sigmoid), {})
    with pytest.raises(ValueError, match="activation_fn"):
        interop.from_flax(nn.SimpleCell(4, activation_fn=nn.gelu), {})
    x = jnp.ones((2, 3))
    v = nn.LSTMCell(4).init(key, nn.LSTMCell(4).initialize_carry(key, x.shape), x)
    with pytest.raises(ValueError, match="'ir'"):
        interop.from_flax(nn.GRUCell(4), v)  # LSTM params given for a GRU
    with pytest.raises(ValueError, match="features"):
        interop.from_flax(nn.LSTMCell(5), v)
    with pytest.raises(ValueError, match="bfloat16"):
        interop.from_flax(nn.LSTMCell(4, dtype=jnp.bfloat16), v)
    with pytest.raises(TypeError, match="SimpleCell"):
        interop.from_flax(nn.Dense(4), v)


def test_linear_vanilla_round_trips_through_flax_identity():
    cell = gr.vanilla(4, "linear")
    params = cell.init(jax.random.key(0), 3)
    module, variables = interop.to_flax(cell, params)
    assert module.activation_fn is interop.identity
    cell2, params2 = interop.from_flax(module, variables)
    assert cell2.options["activation"] == "linear" and _tree_equal(params2, params)


# --------------------------------------------------------------------------- Flax NNX

NNX_CELLS = {
    "SimpleCell": lambda r: nnx.SimpleCell(4, 5, rngs=r),
    "LSTMCell": lambda r: nnx.LSTMCell(4, 5, rngs=r),
    "OptimizedLSTMCell": lambda r: nnx.OptimizedLSTMCell(4, 5, rngs=r),
    "GRUCell": lambda r: nnx.GRUCell(4, 5, rngs=r),
}


@pytest.mark.parametrize("name", list(NNX_CELLS))
def test_flax_nnx_cells_match_and_round_trip(name):
    module = NNX_CELLS[name](nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    module = nnx.merge(graphdef, _randomize(state, jax.random.key(1)))
    cell, params = interop.from_flax(module)
    x = jax.random.normal(jax.random.key(2), (3, 6, 4))
    carry, ys_f = nnx.RNN(module, return_carry=True)(x)
    state, ys_g = gr.scan(cell, params, x)
    _assert_close(ys_f, ys_g, 1e-5, "outputs")
    jax.tree.map(
        lambda u, v: _assert_close(u, v, 1e-5, "final state"),
        interop.carry_from_flax(cell, carry),
        state,
    )
    back = interop.to_flax_nnx(cell, params, optimized=name == "OptimizedLSTMCell")
    assert type(back) is type(module)
    assert _tree_equal(nnx.state(back, nnx.Param), nnx.state(module, nnx.Param))


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
    _assert_close(m(h, x)[0], cell.step(ok, h, x)[0], 1e-6, "NNX GRU step")


# --------------------------------------------------------------------------- README


def test_readme_bring_your_pytorch_lstm_runs():
    code = readme_block("pytorch-lstm")
    assert len(code.strip().splitlines()) <= 14
    exec(compile(code, "README.md:pytorch-lstm", "exec"), {})
