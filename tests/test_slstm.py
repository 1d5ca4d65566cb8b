"""The sLSTM (Beck et al. 2024): the paper's equations without a stabilizer, the stabilizer's
invariance, the fused loop, the Cell contract, and parity with xlstm's pure-PyTorch path."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loop_scan, one_torch_thread, scan_numpy, to_numpy

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
KEY0 = np.zeros(2, np.uint32)  # jax.random.PRNGKey(0)'s data (making it compiles a program)


def _problem(dtype=F64, seed=0, hidden=H, heads=HEADS, forget_gate="sigmoid", inp=I):
    """A cell with a random recurrent weight, params with a jittered bias (the init's
    distributions: fan-in normal ``w_x`` and ``r`` blocks, the powerlaw forget bias, drawn
    with numpy), and a numpy generator for the data."""
    cell = slstm(hidden, heads, forget_gate, recurrent_init=fan_in_normal)
    rng = np.random.default_rng(seed)
    dh = hidden // heads
    b = np.zeros(4 * hidden)
    b[hidden : 2 * hidden] = np.tile(forget_bias_values("powerlaw", dh), heads)
    params = SLSTMParams(
        w_x=(rng.normal(size=(inp, 4 * hidden)) / np.sqrt(inp)).astype(dtype),
        r=(rng.normal(size=(heads, dh, 4 * dh)) / np.sqrt(dh)).astype(dtype),
        b=(b + 0.5 * rng.normal(size=4 * hidden)).astype(dtype),
    )
    return cell, params, rng


def _random_state(rng, batch, hidden=H, dtype=F64):
    """A state with every leaf non-zero and ``n > 0`` (numpy)."""
    shape = (*batch, hidden)
    return SLSTMState(
        h=(0.5 * rng.normal(size=shape)).astype(dtype),
        c=rng.normal(size=shape).astype(dtype),
        n=(1.0 + np.abs(rng.normal(size=shape))).astype(dtype),
        m=rng.normal(size=shape).astype(dtype),
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
        cell, params, rng = _problem(forget_gate=forget_gate)
        xs = rng.normal(size=(B, T, I))
        state0 = None if start == "zeros" else _random_state(rng, (B,))
        final, ys = scan_numpy(cell, params, xs, state0)
        want_h, want_ratio, want_ys = _numpy_unstabilized(params, xs, forget_gate, state0)
        chex.assert_trees_all_close(ys, want_ys, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(final.h, want_h, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(final.c / final.n, want_ratio, rtol=1e-11, atol=1e-12)
        # the stabilizer keeps both exponentials <= 1: n >= 1 after a step from zeros
        if start == "zeros":
            assert np.all(final.n >= 1.0 - 1e-12)


def test_outputs_do_not_depend_on_the_stabilizer():
    """(c, n, m) -> (c e^-d, n e^-d, m + d) gives the same outputs for any shift d."""
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        xs = rng.normal(size=(B, T, I))
        s0 = _random_state(rng, (B,))
        d = 3.0 * rng.normal(size=(B, H))
        shifted = s0._replace(c=s0.c * np.exp(-d), n=s0.n * np.exp(-d), m=s0.m + d)
        f0, ys0 = scan_numpy(cell, params, xs, s0)
        f1, ys1 = scan_numpy(cell, params, xs, shifted)
        chex.assert_trees_all_close(ys1, ys0, rtol=1e-12, atol=1e-13)
        chex.assert_trees_all_close(f1.c / f1.n, f0.c / f0.n, rtol=1e-12, atol=1e-13)


def test_the_n_zero_restart_equals_plain_max_outputs_and_stays_finite():
    """xlstm restarts m at i_raw where n = 0; a plain max(log f + m, i) from m = 0 gives the
    same outputs (c/n is invariant), but only the restart keeps n = 1 at the first step
    when i_raw is very negative (plain max: exp(i_raw - log f) underflows, n = 0, 0/0)."""
    cell, params, rng = _problem(dtype=np.float32)
    x = rng.normal(size=(B, I)).astype(np.float32)
    # a very negative input gate at the first step
    low = params._replace(b=params.b.copy())
    low.b[:H] = -120.0

    @jax.jit  # every piece in one compiled program
    def pieces(params, low, x):
        state0 = cell.initial_state(params, (B,))
        xp = cell.project(params, x)
        # plain max, by handing the pointwise a state whose n is not 0 but scales to nothing
        tiny = state0._replace(n=jnp.full_like(state0.n, 1e-30))
        a = cell.hidden(params, state0)
        (_, y_restart), (_, y_plain) = slstm_pointwise(state0, xp, a), slstm_pointwise(tiny, xp, a)
        state, y = cell.step(low, state0, x)
        raw = cell.project(low, x) + cell.hidden(low, state0)
        i_raw, log_f = raw[:, :H], jax.nn.log_sigmoid(raw[:, H : 2 * H])
        n_plain = jnp.exp(i_raw - jnp.maximum(log_f, i_raw))  # plain max from m = 0
        return y_restart, y_plain, state, y, n_plain

    y_restart, y_plain, state, y, n_plain = to_numpy(pieces(params, low, x))
    chex.assert_trees_all_close(y_restart, y_plain, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(state.n, 1.0)
    np.testing.assert_array_equal(n_plain, 0.0)


def test_hidden_is_the_block_diagonal_product():
    with jax.enable_x64(True):
        problems = [_problem(hidden=8, heads=heads) for heads in (1, 2, 4)]
        hs = [rng.normal(size=(3, 2, 8)) for _, _, rng in problems]

        @jax.jit  # the three cells in one compiled program
        def hidden(params, hs):
            return [
                cell.hidden(p, cell.initial_state(p, (3, 2))._replace(h=h))
                for (cell, _, _), p, h in zip(problems, params, hs)
            ]

        got = hidden([p for _, p, _ in problems], hs)
        for (_, params, _), h, a in zip(problems, hs, got):
            want = h @ _dense_recurrent(params.r) + params.b
            chex.assert_trees_all_close(np.asarray(a), want, rtol=1e-12)


# ------------------------------------------------------------------------- init, options


def test_init_layout_and_forget_bias():
    # each init one compiled program (eager, every op of the init compiles its own)
    def init(cell, *args):
        return jax.jit(cell.init, static_argnums=(1, 2))(KEY0, *args)

    cell = slstm(8, num_heads=2)
    params = to_numpy(init(cell, 3, jnp.float32))
    assert isinstance(params, SLSTMParams)
    assert params.w_x.shape == (3, 32) and params.r.shape == (2, 4, 16) and params.b.shape == (32,)
    np.testing.assert_allclose(params.r, 0.0)  # xlstm's recurrent init: zeros
    want = np.tile(5.0 - 12.0 * (np.arange(4) / 3) ** 0.3, 2)
    np.testing.assert_allclose(params.b[8:16], want, rtol=1e-6)
    np.testing.assert_allclose(params.b[:8], 0.0)
    np.testing.assert_allclose(params.b[16:], 0.0)
    lin = to_numpy(init(slstm(8, 2, forget_bias="linspace"), 3, jnp.float32))
    np.testing.assert_allclose(lin.b[8:16], np.tile(np.linspace(3.0, 6.0, 4), 2), rtol=1e-6)
    const = to_numpy(init(slstm(8, forget_bias=2.5), 3, jnp.float32))
    np.testing.assert_allclose(const.b[8:16], 2.5)
    np.testing.assert_allclose(forget_bias_values("powerlaw", 1), [5.0])
    assert make_cell("slstm", 8, num_heads=2) is cell
    assert cell.options == {
        "hidden_size": 8,
        "num_heads": 2,
        "forget_gate": "sigmoid",
        "forget_bias": "powerlaw",
    }
    state = jax.eval_shape(lambda p: cell.initial_state(p, (2, 3)), params)
    assert isinstance(state, SLSTMState)
    assert all(s.shape == (2, 3, 8) for s in state)
    assert params.w_x.dtype == jnp.float32
    with jax.enable_x64(True):
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        assert jax.eval_shape(lambda k: cell.init(k, 3, F64), key).r.dtype == F64


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
    # the checks run while tracing: abstract params and inputs (nothing compiles)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    cell = slstm(H, HEADS)
    params = jax.eval_shape(lambda k: cell.init(k, I), key)
    with pytest.raises(ValueError, match="input_size"):
        cell.init(KEY0, 0)
    scan = functools.partial(jax.eval_shape, functools.partial(gr.scan, cell))
    ones = np.ones((B, T, I), np.float32)
    with pytest.raises(ValueError, match="features"):
        scan(params, np.ones((B, T, I + 1), np.float32))
    with pytest.raises(TypeError, match="floating point"):
        scan(params, np.ones((B, T, I), np.int32))
    other_size = jax.eval_shape(lambda k: slstm(2 * H, HEADS).init(k, I), key)
    with pytest.raises(ValueError, match=r"params.w_x has shape .* hidden_size=4"):
        scan(other_size, ones)
    other_heads = jax.eval_shape(lambda k: slstm(H, 1).init(k, I), key)
    with pytest.raises(ValueError, match=r"params.r has shape \(1, 4, 16\).*num_heads=2"):
        scan(other_heads, ones)
    with pytest.raises(TypeError, match="SLSTMParams"):
        scan(jax.eval_shape(lambda k: gr.lstm(H).init(k, I), key), ones)
    with pytest.raises(ValueError, match="parallel=True needs a cell with a parallel form"):
        jax.eval_shape(functools.partial(gr.scan, cell, parallel=True), params, ones)


# ------------------------------------------------------------------------- the contract


@functools.partial(jax.jit, static_argnums=0)
def _loop_and_scans(cell, params, xs_tm, s0):
    """conftest's ``loop_scan`` (a loop of ``cell.step``) and ``gr.scan`` time-major and
    batch-major, in one compiled program."""
    return (
        loop_scan(cell, params, xs_tm, s0),
        gr.scan(cell, params, xs_tm, s0, time_major=True),
        gr.scan(cell, params, jnp.moveaxis(xs_tm, 0, -2), s0),
    )


@pytest.mark.parametrize("batch", [(), (B,), (2, 3)], ids=["no_batch", "one_axis", "two_axes"])
def test_scan_equals_a_loop_of_steps(batch):
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        xs_tm = rng.normal(size=(T, *batch, I))
        s0 = _random_state(rng, batch)
        (want_final, want_ys), tm, bm = to_numpy(_loop_and_scans(cell, params, xs_tm, s0))
        chex.assert_trees_all_close(tm, (want_final, want_ys), rtol=1e-12, atol=1e-13)
        final, ys = bm
        chex.assert_trees_all_close(ys, np.moveaxis(want_ys, 0, -2), rtol=1e-12, atol=1e-13)
        chex.assert_trees_all_close(final, want_final, rtol=1e-12, atol=1e-13)
        assert cell.split is not None  # the fused loop ran: no option rules it out
        # output() agrees with what recur emits
        chex.assert_trees_all_close(cell.output(params, final, None), final.h)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "seq_lengths"])
def test_fused_loop_equals_plain_loop_values_and_grads_float64(lengths):
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        xs = rng.normal(size=(B, T, I))
        s0 = _random_state(rng, (B,))
        opts = {"seq_lengths": np.array([T, 3])} if lengths else {}

        def loss(fused, params, xs, s0):
            final, ys = gr.scan(cell, params, xs, s0, fused=fused, **opts)
            total = jnp.sum(jnp.sin(ys)) + sum(jnp.sum(s**2) for s in final)
            return total, (final, ys)

        @jax.jit
        def both(params, xs, s0, tangent):
            """Both loops' values, grads and jvp (forward mode through the fused loop's
            tangent rule) in one compiled program."""
            out = []
            for fused in (True, False):
                grad = jax.value_and_grad(
                    functools.partial(loss, fused), argnums=(0, 1, 2), has_aux=True
                )
                run = lambda p: gr.scan(cell, p, xs, s0, fused=fused, **opts)  # noqa: B023, E731
                out.append((grad(params, xs, s0), jax.jvp(run, (params,), (tangent,))[1]))
            return out

        tangent = jax.tree_util.tree_map(np.ones_like, params)
        (got, jvp_fused), (want, jvp_plain) = both(params, xs, s0, tangent)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
        chex.assert_trees_all_close(jvp_fused, jvp_plain, rtol=1e-10, atol=1e-12)


def test_grads_equal_finite_differences_float64():
    """Forward and reverse mode against float64 central differences (eps = 1e-6) along a
    random direction, from a random state and from the zero state (the n = 0 restart;
    there the direction leaves the state at zero)."""
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        xs = rng.normal(size=(B, 4, I))
        s0 = _random_state(rng, (B,))

        def loss(params, xs, s0):
            final, ys = gr.scan(cell, params, xs, s0)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c * final.n) + jnp.sum(final.m)

        @jax.jit  # one compiled program: the value, its gradient and its jvp
        def value_grad_jvp(point, direction):
            value, grad = jax.value_and_grad(lambda a: loss(*a))(point)
            return value, grad, jax.jvp(loss, point, direction)[1]

        def value_at(point, direction, h):  # the loss at point + h * direction
            shifted = jax.tree_util.tree_map(lambda a, d: a + h * d, point, direction)
            return float(value_grad_jvp(shifted, direction)[0])

        leaves = jax.tree_util.tree_leaves
        eps = 1e-6
        zero = jax.tree_util.tree_map(np.zeros_like, s0)
        for start in (s0, zero):
            point = (params, xs, start)
            direction = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape), point)
            if start is zero:
                direction = (*direction[:2], zero)
            _, grad, jvp = to_numpy(value_grad_jvp(point, direction))
            plus, minus = (value_at(point, direction, h) for h in (eps, -eps))
            fd = (plus - minus) / (2 * eps)
            rev = sum(np.vdot(g, d) for g, d in zip(leaves(grad), leaves(direction)))
            np.testing.assert_allclose(jvp, fd, rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(rev, fd, rtol=1e-7, atol=1e-7)


def test_jit_with_the_cell_static_compiles_once():
    cell, params, rng = _problem(dtype=np.float32)
    xs = rng.normal(size=(B, T, I)).astype(np.float32)

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
        cell, params, rng = _problem()
        xs = rng.normal(size=(B, T, I))
        lengths = np.array([T, 3])
        padded = xs.copy()
        padded[1, 3:] = np.nan

        @jax.jit  # every run in one compiled program
        def runs(params, padded, lengths, row):
            def total(p):
                return jnp.sum(gr.scan(cell, p, padded, seq_lengths=lengths)[1])

            return (
                gr.scan(cell, params, padded, seq_lengths=lengths),
                gr.scan(cell, params, row),
                jax.grad(total)(params),
                gr.scan(cell, params, padded, seq_lengths=lengths, reverse=True),
                gr.scan(cell, params, row[::-1]),
            )

        (final, ys), (f1, ys1), grads, (final_r, ys_r), (fr1, want) = to_numpy(
            runs(params, padded, lengths, xs[1, :3])
        )
        np.testing.assert_array_equal(ys[1, 3:], 0.0)
        chex.assert_trees_all_close(ys[1, :3], ys1, rtol=1e-12)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda s: s[1], final), f1, rtol=1e-12)
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        # reverse: each row's valid prefix backwards, outputs in the original order
        chex.assert_trees_all_close(ys_r[1, :3], want[::-1], rtol=1e-12)
        np.testing.assert_array_equal(ys_r[1, 3:], 0.0)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda s: s[1], final_r), fr1)


def test_resets_restart_from_the_initial_state_and_truncate_cuts_the_gradient():
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        xs = rng.normal(size=(B, T, I))
        resets = np.zeros((B, T), bool)
        resets[0, 4] = True

        def last_output(xs, truncate):
            return jnp.sum(gr.scan(cell, params, xs, truncate=truncate)[1][:, -1])

        @jax.jit  # every run in one compiled program
        def runs(params, xs, resets):
            return (
                gr.scan(cell, params, xs, resets=resets)[1],
                gr.scan(cell, params, xs[0, 4:])[1],
                gr.scan(cell, params, xs)[1],
                [jax.grad(last_output)(xs, k) for k in (None, 3)],
                gr.scan(cell, params, xs, truncate=3)[1],
            )

        ys, tail, plain, (full, cut), ys_cut = to_numpy(runs(params, xs, resets))
        chex.assert_trees_all_close(ys[0, 4:], tail, rtol=1e-12)
        chex.assert_trees_all_close(ys[1], plain[1], rtol=1e-12)
        assert float(np.max(np.abs(full[:, 0]))) > 1e-6
        np.testing.assert_array_equal(cut[:, :3], 0.0)  # T=7: cut before steps 3 and 6
        chex.assert_trees_all_close(cut[:, 6:], full[:, 6:], rtol=1e-12)
        chex.assert_trees_all_close(ys_cut, plain)


def test_stack_runs_two_layers():
    with jax.enable_x64(True):
        cell = slstm(H, HEADS)
        st = gr.stack(cell, 2)
        params = jax.jit(st.init, static_argnums=(1, 2))(KEY0, I, F64)
        xs = np.random.default_rng(1).normal(size=(B, T, I))

        @jax.jit  # the stack and the two scans in one compiled program
        def runs(params, xs):
            finals, ys = st.apply(params, xs)
            _, y0 = gr.scan(cell, params[0], xs)
            f1, y1 = gr.scan(cell, params[1], y0)
            return finals, ys, f1, y1

        finals, ys, f1, y1 = to_numpy(runs(params, xs))
        chex.assert_trees_all_close(ys, y1, rtol=1e-12)
        chex.assert_trees_all_close(finals[1], f1, rtol=1e-12)


def test_gates_are_the_weights_of_the_normalized_state():
    """c'/n' = forget * c/n + input * candidate, forget + input = 1, all in range."""
    with jax.enable_x64(True):
        cell, params, rng = _problem()
        x = rng.normal(size=(B, I))
        s0 = _random_state(rng, (B,))

        @jax.jit  # every piece in one compiled program
        def pieces(params, s0, x):
            xp = cell.project(params, x)
            zero = cell.initial_state(params, (B,))
            return (
                cell.gates(params, s0, xp),
                cell.step(params, s0, x)[0],
                cell.gates(params, zero, xp),
            )

        g, s1, g0 = to_numpy(pieces(params, s0, x))
        assert set(g) == {"input", "forget", "candidate", "output"}
        assert cell.tanh_gates == ("candidate",)
        chex.assert_trees_all_close(
            s1.c / s1.n, g["forget"] * s0.c / s0.n + g["input"] * g["candidate"], rtol=1e-12
        )
        chex.assert_trees_all_close(g["forget"] + g["input"], np.ones((B, H)), rtol=1e-12)
        # at the first step (n = 0) nothing is kept
        np.testing.assert_allclose(g0["forget"], 0.0)
        np.testing.assert_allclose(g0["input"], 1.0)


def test_gate_statistics_and_state_gradient_norms():
    cell, params, rng = _problem(dtype=np.float32)
    xs = rng.normal(size=(B, T, I)).astype(np.float32)

    @jax.jit  # both diagnostics in one compiled program
    def diagnostics(params, xs):
        loss = lambda final, ys: jnp.sum(ys[:, -1])  # noqa: E731
        return dg.gate_statistics(cell, params, xs), dg.state_gradient_norms(cell, params, xs, loss)

    st, norms = to_numpy(diagnostics(params, xs))
    for name in ("input", "forget", "output"):
        assert st[name].shape == (T,)
        assert np.all((st[name] >= 0) & (st[name] <= 1))
    assert st["candidate"].shape == (T,) and "candidate_saturated_low" not in st
    np.testing.assert_allclose(st["forget"][0], 0.0)
    assert isinstance(norms, SLSTMState)
    for leaf in norms:
        assert leaf.shape == (T + 1,) and np.all(np.isfinite(leaf))
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
        # parity.random_problem's problem (random r, jittered bias), drawn with numpy
        cell, params, rng = _problem(np.dtype(dtype), seed=1, hidden=8, heads=2, inp=8)
        xs = rng.normal(size=(3, 64, 8)).astype(dtype)
        for s0 in (None, _random_state(rng, (3,), 8, np.dtype(dtype))):
            got = parity.ours_run(cell, params, xs, s0)
            with one_torch_thread():
                want = parity.reference_run(params, xs, 2, s0)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_init_matches_xlstm_defaults():
    _parity_module()
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    ref = sLSTMCell(sLSTMCellConfig(hidden_size=16, num_heads=4, backend="vanilla"))
    params = jax.jit(slstm(16, 4).init, static_argnums=1)(KEY0, 3)
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
    with one_torch_thread():
        results = parity.main(["--out", str(out)])
    import json

    assert json.loads(out.read_text()) == results
    assert results["cell"] == "slstm" and results["shape"] == [2, 8, 8]
    assert results["max_abs_diff_float32"] < 1e-4 and results["max_abs_diff_float64"] < 1e-12
