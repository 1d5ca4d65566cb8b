"""gatedrnn.diagnostics against closed forms, dense Jacobians and a Python-loop oracle."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, sigmoid, to_numpy

import gatedrnn as gr
from gatedrnn import diagnostics as dg
from gatedrnn.cells import CELLS, make_cell

# Values against loops and closed forms, not speed or memory: compiled without most XLA
# optimizations (tests/conftest.py::fast_compile; all pass either way).
pytestmark = pytest.mark.usefixtures("fast_compile")
F64 = jnp.float64


@pytest.fixture(autouse=True)
def _x64():
    """Every test here runs in float64 (only inside this module)."""
    with jax.enable_x64(True):
        yield


@functools.cache
def _compiled_init(cell, inp: int, dtype):
    """``cell.init`` as one program per cell (cells are equal by value), input size and
    dtype: run eagerly, its jax.random and qr operations would each compile."""
    return jax.jit(lambda key: cell.init(key, inp, dtype))


def _init(cell, seed: int, inp: int, dtype=F64):
    """``cell.init(PRNGKey(seed), inp, dtype)``, its leaves as NumPy arrays."""
    return to_numpy(_compiled_init(cell, inp, dtype)(jax.random.PRNGKey(seed)))


def _sum_last(final, ys):
    """A loss on the last output: L = sum(y_T)."""
    return jnp.sum(ys[-1])


# --------------------------------------------------------------------- closed forms


def test_linear_rnn_with_scaled_identity_gives_s_to_the_distance():
    H, T = 4, 12
    cell = gr.vanilla(H, activation="linear")
    p0 = _init(cell, 0, 2)  # the shapes of the decay-profile test below
    xs = normal(1, (2, T, 2), np.float64)
    u = np.arange(1.0, H + 1)

    def loss(final, ys):  # L = <u, h_T> has dL/dh_t = s^(T-t) u: ||dL/dh_t|| = s^(T-t) ||u||
        return jnp.sum(final * u)

    for s in (0.5, 0.9, 1.0, 1.1):
        p = p0._replace(w_h=s * np.eye(H))
        want = s ** (T - np.arange(T + 1.0))
        for method in ("dense", "power"):
            got = dg.jacobian_norms(cell, p, xs, method=method, num_iters=3)
            chex.assert_trees_all_close(got, np.broadcast_to(want[:, None], got.shape), rtol=1e-12)
        norms = dg.state_gradient_norms(cell, p, xs, loss)
        chex.assert_trees_all_close(norms, want * np.sqrt(2) * np.linalg.norm(u), rtol=1e-12)
        assert dg.decay_factor(norms) == pytest.approx(s, rel=1e-10)


def test_lstm_without_recurrent_weight_has_cell_jacobian_prod_of_forget_gates():
    H, T, I = 5, 9, 3
    cell = gr.lstm(H, forget_bias=1.5)
    p = _init(cell, 2, I)
    p = to_numpy(p)._replace(w_h=np.zeros(p.w_h.shape))
    xs = normal(3, (2, T, I), np.float64)
    # Oracle written out here: f_t = sigmoid(x_t w_xf + b_f), the f block is [H:2H].
    f = sigmoid(xs @ p.w_x[:, H : 2 * H] + p.b[H : 2 * H])  # (2, T, H)
    J = np.asarray(dg.jacobians(cell, p, xs, leaf="c"))  # (T+1, 2, H, H)
    for t in (0, 4, T):
        want = np.prod(f[:, t:], axis=1)[:, :, None] * np.eye(H)  # diagonal matrices
        chex.assert_trees_all_close(J[t], want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_without_recurrent_weight_has_jacobian_prod_of_update_gates(reset_after):
    H, T, I = 4, 9, 3  # the GRU of the state-gradient tests below
    cell = gr.gru(H, reset_after=reset_after)
    p = _init(cell, 4, I)
    p = to_numpy(p)._replace(w_h=np.zeros(p.w_h.shape), b_h=normal(5, (3 * H,), np.float64, 0.5))
    xs = normal(6, (2, T, I), np.float64)
    z = sigmoid(xs @ p.w_x[:, H : 2 * H] + p.b_x[H : 2 * H] + p.b_h[H : 2 * H])
    J = np.asarray(dg.jacobians(cell, p, xs))
    want = np.prod(z, axis=1)[:, :, None] * np.eye(H)  # diagonal matrices
    chex.assert_trees_all_close(J[0], want, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ power vs dense


@pytest.mark.parametrize(
    ("cell", "leaf"),
    [
        (gr.lstm(5), None),
        (gr.lstm(5), "c"),
    ],
    ids=["lstm-state", "lstm-c"],
)
def test_power_iteration_matches_dense_spectral_norms(cell, leaf):
    p = _init(cell, 7, 3)
    p = jax.tree_util.tree_map(lambda w: 1.5 * np.asarray(w), p)  # less regular Jacobians
    # two batch axes; jax.random's draw, as before: the convergence in 100 iterations
    # depends on the gap of the top two singular values, so on the data
    xs = jax.random.normal(jax.random.PRNGKey(8), (2, 1, 15, 3), F64)
    dense = np.asarray(dg.jacobian_norms(cell, p, xs, leaf=leaf, method="dense"))
    power = np.asarray(dg.jacobian_norms(cell, p, xs, leaf=leaf, num_iters=100, chunk=8))
    assert dense.shape == power.shape == (16, 2, 1)
    # Power iteration approaches the norm from below; a small gap between the top two
    # singular values slows it, so allow 0.1%.
    assert np.all(power <= dense * (1 + 1e-12))
    chex.assert_trees_all_close(power, dense, rtol=1e-3)
    chex.assert_trees_all_close(dense[-1], 1.0, rtol=1e-12)


def test_dense_jacobian_matches_finite_differences():
    cell = gr.gru(3)
    p = _init(cell, 9, 2)
    xs = normal(10, (6, 2), np.float64)  # one sequence, no batch
    h0 = normal(11, (3,), np.float64, 0.3)
    J = np.asarray(dg.jacobians(cell, p, xs, h0))  # (7, 3, 3)
    eps = 1e-6
    final = jax.jit(lambda h: gr.scan(cell, p, xs, h)[0])  # one compile for the 6 scans
    for j in range(3):
        e = eps * np.eye(3)[j]
        hp, hm = np.asarray(final(h0 + e)), np.asarray(final(h0 - e))
        chex.assert_trees_all_close(J[0][:, j], (hp - hm) / (2 * eps), rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------- state gradients


@pytest.mark.parametrize(
    "cell", [make_cell(name, 4) for name in sorted(CELLS)], ids=lambda c: c.name
)
def test_state_gradients_match_a_python_loop_oracle(cell):
    T = 5
    p = _init(cell, 12, 3)
    xs = normal(13, (2, T, 3), np.float64)
    w = normal(14, (T, 2, 4), np.float64)

    def loss_fn(final, ys):  # uses every output and the final state
        return jnp.sum(w * jnp.tanh(ys)) + jnp.sum(jax.tree_util.tree_leaves(final)[-1] ** 2)

    loss, grads = dg.state_gradients(cell, p, xs, loss_fn)

    # Oracle: a Python loop of cell.step with a perturbation d_t added to each state s_t
    # (the output of step t read from the perturbed s_t); dL/ds_t = dL/dd_t at d = 0.
    @jax.jit
    def oracle(p, xs):
        def loss_of(perts):
            s = jax.tree_util.tree_map(jnp.add, cell.initial_state(p, (2,)), perts[0])
            ys = []
            for t in range(T):
                s, _ = cell.step(p, s, xs[:, t])
                s = jax.tree_util.tree_map(jnp.add, s, perts[t + 1])
                ys.append(cell.output(p, s, cell.project(p, xs[:, t])))
            return loss_fn(s, jnp.stack(ys))

        zero = jax.tree_util.tree_map(jnp.zeros_like, cell.initial_state(p, (2,)))
        loss, wants = jax.value_and_grad(loss_of)([zero] * (T + 1))
        return wants, loss

    wants, want_loss = to_numpy(oracle(p, xs))
    grads = to_numpy(grads)
    for t, want in enumerate(wants):
        jax.tree_util.tree_map(
            lambda g, w_, t=t: chex.assert_trees_all_close(
                g[t], w_, rtol=1e-10, atol=1e-14, custom_message=f"t={t}"
            ),
            grads,
            want,
        )
    chex.assert_trees_all_close(loss, want_loss, rtol=1e-12, atol=1e-13)


def test_loss_args_change_the_loss_without_a_new_loss_function():
    cell = gr.gru(3)
    p = _init(cell, 23, 2)
    xs = normal(24, (2, 6, 2), np.float64)

    def readout(final, ys, w):
        return jnp.sum(final @ w)

    w1, w2 = normal(25, (3,), np.float64), normal(26, (3,), np.float64)
    l1, g1 = to_numpy(dg.state_gradients(cell, p, xs, readout, loss_args=(w1,)))
    l2, g2 = to_numpy(dg.state_gradients(cell, p, xs, readout, loss_args=(w2,)))
    chex.assert_trees_all_close(g1[-1], np.broadcast_to(w1, (2, 3)), rtol=1e-12)
    chex.assert_trees_all_close(g2[-1], np.broadcast_to(w2, (2, 3)), rtol=1e-12)
    final = np.asarray(jax.jit(lambda p: gr.scan(cell, p, xs)[0])(p))  # eagerly: 5 compiles
    chex.assert_trees_all_close(l2, np.sum(final @ w2), rtol=1e-12)
    with pytest.raises(TypeError, match="loss_args must be a tuple"):
        dg.state_gradients(cell, p, xs, readout, loss_args=w1)


def test_lstm_norms_report_h_and_c_apart_and_per_example():
    cell = gr.lstm(4)
    p = _init(cell, 15, 3)
    xs = normal(16, (3, 10, 3), np.float64)
    norms = dg.state_gradient_norms(cell, p, xs, _sum_last)
    assert isinstance(norms, gr.LSTMState)
    assert norms.h.shape == norms.c.shape == (11,)
    per = to_numpy(dg.state_gradient_norms(cell, p, xs, _sum_last, per_example=True))
    chex.assert_shape(per.h, (11, 3))
    chex.assert_trees_all_close(np.linalg.norm(per.c, axis=1), norms.c, rtol=1e-12)
    # Time-major input gives the same numbers.
    tm = dg.state_gradient_norms(cell, p, np.swapaxes(xs, 0, 1), _sum_last, time_major=True)
    chex.assert_trees_all_close(tm.h, norms.h, rtol=1e-12)


# ------------------------------------------------------------------ gate statistics


def test_gate_statistics_match_gates_computed_by_hand():
    H, I = 3, 2
    cell = gr.lstm(H, forget_bias=3.0)
    p = _init(cell, 17, I)
    p = to_numpy(p)._replace(w_h=np.zeros(p.w_h.shape))
    xs = normal(18, (2, 5, I), np.float64)
    st = dg.gate_statistics(cell, p, xs, saturation=0.05)
    f = sigmoid(xs @ p.w_x[:, H : 2 * H] + p.b[H : 2 * H])
    chex.assert_trees_all_close(st["forget"], np.mean(f, axis=(0, 2)), rtol=1e-12)
    high = np.mean(f > 0.95, axis=(0, 2))
    assert 0 < float(np.mean(high)) < 1  # some units saturated, not all
    chex.assert_trees_all_close(st["forget_saturated_high"], high, rtol=1e-12)
    chex.assert_shape(st["saturated"], (5,))
    g = gr.gru(H)
    pg = _init(g, 19, I)
    pg = to_numpy(pg)._replace(w_h=np.zeros(pg.w_h.shape))
    sg = dg.gate_statistics(g, pg, xs)
    z = sigmoid(xs @ pg.w_x[:, H : 2 * H] + pg.b_x[H : 2 * H] + pg.b_h[H : 2 * H])
    chex.assert_trees_all_close(sg["update"], np.mean(z, axis=(0, 2)), rtol=1e-12)

    v = gr.vanilla(H)
    pv = _init(v, 20, I)
    sv = dg.gate_statistics(v, pv, 10 * xs)  # large inputs saturate tanh
    hs = np.asarray(dg.state_trajectory(v, pv, 10 * xs))[1:]
    chex.assert_trees_all_close(sv["saturated"], np.mean(np.abs(hs) > 0.95, axis=(1, 2)))
    assert float(np.mean(sv["saturated"])) > 0.5


# the cells and input size of the state-gradient tests above (one compiled init for both)
GATED = [c for c in (make_cell(n, 4) for n in sorted(CELLS)) if c.gates is not None]


@pytest.mark.parametrize("cell", GATED, ids=lambda c: c.name)
def test_gate_statistics_of_every_gated_cell_equal_a_loop_of_its_gates(cell):
    """For every registered cell that reports gates (Cell.gates): the means and saturated
    fractions are those of cell.gates evaluated step by step along a Python loop of
    cell.step, and each gate lies in its range ([0, 1], or [-1, 1] for tanh_gates)."""
    eps = 0.05
    p = _init(cell, 23, 3)
    xs = 3.0 * normal(24, (2, 5, 3), np.float64)
    st = dg.gate_statistics(cell, p, xs, saturation=eps)

    @jax.jit  # the Python loop, compiled once
    def loop(p, xs):
        s = cell.initial_state(p, (2,))
        per_step = []
        for t in range(xs.shape[1]):
            xp = cell.project(p, xs[:, t])
            per_step.append(cell.gates(p, s, xp))
            s, _ = cell.recur(p, s, xp)
        return per_step

    per_step = to_numpy(loop(p, xs))
    names = sorted(per_step[0])
    assert names and set(cell.tanh_gates) <= set(names)
    sat = []
    for name in names:
        g = np.stack([gates[name] for gates in per_step])  # (T, batch, n)
        lo = -1.0 if name in cell.tanh_gates else 0.0
        assert float(g.min()) >= lo - 1e-12 and float(g.max()) <= 1.0 + 1e-12, name
        chex.assert_trees_all_close(st[name], np.mean(g, axis=(1, 2)), rtol=1e-10)
        sat.append(np.abs(g) > 1 - eps if name in cell.tanh_gates else (g < eps) | (g > 1 - eps))
    want = np.mean(np.concatenate(sat, axis=-1), axis=(1, 2))
    chex.assert_trees_all_close(st["saturated"], want, rtol=1e-10)


def test_state_trajectory_ends_at_the_final_state_of_scan():
    cell = gr.lstm(3)
    p = _init(cell, 21, 2)
    xs = normal(22, (2, 5, 2), np.float64)
    traj = to_numpy(dg.state_trajectory(cell, p, xs))
    final, ys = to_numpy(jax.jit(lambda p: gr.scan(cell, p, xs))(p))  # one compile
    chex.assert_trees_all_close(traj.c[-1], final.c)
    chex.assert_trees_all_close(traj.h[1:], np.swapaxes(ys, 0, 1))
    chex.assert_trees_all_close(traj.h[0], 0.0)


def test_norms_of_tiny_float32_gradients_do_not_underflow():
    # With W_h = 0.01 I the gradient at distance k is 0.01^k: 1e-20 at k = 10, whose
    # square (1e-40) underflows float32. The norms must still follow the law.
    with jax.enable_x64(False):
        H, T = 4, 12
        cell = gr.vanilla(H, activation="linear")
        p = _init(cell, 0, 2, jnp.float32)
        p = p._replace(w_h=0.01 * np.eye(H, dtype=np.float32))
        xs = normal(1, (3, T, 2), np.float64).astype(np.float32)
        norms = dg.state_gradient_norms(cell, p, xs, lambda final, ys: jnp.sum(final))
        assert norms.dtype == jnp.float32
        want = 0.01 ** (T - np.arange(T + 1.0)) * np.sqrt(3 * H)
        chex.assert_trees_all_close(norms, want, rtol=1e-5)
        power = np.asarray(dg.jacobian_norms(cell, p, xs, num_iters=2))
        chex.assert_trees_all_close(power[:, 0], want / np.sqrt(3 * H), rtol=1e-5)


# ---------------------------------------------------------------------- summaries


def test_decay_factor_and_vanishing_distance_on_a_geometric_curve():
    gamma, T = 0.8, 100
    norms = 3.0 * gamma ** (T - np.arange(T + 1.0))
    assert dg.decay_factor(norms) == pytest.approx(gamma, rel=1e-12)
    k = dg.vanishing_distance(norms, 1e-6)
    assert gamma**k < 1e-6 <= gamma ** (k - 1)
    assert dg.vanishing_distance(np.ones(T + 1)) is None
    # Underflowed (zero) and non-finite entries are ignored by the fit.
    norms[:10] = 0.0
    norms[10] = np.nan
    assert dg.decay_factor(norms) == pytest.approx(gamma, rel=1e-12)
    assert np.isnan(dg.decay_factor(np.zeros(5)))


# ------------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors():
    cell = gr.lstm(3)
    p = _init(cell, 0, 2)
    xs = normal(1, (2, 4, 2), np.float64)
    with pytest.raises(ValueError, match="scalar"):
        dg.state_gradients(cell, p, xs, lambda final, ys: ys)
    with pytest.raises(TypeError, match="callable"):
        dg.state_gradients(cell, p, xs, 3.0)
    with pytest.raises(ValueError, match="at least 2 axes"):
        dg.state_gradient_norms(cell, p, xs[0, 0], _sum_last)
    with pytest.raises(ValueError, match="input_size=2"):
        dg.jacobian_norms(cell, p, normal(1, (2, 4, 5), np.float64))
    with pytest.raises(ValueError, match=r"leaf='x'.*\['h', 'c'\]"):
        dg.jacobians(cell, p, xs, leaf="x")
    with pytest.raises(ValueError, match="single part"):
        g = gr.gru(3)
        dg.jacobians(g, _init(g, 0, 2), xs, leaf="h")
    with pytest.raises(ValueError, match="method"):
        dg.jacobian_norms(cell, p, xs, method="svd")
    with pytest.raises(ValueError, match="num_iters"):
        dg.jacobian_norms(cell, p, xs, num_iters=0)
    with pytest.raises(ValueError, match="chunk"):
        dg.jacobian_norms(cell, p, xs, chunk=0)
    with pytest.raises(ValueError, match="saturation"):
        dg.gate_statistics(cell, p, xs, saturation=0.7)
    with pytest.raises(ValueError, match="initial_state"):
        dg.state_gradients(cell, p, xs, _sum_last, initial_state=jnp.zeros(3, F64))
    with pytest.raises(ValueError, match="ratio"):
        dg.vanishing_distance(np.ones(4), ratio=2.0)
    with pytest.raises(ValueError, match="1-D curve"):
        dg.decay_factor(np.ones((3, 3)))
    with pytest.raises(TypeError, match="Cell"):
        dg.state_gradients("lstm", p, xs, _sum_last)


def test_readme_diagnostics_example_runs():
    from _readme import readme_block

    with jax.enable_x64(False):
        scope: dict = {}
        exec(readme_block("diagnostics"), scope)
    assert scope["norms"].h.shape == scope["norms"].c.shape == (101,)
    chex.assert_shape(scope["jac"], (21, 4))
    assert 0 < scope["gamma"] < 1.5
    chex.assert_shape(scope["gates"]["forget"], (100,))


def test_decay_profile_is_the_closed_form_for_a_linear_rnn_and_the_chain_for_an_lstm():
    """W_h = s I, linear: ||dL/dh_t|| = C s^(T - t), so the factor is s and the vanishing
    distance the first d with s^d < ratio; an LSTM's whole-state norm is sqrt(h^2 + c^2)."""
    with jax.enable_x64(True):
        s, T = 0.5, 12
        cell = gr.vanilla(4, activation="linear")
        p = _init(cell, 0, 2)._replace(w_h=s * np.eye(4))
        xs = normal(1, (3, T, 2), np.float64)
        prof = dg.decay_profile(cell, p, xs, ratio=1e-3, floor=1e-300)
        np.testing.assert_allclose(prof["relative"], s ** np.arange(T, -1, -1), rtol=1e-12)
        assert abs(prof["decay_factor"] - s) < 1e-12 and prof["vanish_distance"] == 10
        lstm = gr.lstm(4)
        pl = _init(lstm, 2, 2)
        prof = dg.decay_profile(lstm, pl, xs)
        norms = dg.state_gradient_norms(lstm, pl, xs, dg.last_output_loss)
        total = np.sqrt(np.asarray(norms.h) ** 2 + np.asarray(norms.c) ** 2)
        np.testing.assert_allclose(prof["grad_norm"], total, rtol=1e-12)
        np.testing.assert_allclose(prof["norms"].c, norms.c, rtol=1e-12)
        assert prof["decay_factor"] == dg.decay_factor(total)
        assert prof["vanish_distance"] == dg.vanishing_distance(total, 1e-6)
