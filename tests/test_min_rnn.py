"""minGRU and minLSTM: the step form follows the paper's equations, and the parallel form
(``jax.lax.associative_scan``) used by ``gr.scan`` equals the step-by-step loop."""

from __future__ import annotations

import importlib
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, sigmoid

import gatedrnn as gr
from gatedrnn.cells import linear_recurrence

# the module, not the function gr.scan
scan_module = importlib.import_module("gatedrnn.scan")
min_rnn = importlib.import_module("gatedrnn.cells.min_rnn")

B, T, I, H = 3, 9, 4, 5


def _numpy_loop(name, params, xs, h0):
    """The paper's equations (Feng et al. 2024, minimal versions), one step at a time."""
    w, b = np.asarray(params.w_x), np.asarray(params.b)
    h, hs = np.asarray(h0), []
    for t in range(xs.shape[1]):
        z = xs[:, t] @ w + b
        if name == "min_gru":
            gate, cand = sigmoid(z[:, :H]), z[:, H:]
            h = (1 - gate) * h + gate * cand
        else:
            f, i, cand = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), z[:, 2 * H :]
            h = f / (f + i) * h + i / (f + i) * cand
        hs.append(h)
    return h, np.stack(hs, axis=1)


@pytest.mark.parametrize("make_cell", [gr.min_gru, gr.min_lstm], ids=["min_gru", "min_lstm"])
def test_step_form_matches_the_papers_equations(make_cell):
    with jax.enable_x64(True):
        cell = make_cell(H)
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        xs = normal(1, (B, T, I), np.float64)
        h0 = 0.5 * np.ones((B, H))
        want_h, want_ys = _numpy_loop(cell.name, params, xs, h0)
        # one compile for both forms
        run = jax.jit(
            lambda p, x, s: [gr.scan(cell, p, x, s, parallel=par) for par in (True, False)]
        )
        for parallel, (h, ys) in zip((True, False), run(params, xs, h0), strict=True):
            msg = f"parallel={parallel}"
            chex.assert_trees_all_close(ys, want_ys, rtol=1e-12, atol=1e-12, custom_message=msg)
            chex.assert_trees_all_close(h, want_h, rtol=1e-12, atol=1e-12, custom_message=msg)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"seq_lengths": np.array([9, 4, 0])},
        {"seq_lengths": np.array([9, 4, 0]), "reverse": True},
        {"time_major": True},
    ],
    ids=["plain", "lengths", "lengths_reverse", "time_major"],
)
@pytest.mark.parametrize("make_cell", [gr.min_gru, gr.min_lstm], ids=["min_gru", "min_lstm"])
def test_parallel_equals_sequential_values_and_grads_float64(make_cell, options):
    with jax.enable_x64(True):
        cell = make_cell(H)
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        shape = (T, B, I) if options.get("time_major") else (B, T, I)
        xs = normal(1, shape, np.float64)
        h0 = 0.1 * np.arange(B * H, dtype=np.float64).reshape(B, H)

        def loss(params, xs, h0, parallel):
            final, ys = gr.scan(cell, params, xs, h0, parallel=parallel, **options)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2), (final, ys)

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
        # one compile: values and gradients of both forms
        got, want = jax.jit(lambda *a: (grad(*a, True), grad(*a, False)))(params, xs, h0)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_parallel_form_has_no_time_loop_and_options_fall_back_to_the_loop():
    cell = gr.min_gru(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
    jaxpr = jax.make_jaxpr(lambda x: gr.scan(cell, params, x, parallel=True))(xs)
    assert "scan[" not in str(jaxpr)
    resets = np.eye(B, T, 3, dtype=bool)
    loop = jax.make_jaxpr(lambda x: gr.scan(cell, params, x, resets=resets))(xs)
    assert "scan[" in str(loop)
    # The fallback gives the loop's values (one compile for both).
    run = jax.jit(
        lambda x: [
            gr.scan(c, params, x, resets=resets)[1] for c in (cell, cell._replace(parallel=None))
        ]
    )
    ys, want = run(xs)
    chex.assert_trees_all_close(ys, want, rtol=1e-6)
    with pytest.raises(ValueError, match="parallel=True needs .* no resets"):
        gr.scan(cell, params, xs, resets=resets, parallel=True)
    gru = gr.gru(H)
    gru_params = jax.eval_shape(lambda k: gru.init(k, I), jax.random.PRNGKey(0))  # no compile
    with pytest.raises(ValueError, match="parallel=True needs a cell with a parallel form"):
        jax.eval_shape(lambda p: gr.scan(gru, p, xs, parallel=True), gru_params)


@pytest.mark.parametrize("start, loops", [(None, True), (T + 1, True), (T, False), (1, False)])
def test_default_picks_the_parallel_form_from_the_measured_crossover(monkeypatch, start, loops):
    """parallel=None: the parallel form from the backend's crossover length on."""
    monkeypatch.setitem(scan_module._PARALLEL_FROM_BACKEND, jax.default_backend(), start)
    assert gr.parallel_crossover() == start
    cell = gr.min_gru(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    jaxpr = str(jax.make_jaxpr(lambda x: gr.scan(cell, params, x))(jnp.ones((B, T, I))))
    assert ("scan[" in jaxpr) == loops


def _loops(cell: gr.Cell) -> bool:
    params = cell.init(jax.random.PRNGKey(0), I)
    return "scan[" in str(jax.make_jaxpr(lambda x: gr.scan(cell, params, x))(jnp.ones((B, T, I))))


def test_the_crossover_is_per_backend_and_cell_with_the_backend_default_as_fallback(
    monkeypatch,
):
    """A (backend, cell name) entry decides for that cell only; other cells (and cell=None)
    take the backend's default; an unmeasured backend defaults to 1 (always parallel)."""
    backend = jax.default_backend()
    monkeypatch.setitem(scan_module._PARALLEL_FROM_BACKEND, backend, None)
    monkeypatch.setitem(scan_module._PARALLEL_FROM, (backend, "min_lstm"), T)
    monkeypatch.setitem(scan_module._PARALLEL_FROM, ("tpu", "min_gru"), 64)
    gru, lstm = gr.min_gru(H), gr.min_lstm(H)
    assert gr.parallel_crossover(lstm) == gr.parallel_crossover("min_lstm") == T
    assert gr.parallel_crossover(gru) is None and gr.parallel_crossover() is None
    assert gr.parallel_crossover("min_gru", backend="tpu") == 64
    assert gr.parallel_crossover("min_lstm", backend="tpu") == 1
    assert gr.parallel_crossover(backend="no_such_backend") == 1
    assert _loops(gru) and not _loops(lstm)  # min_lstm: T >= its crossover; min_gru: steps
    monkeypatch.setitem(scan_module._PARALLEL_FROM, (backend, "min_lstm"), None)
    monkeypatch.setitem(scan_module._PARALLEL_FROM_BACKEND, backend, 1)
    assert _loops(lstm) and not _loops(gru)  # a measured None beats the backend's default
    with pytest.raises(ValueError, match=r"parallel_crossover\(backend='cpu'\)"):
        gr.parallel_crossover("cpu")
    with pytest.raises(TypeError, match="cell must be a gr.Cell, a cell name or None"):
        gr.parallel_crossover(3)


def test_the_cpu_runs_only_the_mlstms_parallel_form_as_measured():
    """Today's table (benchmarks/results/crossover): on the CPU the mLSTM's parallel form
    from T = 16, every other registered cell with a parallel form (minGRU, minLSTM, LRU,
    RG-LRU) step by step; and gr.scan follows it (the mLSTM's default below 16 and from 16
    on is the step form and the parallel form: no scan over steps in the latter)."""
    assert {k: v for k, v in scan_module._PARALLEL_FROM.items() if k[0] == "cpu"} == {
        ("cpu", "mlstm"): 16
    }
    assert scan_module._PARALLEL_FROM_BACKEND["cpu"] is None
    parallel = [n for n in sorted(gr.CELLS) if gr.make_cell(n, H).parallel is not None]
    assert {"min_gru", "min_lstm", "lru", "rglru", "mlstm"} <= set(parallel)
    for name in parallel:
        want = 16 if name == "mlstm" else None
        assert gr.parallel_crossover(name, backend="cpu") == want
    if jax.default_backend() == "cpu":
        cell = gr.make_cell("mlstm", H)
        p = jax.eval_shape(lambda k: cell.init(k, I), jax.random.PRNGKey(0))

        def loops(T: int) -> int:
            xs = jax.ShapeDtypeStruct((2, T, I), jnp.float32)
            jaxpr = jax.make_jaxpr(lambda p, x: gr.scan(cell, p, x))(p, xs)
            return str(jaxpr).count("scan[")

        assert loops(15) == 1 and loops(16) == 0  # T = 16 <= chunk_size: one quadratic form


def test_linear_recurrence_is_the_loop_and_handles_empty_time():
    rng = np.random.default_rng(0)
    a, b, h0 = rng.uniform(size=(6, 2, 3)), rng.normal(size=(6, 2, 3)), rng.normal(size=(2, 3))
    with jax.enable_x64(True):
        run = jax.jit(linear_recurrence)  # one compile per shape (eagerly, one per operation)
        hs = run(a, b, h0)
        h, want = h0, []
        for t in range(6):
            h = a[t] * h + b[t]
            want.append(h)
        chex.assert_trees_all_close(hs, np.stack(want), rtol=1e-12)
        assert run(np.zeros((0, 2, 3)), np.zeros((0, 2, 3)), h0).shape == (0, 2, 3)


def test_min_cells_init_exports_and_errors():
    params = gr.min_lstm(H, forget_bias=2.0).init(jax.random.PRNGKey(0), I)
    assert isinstance(params, gr.MinLSTMParams)
    assert params.w_x.shape == (I, 3 * H) and params.b.shape == (3 * H,)
    b = np.asarray(params.b)
    np.testing.assert_allclose(b[:H], 2.0)
    np.testing.assert_allclose(b[H:], 0.0)
    assert isinstance(gr.min_gru(H).init(jax.random.PRNGKey(0), I), gr.MinGRUParams)
    with pytest.raises(ValueError, match="hidden_size"):
        gr.min_gru(0)
    with pytest.raises(ValueError, match="input_size"):
        gr.min_gru(H).init(jax.random.PRNGKey(0), 0)
    cell = gr.min_gru(H)
    with pytest.raises(ValueError, match="features"):
        gr.scan(cell, cell.init(jax.random.PRNGKey(0), I), jnp.ones((B, T, I + 1)))


def _quotient_coefficients(xp):
    """The quotient form ``a = f / (f + i)``, ``b = i / (f + i) * c`` (the old code)."""
    xf, xi, c = jnp.split(xp, 3, axis=-1)
    f, i = jax.nn.sigmoid(xf), jax.nn.sigmoid(xi)
    return f / (f + i), i / (f + i) * c


def _quotient_scan(xp, h0):
    """The minLSTM recurrence from the quotient form, one step at a time (time axis 1)."""
    a, b = _quotient_coefficients(xp)
    h, ys = h0, []
    for t in range(xp.shape[1]):
        h = a[:, t] * h + b[:, t]
        ys.append(h)
    return jnp.stack(ys, axis=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_min_lstm_log_space_equals_the_quotient_where_the_quotient_is_finite(dtype):
    """The log-space coefficients are the quotient's, values and gradients, to within a few
    units of rounding (absolute: a tiny ``f / (f + i)`` carries the rounding of
    ``log f - log i`` relatively)."""
    with jax.enable_x64(dtype == "float64"):
        xp = 4.0 * jax.random.normal(jax.random.PRNGKey(3), (64, 3 * H), dtype)
        eps = float(jnp.finfo(dtype).eps)

        def loss(fn, xp):
            a, b = fn(xp)
            return jnp.sum(jnp.sin(3.0 * a) + jnp.cos(b))

        # one compile: values and gradients of both forms
        (got, want), (g_got, g_want) = jax.jit(
            lambda xp: (
                (min_rnn.min_lstm_coefficients(xp), _quotient_coefficients(xp)),
                (
                    jax.grad(partial(loss, min_rnn.min_lstm_coefficients))(xp),
                    jax.grad(partial(loss, _quotient_coefficients))(xp),
                ),
            )
        )(xp)
        assert np.isfinite(np.asarray(want[1])).all()  # the range where the old form works
        chex.assert_trees_all_close(got, want, rtol=4 * eps, atol=16 * eps)
        chex.assert_trees_all_close(g_got, g_want, rtol=16 * eps, atol=64 * eps)


@pytest.mark.parametrize(
    "dtype, level, tol",
    [("float32", -90.0, 1e-5), ("float32", -60.0, 1e-5), ("float16", -17.0, 2e-2)],
)
def test_min_lstm_is_finite_where_both_sigmoids_underflow(dtype, level, tol):
    """Pre-activations where sigmoid(x_f) and sigmoid(x_i) underflow (float32 near -90,
    float16 near -17; the quotient's gradient already at -60): values and gradients are
    finite, in the parallel and the step form, and equal the float64 quotient."""
    cell = gr.min_lstm(H)
    params = gr.MinLSTMParams(w_x=jnp.eye(3 * H, dtype=dtype), b=jnp.zeros(3 * H, dtype))
    rng = np.random.default_rng(4)
    gates = level + rng.uniform(-3.0, 3.0, size=(B, T, 2 * H))
    xs = np.concatenate([gates, rng.normal(size=(B, T, H))], axis=-1).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)

    with jax.enable_x64(True):
        ref = jnp.asarray(xs, jnp.float64)
        h0_64 = jnp.asarray(h0, jnp.float64)
        want_ys, want_g = jax.jit(
            lambda x: (
                _quotient_scan(x, h0_64),
                jax.grad(lambda x: jnp.sum(jnp.sin(_quotient_scan(x, h0_64))))(x),
            )
        )(ref)
    assert np.isfinite(np.asarray(want_g)).all()

    def loss(params, xs, parallel):
        _, ys = gr.scan(cell, params, xs, jnp.asarray(h0), parallel=parallel)
        return jnp.sum(jnp.sin(ys.astype(jnp.float32))), ys

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    # one compile for both forms
    both = jax.jit(lambda p, x: [grad(p, x, par) for par in (True, False)])(params, xs)
    for parallel, ((_, ys), (g_params, g_xs)) in zip((True, False), both, strict=True):
        for leaf in (ys, g_xs, *jax.tree.leaves(g_params)):
            assert np.isfinite(np.asarray(leaf, np.float64)).all(), parallel
        np.testing.assert_allclose(np.asarray(ys, np.float64), want_ys, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.asarray(g_xs, np.float64), want_g, rtol=tol, atol=tol)
