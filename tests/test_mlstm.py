"""mLSTM (Beck et al. 2024): the step form follows the paper's equations, the stabilized
parallel form equals it (initial state and sequence lengths included), everything
gr.scan promises works, and both forms agree with the xlstm package's PyTorch backends."""

from __future__ import annotations

import math
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import loop_scan, one_torch_thread, scan_numpy, to_numpy

import gatedrnn as gr
from gatedrnn import diagnostics as dg
from gatedrnn.cells import make_cell
from gatedrnn.cells.mlstm import MLSTMParams, MLSTMState, mlstm

F64 = jnp.float64
B, T, I, H, NH = 3, 7, 3, 8, 2
D = H // NH
KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)  # an abstract PRNGKey (nothing compiles)
KEY0 = np.zeros(2, np.uint32)  # jax.random.PRNGKey(0)'s data (making it compiles a program)


def _make(dtype=F64, seed=0, H=H, NH=NH, I=I, scale=0.5, **options):
    """The cell and params with every entry random (numpy draws: no JAX op to compile)."""
    cell = mlstm(H, NH, **options)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: cell.init(k, I), KEY)
    p = MLSTMParams(*[(scale * rng.normal(size=a.shape)).astype(dtype) for a in shapes])
    return cell, p._replace(b_f=p.b_f + 3.0)  # forget gates near the init's


def _state(cell, p, batch, seed=5, dtype=F64):
    """A random nonzero state (the stabilizer m included)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda p: cell.initial_state(p, batch), p)
    return MLSTMState(*[rng.normal(size=a.shape).astype(dtype) for a in shapes])


def _xs(seed, shape, dtype=F64):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@partial(jax.jit, static_argnums=0, static_argnames=("time_major",))
def _both_forms(cell, p, xs, s0, time_major=False):
    """``gr.scan`` step form and parallel form in one compiled program."""
    return [gr.scan(cell, p, xs, s0, time_major=time_major, parallel=par) for par in (False, True)]


def _numpy_step(p, state, x, NH, eps, stabilized=True):
    """The paper's equations for one step, per head, in numpy (x (B, I)).

    ``stabilized=False``: the plain exponential gates ``exp(i~)``, ``sigmoid(f~)`` on the
    unscaled memory, denominator ``max(|n^T q|, 1) + eps``.
    """
    P = {f: np.asarray(getattr(p, f)) for f in p._fields}
    c, n, m = (np.asarray(a) for a in state)
    b = x.shape[0]
    d = P["w_q"].shape[1] // NH
    q = (x @ P["w_q"]).reshape(b, NH, d)
    k = (x @ P["w_k"]).reshape(b, NH, d) / math.sqrt(d)
    v = (x @ P["w_v"]).reshape(b, NH, d)
    it = x @ P["w_i"] + P["b_i"]
    ft = x @ P["w_f"] + P["b_f"]
    o = 1 / (1 + np.exp(-(x @ P["w_o"] + P["b_o"])))
    c = c.reshape(b, NH, d, d)
    n = n.reshape(b, NH, d)
    log_f = -np.log1p(np.exp(-ft))
    if stabilized:
        m_new = np.maximum(log_f + m, it)
        i, f = np.exp(it - m_new), np.exp(log_f + m - m_new)
        floor = np.exp(-m_new)
    else:
        m_new, i, f, floor = m, np.exp(it), np.exp(log_f), np.ones_like(m)
    c = f[..., None, None] * c + i[..., None, None] * np.einsum("bha,bhc->bhac", k, v)
    n = f[..., None] * n + i[..., None] * k
    num = np.einsum("bha,bhac->bhc", q, c)
    den = np.maximum(np.abs(np.sum(q * n, -1)), floor) + eps
    y = o * (num / den[..., None]).reshape(b, -1)
    return (c.reshape(b, -1), n.reshape(b, -1), m_new), y


def _numpy_scan(p, xs_tm, state, NH=NH, eps=1e-6, stabilized=True):
    """:func:`_numpy_step` over ``xs_tm (T, *batch, I)`` from ``state`` (leaves
    ``(*batch, n)``); returns ``(final_state, ys (T, *batch, H))``."""
    xs_tm = np.asarray(xs_tm)
    batch = xs_tm.shape[1:-1]
    s = tuple(np.asarray(a).reshape(-1, a.shape[-1]) for a in state)
    ys = []
    for x in xs_tm:
        s, y = _numpy_step(p, s, x.reshape(-1, x.shape[-1]), NH, eps, stabilized)
        ys.append(y.reshape(*batch, -1))
    final = tuple(a.reshape(*batch, -1) for a in s)
    return final, np.stack(ys) if ys else np.zeros((0, *batch, p.w_q.shape[1]))


def test_step_form_is_the_papers_equations_and_the_stabilizer_changes_nothing():
    with jax.enable_x64(True):
        cell, p = _make()
        xs = _xs(1, (T, B, I))
        s0 = _state(cell, p, (B,))
        cell0 = mlstm(H, NH, eps=0.0)
        zero = MLSTMState(*(np.zeros(a.shape) for a in s0))

        @jax.jit  # the scans and the loop in one compiled program
        def runs(p, xs, s0, zero):
            return (
                gr.scan(cell, p, xs, s0, time_major=True),
                loop_scan(cell, p, xs, s0),
                gr.scan(cell0, p, xs, zero, time_major=True)[1],
            )

        (final, ys), loop, ys0 = to_numpy(runs(p, xs, s0, zero))
        want_s, want_ys = _numpy_scan(p, xs, s0)
        chex.assert_trees_all_close(ys, want_ys, rtol=1e-12, atol=1e-12)
        chex.assert_trees_all_close(tuple(final), want_s, rtol=1e-12, atol=1e-12)
        # gr.scan is also a Python loop of cell.step
        chex.assert_trees_all_close(loop, (final, ys), rtol=1e-12)
        # With eps = 0 the stabilized state is the plain one scaled by exp(-m): the same
        # outputs as the unstabilized equations from a zero state (m = 0).
        _, want_ys = _numpy_scan(p, xs, zero, eps=0.0, stabilized=False)
        chex.assert_trees_all_close(ys0, want_ys, rtol=1e-10, atol=1e-12)


def test_large_input_gates_stay_finite_in_float32():
    """exp(200) overflows float32; the stabilized cell gives the float64 values."""
    cell, p = _make(jnp.float32)
    p = p._replace(b_i=p.b_i + 200.0)
    xs = _xs(1, (B, T, I), jnp.float32)
    _, ys = scan_numpy(cell, p, xs)
    with jax.enable_x64(True):
        zero = tuple(np.zeros((B, n)) for n in (NH * D * D, H, NH))
        _, want = _numpy_scan(p, np.swapaxes(np.asarray(xs, np.float64), 0, 1), zero)
    assert np.all(np.isfinite(ys))
    # float32 rounding, amplified where n^T q nearly cancels
    want = np.swapaxes(want, 0, 1)
    chex.assert_trees_all_close(ys, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("batch, time_major", [((2, 3), True), ((), False)])
def test_both_forms_take_any_batch_axes_and_layout(batch, time_major):
    with jax.enable_x64(True):
        cell, p = _make()
        xs_tm = _xs(1, (T, *batch, I))
        s0 = _state(cell, p, batch)
        want_s, want_ys = _numpy_scan(p, xs_tm, s0)
        xs = xs_tm if time_major else np.moveaxis(xs_tm, 0, -2)
        for s, ys in to_numpy(_both_forms(cell, p, xs, s0, time_major=time_major)):
            ys = ys if time_major else np.moveaxis(ys, -2, 0)
            chex.assert_trees_all_close(ys, want_ys, rtol=1e-11, atol=1e-12)
            chex.assert_trees_all_close(tuple(s), want_s, rtol=1e-11, atol=1e-12)


def test_parallel_gradient_keeps_the_stabilizers_eps_term():
    """The parallel form holds its (T, T) stabilizer constant for the gradient and keeps
    m's own effect through eps (``eps * exp(m - sg(m))``): with a large eps and input
    gates whose stabilizer is large, where that term matters (without it this test
    fails), its gradients still equal the step form's."""
    with jax.enable_x64(True):
        cell, p = _make(eps=0.05)
        p = p._replace(b_i=p.b_i + 4.0, w_i=4.0 * p.w_i)  # exp(m) up to ~e^8
        xs, s0 = _xs(3, (B, T, I)), _state(cell, p, (B,))

        def loss(parallel, p, xs, s0):
            final, ys = gr.scan(cell, p, xs, s0, parallel=parallel)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.cos(a)) for a in final)

        grads = jax.jit(
            lambda p, xs, s0: [
                jax.grad(partial(loss, parallel), (0, 1, 2))(p, xs, s0)
                for parallel in (False, True)
            ]
        )(p, xs, s0)
        chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_parallel_equals_step_form_with_lengths_and_grads_match_finite_differences(chunk_size):
    """Values and gradients (params, inputs, a nonzero initial state) of both forms, with
    seq_lengths and NaN padding; the gradients against float64 central differences; jvp.
    The parallel form whole (one (T, T) form) and in chunks of 3 steps (T = 7: the last
    chunk padded), the state carried from chunk to chunk."""
    with jax.enable_x64(True):
        cell, p = _make(chunk_size=chunk_size)
        xs = _xs(1, (B, T, I))
        lengths = np.array([T, 3, 0])
        pad = np.arange(T)[None, :, None] >= lengths[:, None, None]
        xs = np.where(pad, np.nan, xs)
        s0 = _state(cell, p, (B,))

        def loss(parallel, p, xs, s0):
            final, ys = gr.scan(cell, p, xs, s0, seq_lengths=lengths, parallel=parallel)
            leaves = jax.tree_util.tree_leaves(final)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a**2) for a in leaves), (final, ys)

        @jax.jit
        def both(p, xs, s0, direction):
            """Both forms' values and grads, and the step form's jvp along ``direction``,
            in one compiled program."""
            runs = [
                jax.value_and_grad(partial(loss, par), (0, 1, 2), has_aux=True)(p, xs, s0)
                for par in (False, True)
            ]
            tangent = jax.jvp(lambda *a: loss(False, *a)[0], (p, xs, s0), direction)[1]
            return runs, tangent

        rng = np.random.default_rng(7)
        leaves = jax.tree_util.tree_leaves
        point = to_numpy((p, np.where(pad, 0.0, xs), s0))
        direction = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape), point)
        direction[1][np.broadcast_to(pad, xs.shape)] = 0.0
        runs, _ = to_numpy(both(p, xs, s0, direction))
        (l_step, (final, ys)), g_step = runs[0]
        chex.assert_trees_all_close(runs[1], runs[0], rtol=1e-10, atol=1e-12)
        # each sequence: the numpy loop up to its length, zeros after, state kept
        for b, n in enumerate(lengths):
            s_b = [np.asarray(a[b]) for a in s0]
            want_s, want_ys = _numpy_scan(p, np.asarray(xs[b, :n, None]), s_b)
            chex.assert_trees_all_close(ys[b, :n], want_ys[:, 0], rtol=1e-11, atol=1e-12)
            np.testing.assert_array_equal(ys[b, n:], 0.0)
            chex.assert_trees_all_close(
                tuple(a[b] for a in final), tuple(a[0] for a in want_s), rtol=1e-11
            )
        # gradients: finite (NaN padding never reaches them), zero at the padding, and the
        # directional derivative along a random direction equals central differences
        assert all(np.all(np.isfinite(g)) for g in leaves(g_step))
        np.testing.assert_array_equal(np.where(pad, g_step[1], 0.0), 0.0)

        def dot(a, b):
            return sum(np.vdot(u, v) for u, v in zip(leaves(a), leaves(b)))

        def shifted(h):
            return jax.tree_util.tree_map(lambda a, d: a + h * d, point, direction)

        h = 1e-5
        (plus, _), (minus, _) = (to_numpy(both(*shifted(s), direction)) for s in (h, -h))
        for parallel in (False, True):
            (_, grads) = runs[parallel]
            fd = (plus[parallel][0][0] - minus[parallel][0][0]) / (2 * h)
            np.testing.assert_allclose(dot(grads, direction), fd, rtol=1e-7)
        # forward mode: jax.jvp of the step form is the same directional derivative
        _, tangent = to_numpy(both(*point, direction))
        np.testing.assert_allclose(tangent, dot(g_step, direction), rtol=1e-10)


def test_parallel_form_has_no_loop_and_no_per_step_matrix_memory():
    """All steps at once (up to ``chunk_size``); the final state is a weighted sum, never a
    (T, d, d) stack; past ``chunk_size``, chunks, and no (T, T) intermediate."""
    Tn, Hn = 5, 16  # T * d * d = 5 * 64 is more than any (T, T), (T, d) or (d, d) block
    cell, p = _make(jnp.float32, H=Hn, NH=2)
    xs = _xs(1, (Tn, B, I), jnp.float32)
    s0 = jax.eval_shape(lambda p: cell.initial_state(p, (B,)), p)
    valid = np.ones((Tn, B), bool)
    jaxpr = jax.make_jaxpr(lambda x, s: cell.parallel(p, cell.project(p, x), s, valid))(xs, s0)
    jaxpr = jaxpr.jaxpr
    assert "scan" not in str(jaxpr) and "while" not in str(jaxpr)
    sizes = [math.prod(v.aval.shape) for e in jaxpr.eqns for v in e.outvars]
    assert max(sizes) < B * 2 * Tn * (Hn // 2) ** 2
    # in chunks: one loop over the chunks, nothing (T, T) anywhere, the body included
    Tc = 24
    cell = mlstm(Hn, 2, chunk_size=3)
    xs = _xs(1, (Tc, B, I), jnp.float32)
    valid = np.ones((Tc, B), bool)
    xp = jax.eval_shape(cell.project, p, xs)
    jaxpr = jax.make_jaxpr(lambda xp, s: cell.parallel(p, xp, s, valid))(xp, s0)
    (loop,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    eqns = [*jaxpr.jaxpr.eqns, *loop.params["jaxpr"].jaxpr.eqns]
    sizes = [math.prod(v.aval.shape) for e in eqns for v in e.outvars]
    assert max(sizes) < B * 2 * Tc * Tc  # the whole (T, T) decay matrix of the two heads


def test_jit_with_the_cell_static_compiles_once():
    cell, p = _make(jnp.float32)
    assert make_cell("mlstm", H, num_heads=NH) is cell
    assert cell.options == {"hidden_size": H, "num_heads": NH, "eps": 1e-6, "chunk_size": 32}
    assert make_cell("mlstm", **cell.options) is cell
    f = jax.jit(lambda c, p, xs: gr.scan(c, p, xs)[1], static_argnums=0)
    xs = _xs(1, (B, T, I), jnp.float32)
    ys = f(cell, p, xs)
    chex.assert_trees_all_close(f(mlstm(H, NH), p, xs), ys)
    assert f._cache_size() == 1
    with jax.enable_x64(True):
        zero = tuple(np.zeros((B, n)) for n in (NH * D * D, H, NH))
        _, want = _numpy_scan(p, np.swapaxes(np.asarray(xs, np.float64), 0, 1), zero)
    chex.assert_trees_all_close(ys, np.swapaxes(want, 0, 1), rtol=1e-4, atol=1e-5)
    big = jax.eval_shape(lambda k: make_cell("mlstm", 64).init(k, 3), KEY)
    assert big.w_q.shape == (3, 64)


def test_reverse_resets_and_truncate():
    with jax.enable_x64(True):
        cell, p = _make()
        xs = _xs(1, (B, T, I))
        s0 = _state(cell, p, (B,))
        xs_tm = np.swapaxes(np.asarray(xs), 0, 1)
        resets = np.zeros((B, T), bool)
        resets[:, 4] = True

        def out5(xs):
            return jnp.sum(jnp.sin(gr.scan(cell, p, xs, s0, truncate=3)[1][:, 5]))

        @jax.jit  # every run in one compiled program
        def runs(xs, resets):
            return (
                gr.scan(cell, p, xs, s0, reverse=True)[1],
                gr.scan(cell, p, xs, s0, resets=resets)[1],
                jax.value_and_grad(out5)(xs),
            )

        ys_rev, ys_resets, (value, g) = to_numpy(runs(xs, resets))
        # reverse: the reversed sequence run forwards, outputs in the original order
        _, want = _numpy_scan(p, xs_tm[::-1], s0)
        chex.assert_trees_all_close(ys_rev, np.swapaxes(want[::-1], 0, 1), rtol=1e-11, atol=1e-12)
        # resets: each segment from the initial state
        want = np.concatenate([_numpy_scan(p, xs_tm[:4], s0)[1], _numpy_scan(p, xs_tm[4:], s0)[1]])
        chex.assert_trees_all_close(ys_resets, np.swapaxes(want, 0, 1), rtol=1e-11, atol=1e-12)
        # truncate=3 (cuts before steps 3 and 6): the same forward pass; the output of
        # step 5 has gradients for inputs 3, 4, 5 only
        want = _numpy_scan(p, xs_tm, s0)[1][5]
        np.testing.assert_allclose(value, np.sum(np.sin(want)), rtol=1e-12)
        np.testing.assert_array_equal(g[:, :3], 0.0)
        np.testing.assert_array_equal(g[:, 6:], 0.0)
        assert np.all(np.abs(g[:, 3:6]) > 0)


def test_stack_of_two_layers_is_two_scans():
    with jax.enable_x64(True):
        cell = mlstm(H, NH)
        stack = gr.stack(cell, 2)
        params = (_make(I=I, seed=1)[1], _make(I=H, seed=2)[1])
        xs = _xs(1, (B, T, I))
        finals, ys = jax.jit(stack.apply)(params, xs)
        zero = tuple(np.zeros((B, n)) for n in (NH * D * D, H, NH))
        s1, h1 = _numpy_scan(params[0], np.swapaxes(np.asarray(xs), 0, 1), zero)
        s2, h2 = _numpy_scan(params[1], h1, zero)
        chex.assert_trees_all_close(tuple(finals[0]), s1, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(tuple(finals[1]), s2, rtol=1e-11, atol=1e-12)
        chex.assert_trees_all_close(ys, np.swapaxes(h2, 0, 1), rtol=1e-11, atol=1e-12)


def test_gates_and_output_agree_with_the_step():
    with jax.enable_x64(True):
        cell, p = _make()
        x = _xs(1, (B, I))
        s0 = _state(cell, p, (B,))

        @jax.jit
        def pieces(p, s0, x):
            xp = cell.project(p, x)
            s1, y = cell.recur(p, s0, xp)
            return s1, y, cell.output(p, s1, xp), cell.gates(p, s0, xp)

        s1, y, y_out, g = pieces(p, s0, x)
        chex.assert_trees_all_close(y_out, y, rtol=1e-14)
        x, P = np.asarray(x), {f: np.asarray(getattr(p, f)) for f in p._fields}
        it, ft, ot = (x @ P[f"w_{g}"] + P[f"b_{g}"] for g in "ifo")
        np.testing.assert_allclose(g["forget"], 1 / (1 + np.exp(-ft)), rtol=1e-12)
        np.testing.assert_allclose(g["input"], np.exp(it - np.asarray(s1.m)), rtol=1e-12)
        np.testing.assert_allclose(g["output"], 1 / (1 + np.exp(-ot)), rtol=1e-12)
        assert g["input"].shape == (B, NH) and g["output"].shape == (B, H)
        assert cell.tanh_gates == ()


def test_gate_statistics_and_state_gradient_norms():
    cell, p = _make(jnp.float32)
    xs = _xs(1, (B, T, I), jnp.float32)

    @jax.jit  # both diagnostics in one compiled program
    def diagnostics(p, xs):
        loss = lambda final, ys: jnp.sum(ys[-1] ** 2)  # noqa: E731
        return dg.gate_statistics(cell, p, xs), dg.state_gradient_norms(cell, p, xs, loss)

    stats, norms = to_numpy(diagnostics(p, xs))
    for name in ("input", "forget", "output"):
        assert stats[name].shape == (T,)
        assert np.all((stats[name] >= 0) & (stats[name] <= 1))
    # the forget gate sigmoid(f~) at step 1, by hand
    ft = np.asarray(xs[:, 0]) @ np.asarray(p.w_f) + np.asarray(p.b_f)
    np.testing.assert_allclose(stats["forget"][0], np.mean(1 / (1 + np.exp(-ft))), rtol=1e-5)
    assert isinstance(norms, MLSTMState)
    for leaf in norms:
        assert leaf.shape == (T + 1,) and np.all(np.isfinite(leaf))
    assert float(norms.c[-1]) > 0 and float(norms.c[0]) > 0


def test_init_layout_and_biases():
    cell = mlstm(12, 3)
    p = to_numpy(jax.jit(cell.init, static_argnums=(1, 2))(KEY0, 5, jnp.float32))
    assert isinstance(p, MLSTMParams)
    shapes = {f: getattr(p, f).shape for f in p._fields}
    assert shapes == {
        "w_q": (5, 12),
        "w_k": (5, 12),
        "w_v": (5, 12),
        "w_i": (5, 3),
        "b_i": (3,),
        "w_f": (5, 3),
        "b_f": (3,),
        "w_o": (5, 12),
        "b_o": (12,),
    }
    np.testing.assert_allclose(p.b_f, [3.0, 4.5, 6.0])
    np.testing.assert_array_equal(p.w_i, 0.0)
    np.testing.assert_array_equal(p.w_f, 0.0)
    np.testing.assert_array_equal(p.b_o, 0.0)
    assert 0 < float(np.std(p.b_i)) < 0.5
    assert 0.5 < float(np.std(p.w_q)) * math.sqrt(5) < 2.0  # variance 1 / fan-in
    s = jax.eval_shape(lambda p: cell.initial_state(p, (2, 4)), p)
    assert (s.c.shape, s.n.shape, s.m.shape) == ((2, 4, 3 * 16), (2, 4, 12), (2, 4, 3))
    bf16 = jax.eval_shape(lambda k: cell.init(k, 5, jnp.bfloat16), KEY)
    assert all(a.dtype == jnp.bfloat16 for a in bf16)


def test_bad_sizes_and_options_raise_clear_errors():
    cell, p = _make(jnp.float32)
    x = np.ones((B, T, I), np.float32)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        mlstm(10, 4)
    with pytest.raises(ValueError, match="num_heads"):
        mlstm(8, 0)
    with pytest.raises(ValueError, match="eps"):
        mlstm(8, eps=-1.0)
    with pytest.raises(TypeError, match="eps"):
        mlstm(8, eps="small")
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        mlstm(8, chunk_size=0)
    with pytest.raises(ValueError, match="input_size"):
        cell.init(KEY0, 0)
    with pytest.raises(ValueError, match="features"):
        jax.eval_shape(partial(gr.scan, cell), p, np.ones((B, T, I + 1), np.float32))
    with pytest.raises(TypeError, match="floating point"):
        jax.eval_shape(partial(gr.scan, cell), p, np.ones((B, T, I), np.int32))
    other = jax.eval_shape(lambda k: mlstm(2 * H, NH).init(k, I), KEY)
    with pytest.raises(ValueError, match=r"params.w_q has shape \(3, 16\).*hidden_size=8"):
        jax.eval_shape(partial(gr.scan, cell), other, x)
    with pytest.raises(ValueError, match="params.w_i"):
        jax.eval_shape(partial(gr.scan, mlstm(H, 4)), p, x)
    lstm_p = jax.eval_shape(lambda k: gr.lstm(H).init(k, I), KEY)
    with pytest.raises(TypeError, match="MLSTMParams"):
        jax.eval_shape(partial(gr.scan, cell), lstm_p, x)
    bad = MLSTMState(
        np.zeros((B, 5), np.float32), np.zeros((B, H), np.float32), np.zeros((B, NH), np.float32)
    )
    with pytest.raises(ValueError, match="initial_state"):
        jax.eval_shape(partial(gr.scan, cell), p, x, bad)
    with pytest.raises(ValueError, match="state"):
        jax.eval_shape(cell.step, p, bad, x[:, 0])


# ------------------------------------------------------------- the xlstm package (PyTorch)


def _reference(p, xs, NH, state0=None):
    """xlstm's ``parallel_stabilized_simple`` and ``recurrent_step_stabilized_simple`` fed
    with our q, k, v, i~, f~ (from numpy), the output gate applied as ours.

    Returns ``(y_parallel, y_recurrent, (c, n, m) after the last recurrent step)``, outputs
    ``(B, T, H)``; the recurrent steps start from ``state0`` (zeros if None).
    """
    torch = pytest.importorskip("torch", reason="torch is not installed")
    backends = pytest.importorskip(
        "xlstm.blocks.mlstm.backends", reason="xlstm is not installed (pip install xlstm)"
    )
    P = {f: np.asarray(getattr(p, f)) for f in p._fields}
    xs = np.asarray(xs)
    Bn, Tn, _ = xs.shape
    Hn = P["w_q"].shape[1]
    d = Hn // NH

    def heads(a):  # (B, T, NH*X) -> (B, NH, T, X)
        return torch.from_numpy(np.ascontiguousarray(a.reshape(Bn, Tn, NH, -1).swapaxes(1, 2)))

    def merge(h):  # (B, NH, T, d) -> (B, T, H)
        return h.numpy().swapaxes(1, 2).reshape(Bn, Tn, Hn)

    q, k, v = (heads(xs @ P[w]) for w in ("w_q", "w_k", "w_v"))
    ig, fg = heads(xs @ P["w_i"] + P["b_i"]), heads(xs @ P["w_f"] + P["b_f"])
    o = 1 / (1 + np.exp(-(xs @ P["w_o"] + P["b_o"])))
    y_par = o * merge(backends.parallel_stabilized_simple(q, k, v, ig, fg))
    if state0 is None:
        c = torch.zeros((Bn, NH, d, d), dtype=q.dtype)
        n, m = (
            torch.zeros((Bn, NH, d, 1), dtype=q.dtype),
            torch.zeros((Bn, NH, 1, 1), dtype=q.dtype),
        )
    else:
        c, n, m = (torch.from_numpy(np.array(a)) for a in state0)
        c, n, m = c.reshape(Bn, NH, d, d), n.reshape(Bn, NH, d, 1), m.reshape(Bn, NH, 1, 1)
    hs = []
    for t in range(Tn):
        step = slice(t, t + 1)
        h, (c, n, m) = backends.recurrent_step_stabilized_simple(
            c, n, m, q[:, :, step].clone(), k[:, :, step].clone(), v[:, :, step].clone(),
            ig[:, :, step], fg[:, :, step],
        )  # fmt: skip
        hs.append(h)
    y_rec = o * merge(torch.cat(hs, dim=2))
    final = tuple(a.numpy().reshape(Bn, -1) for a in (c, n, m))
    return y_par, y_rec, final


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_the_xlstm_backends(dtype):
    """xlstm's recurrent step starts at m = 0 (our zero state); its parallel form is ours
    from m_0 = -inf (no initial-state term in its stabilizer). All params random, so that
    the gates move with the input (the init sets their weights to zero, as xlstm does)."""
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        Bn, Tn, In, Hn, NHn = 2, 64, 4, 8, 2
        cell, p = _make(dt, H=Hn, NH=NHn, I=In)
        xs = _xs(2, (Bn, Tn, In), dt)
        with one_torch_thread():
            y_par, y_rec, final = _reference(p, xs, NHn)
        zero = MLSTMState(
            *(
                np.zeros(a.shape, dt)
                for a in jax.eval_shape(lambda p: cell.initial_state(p, (Bn,)), p)
            )
        )
        no_init = zero._replace(m=np.full(zero.m.shape, -np.inf, dt))
        tol = {"float32": 1e-4, "float64": 1e-10}[dtype]
        scale = np.abs(y_rec).max()
        from_zero, from_no_init = (to_numpy(_both_forms(cell, p, xs, s)) for s in (zero, no_init))
        for (state, ys), (_, ys_no_init) in zip(from_zero, from_no_init):
            chex.assert_trees_all_close(ys, y_rec, atol=tol * scale, rtol=0)
            chex.assert_trees_all_close(tuple(state), final, atol=tol * 10, rtol=tol)
            chex.assert_trees_all_close(ys_no_init, y_par, atol=tol * scale, rtol=0)
        # from a nonzero initial state (the recurrent step takes one)
        s0 = _state(cell, p, (Bn,), dtype=dt)
        with one_torch_thread():
            _, y_rec, final = _reference(p, xs, NHn, s0)
        for state, ys in to_numpy(_both_forms(cell, p, xs, s0)):
            chex.assert_trees_all_close(ys, y_rec, atol=tol * np.abs(y_rec).max(), rtol=0)
            chex.assert_trees_all_close(tuple(state), final, atol=tol * 10, rtol=tol)
