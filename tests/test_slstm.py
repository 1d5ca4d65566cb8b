"""The sLSTM (Beck et al. 2024): the paper's equations without a stabilizer, the stabilizer's
invariance, the fused loop, the Cell contract, and parity with xlstm's pure-PyTorch path."""

from __future__ import annotations

import functools
import importlib.util
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loop_scan

import gatedrnn as gr
import gatedrnn.diagnostics as dg
from gatedrnn.cells import make_cell
from gatedrnn.cells.base import fan_in_normal
from gatedrnn.cells.slstm import (
    SLSTMParams,
    SLSTMState,
    forget_bias_values,
    slstm,
    slstm_pointwise,
)

ROOT = Path(__file__).resolve().parents[1]
F64 = jnp.float64
B, T, I, H, HEADS = 2, 7, 3, 4, 2

# gr.scan compiled once per cell, shapes and options (eager calls compile every op)
_scan = jax.jit(
    gr.scan, static_argnums=0, static_argnames=("reverse", "time_major", "truncate", "fused")
)
_step = jax.jit(lambda cell, p, s, x: cell.step(p, s, x), static_argnums=0)


def _compiled_steps(cell):
    """``cell`` for conftest's ``loop_scan`` with its step compiled once per shape (eager,
    every op of every step is dispatched on its own)."""
    return types.SimpleNamespace(step=functools.partial(_step, cell), hidden_size=cell.hidden_size)


def _problem(dtype=F64, seed=0, hidden=H, heads=HEADS, forget_gate="sigmoid", inp=I):
    """A cell with a random recurrent weight, params with a jittered bias, and a key."""
    cell = slstm(hidden, heads, forget_gate, recurrent_init=fan_in_normal)
    k_init, k_b, k_x = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k_init, inp, dtype)
    params = params._replace(b=params.b + 0.5 * jax.random.normal(k_b, params.b.shape, dtype))
    return cell, params, k_x


def _random_state(key, batch, hidden=H, dtype=F64):
    """A state with every leaf non-zero and ``n > 0``."""
    kh, kc, kn, km = jax.random.split(key, 4)
    shape = (*batch, hidden)
    return SLSTMState(
        h=0.5 * jax.random.normal(kh, shape, dtype),
        c=jax.random.normal(kc, shape, dtype),
        n=1.0 + jnp.abs(jax.random.normal(kn, shape, dtype)),
        m=jax.random.normal(km, shape, dtype),
    )


def _dense_recurrent(r):
    """The block-diagonal ``(H, 4H)`` matrix ``r`` stands for, built entry by entry."""
    heads, dh, _ = r.shape
    hidden = heads * dh
    dense = np.zeros((hidden, 4 * hidden))
    for k in range(heads):
        for g in range(4):
            cols = slice(g * hidden + k * dh, g * hidden + (k + 1) * dh)
            dense[k * dh : (k + 1) * dh, cols] = r[k, :, g * dh : (g + 1) * dh]
    return dense


def _numpy_unstabilized(params, xs, forget_gate="sigmoid", state0=None):
    """The paper's equations with no stabilizer: ``C' = F C + exp(i) tanh(z)``,
    ``N' = F N + exp(i)``, ``h' = sigmoid(o) C'/N'`` (float64, small inputs only)."""
    w, b = np.asarray(params.w_x), np.asarray(params.b)
    R = _dense_recurrent(np.asarray(params.r))
    hidden = b.shape[0] // 4
    batch = xs.shape[:-2]
    if state0 is None:
        h = C = N = np.zeros((*batch, hidden))
    else:
        h, c, n, m = (np.asarray(s) for s in state0)
        C, N = c * np.exp(m), n * np.exp(m)
    ys = []
    for t in range(xs.shape[-2]):
        raw = xs[..., t, :] @ w + h @ R + b
        i, f, z, o = np.split(raw, 4, axis=-1)
        F = 1 / (1 + np.exp(-f)) if forget_gate == "sigmoid" else np.exp(f)
        C = F * C + np.exp(i) * np.tanh(z)
        N = F * N + np.exp(i)
        h = C / N / (1 + np.exp(-o))
        ys.append(h)
    return h, C / N, np.stack(ys, axis=-2)


# ----------------------------------------------------------------------------- the math


@pytest.mark.parametrize("forget_gate, start", [("sigmoid", "zeros"), ("exp", "random")])
def test_scan_matches_the_unstabilized_equations(forget_gate, start):
    """The stabilizer m changes nothing: h and c/n are those of the plain exp sums."""
    with jax.enable_x64(True):
        cell, params, key = _problem(forget_gate=forget_gate)
        kx, ks = jax.random.split(key)
        xs = jax.random.normal(kx, (B, T, I), F64)
        state0 = None if start == "zeros" else _random_state(ks, (B,))
        final, ys = _scan(cell, params, xs, state0)
        want_h, want_ratio, want_ys = _numpy_unstabilized(
            params, np.asarray(xs), forget_gate, state0
        )
        chex.assert_trees_all_close(ys, want_ys, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(final.h, want_h, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(final.c / final.n, want_ratio, rtol=1e-11, atol=1e-12)
        # the stabilizer keeps both exponentials <= 1: n >= 1 after a step from zeros
        if start == "zeros":
            assert np.all(np.asarray(final.n) >= 1.0 - 1e-12)


def test_outputs_do_not_depend_on_the_stabilizer():
    """(c, n, m) -> (c e^-d, n e^-d, m + d) gives the same outputs for any shift d."""
    with jax.enable_x64(True):
        cell, params, key = _problem()
        kx, ks, kd = jax.random.split(key, 3)
        xs = jax.random.normal(kx, (B, T, I), F64)
        s0 = _random_state(ks, (B,))
        d = 3.0 * jax.random.normal(kd, (B, H), F64)
        shifted = s0._replace(c=s0.c * jnp.exp(-d), n=s0.n * jnp.exp(-d), m=s0.m + d)
        f0, ys0 = _scan(cell, params, xs, s0)
        f1, ys1 = _scan(cell, params, xs, shifted)
        chex.assert_trees_all_close(ys1, ys0, rtol=1e-12, atol=1e-13)
        chex.assert_trees_all_close(f1.c / f1.n, f0.c / f0.n, rtol=1e-12, atol=1e-13)


def test_the_n_zero_restart_equals_plain_max_outputs_and_stays_finite():
    """xlstm restarts m at i_raw where n = 0; a plain max(log f + m, i) from m = 0 gives the
    same outputs (c/n is invariant), but only the restart keeps n = 1 at the first step
    when i_raw is very negative (plain max: exp(i_raw - log f) underflows, n = 0, 0/0)."""
    cell, params, key = _problem(dtype=jnp.float32)
    state0 = cell.initial_state(params, (B,))
    xp = cell.project(params, jax.random.normal(key, (B, I)))
    # plain max, by handing the pointwise a state whose n is not 0 but scales to nothing
    tiny = state0._replace(n=jnp.full_like(state0.n, 1e-30))
    a = cell.hidden(params, state0)
    (_, y_restart), (_, y_plain) = slstm_pointwise(state0, xp, a), slstm_pointwise(tiny, xp, a)
    chex.assert_trees_all_close(y_restart, y_plain, rtol=1e-5, atol=1e-6)
    # a very negative input gate at the first step
    low = params._replace(b=params.b.at[:H].set(-120.0))
    x = jax.random.normal(key, (B, I))
    state, y = cell.step(low, state0, x)
    assert np.all(np.isfinite(np.asarray(y)))
    np.testing.assert_allclose(state.n, 1.0)
    raw = cell.project(low, x) + cell.hidden(low, state0)
    i_raw, log_f = raw[:, :H], jax.nn.log_sigmoid(raw[:, H : 2 * H])
    n_plain = jnp.exp(i_raw - jnp.maximum(log_f, i_raw))  # plain max from m = 0
    np.testing.assert_array_equal(n_plain, 0.0)


def test_hidden_is_the_block_diagonal_product():
    with jax.enable_x64(True):
        for heads in (1, 2, 4):
            cell, params, key = _problem(hidden=8, heads=heads)
            h = jax.random.normal(key, (3, 2, 8), F64)
            state = cell.initial_state(params, (3, 2))._replace(h=h)
            want = np.asarray(h) @ _dense_recurrent(np.asarray(params.r)) + np.asarray(params.b)
            chex.assert_trees_all_close(cell.hidden(params, state), want, rtol=1e-12)


# ------------------------------------------------------------------------- init, options


def test_init_layout_and_forget_bias():
    cell = slstm(8, num_heads=2)
    params = cell.init(jax.random.PRNGKey(0), 3)
    assert isinstance(params, SLSTMParams)
    assert params.w_x.shape == (3, 32) and params.r.shape == (2, 4, 16) and params.b.shape == (32,)
    np.testing.assert_allclose(params.r, 0.0)  # xlstm's recurrent init: zeros
    want = np.tile(5.0 - 12.0 * (np.arange(4) / 3) ** 0.3, 2)
    np.testing.assert_allclose(params.b[8:16], want, rtol=1e-6)
    np.testing.assert_allclose(params.b[:8], 0.0)
    np.testing.assert_allclose(params.b[16:], 0.0)
    lin = slstm(8, 2, forget_bias="linspace").init(jax.random.PRNGKey(0), 3)
    np.testing.assert_allclose(lin.b[8:16], np.tile(np.linspace(3.0, 6.0, 4), 2), rtol=1e-6)
    const = slstm(8, forget_bias=2.5).init(jax.random.PRNGKey(0), 3)
    np.testing.assert_allclose(const.b[8:16], 2.5)
    np.testing.assert_allclose(forget_bias_values("powerlaw", 1), [5.0])
    assert make_cell("slstm", 8, num_heads=2) is cell
    assert cell.options == {
        "hidden_size": 8,
        "num_heads": 2,
        "forget_gate": "sigmoid",
        "forget_bias": "powerlaw",
    }
    state = cell.initial_state(params, (2, 3))
    assert isinstance(state, SLSTMState)
    assert all(s.shape == (2, 3, 8) for s in state)
    assert params.w_x.dtype == jnp.float32
    with jax.enable_x64(True):
        assert cell.init(jax.random.PRNGKey(0), 3, F64).r.dtype == F64


def test_bad_options_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads must divide hidden_size"):
        slstm(6, num_heads=4)
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1"):
        slstm(6, num_heads=0)
    with pytest.raises(ValueError, match="forget_gate must be one of"):
        slstm(6, forget_gate="tanh")
    with pytest.raises(ValueError, match="forget_bias must be a number or one of"):
        slstm(6, forget_bias="chrono")
    with pytest.raises(ValueError, match="finite"):
        slstm(6, forget_bias=float("nan"))
    with pytest.raises(TypeError, match="forget_bias must be a real number"):
        slstm(6, forget_bias=True)
    with pytest.raises(ValueError, match="hidden_size"):
        slstm(0)
    cell = slstm(H, HEADS)
    params = cell.init(jax.random.PRNGKey(0), I)
    with pytest.raises(ValueError, match="input_size"):
        cell.init(jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="features"):
        gr.scan(cell, params, jnp.ones((B, T, I + 1)))
    with pytest.raises(TypeError, match="floating point"):
        gr.scan(cell, params, jnp.ones((B, T, I), jnp.int32))
    other_size = slstm(2 * H, HEADS).init(jax.random.PRNGKey(0), I)
    with pytest.raises(ValueError, match=r"params.w_x has shape .* hidden_size=4"):
        gr.scan(cell, other_size, jnp.ones((B, T, I)))
    other_heads = slstm(H, 1).init(jax.random.PRNGKey(0), I)
    with pytest.raises(ValueError, match=r"params.r has shape \(1, 4, 16\).*num_heads=2"):
        gr.scan(cell, other_heads, jnp.ones((B, T, I)))
    with pytest.raises(TypeError, match="SLSTMParams"):
        gr.scan(cell, gr.lstm(H).init(jax.random.PRNGKey(0), I), jnp.ones((B, T, I)))
    with pytest.raises(ValueError, match="parallel=True needs a cell with a parallel form"):
        gr.scan(cell, params, jnp.ones((B, T, I)), parallel=True)


# ------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("batch", [(), (B,), (2, 3)], ids=["no_batch", "one_axis", "two_axes"])
def test_scan_equals_a_loop_of_steps(batch):
    with jax.enable_x64(True):
        cell, params, key = _problem()
        kx, ks = jax.random.split(key)
        xs_tm = jax.random.normal(kx, (T, *batch, I), F64)
        s0 = _random_state(ks, batch)
        want_final, want_ys = loop_scan(_compiled_steps(cell), params, xs_tm, s0)
        final, ys = _scan(cell, params, xs_tm, s0, time_major=True)
        chex.assert_trees_all_close((final, ys), (want_final, want_ys), rtol=1e-12, atol=1e-13)
        final, ys = _scan(cell, params, jnp.moveaxis(xs_tm, 0, -2), s0)
        chex.assert_trees_all_close(ys, jnp.moveaxis(want_ys, 0, -2), rtol=1e-12, atol=1e-13)
        chex.assert_trees_all_close(final, want_final, rtol=1e-12, atol=1e-13)
        assert cell.split is not None  # the fused loop ran: no option rules it out
        # output() agrees with what recur emits
        chex.assert_trees_all_close(cell.output(params, final, None), final.h)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "seq_lengths"])
def test_fused_loop_equals_plain_loop_values_and_grads_float64(lengths):
    with jax.enable_x64(True):
        cell, params, key = _problem()
        kx, ks = jax.random.split(key)
        xs = jax.random.normal(kx, (B, T, I), F64)
        s0 = _random_state(ks, (B,))
        opts = {"seq_lengths": np.array([T, 3])} if lengths else {}

        def run(fused):
            def loss(params, xs, s0):
                final, ys = gr.scan(cell, params, xs, s0, fused=fused, **opts)
                total = jnp.sum(jnp.sin(ys)) + sum(jnp.sum(s**2) for s in final)
                return total, (final, ys)

            return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
                params, xs, s0
            )

        got, want = run(True), run(False)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
        # forward mode through the fused loop's tangent rule, against the plain loop's
        tangent = jax.tree_util.tree_map(jnp.ones_like, params)

        @jax.jit
        def tangents(params, tangent):  # both loops' jvp in one compiled program
            def out(fused):
                run = lambda p: gr.scan(cell, p, xs, s0, fused=fused, **opts)  # noqa: E731
                return jax.jvp(run, (params,), (tangent,))[1]

            return out(True), out(False)

        jvp = tangents(params, tangent)
        chex.assert_trees_all_close(jvp[0], jvp[1], rtol=1e-10, atol=1e-12)


def test_grads_equal_finite_differences_float64():
    with jax.enable_x64(True):
        cell, params, key = _problem()
        kx, ks = jax.random.split(key)
        xs = jax.random.normal(kx, (B, 4, I), F64)
        s0 = _random_state(ks, (B,))

        def loss(params, xs, s0):
            final, ys = gr.scan(cell, params, xs, s0)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c * final.n) + jnp.sum(final.m)

        # jitted: the finite differences reuse one compiled scan
        jax.test_util.check_grads(
            jax.jit(loss), (params, xs, s0), order=1, modes=["fwd", "rev"], eps=1e-6
        )
        # from the zero state (the n = 0 restart) as well
        zero = jax.jit(lambda p, x: loss(p, x, cell.initial_state(p, (B,))))
        jax.test_util.check_grads(zero, (params, xs), order=1, modes=["rev"], eps=1e-6)


def test_jit_with_the_cell_static_compiles_once():
    cell, params, key = _problem(dtype=jnp.float32)
    xs = jax.random.normal(key, (B, T, I))

    @chex.assert_max_traces(n=1)
    def run(cell, params, xs):
        return gr.scan(cell, params, xs)[1]

    f = jax.jit(run, static_argnums=0)
    ys = f(cell, params, xs)
    # the same cell built again (by name) is the same static argument: no retrace
    again = make_cell("slstm", H, num_heads=HEADS, recurrent_init=fan_in_normal)
    chex.assert_trees_all_close(f(again, params, xs), ys)
    chex.assert_trees_all_close(ys, gr.scan(cell, params, xs)[1], rtol=1e-6)


def test_seq_lengths_reverse_and_nan_padding():
    with jax.enable_x64(True):
        cell, params, key = _problem()
        xs = jax.random.normal(key, (B, T, I), F64)
        lengths = np.array([T, 3])
        padded = xs.at[1, 3:].set(jnp.nan)
        final, ys = _scan(cell, params, padded, seq_lengths=lengths)
        np.testing.assert_array_equal(ys[1, 3:], 0.0)
        f1, ys1 = _scan(cell, params, xs[1, :3])
        chex.assert_trees_all_close(ys[1, :3], ys1, rtol=1e-12)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda s: s[1], final), f1, rtol=1e-12)
        grads = jax.jit(
            jax.grad(lambda p: jnp.sum(gr.scan(cell, p, padded, seq_lengths=lengths)[1]))
        )(params)
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        # reverse: each row's valid prefix backwards, outputs in the original order
        final_r, ys_r = _scan(cell, params, padded, seq_lengths=lengths, reverse=True)
        fr1, want = _scan(cell, params, xs[1, :3][::-1])
        chex.assert_trees_all_close(ys_r[1, :3], want[::-1], rtol=1e-12)
        np.testing.assert_array_equal(ys_r[1, 3:], 0.0)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda s: s[1], final_r), fr1)


def test_resets_restart_from_the_initial_state_and_truncate_cuts_the_gradient():
    with jax.enable_x64(True):
        cell, params, key = _problem()
        xs = jax.random.normal(key, (B, T, I), F64)
        resets = np.zeros((B, T), bool)
        resets[0, 4] = True
        _, ys = _scan(cell, params, xs, resets=resets)
        _, tail = _scan(cell, params, xs[0, 4:])
        chex.assert_trees_all_close(ys[0, 4:], tail, rtol=1e-12)
        _, plain = _scan(cell, params, xs)
        chex.assert_trees_all_close(ys[1], plain[1], rtol=1e-12)

        def last_output(xs, truncate):
            return jnp.sum(gr.scan(cell, params, xs, truncate=truncate)[1][:, -1])

        grad = jax.jit(jax.grad(last_output), static_argnums=1)
        full, cut = (grad(xs, k) for k in (None, 3))
        assert float(jnp.max(jnp.abs(full[:, 0]))) > 1e-6
        np.testing.assert_array_equal(cut[:, :3], 0.0)  # T=7: cut before steps 3 and 6
        chex.assert_trees_all_close(cut[:, 6:], full[:, 6:], rtol=1e-12)
        _, ys_cut = _scan(cell, params, xs, truncate=3)
        chex.assert_trees_all_close(ys_cut, plain)


def test_stack_runs_two_layers():
    with jax.enable_x64(True):
        cell = slstm(H, HEADS)
        st = gr.stack(cell, 2)
        params = st.init(jax.random.PRNGKey(0), I, F64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), F64)
        finals, ys = st.apply(params, xs)
        _, y0 = gr.scan(cell, params[0], xs)
        f1, y1 = gr.scan(cell, params[1], y0)
        chex.assert_trees_all_close(ys, y1, rtol=1e-12)
        chex.assert_trees_all_close(finals[1], f1, rtol=1e-12)


def test_gates_are_the_weights_of_the_normalized_state():
    """c'/n' = forget * c/n + input * candidate, forget + input = 1, all in range."""
    with jax.enable_x64(True):
        cell, params, key = _problem()
        kx, ks = jax.random.split(key)
        x = jax.random.normal(kx, (B, I), F64)
        s0 = _random_state(ks, (B,))
        xp = cell.project(params, x)
        g = cell.gates(params, s0, xp)
        assert set(g) == {"input", "forget", "candidate", "output"}
        assert cell.tanh_gates == ("candidate",)
        s1, _ = cell.step(params, s0, x)
        chex.assert_trees_all_close(
            s1.c / s1.n, g["forget"] * s0.c / s0.n + g["input"] * g["candidate"], rtol=1e-12
        )
        chex.assert_trees_all_close(g["forget"] + g["input"], jnp.ones((B, H)), rtol=1e-12)
        # at the first step (n = 0) nothing is kept
        g0 = cell.gates(params, cell.initial_state(params, (B,)), xp)
        np.testing.assert_allclose(g0["forget"], 0.0)
        np.testing.assert_allclose(g0["input"], 1.0)


def test_gate_statistics_and_state_gradient_norms():
    cell, params, key = _problem(dtype=jnp.float32)
    xs = jax.random.normal(key, (B, T, I))
    st = dg.gate_statistics(cell, params, xs)
    for name in ("input", "forget", "output"):
        assert st[name].shape == (T,)
        assert np.all((np.asarray(st[name]) >= 0) & (np.asarray(st[name]) <= 1))
    assert st["candidate"].shape == (T,) and "candidate_saturated_low" not in st
    np.testing.assert_allclose(st["forget"][0], 0.0)
    norms = dg.state_gradient_norms(cell, params, xs, lambda final, ys: jnp.sum(ys[:, -1]))
    assert isinstance(norms, SLSTMState)
    for leaf in norms:
        assert leaf.shape == (T + 1,) and np.all(np.isfinite(np.asarray(leaf)))
    assert float(norms.h[T - 1]) > 0


# ---------------------------------------------------------------- parity with xlstm


def _parity_module():
    pytest.importorskip("torch", reason="torch is not installed (parity with xlstm skipped)")
    pytest.importorskip("xlstm", reason="xlstm is not installed (parity with xlstm skipped)")
    spec = importlib.util.spec_from_file_location(
        "parity_slstm", ROOT / "benchmarks" / "parity_slstm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parity_with_xlstm_vanilla(dtype):
    """Same weights, T = 64, batch 3: outputs and every state leaf agree, from the zero
    state (the row-wise n = 0 restart gives xlstm's stabilizer exactly) and from a random
    one."""
    parity = _parity_module()
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    with jax.enable_x64(dtype == "float64"):
        cell, params, xs = parity.random_problem(3, 64, 8, 2, jnp.dtype(dtype), seed=1)
        for s0 in (None, _random_state(jax.random.PRNGKey(2), (3,), 8, jnp.dtype(dtype))):
            got = parity.ours_run(cell, params, xs, s0)
            want = parity.reference_run(params, xs, 2, s0)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_init_matches_xlstm_defaults():
    _parity_module()
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    ref = sLSTMCell(sLSTMCellConfig(hidden_size=16, num_heads=4, backend="vanilla"))
    params = slstm(16, 4).init(jax.random.PRNGKey(0), 3)
    np.testing.assert_allclose(
        params.b,
        ref.bias.clone().detach().permute(1, 0, 2).reshape(-1).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_array_equal(ref.recurrent_kernel.clone().detach().numpy(), 0.0)
    np.testing.assert_array_equal(params.r, 0.0)


def test_parity_script_writes_json(tmp_path, monkeypatch):
    parity = _parity_module()
    monkeypatch.setattr(parity, "PARITY_SHAPE", (2, 8, 8))
    out = tmp_path / "slstm.json"
    results = parity.main(["--out", str(out)])
    import json

    assert json.loads(out.read_text()) == results
    assert results["cell"] == "slstm" and results["shape"] == [2, 8, 8]
    assert results["max_abs_diff_float32"] < 1e-4 and results["max_abs_diff_float64"] < 1e-12
