"""The LRU (Orvieto et al. 2023): the step and parallel forms follow the paper's equations
(an independent complex128 loop), agree with memax's LRU given the same weights, and work
with every option of ``gr.scan`` and the diagnostics."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import to_numpy
from jax.test_util import check_grads

import gatedrnn as gr
from gatedrnn import diagnostics
from gatedrnn.cells import make_cell
from gatedrnn.cells.lru import LRUInput, LRUParams, LRUState, lru

ROOT = Path(__file__).resolve().parents[1]
I, H, N, T = 3, 5, 4, 9


@functools.cache
def _setup(inp=I, hidden=H, state=N, dtype=jnp.float64, **options):
    """Cell and params drawn with the cell's own init, once per configuration (every new
    shape of a ``jax.random`` draw is a compilation)."""
    cell = lru(hidden, state, **options)
    init = jax.jit(cell.init, static_argnums=(1, 2))  # one compile, not one per draw
    return cell, init(jax.random.PRNGKey(0), inp, jnp.dtype(dtype))


def _normal(shape, seed, dtype=np.float64, scale=1.0):
    """Test inputs from numpy's generator (no compilation), as a JAX array of ``dtype``."""
    return jax.device_put(
        np.asarray(scale * np.random.default_rng(seed).standard_normal(shape), dtype)
    )


def _paper_loop(params, xs_tm, h0):
    """The paper's equations step by step in complex128 numpy (xs time-major (T, ..., I)).

    lambda = exp(-exp(nu_log) + i exp(theta_log)); h_t = lambda h_{t-1} + gamma (x_t B);
    y_t = Re(h_t C) + D x_t. Returns (h_T complex, ys (T, ..., H)).
    """
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    lam = np.exp(-np.exp(p.nu_log) + 1j * np.exp(p.theta_log))
    B = (p.b_re + 1j * p.b_im) * np.exp(p.gamma_log)[None, :]
    C = p.c_re + 1j * p.c_im
    h = np.asarray(h0.re, np.float64) + 1j * np.asarray(h0.im, np.float64)
    ys = []
    for x in np.asarray(xs_tm, np.float64):
        h = lam * h + x @ B
        skip = x * p.d if p.d.ndim == 1 else x @ p.d
        ys.append((h @ C).real + skip)
    return h, np.stack(ys) if ys else np.zeros((0, *h.shape[:-1], C.shape[1]))


def _frozen(a):
    """A numpy array as nested tuples (hashable: a static argument of ``jax.jit``)."""
    return tuple(map(_frozen, a)) if np.ndim(a) else np.asarray(a).item()


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("seq_lengths", "resets", "reverse", "time_major", "parallel", "truncate"),
)
def _jit_scan(cell, params, xs, h0, seq_lengths=None, resets=None, **options):
    if seq_lengths is not None:
        options["seq_lengths"] = np.array(seq_lengths)
    if resets is not None:
        options["resets"] = np.array(resets)
    return gr.scan(cell, params, xs, h0, **options)


def _scan(cell, params, xs, h0=None, **options):
    """``gr.scan`` under ``jax.jit`` (eager, the parallel form runs op by op: slow), one
    program per cell, shapes and options for the whole module; ``seq_lengths`` and
    ``resets`` stay concrete arrays (constants of the program), as when closed over."""
    for name in ("seq_lengths", "resets"):
        if options.get(name) is not None:
            options[name] = _frozen(options[name])
    return to_numpy(_jit_scan(cell, params, xs, h0, **options))


@functools.partial(jax.jit, static_argnums=0, static_argnames=("time_major",))
def _both_forms(cell, params, xs, h0, time_major=False):
    """``gr.scan`` in the step form and in the parallel form, one program for both (shared
    by the two cases of a test): ``((h, ys) step, (h, ys) parallel)``."""
    return tuple(
        gr.scan(cell, params, xs, h0, parallel=p, time_major=time_major) for p in (False, True)
    )


def _random_state(batch, n=N, seed=7):
    re, im = 0.5 * np.random.default_rng(seed).standard_normal((2, *batch, n))
    return LRUState(re=jax.device_put(re), im=jax.device_put(im))


def _complex(state):
    return np.asarray(state.re) + 1j * np.asarray(state.im)


@functools.partial(jax.jit, static_argnums=0)
def _one_step(cell, params, h0, x):
    """recur's y, output(state reached), and step's y for one step."""
    xp = cell.project(params, x)
    s1, y1 = cell.recur(params, h0, xp)
    return y1, cell.output(params, s1, xp), cell.step(params, h0, x)[1]


@pytest.mark.parametrize("parallel", [False, True], ids=["step", "parallel"])
@pytest.mark.parametrize(
    "inp, batch, time_major",
    [(I, (2,), False), (I, (2,), True), (H, (2, 3), False), (I, (), False)],
    ids=["dense_d", "time_major", "elementwise_d_two_batch_axes", "no_batch"],
)
def test_scan_follows_the_papers_equations_float64(parallel, inp, batch, time_major):
    with jax.enable_x64(True):
        cell, params = _setup(inp=inp)
        assert params.d.shape == ((H,) if inp == H else (inp, H))
        xs_tm = np.asarray(_normal((T, *batch, inp), 1))
        h0 = _random_state(batch)
        want_h, want_ys = _paper_loop(params, xs_tm, h0)
        xs = xs_tm if time_major else np.moveaxis(xs_tm, 0, -2)
        forms = _both_forms(cell, params, xs, h0, time_major=time_major)
        h, ys = to_numpy(forms[int(parallel)])
        ys_tm = ys if time_major else np.moveaxis(ys, -2, 0)
        np.testing.assert_allclose(ys_tm, want_ys, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_complex(h), want_h, rtol=1e-12, atol=1e-12)

        # one step: recur's y is output(state reached), and step == the first loop step
        y1, out1, step1 = _one_step(cell, params, h0, xs_tm[0])
        np.testing.assert_allclose(out1, y1, rtol=1e-14)
        np.testing.assert_allclose(step1, want_ys[0], rtol=1e-12)


@functools.cache
def _parity_script():
    """benchmarks/parity_lru.py, loaded once (its jitted functions compile once)."""
    spec = importlib.util.spec_from_file_location("parity_lru", ROOT / "benchmarks/parity_lru.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_matches_memax_lru_with_the_same_weights_at_t_64(dtype, tol):
    """Ours (step and parallel form) vs memax's equinox LRU, benchmarks/parity_lru.py."""
    pytest.importorskip("equinox", reason="equinox is not installed (parity extra)")
    pytest.importorskip("memax", reason="memax is not installed (parity extra)")
    bench = _parity_script()
    with jax.enable_x64(dtype == "float64"):
        diffs = bench.max_abs_diff((2, 64, 4), jnp.dtype(dtype))
    assert set(diffs) == {"step", "parallel"}
    assert all(0 <= d < tol for d in diffs.values()), diffs


def test_parity_script_options_and_atomic_json(tmp_path):
    bench = _parity_script()
    args = bench.parse_args([])
    assert args.out == ROOT / "benchmarks/results/parity/lru.json"
    assert tuple(args.shape) == (4, 256, 32) and not args.speed
    out = tmp_path / "parity" / "lru.json"
    bench.write_json(out, {"cell": "lru", "max_abs_diff_float64": 1e-15})
    assert json.loads(out.read_text())["cell"] == "lru"
    assert [p.name for p in out.parent.iterdir()] == ["lru.json"]  # no temp file left
    committed = json.loads(args.out.read_text())
    assert committed["cell"] == "lru" and committed["shape"] == [4, 256, 32]
    assert committed["max_abs_diff_float64"] < 1e-12
    assert committed["max_abs_diff_float32"] < 1e-4


def test_init_is_the_papers_ring_init_with_gamma_normalization():
    with jax.enable_x64(True):
        _, p = _setup(3, 3, 4000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
        p = to_numpy(p)
        modulus = np.exp(-np.exp(p.nu_log))
        phase = np.exp(p.theta_log)
        assert 0.4 <= modulus.min() and modulus.max() <= 0.9
        assert 0.0 <= phase.min() and phase.max() <= math.pi / 10
        # |lambda|^2 uniform on [r_min^2, r_max^2] (uniform on the ring's area)
        np.testing.assert_allclose(np.mean(modulus**2), (0.4**2 + 0.9**2) / 2, atol=0.02)
        np.testing.assert_allclose(np.mean(phase), math.pi / 20, rtol=0.05)
        np.testing.assert_allclose(np.exp(p.gamma_log), np.sqrt(1 - modulus**2), rtol=1e-12)
        np.testing.assert_allclose(np.std(p.b_re), 1 / math.sqrt(2 * 3), rtol=0.05)
        np.testing.assert_allclose(np.std(p.c_im), 1 / math.sqrt(4000), rtol=0.05)
    # the paper's defaults; no infinite parameter even at r_min = 0, r_max = 1
    assert make_cell("lru", 8) is lru(8) and lru(8).name == "lru" and lru(8).hidden_size == 8
    assert lru(8).options == {
        "hidden_size": 8,
        "state_size": 8,
        "r_min": 0.0,
        "r_max": 1.0,
        "max_phase": 2 * math.pi,
    }
    cell, p = _setup(dtype=jnp.float32)
    assert isinstance(p, LRUParams) and p.b_re.dtype == jnp.float32
    assert [a.shape for a in p] == [(N,)] * 3 + [(I, N)] * 2 + [(N, H)] * 2 + [(I, H)]
    assert all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in p)
    state, xp = jax.jit(
        lambda p: (cell.initial_state(p, (2, 3)), cell.project(p, jnp.ones((7, I))))
    )(p)
    assert isinstance(state, LRUState) and state.re.shape == state.im.shape == (2, 3, N)
    assert isinstance(xp, LRUInput) and xp.re.shape == (7, N) and xp.skip.shape == (7, H)


def _loss(cell, parallel, **options):
    def loss(params, xs, h0):
        final, ys = gr.scan(cell, params, xs, h0, parallel=parallel, **options)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final.re**2) + jnp.sum(final.im * final.re)

    return loss


@pytest.mark.parametrize("parallel", [False, True], ids=["step", "parallel"])
def test_grad_and_jvp_match_finite_differences_float64(parallel):
    with jax.enable_x64(True):
        cell, params = _setup()
        xs = _normal((2, 5, I), 2)
        h0 = _random_state((2,))
        loss = jax.jit(_loss(cell, parallel))
        check_grads(loss, (params, xs, h0), order=1, modes=("rev", "fwd"), eps=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"seq_lengths": np.array([9, 4, 0])},
        {"seq_lengths": np.array([9, 4, 0]), "reverse": True},
        {"reverse": True},
        {"time_major": True},
    ],
    ids=["plain", "lengths", "lengths_reverse", "reverse", "time_major"],
)
def test_parallel_form_equals_step_form_values_and_grads_float64(options):
    with jax.enable_x64(True):
        cell, params = _setup()
        shape = (T, 3, I) if options.get("time_major") else (3, T, I)
        xs = _normal(shape, 3)
        h0 = _random_state((3,))

        @jax.jit
        def both(params, xs, h0):  # (parallel, step): one program
            return tuple(
                jax.value_and_grad(_loss(cell, parallel, **options), argnums=(0, 1, 2))(
                    params, xs, h0
                )
                for parallel in (True, False)
            )

        got_parallel, got_step = both(params, xs, h0)
        chex.assert_trees_all_close(got_parallel, got_step, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parallel", [False, True], ids=["step", "parallel"])
def test_seq_lengths_keep_the_state_zero_the_outputs_and_ignore_nan_padding(parallel):
    with jax.enable_x64(True):
        cell, params = _setup()
        lengths = np.array([T, 4, 0])
        xs = np.asarray(_normal((3, T, I), 4))
        pad = np.arange(T)[None, :, None] >= lengths[:, None, None]
        xs_nan = np.where(pad, np.nan, xs)
        h0 = _random_state((3,))

        @jax.jit
        def run(params, xs, h0):  # the scan and the gradients: one program
            out = gr.scan(cell, params, xs, h0, seq_lengths=lengths, parallel=parallel)
            loss = _loss(cell, parallel, seq_lengths=lengths)
            return out, jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0)

        (h, ys), grads = to_numpy(run(params, xs_nan, h0))
        h0_np = to_numpy(h0)
        for b, L in enumerate(lengths):
            h0_b = jax.tree_util.tree_map(lambda s, b=b: s[b], h0_np)
            want_h, want_ys = _paper_loop(params, xs[b, :L], h0_b)
            np.testing.assert_allclose(h.re[b] + 1j * h.im[b], want_h, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ys[b, :L], want_ys.reshape(L, H), rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(ys[b, L:], 0.0)
        assert all(bool(np.all(np.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
        np.testing.assert_array_equal(np.where(pad, grads[1], 0.0), 0.0)


def test_reverse_runs_each_sequence_backwards_from_its_last_valid_step():
    with jax.enable_x64(True):
        cell, params = _setup()
        xs = np.asarray(_normal((2, T, I), 5))
        lengths = np.array([T, 5])
        h, ys = _scan(cell, params, xs, seq_lengths=lengths, reverse=True, parallel=True)
        for b, L in enumerate(lengths):
            zero = LRUState(np.zeros(N), np.zeros(N))
            want_h, want_ys = _paper_loop(params, xs[b, :L][::-1], zero)
            np.testing.assert_allclose(h.re[b] + 1j * h.im[b], want_h, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ys[b, :L], want_ys[::-1], rtol=1e-12, atol=1e-12)


def test_resets_restart_from_the_initial_state_and_truncate_cuts_the_state_gradient():
    with jax.enable_x64(True):
        cell, params = _setup()
        xs = _normal((2, T, I), 6)
        h0 = _random_state((2,))
        resets = np.zeros((2, T), bool)
        resets[0, 4] = True

        def last_output(xs, truncate):
            return jnp.sum(gr.scan(cell, params, xs, truncate=truncate)[1][:, -1])

        @jax.jit
        def run(xs, h0):  # every scan and gradient below: one program
            h1 = jax.tree_util.tree_map(lambda s: s[1:], h0)
            return (
                gr.scan(cell, params, xs, h0, resets=resets),
                gr.scan(cell, params, xs[1:], h1)[1],
                gr.scan(cell, params, xs, truncate=3)[1],
                gr.scan(cell, params, xs)[1],
                jax.grad(last_output)(xs, 3),
                jax.grad(last_output)(xs, None),
            )

        out = to_numpy(run(xs, h0))
        (h, ys), plain, cut, full, g_cut, g_full = out
        xs = np.asarray(xs)
        h0_0 = jax.tree_util.tree_map(lambda s: np.asarray(s)[0], h0)
        _, head = _paper_loop(params, xs[0, :4], h0_0)
        want_h, tail = _paper_loop(params, xs[0, 4:], h0_0)
        np.testing.assert_allclose(ys[0], np.concatenate([head, tail]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h.re[0] + 1j * h.im[0], want_h, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ys[1:], plain, rtol=1e-12)

        np.testing.assert_allclose(cut, full, rtol=1e-14)
        np.testing.assert_array_equal(g_cut[:, :6], 0.0)  # before the cut at t = 6
        assert float(np.min(np.abs(g_full[:, :6]))) > 0
        np.testing.assert_allclose(g_cut[:, 6:], g_full[:, 6:], rtol=1e-12)


def test_jit_with_the_cell_static_compiles_once_and_stack_composes_layers():
    cell, params = _setup(dtype=jnp.float32)
    xs = _normal((2, T, I), 7, np.float32)

    stack = gr.stack(cell, 2)

    @jax.jit
    def layers(key, params, xs):  # a plain scan, init, the stack, two scans: one program
        sp = stack.init(key, I)
        s0, y0 = gr.scan(cell, sp[0], xs)
        s1, y1 = gr.scan(cell, sp[1], y0)
        return gr.scan(cell, params, xs)[1], sp, stack.apply(sp, xs), ((s0, s1), y1)

    want, sp, (finals, ys), ((s0, s1), y1) = layers(jax.random.PRNGKey(3), params, xs)

    run = chex.assert_max_traces(lambda c, p, x: gr.scan(c, p, x)[1], n=1)
    f = jax.jit(run, static_argnums=0)
    np.testing.assert_allclose(f(lru(H, N), params, xs), want, rtol=1e-6)
    f(make_cell("lru", H, state_size=N), params, 2 * np.asarray(xs))  # the same cell: no retrace

    assert sp[0].d.shape == (I, H) and sp[1].d.shape == (H,)  # dense, then elementwise
    np.testing.assert_allclose(ys, y1, rtol=1e-6)
    chex.assert_trees_all_close(finals, (s0, s1), rtol=1e-6)


def test_gate_statistics_report_the_decay_and_state_gradients_decay_as_lambda_powers():
    with jax.enable_x64(True):
        cell, params = _setup()
        xs = _normal((2, T, I), 8)
        decay = np.exp(-np.exp(np.asarray(params.nu_log)))
        stats = diagnostics.gate_statistics(cell, params, xs, saturation=0.02)
        assert set(stats) == {"decay", "decay_saturated_low", "decay_saturated_high", "saturated"}
        np.testing.assert_allclose(stats["decay"], np.full(T, decay.mean()), rtol=1e-12)
        np.testing.assert_allclose(stats["decay_saturated_high"], np.full(T, np.mean(decay > 0.98)))
        np.testing.assert_allclose(stats["decay_saturated_low"], np.full(T, np.mean(decay < 0.02)))

        # loss on the final state only: dL/dh_t = conj(lambda)^(T - t) dL/dh_T per unit
        w = _normal((2, 2, N), 9)
        norms = diagnostics.state_gradient_norms(
            cell,
            params,
            xs,
            lambda final, ys, w: jnp.sum(final.re * w[0] + final.im * w[1]),
            loss_args=(w,),
        )
        w = np.asarray(w)
        g_T = np.abs(w[0] + 1j * w[1])  # (2, N)
        dist = np.arange(T, -1, -1)[:, None, None]
        want = np.sqrt(np.sum((decay[None, None, :] ** dist * g_T) ** 2, axis=(1, 2)))
        np.testing.assert_allclose(np.hypot(norms.re, norms.im), want, rtol=1e-10)


def test_bad_sizes_options_and_params_raise_clear_errors():
    with pytest.raises(ValueError, match="hidden_size"):
        lru(0)
    with pytest.raises(ValueError, match="state_size"):
        lru(4, 0)
    with pytest.raises(ValueError, match="r_min <= r_max"):
        lru(4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="r_min <= r_max <= 1"):
        lru(4, r_max=1.5)
    with pytest.raises(ValueError, match="r_min < 1"):
        lru(4, r_min=1.0, r_max=1.0)
    with pytest.raises(ValueError, match="max_phase"):
        lru(4, max_phase=0.0)
    with pytest.raises(ValueError, match="finite"):
        lru(4, max_phase=float("inf"))
    with pytest.raises(TypeError, match="r_min"):
        lru(4, r_min="0.9")
    with pytest.raises(ValueError, match="input_size"):
        lru(4).init(jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="must be one of"):
        make_cell("lru ", 4)

    cell, params = _setup(dtype=jnp.float32)
    ones = jax.device_put(np.ones((2, T, I), np.float32))
    with pytest.raises(ValueError, match="features"):
        gr.scan(cell, params, jax.device_put(np.ones((2, T, I + 1), np.float32)))
    with pytest.raises(TypeError, match="floating point"):
        gr.scan(cell, params, jax.device_put(np.ones((2, T, I), np.int32)))
    other = params._replace(
        c_re=np.ones((N, H + 1), np.float32), c_im=np.ones((N, H + 1), np.float32)
    )
    with pytest.raises(ValueError, match="hidden_size=5, state_size=4 expects"):
        gr.scan(cell, other, ones)
    with pytest.raises(ValueError, match=r"params.d has shape \(5,\)"):
        gr.scan(cell, params._replace(d=np.ones((H,), np.float32)), ones)
    with pytest.raises(TypeError, match="LRUParams"):
        gru_params = gr.GRUParams(
            w_x=np.ones((I, 3 * H), np.float32),
            w_h=np.ones((H, 3 * H), np.float32),
            b_x=np.ones(3 * H, np.float32),
            b_h=np.ones(3 * H, np.float32),
        )
        gr.scan(cell, gru_params, ones)
    with pytest.raises(TypeError, match="one floating dtype"):
        gr.scan(cell, params._replace(d=np.asarray(params.d, np.float16)), ones)
    with pytest.raises(ValueError, match="state"):
        zeros = jax.device_put(np.zeros((2, N + 1), np.float32))
        cell.step(params, LRUState(zeros, zeros), jax.device_put(np.ones((2, I), np.float32)))
