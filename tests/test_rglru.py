"""The RG-LRU (De et al. 2024): the paper's equations, every gr.scan option in both forms
(step and parallel), derivatives against finite differences, a finite gradient where the
decay is 1, and parity with recurrentgemma's JAX ``RGLRU`` layer."""

from __future__ import annotations

import functools
import importlib.util
import itertools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sigmoid, to_numpy

import gatedrnn as gr
from gatedrnn.cells import make_cell
from gatedrnn.cells.rglru import RGLRUInput, RGLRUParams, rglru, sqrt_bounded_derivative
from gatedrnn.diagnostics import gate_statistics, state_gradient_norms

B, T, I, H, HEADS = 3, 7, 4, 6, 2
ROOT = Path(__file__).resolve().parents[1]
FORMS = pytest.mark.parametrize("parallel", [False, True], ids=["step", "parallel"])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, cell, dtype):
    """A cell's params with non-zero biases, inputs (B, T, I), a state (B, H): one compile."""
    k = jax.random.split(key, 6)
    params = cell.init(k[0], I, dtype)
    params = params._replace(
        b_in=0.3 * jax.random.normal(k[1], (H,), dtype),
        b_a=0.5 * jax.random.normal(k[2], (H,), dtype),
        b_x=0.5 * jax.random.normal(k[3], (H,), dtype),
    )
    xs = jax.random.normal(k[4], (B, T, I), dtype)
    return params, xs, 0.5 * jax.random.normal(k[5], (B, H), dtype)


@functools.cache
def _problem(dtype=jnp.float64):
    """A cell, params with non-zero biases, inputs (B, T, I) and an initial state (B, H):
    drawn once in float64 for the whole module (one compiled draw), float32 by rounding
    those (float64: call under ``jax.enable_x64``)."""
    cell = rglru(H, HEADS)
    if jnp.dtype(dtype) == jnp.float64:
        return cell, *_draw(jax.random.PRNGKey(0), cell, jnp.dtype(jnp.float64))
    with jax.enable_x64(True):
        drawn = to_numpy(_problem(jnp.float64)[1:])
    return cell, *jax.tree_util.tree_map(lambda a: jax.device_put(a.astype(dtype)), drawn)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("lengths", "reverse", "time_major"))
def _both_forms(cell, params, xs, h0, lengths=None, reverse=False, time_major=False):
    """``gr.scan`` in the step form and in the parallel form, one program for both (shared
    by every test of the same shapes and options): ``((h, ys) step, (h, ys) parallel)``.

    ``lengths``: a tuple, passed to ``gr.scan`` as a concrete ``seq_lengths`` array."""
    options = {"reverse": reverse, "time_major": time_major}
    if lengths is not None:
        options["seq_lengths"] = np.array(lengths)
    return tuple(gr.scan(cell, params, xs, h0, parallel=p, **options) for p in (False, True))


_first_gates = jax.jit(lambda cell, p, h, x: cell.gates(p, h, cell.project(p, x)), static_argnums=0)
_step = jax.jit(lambda cell, p, s, x: cell.step(p, s, x), static_argnums=0)


def _step_loop(cell, params, xs_tm, h0):
    """Reference: a Python loop of ``cell.step`` over a time-major ``xs (T, *batch, I)``
    (conftest's ``loop_scan`` with the step compiled once per shape, slicing and stacking in
    numpy so that nothing else compiles): ``(h_T, ys (T, *batch, H))`` as numpy arrays."""
    xs_tm, state, ys = np.asarray(xs_tm), np.asarray(h0), []
    for t in range(xs_tm.shape[0]):
        state, y = _step(cell, params, state, xs_tm[t])
        ys.append(np.asarray(y))
    if ys:
        return np.asarray(state), np.stack(ys)
    return state, np.zeros((0, *xs_tm.shape[1:-1], cell.hidden_size), xs_tm.dtype)


def _zeros_params(cell, input_size):
    """numpy zeros in the layout of ``cell.init`` (nothing to compile)."""
    shapes = jax.eval_shape(
        functools.partial(cell.init, input_size=input_size), jax.random.PRNGKey(0)
    )
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _full(w):
    """The (H, H) block-diagonal matrix of (heads, s, s) blocks."""
    heads, s, _ = w.shape
    out = np.zeros((heads * s, heads * s))
    for k in range(heads):
        out[k * s : (k + 1) * s, k * s : (k + 1) * s] = w[k]
    return out


def _numpy_loop(params, xs, h0):
    """The paper's equations, one step at a time: ``(h_T, hs, gates per step)``."""
    p = {f: np.asarray(v, np.float64) for f, v in params._asdict().items()}
    xs = np.asarray(xs, np.float64)
    h, hs, gates = np.asarray(h0, np.float64), [], []
    for t in range(xs.shape[1]):
        u = xs[:, t] @ p["w_in"] + p["b_in"]
        r = sigmoid(u @ _full(p["w_a"]) + p["b_a"])
        i = sigmoid(u @ _full(p["w_x"]) + p["b_x"])
        a = sigmoid(p["lam"]) ** (8.0 * r)
        h = a * h + np.sqrt(1.0 - a**2) * (i * u)
        hs.append(h)
        gates.append({"recurrence": r, "input": i, "decay": a})
    hs = np.stack(hs, axis=1) if hs else np.zeros((h.shape[0], 0, h.shape[-1]))
    return h, hs, gates


def _all_finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(g)))) for g in jax.tree_util.tree_leaves(tree))


@FORMS
def test_scan_follows_the_papers_equations_float64(parallel):
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        want_h, want_ys, want_gates = _numpy_loop(params, xs, h0)
        h, ys = _both_forms(cell, params, xs, h0)[int(parallel)]
        chex.assert_trees_all_close(ys, want_ys, rtol=1e-12, atol=1e-12)
        chex.assert_trees_all_close(h, want_h, rtol=1e-12, atol=1e-12)
        g = _first_gates(cell, params, h0, np.asarray(xs)[:, 0])
        chex.assert_trees_all_close(g, want_gates[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["batch_major", "time_major", "two_batch_axes", "no_batch"])
def test_scan_equals_a_python_loop_of_step_float64(layout):
    """Both forms (step and parallel) against one Python loop of ``cell.step``."""
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        xs, h0 = np.asarray(xs), np.asarray(h0)
        if layout == "two_batch_axes":
            xs = np.stack([xs, 2.0 * xs])  # (2, B, T, I)
            h0 = np.stack([h0, -h0])
        elif layout == "no_batch":
            xs, h0 = xs[0], h0[0]
        time_major = layout == "time_major"
        if time_major:
            xs = np.moveaxis(xs, 1, 0)
        xs_tm = xs if time_major else np.moveaxis(xs, -2, 0)
        want_h, want_ys = _step_loop(cell, params, xs_tm, h0)
        forms = _both_forms(cell, params, xs, h0, time_major=time_major)
        for parallel, (h, ys) in zip((False, True), forms):
            ys_tm = ys if time_major else np.moveaxis(np.asarray(ys), -2, 0)
            chex.assert_trees_all_close(
                (h, ys_tm),
                (want_h, want_ys),
                rtol=1e-12,
                atol=1e-12,
                custom_message=f"parallel={parallel}",
            )


@FORMS
def test_grad_and_jvp_match_finite_differences_float64(parallel):
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        lengths = np.array([7, 3, 0])

        @jax.jit
        def loss(params, xs, h0):
            final, ys = gr.scan(cell, params, xs, h0, seq_lengths=lengths, parallel=parallel)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

        jax.test_util.check_grads(loss, (params, xs, h0), order=1, modes=["fwd", "rev"], eps=1e-6)


def test_parallel_form_equals_the_step_form_values_and_grads():
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        for options in ({}, {"seq_lengths": np.array([7, 3, 0]), "reverse": True}):

            @jax.jit
            def both(params, xs, h0, options=options):  # (parallel, step): one program
                def loss(params, xs, h0, parallel):
                    final, ys = gr.scan(cell, params, xs, h0, parallel=parallel, **options)
                    return jnp.sum(jnp.cos(ys)) + jnp.sum(final**2), (final, ys)

                grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
                return grad(params, xs, h0, True), grad(params, xs, h0, False)

            got_parallel, got_step = both(params, xs, h0)
            chex.assert_trees_all_close(got_parallel, got_step, rtol=1e-10, atol=1e-12)
        jaxpr = str(jax.make_jaxpr(lambda x: gr.scan(cell, params, x, parallel=True))(xs))
        assert "scan[" not in jaxpr  # no time loop


def test_the_gradient_is_finite_where_the_decay_is_one():
    """``lam`` so large that ``softplus(-lam) == 0``: ``a_t == 1`` and ``sqrt(1 - a_t**2)``
    is ``sqrt(0)``; the bounded square root keeps every derivative finite, the plain one
    gives NaN."""
    cell, params, xs, h0 = _problem(jnp.float32)
    lam = np.array(params.lam)
    lam[:2] = 1e3
    params = params._replace(lam=lam)

    def loss(params, xs, h0):
        final, ys = gr.scan(cell, params, xs, h0)
        return jnp.sum(ys**2) + jnp.sum(final)

    def plain(lam, r):  # the same coefficient with jnp.sqrt: NaN gradient at a == 1
        log_a = -8.0 * jax.nn.softplus(-lam) * r
        return jnp.sum(jnp.sqrt(-jnp.expm1(2.0 * log_a)))

    @jax.jit
    def derivatives(args, z):  # every derivative below in one program
        xp = cell.project(args[0], args[1])
        grads = jax.grad(loss, argnums=(0, 1, 2))(*args)
        tangent = jax.jvp(loss, args, args)[1]
        plain_grad = jax.grad(plain)(args[0].lam, xp.r)
        return xp.a, grads, tangent, plain_grad, jax.vmap(jax.grad(sqrt_bounded_derivative))(z)

    z = np.array([0.0, 1e-9, 0.25, 4.0], np.float32)
    a, grads, tangent, plain_grad, d = derivatives((params, xs, h0), z)
    assert bool(np.all(np.asarray(a)[..., :2] == 1.0))
    assert _all_finite(grads)
    assert _all_finite(tangent)
    assert bool(np.any(np.isnan(np.asarray(plain_grad))))
    # The bound: d sqrt(z)/dz = 1 / (2 sqrt(z)) down to z = 1 / (4 * 1000**2), 1000 below.
    np.testing.assert_allclose(d, [1000.0, 1000.0, 1.0, 0.25], rtol=1e-6)


def test_jit_with_the_cell_static_traces_once_for_a_cell_built_twice():
    cell, params, xs, h0 = _problem(jnp.float32)
    assert rglru(H, HEADS) is rglru(H, num_heads=HEADS) is make_cell("rglru", H, num_heads=HEADS)
    assert make_cell("rglru", **cell.options) == cell

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def run(cell, params, xs):
        return gr.scan(cell, params, xs)

    got = run(rglru(H, HEADS), params, xs)
    run(make_cell("rglru", H, num_heads=HEADS), params, 2 * np.asarray(xs))  # no second trace
    want = jax.jit(gr.scan, static_argnums=0)(cell, params, xs)  # another program
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_seq_lengths_keep_the_state_zero_the_outputs_and_ignore_nan_padding():
    """Both forms (step and parallel) against one Python loop per sequence."""
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        lengths = np.array([7, 3, 0])
        t = np.arange(T)[None, :, None]
        x_np, h0_np = np.asarray(xs), np.asarray(h0)
        padded = np.where(t < lengths[:, None, None], x_np, np.nan)
        wants = [
            _step_loop(cell, params, np.moveaxis(x_np[b : b + 1, :L], 1, 0), h0_np[b : b + 1])
            for b, L in enumerate(lengths)
        ]

        @jax.jit
        def run(params, padded):  # values and gradients of both forms: one program
            def loss(p, parallel):
                h, ys = gr.scan(cell, p, padded, h0, seq_lengths=lengths, parallel=parallel)
                return jnp.sum(ys**2), (h, ys)

            grad = jax.value_and_grad(loss, has_aux=True)
            return [grad(params, parallel) for parallel in (False, True)]

        out = to_numpy(run(params, padded))
        for parallel, ((_, (h, ys)), grads) in zip((False, True), out):
            for b, (L, (want_h, want_ys)) in enumerate(zip(lengths, wants)):
                msg = f"parallel={parallel}, row {b}"
                chex.assert_trees_all_close(h[b], want_h[0], rtol=1e-12, custom_message=msg)
                chex.assert_trees_all_close(
                    ys[b, :L], want_ys[:, 0], rtol=1e-12, custom_message=msg
                )
                assert bool(np.all(ys[b, L:] == 0.0)), msg
            assert _all_finite(grads), parallel


def test_reverse_runs_each_sequence_backwards_from_its_last_valid_step():
    """Both forms (step and parallel) against one Python loop per sequence."""
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        lengths = (7, 3, 1)
        x_np, h0_np = np.asarray(xs), np.asarray(h0)
        wants = [
            _step_loop(cell, params, x_np[b, :L][::-1][:, None], h0_np[b : b + 1])
            for b, L in enumerate(lengths)
        ]
        forms = _both_forms(cell, params, xs, h0, lengths=lengths, reverse=True)
        forms = to_numpy(forms)
        for parallel, (h, ys) in zip((False, True), forms):
            for b, (L, (want_h, want_ys)) in enumerate(zip(lengths, wants)):
                msg = f"parallel={parallel}, row {b}"
                chex.assert_trees_all_close(h[b], want_h[0], rtol=1e-12, custom_message=msg)
                chex.assert_trees_all_close(
                    ys[b, :L], want_ys[::-1, 0], rtol=1e-12, custom_message=msg
                )
                assert bool(np.all(ys[b, L:] == 0.0)), msg


def test_resets_restart_each_segment_from_the_initial_state():
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        resets = np.zeros((B, T), bool)
        resets[0, 3] = resets[1, 1] = resets[1, 5] = True
        h, ys = jax.jit(lambda p, x: gr.scan(cell, p, x, h0, resets=resets))(params, xs)
        h, ys, x_np, h0_np = np.asarray(h), np.asarray(ys), np.asarray(xs), np.asarray(h0)
        for b in range(B):
            cuts = [0, *np.flatnonzero(resets[b]).tolist(), T]
            pieces = []
            for s, e in itertools.pairwise(cuts):
                one = np.moveaxis(x_np[b : b + 1, s:e], 1, 0)
                state, seg = _step_loop(cell, params, one, h0_np[b : b + 1])
                pieces.append(seg[:, 0])
            chex.assert_trees_all_close(ys[b], np.concatenate(pieces), rtol=1e-12)
            chex.assert_trees_all_close(h[b], state[0], rtol=1e-12)


def test_truncate_cuts_the_gradient_through_the_state_and_keeps_the_forward_pass():
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()

        @jax.jit
        def run(h0):  # the final state and its Jacobian in h0, truncate=3 and None
            out = []
            for truncate in (3, None):

                def final(s, truncate=truncate):
                    return gr.scan(cell, params, xs, s, truncate=truncate)[0]

                out.append((final(h0), jax.jacrev(final)(h0)))
            return out

        (h_cut, cut), (h_full, full) = run(h0)
        chex.assert_trees_all_close(h_cut, h_full, rtol=1e-12)
        assert np.max(np.abs(cut)) == 0.0 and np.max(np.abs(full)) > 1e-3


def test_stack_of_two_layers_is_two_scans():
    cell, params, xs, h0 = _problem(jnp.float32)
    stack = gr.stack(cell, 2)

    @jax.jit
    def both(key, xs):  # init, the stack, and the two scans: one program
        sp = stack.init(key, I)
        f0, y0 = gr.scan(cell, sp[0], xs)
        f1, y1 = gr.scan(cell, sp[1], y0)
        return sp, stack.apply(sp, xs), ((f0, f1), y1)

    sp, got, want = both(jax.random.PRNGKey(3), xs)
    assert isinstance(sp[0], RGLRUParams) and sp[1].w_in.shape == (H, H)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_gate_statistics_report_the_three_gates_of_each_step():
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        stats = gate_statistics(cell, params, xs, h0, saturation=0.05)
        _, _, gates = _numpy_loop(params, xs, h0)
        for name in ("recurrence", "input", "decay"):
            want = np.array([g[name].mean() for g in gates])
            np.testing.assert_allclose(stats[name], want, rtol=1e-12)
            low = np.array([(g[name] < 0.05).mean() for g in gates])
            np.testing.assert_allclose(stats[f"{name}_saturated_low"], low)
        assert stats["saturated"].shape == (T,)


def test_state_gradient_norms_are_the_products_of_the_decays():
    """For a loss on the final state, ``dL/dh_t = prod_{s > t} a_s`` (a closed form; the
    decays ``a_s`` from the paper's equations in numpy)."""
    with jax.enable_x64(True):
        cell, params, xs, h0 = _problem()
        norms = state_gradient_norms(cell, params, xs, lambda final, ys: jnp.sum(final), h0)
        a = np.stack([g["decay"] for g in _numpy_loop(params, xs, h0)[2]])  # (T, B, H)
        prods = [np.prod(a[t:], axis=0) for t in range(T)] + [np.ones((B, H))]
        want = [np.linalg.norm(p) for p in prods]
        np.testing.assert_allclose(norms, want, rtol=1e-10)


def test_init_draws_the_decay_on_a_ring_and_gates_with_fan_in_variance():
    cell, narrow_cell = rglru(1024, num_heads=4), rglru(1024, 4, 0.5, 0.5)
    params, narrow = jax.jit(lambda k: (cell.init(k, 3), narrow_cell.init(k, 3)))(
        jax.random.PRNGKey(0)
    )
    assert isinstance(params, RGLRUParams)
    shapes = {f: v.shape for f, v in params._asdict().items()}
    assert shapes == {
        "w_in": (3, 1024),
        "b_in": (1024,),
        "w_a": (4, 256, 256),
        "b_a": (1024,),
        "w_x": (4, 256, 256),
        "b_x": (1024,),
        "lam": (1024,),
    }
    p = {f: np.asarray(v) for f, v in params._asdict().items()}  # float32
    rad_sq = np.asarray(sigmoid(p["lam"]), np.float64) ** 2
    assert 0.9**2 - 1e-5 <= rad_sq.min() and rad_sq.max() <= 0.999**2 + 1e-5
    # uniform on [0.81, 0.998]: each quarter of the range holds about a quarter of the units
    counts = np.histogram(rad_sq, bins=4, range=(0.81, 0.998001))[0]
    assert counts.min() > 0.18 * 1024, counts
    assert abs(np.var(p["w_a"]) * 256 - 1) < 0.05 and abs(np.var(p["w_x"]) * 256 - 1) < 0.05
    assert float(np.max(np.abs(p["b_a"]))) == 0.0
    np.testing.assert_allclose(sigmoid(np.asarray(narrow.lam)), 0.5, rtol=1e-6)


def test_bad_options_sizes_and_params_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads must divide hidden_size"):
        make_cell("rglru", 8, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be an integer >= 1"):
        rglru(8, num_heads=0)
    with pytest.raises(ValueError, match="hidden_size"):
        rglru(0)
    with pytest.raises(ValueError, match="0 < min_rad <= max_rad < 1"):
        rglru(8, min_rad=0.99, max_rad=0.9)
    with pytest.raises(ValueError, match="0 < min_rad <= max_rad < 1"):
        rglru(8, max_rad=1.0)
    with pytest.raises(TypeError, match="min_rad must be a real number"):
        rglru(8, min_rad="0.9")
    cell, params, xs, h0 = _problem(jnp.float32)
    with pytest.raises(ValueError, match="input_size"):
        cell.init(jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="features"):
        gr.scan(cell, params, jax.device_put(np.ones((B, T, I + 1), np.float32)))
    with pytest.raises(TypeError, match="must be floating point"):
        gr.scan(cell, params, jax.device_put(np.ones((B, T, I), np.int32)))
    with pytest.raises(ValueError, match=r"params.w_in has shape \(4, 8\).*hidden_size=6"):
        gr.scan(cell, _zeros_params(rglru(8, 2), I), xs)
    with pytest.raises(ValueError, match=r"params.w_a has shape \(2, 3, 3\).*num_heads=3"):
        gr.scan(rglru(H, 3), params, xs)
    with pytest.raises(TypeError, match="RGLRUParams"):
        gr.scan(cell, _zeros_params(gr.lstm(H), I), xs)
    with pytest.raises(TypeError, match="one floating dtype"):
        gr.scan(cell, params._replace(lam=np.asarray(params.lam, np.float16)), xs)
    with pytest.raises(ValueError, match="state"):
        gr.scan(cell, params, xs, jax.device_put(np.zeros((B, H + 1), np.float32)))


# ------------------------------------------------------------ recurrentgemma parity


def _parity_module():
    pytest.importorskip("recurrentgemma.jax.layers", reason="recurrentgemma is not installed")
    return _load_parity_module()


@functools.cache
def _load_parity_module():
    """benchmarks/parity_rglru.py, loaded once (its jitted functions compile once)."""
    spec = importlib.util.spec_from_file_location(
        "parity_rglru", ROOT / "benchmarks" / "parity_rglru.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outputs_and_final_state_match_recurrentgemmas_rglru():
    """float32 and float64 (the reference accumulating in float64), T = 64; the step form
    (the parallel form equals it to 1e-10, above)."""
    parity = _parity_module().parity
    got32 = parity(3, 64, 8, 2, jnp.float32, unroll=1, forms=("step",))
    assert got32["max_abs_diff"] < 2e-5 * max(1.0, got32["max_abs_output"]), got32
    with jax.enable_x64(True):
        got64 = parity(3, 64, 8, 2, jnp.float64, unroll=1, forms=("step",))
    assert got64["max_abs_diff"] < 1e-12, got64


def test_gradients_match_recurrentgemmas_rglru_float64():
    mod = _parity_module()
    with jax.enable_x64(True), mod.patched_scan(acc_float_dtype=jnp.float64, unroll=1):
        cell = rglru(8, 2)
        key, f64 = jax.random.PRNGKey(0), jnp.dtype(jnp.float64)  # as parity() calls it
        params, xs, h0 = mod.parity_problem(key, 3, 64, 8, 2, f64)
        layer = mod.reference_layer(8, 2, jnp.float64)

        def ours(p, x):
            final, ys = gr.scan(cell, p, x, h0)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

        def theirs(v, x):
            final, ys = mod.reference_apply(layer, v, x, h0)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

        g_ours, gx_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(params, xs)
        variables = mod.reference_variables(params)
        g_ref, gx_ref = jax.jit(jax.grad(theirs, argnums=(0, 1)))(variables, xs)
        chex.assert_trees_all_close(mod.reference_variables(g_ours), g_ref, rtol=1e-10)
        chex.assert_trees_all_close(gx_ours, gx_ref, rtol=1e-10, atol=1e-12)


def test_a_reset_differs_from_recurrentgemmas_only_by_the_normalization():
    """recurrentgemma at ``segment_pos == 0`` gives ``h = i * u``; ``gr.scan(resets=)`` from
    a zero initial state gives ``sqrt(1 - a**2) * i * u`` there (the docstring's difference)."""
    mod = _parity_module()
    cell = rglru(8, 2)
    key, f32 = jax.random.PRNGKey(0), jnp.dtype(jnp.float32)  # as parity() calls it
    params, xs, h0 = mod.parity_problem(key, 3, 64, 8, 2, f32)
    h0 = jax.device_put(np.zeros(h0.shape, np.float32))  # a jax array (jaxtyping checks it)
    pos = np.tile(np.arange(1, 65), (3, 1))
    pos[:, 40:] = np.arange(24)  # a new segment at step 40
    layer = mod.reference_layer(8, 2, jnp.float32)
    with mod.patched_scan(unroll=1):
        reference = jax.jit(lambda v, x, pos: mod.reference_apply(layer, v, x, h0, pos)[1])
        ref = reference(mod.reference_variables(params), xs, np.asarray(pos, np.int32))

    @jax.jit
    def ours(p, x):  # the outputs and the decays a_t: one program
        xp: RGLRUInput = cell.project(p, x)
        return gr.scan(cell, p, x, h0, resets=pos == 0)[1], xp.a

    ys, a = ours(params, xs)
    ys, a, ref = np.asarray(ys), np.asarray(a), np.asarray(ref)
    np.testing.assert_allclose(ys[:, :40], ref[:, :40], atol=2e-5)
    norm = np.sqrt(1.0 - a[:, 40] ** 2)
    np.testing.assert_allclose(ys[:, 40], norm * ref[:, 40], rtol=2e-4, atol=1e-6)
    assert float(np.max(np.abs(ys[:, 40] - ref[:, 40]))) > 1e-2
