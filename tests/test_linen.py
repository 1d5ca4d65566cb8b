"""gatedrnn.linen: Linen cells and the fast-path RNN module give the pure functions' numbers.

Oracles: gr.scan / gr.stack with the same params (the modules must add no math), Flax's own
nn.RNN and nn.Bidirectional loops driving our cells, and PyTorch through the converters.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _readme import readme_block
from conftest import NestedParams, nested_cell, normal, normal_like

import gatedrnn as gr
import gatedrnn.linen as grl
from gatedrnn._modules import flatten_params
from gatedrnn.cells import CELLS as REGISTRY
from gatedrnn.cells import make_cell

# NumPy inputs: an eager jnp operation compiles a program per shape
X = normal(0, (3, 6, 4))
LENGTHS = np.array([6, 2, 4])  # Flax's nn.RNN picks carry[len - 1]: lengths >= 1 here
MASK = (np.arange(6) < LENGTHS[:, None])[..., None]


def _close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


def _draw(init, seed=0):
    """What ``init(key)`` returns, its leaves drawn by NumPy instead (normal, scale 0.5):
    weights for tests that compare two runs of the same weights (an eager init compiles
    each of its operations; the initializers are tested where they are the point)."""
    return normal_like(jax.eval_shape(init, jax.random.key(0)), seed)


CELLS = {
    "vanilla-relu": lambda: grl.VanillaCell(5, activation="relu"),
    "lstm": lambda: grl.LSTMCell(5),
    "gru-reset-before": lambda: grl.GRUCell(5, reset_after=False),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_cells_in_flax_rnn_with_seq_lengths_equal_gr_scan(name):
    module = CELLS[name]()
    fwd = nn.RNN(module, return_carry=True)
    variables = _draw(lambda k: fwd.init(k, X, seq_lengths=LENGTHS))
    cell = module.make_cell()
    shapes = jax.eval_shape(lambda k: cell.init(k, 4), jax.random.key(0))  # nothing compiled
    assert set(variables["params"]["cell"]) == set(shapes._fields)
    params = module.to_pure(variables["params"]["cell"])

    @jax.jit  # both directions, Flax's loop and gr.scan, in one compiled program
    def runs(variables, params):
        out = {}
        for reverse in (False, True):
            rnn = nn.RNN(module, return_carry=True, reverse=reverse, keep_order=True)
            carry, ys = rnn.apply(variables, X, seq_lengths=LENGTHS)
            out[reverse] = (
                (carry, jnp.where(MASK, ys, 0.0)),
                gr.scan(cell, params, X, seq_lengths=LENGTHS, reverse=reverse),
            )
        return out

    for (carry, ys), (state, ys_gr) in runs(variables, params).values():
        _close(ys, ys_gr)
        _close(carry, state)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_cell_runs_as_linen_cell_and_rnn_with_the_pure_numbers(name):
    """grl.Cell(name, H) under Flax's nn.RNN, and grl.RNN(name, H), equal gr.scan with the
    same params, for every cell of the registry (no per-cell code in gatedrnn.linen)."""
    module = grl.Cell(name, 3)
    rnn = nn.RNN(module, return_carry=True)
    cell = module.make_cell()
    assert cell == make_cell(name, 3)
    layer = grl.RNN(name, 3)

    variables = _draw(lambda k: rnn.init(k, X, seq_lengths=LENGTHS), 1)

    @jax.jit  # the three runs in one compiled program
    def three(variables):
        params = module.to_pure(variables["params"]["cell"])
        return (
            rnn.apply(variables, X, seq_lengths=LENGTHS),
            gr.scan(cell, params, X, seq_lengths=LENGTHS),
            layer.apply(layer.from_pure((params,)), X, seq_lengths=LENGTHS),
        )

    (carry, ys), (state, ys_gr), (final, ys_layer) = three(variables)
    params = module.to_pure(variables["params"]["cell"])
    shapes = jax.eval_shape(lambda k: cell.init(k, 4), jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    assert set(variables["params"]["cell"]) == set(flatten_params(shapes))
    _close(np.where(MASK, ys, 0.0), ys_gr)
    _close(carry, state)
    _close((final[0], ys_layer), (state, ys_gr))


def test_nested_params_are_named_by_path_and_drawn_by_one_init_call():
    """A custom cell with nested params (a NamedTuple field, a tuple field) tied at init:
    one Flax param per leaf named by its path, all from one call of the pure init."""
    cell = nested_cell(3)
    module = grl.Cell(cell)
    layer = grl.RNN(cell, num_layers=2)

    @jax.jit  # both inits and the four runs in one compiled program
    def inits_and_runs():
        variables, v = nn.RNN(module).init(jax.random.key(1), X), layer.init(jax.random.key(2), X)
        p, params = module.to_pure(variables["params"]["cell"]), layer.to_pure(v)
        return (variables, v), (
            (nn.RNN(module).apply(variables, X), gr.scan(cell, p, X)[1]),
            (layer.apply(v, X), layer.make_stack().apply(params, X)),
        )

    (variables, v), ((ys, ys_gr), (out, out_stack)) = inits_and_runs()
    flat = variables["params"]["cell"]
    assert set(flat) == {"inp.w", "inp.b", "decay.0"}
    p = module.to_pure(flat)
    assert isinstance(p, NestedParams) and isinstance(p.decay, tuple)
    _close(p.inp.b, -np.asarray(p.inp.w).sum(0), 1e-6)  # tied leaves come from one init call
    assert module.from_pure(p) == {"params": dict(flat)}
    params = layer.to_pure(v)
    for q in params:
        _close(q.inp.b, -np.asarray(q.inp.w).sum(0), 1e-6)
    _close(ys, ys_gr)
    _close(out, out_stack, 0.0)
    with pytest.raises(ValueError, match="must have params"):
        module.to_pure({"inp.w": p.inp.w})


def test_cell_options_are_frozen_so_modules_stay_hashable():
    a = grl.Cell("gru", 5, cell_options={"reset_after": False})
    b = grl.Cell("gru", 5, cell_options={"reset_after": False})
    assert a == b and hash(a) == hash(b)
    assert a.make_cell() == gr.gru(5, reset_after=False)
    assert hash(grl.RNN("lstm", 5, cell_options={"forget_bias": 2.0}))
    with pytest.raises(TypeError, match="cell_options must be a mapping"):
        grl.Cell("gru", 5, cell_options=[("reset_after", False)]).make_cell()
    with pytest.raises(ValueError, match="not in cell_options"):
        grl.Cell("gru", cell_options={"hidden_size": 5}).make_cell()


def test_cell_gradients_equal_pure_gradients():
    module = grl.LSTMCell(5)
    rnn = nn.RNN(module)
    variables = _draw(lambda k: rnn.init(k, X))
    cell = module.make_cell()

    def flax_loss(v):
        return jnp.sum(jnp.tanh(rnn.apply(v, X, seq_lengths=LENGTHS)) * MASK)

    def pure_loss(p):
        return jnp.sum(jnp.tanh(gr.scan(cell, p, X, seq_lengths=LENGTHS)[1]))

    g_flax, g_pure = jax.jit(lambda v, p: (jax.grad(flax_loss)(v), jax.grad(pure_loss)(p)))(
        variables, module.to_pure(variables["params"]["cell"])
    )
    g_flax = g_flax["params"]["cell"]
    _close(module.to_pure(g_flax), g_pure)


def test_cells_draw_params_with_the_pure_initializers():
    module = grl.LSTMCell(4, forget_bias=2.0)
    x = np.ones((2, 3), np.float32)

    @jax.jit  # the init and the carry in one compiled program
    def init_and_carry():
        carry = module.initialize_carry(jax.random.key(1), x.shape)
        return module.init(jax.random.key(0), carry, x), module.initialize_carry(
            jax.random.key(1), (7, 3)
        )

    v, state = init_and_carry()
    p = module.to_pure(v)
    assert isinstance(p, gr.LSTMParams)
    chex.assert_shape((p.w_x, p.w_h, p.b), ((3, 16), (4, 16), (16,)))
    np.testing.assert_array_equal(p.b, np.r_[np.zeros(4), 2 * np.ones(4), np.zeros(8)])
    for block in np.split(np.asarray(p.w_h), 4, axis=1):  # orthogonal per gate, as gr.lstm
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)
    assert isinstance(state, gr.LSTMState) and not np.asarray(state.c).any()
    chex.assert_shape((state.h, state.c), (7, 4))
    assert module.hidden_size == 4 and grl.LSTMCell(hidden_size=4) == grl.LSTMCell(4)
    assert module.num_feature_axes == 1
    assert module.from_pure(p) == {"params": dict(p._asdict())}


def test_flax_bidirectional_with_gatedrnn_cells_equals_bidirectional_scan():
    bi = nn.Bidirectional(nn.RNN(grl.GRUCell(5)), nn.RNN(grl.GRUCell(5)), return_carry=True)
    variables = _draw(lambda k: bi.init(k, X, seq_lengths=LENGTHS))
    cell = grl.GRUCell(5)
    p = variables["params"]
    params = gr.Bidir(
        cell.to_pure(p["forward_rnn"]["cell"]), cell.to_pure(p["backward_rnn"]["cell"])
    )

    @jax.jit  # both runs in one compiled program
    def run(variables, params):
        return (
            bi.apply(variables, X, seq_lengths=LENGTHS),
            gr.bidirectional_scan(cell.make_cell(), params, X, seq_lengths=LENGTHS),
        )

    ((c_fw, c_bw), ys), (state, ys_gr) = run(variables, params)
    _close(np.where(MASK, ys, 0.0), ys_gr)
    _close((c_fw, c_bw), tuple(state))


@pytest.mark.parametrize(
    "kwargs, call",
    [
        (
            dict(cell="lstm", hidden_size=5, num_layers=2, bidirectional=True),
            dict(seq_lengths=LENGTHS),
        ),
        (dict(cell=gr.vanilla(5, "relu"), num_layers=3), dict(reverse=True)),
        (dict(cell="gru", hidden_size=5, time_major=True, unroll=2), {}),
    ],
    ids=["lstm-2-bidir-lengths", "vanilla-relu-3-reverse", "gru-time-major"],
)
def test_rnn_module_equals_gr_stack(kwargs, call):
    module = grl.RNN(**kwargs)
    x = np.swapaxes(X, 0, 1) if module.time_major else X
    st = module.make_stack()
    variables = module.from_pure(_draw(lambda k: st.init(k, 4), 3))  # (init is tested above)
    params = module.to_pure(variables)
    extra = {"reverse": True} if call.get("reverse") else {}

    @jax.jit  # both runs in one compiled program
    def run(variables, params):
        return module.apply(variables, x, **call), st.apply(
            params, x, seq_lengths=call.get("seq_lengths"), time_major=module.time_major, **extra
        )

    (final, ys), (final_gr, ys_gr) = run(variables, params)
    _close(ys, ys_gr, 0.0)
    _close(final, final_gr, 0.0)
    # names: layer_k (or layer_k_fw/_bw) holding the pure fields; the round trip is exact
    back = module.from_pure(params)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    _close(back, variables, 0.0)


def test_rnn_module_dropout_between_layers():
    module = grl.RNN("vanilla", 5, num_layers=2, dropout=0.5)
    v = _draw(lambda k: module.init(k, X))

    @jax.jit  # the three runs in one compiled program
    def runs(v):
        train = dict(deterministic=False)
        return (
            module.apply(v, X)[1],
            module.apply(v, X, **train, rngs={"dropout": jax.random.key(1)})[1],
            module.apply(v, X, **train, rngs={"dropout": jax.random.key(2)})[1],
        )

    ys_eval, ys_a, ys_b = runs(v)
    assert not np.allclose(ys_a, ys_eval) and not np.allclose(ys_a, ys_b)


def test_rnn_module_runs_torch_weights():
    torch = pytest.importorskip("torch")
    from gatedrnn.interop import from_torch

    torch.manual_seed(0)
    t = torch.nn.GRU(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    _, params = from_torch(t)
    module = grl.RNN("gru", 5, num_layers=2, bidirectional=True)
    _, ys = jax.jit(module.apply)(module.from_pure(params), X)
    _close(ys, t(torch.tensor(np.asarray(X)))[0].detach().numpy())


def _init(module, x, **kwargs):
    """``module.init(key, x, **kwargs)`` traced only (its checks run, nothing compiles);
    ``x`` an array or a ``jax.ShapeDtypeStruct``."""
    return jax.eval_shape(lambda k, x: module.init(k, x, **kwargs), jax.random.key(0), x)


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="needs hidden_size"):
        _init(grl.RNN("lstm"), X)
    with pytest.raises(ValueError, match=r"takes no \['activation'\]"):
        _init(grl.RNN("lstm", 4, cell_options={"activation": "relu"}), X)
    with pytest.raises(ValueError, match="shape"):
        _init(grl.RNN("lstm", 4), jax.ShapeDtypeStruct(X.shape[2:], X.dtype))  # one x_t
    with pytest.raises(ValueError, match="one of"):
        _init(grl.RNN("transformer", 4), X)
    with pytest.raises(ValueError, match="bidirectional"):
        _init(grl.RNN("lstm", 4, bidirectional=True), X, reverse=True)
    with pytest.raises(ValueError, match="hidden size"):
        _init(grl.RNN(gr.lstm(3), hidden_size=4), X)
    with pytest.raises(ValueError, match="no 'dropout' rng"):
        _init(grl.RNN("gru", 4, num_layers=2, dropout=0.5), X, deterministic=False)
    with pytest.raises(TypeError, match="dtype"):  # inputs must match param_dtype
        _init(grl.RNN("gru", 4), jax.ShapeDtypeStruct(X.shape, jnp.bfloat16))


def test_scan_checks_closed_over_seq_lengths_under_jit():
    """Regression (core): gr.scan's range check of concrete seq_lengths failed under jit."""
    cell = gr.gru(3)
    params = _draw(lambda k: cell.init(k, 4))
    _, ys = jax.jit(lambda x: gr.scan(cell, params, x, seq_lengths=LENGTHS))(X)
    assert not np.asarray(ys)[1, 2:].any()
    too_long = np.array([7, 1, 1])
    with pytest.raises(ValueError, match="seq_lengths must lie"):
        jax.jit(lambda x: gr.scan(cell, params, x, seq_lengths=too_long))(X)


def test_readme_flax_model_example_runs():
    exec(compile(readme_block("flax-model"), "README.md:flax-model", "exec"), {})


def test_flax_model_experiment_quick_run_writes_results(tmp_path):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "flax_model.py"
    spec = importlib.util.spec_from_file_location("flax_model_experiment", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses (flax modules) look their module up
    spec.loader.exec_module(mod)
    out = tmp_path / "flax_model.json"
    results = mod.main(["--quick", "--seed", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["test_accuracy"] == results["test_accuracy"]
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["chance_accuracy"] == 0.5
    assert saved["curve"][-1]["step"] == saved["config"]["steps"]


def test_flax_model_experiment_divergence_raises_and_writes_nothing(tmp_path):
    """A learning rate that blows up: the one loop stops at the first non-finite loss
    (exit status 1 through cli.run) and no JSON is written."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "flax_model.py"
    spec = importlib.util.spec_from_file_location("flax_model_experiment", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "flax_model.json"
    with pytest.raises(FloatingPointError, match="non-finite"):
        mod.main(["--quick", "--lr", "1e38", "--out", str(out)])
    assert not out.exists()
