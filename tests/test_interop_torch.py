"""gatedrnn.interop.torch: PyTorch weights give the same numbers in gatedrnn.

The oracle is torch itself: nn.RNN/LSTM/GRU with random weights (outputs, final states, and
gradients w.r.t. inputs and every weight); round trips must be exact, and every conversion
that cannot be exact must raise a ValueError. torch stays optional for ``import
gatedrnn.interop``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _readme import readme_block
from conftest import one_torch_thread

import gatedrnn as gr
from gatedrnn import interop

# torch is imported when the module's first test runs, not when pytest collects it: each
# pytest-xdist worker collects every module, and importing torch costs ~2 s of CPU
torch: Any = None


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread():
    """The module's torch runs on tiny tensors, where its idle worker threads only spin."""
    global torch
    torch = pytest.importorskip("torch")
    with one_torch_thread():
        yield


def _close(a, b, tol: float) -> None:
    chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


# a stack's apply compiled once per stack, shapes and options (eager calls compile every op,
# and jnp.asarray of a NumPy array compiles one program per shape: the tests pass NumPy)
_apply = jax.jit(lambda stack, *args, **kw: stack.apply(*args, **kw), static_argnums=0)
# a cell's step likewise (inits stay eager: a stack's init compiled whole takes longer to
# compile than its eager operations, which every init of the same shapes reuses)
_step = jax.jit(lambda cell, *args: cell.step(*args), static_argnums=0)


def _torch_module(kind: str, I: int, H: int, L: int, bidir: bool, dtype, **kw):
    common = dict(num_layers=L, bidirectional=bidir, batch_first=True, dtype=dtype, **kw)
    if kind.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=kind[4:], **common)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H, **common)


def _np(t) -> np.ndarray:
    return t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()


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


def _torch_loss(module, kind, x, h0, c0, w_y, w_h):
    """torch's loss, outputs and final state, after ``loss.backward()``."""
    xt = torch.tensor(x, requires_grad=True)
    state_t = (torch.tensor(h0), torch.tensor(c0)) if kind == "lstm" else torch.tensor(h0)
    ys_t, fin_t = module(xt, state_t)
    h_t = fin_t[0] if kind == "lstm" else fin_t
    loss_t = (ys_t * torch.tensor(w_y)).sum() + (h_t * torch.tensor(w_h)).sum()
    if kind == "lstm":
        loss_t = loss_t + (fin_t[1] * torch.tensor(w_h)).sum()
    loss_t.backward()
    return loss_t, xt, ys_t, fin_t


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
    h0, c0, w_h = (rng.normal(size=(L * D, *bshape, H)).astype(npdt) for _ in range(3))
    w_y = rng.normal(size=(*bshape, T, D * H)).astype(npdt)
    loss_t, xt, ys_t, fin_t = _torch_loss(module, kind, x, h0, c0, w_y, w_h)

    def loss_fn(params, x, h0, c0):
        # torch's h_0 (c_0) converted inside the one compiled program (eagerly, its
        # conversion and indexing would compile a program per operation and shape)
        init = interop.state_from_torch(stack, h0, c0 if kind == "lstm" else None)
        fin, ys = stack.apply(params, x, init)
        flat = [s for f in fin for s in ((f.fw, f.bw) if bidir else (f,))]
        hs = jnp.stack([s.h if kind == "lstm" else s for s in flat])
        loss = jnp.sum(ys * w_y) + jnp.sum(hs * w_h)
        if kind == "lstm":
            loss = loss + jnp.sum(jnp.stack([s.c for s in flat]) * w_h)
        return loss, (fin, ys)

    (loss, (fin, ys)), (g_params, g_x) = jax.jit(
        jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    )(params, x, h0, c0)

    chex.assert_shape(ys, (*bshape, T, D * H))
    _close(ys, _np(ys_t), tol)
    got = interop.state_to_torch(stack, fin)
    want = (fin_t[0], fin_t[1]) if kind == "lstm" else (fin_t,)
    _close(got if kind == "lstm" else (got,), tuple(_np(w) for w in want), tol)
    _close(loss, loss_t.item(), tol)
    _close(g_x, xt.grad.numpy(), tol)
    expected = _expected_torch_grads(kind, stack, g_params)
    named = dict(module.named_parameters())
    assert set(expected) == set(named)
    _close(expected, {n: named[n].grad.numpy() for n in expected}, tol)


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
    fin, ys = _apply(stack, params, x, seq_lengths=lengths)
    _close(ys, _np(ys_t), 2e-5)
    _close(interop.state_to_torch(stack, fin), tuple(_np(t) for t in fin_t), 2e-5)


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
    x, h, c = (rng.normal(size=(2, n)).astype(np.float32) for n in (3, 4, 4))
    if cell.name == "lstm":
        h_t, c_t = module(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
        state, _ = _step(cell, params, gr.LSTMState(h, c), x)
        _close(state, gr.LSTMState(_np(h_t), _np(c_t)), 1e-5)
    else:
        h_t = module(torch.tensor(x), torch.tensor(h))
        state, _ = _step(cell, params, h, x)
        _close(state, _np(h_t), 1e-5)
    # gatedrnn -> torch -> gatedrnn is exact
    back = interop.to_torch(cell, params)
    assert type(back) is type(module)
    chex.assert_trees_all_equal(interop.from_torch(back)[1], params, strict=True)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_torch_round_trips_are_exact(kind):
    torch.manual_seed(4)
    module = _torch_module(kind, 3, 4, 2, True, torch.float32)
    stack, params = interop.from_torch(module)
    # gatedrnn -> torch -> gatedrnn: bit for bit
    rebuilt = interop.to_torch(stack, params)
    assert type(rebuilt) is type(module) and rebuilt.batch_first
    chex.assert_trees_all_equal(interop.from_torch(rebuilt)[1], params, strict=True)
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
    chex.assert_trees_all_equal(interop.from_torch(module)[1], fresh, strict=True)


@pytest.mark.parametrize(
    "cell",
    [gr.lstm(4, forget_bias="chrono", t_max=50), gr.gru(4, update_bias="chrono", t_max=50)],
    ids=["lstm-chrono", "gru-chrono"],
)
def test_torch_round_trip_of_chrono_initialized_params_is_exact(cell):
    """Chrono init only sets biases: gatedrnn -> torch -> gatedrnn keeps them bit for bit,
    and torch computes what the chrono-initialized stack computes."""
    st = gr.stack(cell, 2, bidirectional=True)
    params = st.init(jax.random.key(0), 3)
    module = interop.to_torch(st, params)
    stack2, back = interop.from_torch(module)
    chex.assert_trees_all_equal(back, params, strict=True)
    x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
    ys_t, _ = module(torch.tensor(x))
    _, ys = _apply(st, params, x)
    _close(ys, _np(ys_t), 1e-5)
    chex.assert_trees_all_equal(_apply(stack2, back, x)[1], ys)


def test_torch_dropout_is_carried_over_both_ways():
    """A module's dropout is not dropped: the stack keeps it, and to_torch gives it back."""
    torch.manual_seed(5)
    module = torch.nn.GRU(3, 4, num_layers=2, dropout=0.25, batch_first=True)
    stack, params = interop.from_torch(module)
    assert stack.dropout == 0.25
    assert interop.to_torch(stack, params).dropout == 0.25
    x = np.random.default_rng(5).normal(size=(2, 5, 3)).astype(np.float32)
    _, ys = _apply(stack, params, x)  # no dropout_key: torch's eval()
    _close(ys, _np(module.eval()(torch.tensor(x))[0]), 2e-5)
    _, ys_train = _apply(stack, params, x, dropout_key=jax.random.key(0))
    assert not np.allclose(ys_train, ys)  # and train mode drops between the layers


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_bfloat16_modules_convert_exactly(kind):
    """bfloat16 weights (which numpy cannot hold) convert bit for bit, both ways."""
    torch.manual_seed(6)
    module = _torch_module(kind, 3, 4, 2, False, torch.bfloat16)
    stack, params = interop.from_torch(module)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    _, params32 = interop.from_torch(copy.deepcopy(module).float())
    bf16 = jnp.bfloat16  # the casts in NumPy (ml_dtypes): no program per shape
    chex.assert_trees_all_equal(  # weights: exact (biases of vanilla/LSTM are a bf16 sum)
        [(np.asarray(p.w_x), np.asarray(p.w_h)) for p in params],
        [(np.asarray(p.w_x).astype(bf16), np.asarray(p.w_h).astype(bf16)) for p in params32],
        strict=True,
    )
    back = interop.to_torch(stack, params)
    assert next(back.parameters()).dtype == torch.bfloat16
    chex.assert_trees_all_equal(interop.from_torch(back)[1], params, strict=True)
    x = np.random.default_rng(6).normal(size=(2, 5, 3)).astype(np.float32)
    _, ys = _apply(stack, params, x.astype(bf16))
    ys_t = module(torch.tensor(x, dtype=torch.bfloat16))[0]
    _close(np.asarray(ys).astype(np.float32), _np(ys_t), 5e-2)


def test_torch_bias_false_converts_with_zero_biases():
    module = torch.nn.LSTM(3, 4, bias=False)
    stack, params = interop.from_torch(module)
    assert not np.any(params[0].b)
    interop.to_torch(stack, params, module)  # zero biases: nothing lost
    nonzero = (params[0]._replace(b=np.asarray(params[0].b) + np.float32(1.0)),)
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
    lstm2_params = lstm2.init(key, 3)
    with pytest.raises(ValueError, match="num_layers"):
        interop.to_torch(lstm2, lstm2_params, torch.nn.LSTM(3, 4, num_layers=1))
    with pytest.raises(ValueError, match="GRU"):
        interop.to_torch(lstm2, lstm2_params, torch.nn.GRU(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="float64"):
        interop.from_torch(torch.nn.GRU(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"torch\.nn\.RNN"):
        interop.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="only vanilla, lstm and gru"):
        interop.to_torch(gr.min_gru(4), gr.min_gru(4).init(key, 3))


def test_interop_imports_without_torch_and_says_how_to_get_it():
    """torch is optional: importing gatedrnn.interop and the Flax converters never needs it."""
    # one child process: torch installed but never imported, then as if not installed
    code = """
import sys
import gatedrnn.interop
assert "torch" not in sys.modules, "importing gatedrnn.interop imported torch"
sys.modules["torch"] = None  # as if torch were not installed
import jax, gatedrnn as gr
from gatedrnn import interop
cell = gr.lstm(4)
module, variables = interop.to_flax(cell, cell.init(jax.random.key(0), 3))
interop.from_flax(module, variables)
try:
    interop.from_torch(object())
except ImportError as e:
    assert "pip install torch" in str(e), e
    print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_readme_bring_your_pytorch_lstm_runs():
    code = readme_block("pytorch-lstm")
    assert len(code.strip().splitlines()) <= 14
    exec(compile(code, "README.md:pytorch-lstm", "exec"), {})


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_round_trip_keeps_the_modules_layout_flags(kind, batch_first, bias):
    """from_torch then to_torch builds the same module: batch_first and bias (which the
    params cannot hold) come back from stack.origin, with every other constructor argument;
    so the user's input, in the module's own layout, gives the same outputs."""
    torch.manual_seed(7)
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first, bias=bias, dropout=0.5)
    if kind.startswith("rnn_"):
        module = torch.nn.RNN(3, 4, nonlinearity=kind[4:], **kw)
    else:
        module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](3, 4, **kw)
    stack, params = interop.from_torch(module)
    assert dict(stack.origin) == {"batch_first": batch_first, "bias": bias}
    back = interop.to_torch(stack, params)
    for flag in ("batch_first", "bias", "bidirectional", "num_layers", "dropout", "mode"):
        assert getattr(back, flag) == getattr(module, flag), flag
    assert getattr(back, "nonlinearity", None) == getattr(module, "nonlinearity", None)
    assert sorted(dict(back.named_parameters())) == sorted(dict(module.named_parameters()))
    x = torch.tensor(np.random.default_rng(7).normal(size=(5, 2, 3)).astype(np.float32))
    torch.testing.assert_close(back.eval()(x)[0], module.eval()(x)[0], rtol=1e-6, atol=1e-6)
    # an explicit layout wins over the recorded one
    assert interop.to_torch(stack, params, batch_first=not batch_first).batch_first is (
        not batch_first
    )


def test_torch_lstm_cell_bias_flag_is_a_to_torch_option():
    """A single cell has nowhere to record bias=False: to_torch takes it as an option."""
    module = torch.nn.LSTMCell(3, 4, bias=False)
    cell, params = interop.from_torch(module)
    back = interop.to_torch(cell, params, bias=False)
    assert back.bias is False and sorted(dict(back.named_parameters())) == [
        "weight_hh",
        "weight_ih",
    ]
    assert interop.to_torch(cell, params).bias is True  # default: torch's own default


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_lstm_biases_are_summed_exactly_and_rounded_once(dtype):
    """b = bias_ih + bias_hh is the correctly rounded sum in the weights' dtype: summed in
    float64 on the host, never on the device where XLA flushes float32 and bfloat16
    subnormals to zero (and the torch -> gatedrnn -> torch round trip keeps them)."""
    tdtype = getattr(torch, dtype)
    finfo = torch.finfo(tdtype)
    module = torch.nn.LSTM(3, 2, dtype=tdtype)  # biases (8,)
    b_ih = [finfo.smallest_normal / 4, 3 * finfo.smallest_normal / 8, 1000.0, 1.0, 0.1, -2.5]
    b_hh = [finfo.smallest_normal / 8, 0.0, 0.1, finfo.eps / 4, 0.2, 2.5]
    with torch.no_grad():
        module.bias_ih_l0.copy_(torch.tensor([*b_ih, 1.0, 2.0], dtype=tdtype))
        module.bias_hh_l0.copy_(torch.tensor([*b_hh, 0.0, 0.0], dtype=tdtype))
    exact = module.bias_ih_l0.detach().double() + module.bias_hh_l0.detach().double()
    want = exact.to(tdtype).float().numpy()
    assert want[0] != 0 and want[1] != 0  # subnormal sums that must not be flushed
    stack, params = interop.from_torch(module)
    got = np.asarray(params[0].b).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    back = interop.to_torch(stack, params)
    np.testing.assert_array_equal(back.bias_ih_l0.detach().float().numpy(), want)


def test_torch_modules_that_cannot_be_read_or_filled_are_one_line_errors():
    """A meta-device module, a stack into an LSTMCell (and a cell into an LSTM), a module
    missing a weight: one ValueError saying what is wrong, never an AttributeError or a
    torch traceback, and a missing weight is not blamed on bias=False."""
    cell = gr.lstm(4)
    params = cell.init(jax.random.key(0), 3)
    st = gr.stack(cell)
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        interop.from_torch(torch.nn.LSTM(3, 4, device="meta"))
    with pytest.raises(ValueError, match="meta device"):
        interop.to_torch(st, (params,), torch.nn.LSTM(3, 4, device="meta"))
    with pytest.raises(ValueError, match=r"LSTMCell, a single cell.*nn\.LSTM"):
        interop.to_torch(st, (params,), torch.nn.LSTMCell(3, 4))
    with pytest.raises(ValueError, match=r"single cell.*nn\.LSTMCell"):
        interop.to_torch(cell, params, torch.nn.LSTM(3, 4))
    interop.to_torch(cell, params, torch.nn.LSTMCell(3, 4))  # the right pairing works
    broken = torch.nn.LSTM(3, 4)
    del broken._parameters["weight_hh_l0"]
    with pytest.raises(ValueError, match="no parameter 'weight_hh_l0'") as e:
        interop.to_torch(st, (params,), broken)
    assert "bias" not in str(e.value).split("(it has")[0]
