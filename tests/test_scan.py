"""gr.scan is the Python loop of cell.step, and its options do what docs/api.md says."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_FACTORIES, loop_scan, make, normal, to_numpy

import gatedrnn as gr
from gatedrnn.cells import CELLS

# Values against a Python loop and finite differences, not speed or memory: compiled without
# most XLA optimizations (tests/conftest.py::fast_compile).
pytestmark = pytest.mark.usefixtures("fast_compile")

T = 6


def assert_trees_close(a, b, **kw):
    kw.setdefault("rtol", 1e-5)
    kw.setdefault("atol", 1e-6)
    chex.assert_trees_all_close(a, b, **kw)


@functools.cache
def made(name: str, hidden: int = 5, inp: int = 3, dtype=jnp.float32):
    """conftest.make's cell and params (in NumPy), made once per cell and shape for the
    tests here. Eagerly: make's draws compile once per shape, shared by every cell and
    test file that draws that shape (one jitted program of every cell's draws measured
    no cheaper, and is shared with nothing). NumPy inputs (conftest.normal) go with
    them: they compile nothing."""
    cell, params, _ = make(name, hidden, inp, dtype)
    return cell, to_numpy(params)


# Every cell on one layout (two batch dims), and every layout on the LSTM (a two-array
# state): the cell's math and the layout handling are independent, so this covers each
# pair without compiling all cells x layouts.
SCAN_CASES = [(name, (2, 3), False) for name in sorted(CELL_FACTORIES)] + [
    ("lstm", batch, time_major) for batch, time_major in [((), False), ((3,), False), ((3,), True)]
]


def test_scan_equals_loop_jitted_and_eager_all_cells_layouts_and_batch_shapes():
    """gr.scan under jit and eagerly (un-jitted) equals the Python loop of cell.step."""
    cases = [(made(name), batch, time_major) for name, batch, time_major in SCAN_CASES]
    xs_tm = [normal(i, (T, *batch, 3)) for i, (_, batch, _) in enumerate(SCAN_CASES)]
    xs = [x if tm else np.moveaxis(x, 0, -2) for x, (_, _, tm) in zip(xs_tm, SCAN_CASES)]

    @jax.jit  # one compile: every case's initial state, reference loop and jitted scan
    def loops_and_runs(ps, xs_tm, xs):
        out = []
        for ((cell, _), batch, time_major), p, x_tm, x in zip(cases, ps, xs_tm, xs):
            s0 = jax.tree_util.tree_map(lambda z: z + 0.3, cell.initial_state(p, batch))
            out.append(
                (s0, loop_scan(cell, p, x_tm, s0), gr.scan(cell, p, x, s0, time_major=time_major))
            )
        return out

    for (name, batch, time_major), ((cell, p), _, _), x, (s0, want, jitted) in zip(
        SCAN_CASES, cases, xs, to_numpy(loops_and_runs([p for (_, p), _, _ in cases], xs_tm, xs))
    ):
        want_s, want_ys = want
        eager = gr.scan(cell, p, x, s0, time_major=time_major)
        for variant, (s, ys) in (("jit", jitted), ("eager", eager)):
            if not time_major:
                ys = np.moveaxis(np.asarray(ys), -2, 0)
            msg = f"{name} batch={batch} time_major={time_major} {variant}"
            assert_trees_close(s, want_s, custom_message=msg)
            assert_trees_close(ys, want_ys, custom_message=msg)


def test_unroll_does_not_change_results():
    cell, p = made("lstm")
    xs = normal(1, (2, 7, 3))
    unrolls = [2, 4, True]
    # one compile: the default and every unroll
    a, *others = jax.jit(lambda p, xs: [gr.scan(cell, p, xs, unroll=u) for u in [None, *unrolls]])(
        p, xs
    )
    for unroll, b in zip(unrolls, others):
        assert_trees_close(a, b, custom_message=f"unroll={unroll}")


def test_jitted_scan_traces_once_per_shape():
    cell, p = made("gru")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, xs):
        return gr.scan(cell, p, xs)[1]

    for i in range(3):
        run(p, normal(i, (2, T, 3)))
    # Same shape, new param values: still one trace.
    run(jax.tree_util.tree_map(lambda a: a * 2, p), np.ones((2, T, 3), np.float32))


def test_vmap_over_scan_equals_batched_scan():
    cell, p = made("lstm")
    xs = normal(2, (4, T, 3))
    vm, batched = jax.jit(
        lambda xs: (jax.vmap(lambda x: gr.scan(cell, p, x))(xs), gr.scan(cell, p, xs))
    )(xs)
    assert_trees_close(vm, batched)


def test_gradients_match_finite_differences_float64(cell_name):
    with jax.enable_x64(True):
        cell, p = made(cell_name, hidden=3, inp=2, dtype=jnp.float64)
        xs = normal(3, (2, 5, 2), np.float64)
        xs = xs + 0.5  # keep pre-activations away from kinks (relu's at 0)

        def loss(p, xs):
            s, ys = gr.scan(cell, p, xs)
            return jnp.sum(ys**2) + jnp.sum(jax.tree_util.tree_leaves(s)[0])

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

        def loss_vjp(p, xs):
            """jax.vjp of the scalar loss (cotangent times gradient), one compiled program."""
            value, grads = value_and_grad(p, xs)
            return value, lambda ct: jax.tree_util.tree_map(lambda g: ct * np.asarray(g), grads)

        # What check_grads(order=1, modes=["rev"]) runs. Numpy arguments: its perturbation
        # arithmetic runs in numpy, not as one small XLA program per op and shape.
        jax.test_util.check_vjp(jax.jit(loss), loss_vjp, (p, xs), eps=1e-6, err_msg="VJP")


def test_linear_rnn_bptt_gradient_is_exactly_s_to_the_k():
    """h_T = s^T h_0 + ... for W_h = s I, so dh_T/dh_0 = s^T I, through jax.grad of scan."""
    with jax.enable_x64(True):
        H, s = 4, 0.9
        cell = gr.vanilla(H, activation="linear")
        xs = normal(4, (30, 2), np.float64)
        ks = [1, 5, 30]

        @jax.jit  # one compile: the params and the three lengths
        def jacs(key, h0):
            p = cell.init(key, 2, jnp.float64)._replace(w_h=s * jnp.eye(H))
            return [jax.jacrev(lambda h0, k=k: gr.scan(cell, p, xs[:k], h0)[0])(h0) for k in ks]

        jacs = jacs(jax.random.PRNGKey(0), np.zeros(H))
        for k, jac in zip(ks, jacs):
            chex.assert_trees_all_close(jac, s**k * np.eye(H), rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------------------- seq_lengths


@functools.cache
def padded_scans(cell_name: str) -> dict:
    """One compiled program per cell for the three per-cell tests of seq_lengths, reverse and
    resets below (each test's scans and their references, each on its own inputs), run once;
    each test checks its own part of the result."""
    cell, p = made(cell_name)
    xs_len, xs_rev, xs_reset = (normal(5 + b, (b, T, 3)) for b in (4, 3, 2))
    len_len, len_rev = [T, 3, 0, 1], [T, 4, 1]
    cut = 2
    resets = np.zeros((2, T), bool)
    resets[0, cut] = True

    @jax.jit
    def run(p, xs_len, xs_rev, xs_reset):
        s0 = jax.tree_util.tree_map(lambda z: z + 0.2, cell.initial_state(p, (2,)))
        out = {}
        # seq_lengths: the padded batch and each sequence's valid prefix
        out["seq_lengths"] = (
            gr.scan(cell, p, xs_len, seq_lengths=jnp.array(len_len)),
            [gr.scan(cell, p, xs_len[b, :n]) for b, n in enumerate(len_len)],
        )
        # reverse: the padded batch and each flipped valid prefix
        out["reverse"] = (
            gr.scan(cell, p, xs_rev, seq_lengths=jnp.array(len_rev), reverse=True),
            [gr.scan(cell, p, jnp.flip(xs_rev[b, :n], 0)) for b, n in enumerate(len_rev)],
        )
        # resets: both directions, with their references
        s0_0 = jax.tree_util.tree_map(lambda a: a[0], s0)
        s0_1 = jax.tree_util.tree_map(lambda a: a[1], s0)
        for reverse in (False, True):
            out[f"resets_reverse={reverse}"] = (
                gr.scan(cell, p, xs_reset, s0, resets=resets, reverse=reverse),
                gr.scan(cell, p, xs_reset[0, :cut], s0_0, reverse=reverse),
                gr.scan(cell, p, xs_reset[0, cut:], s0_0, reverse=reverse),
                gr.scan(cell, p, xs_reset[1], s0_1, reverse=reverse),
            )
        return out

    out = jax.device_get(run(p, xs_len, xs_rev, xs_reset))  # compared in numpy
    out["lengths"] = {"seq_lengths": len_len, "reverse": len_rev}
    return out


def test_seq_lengths_zero_outputs_and_final_state_of_valid_prefix(cell_name):
    (s, ys), prefixes = padded_scans(cell_name)["seq_lengths"]
    lengths = padded_scans(cell_name)["lengths"]["seq_lengths"]
    for b, (n, (s_b, ys_b)) in enumerate(zip(lengths, prefixes)):
        assert not np.any(ys[b, n:])
        assert_trees_close(jax.tree_util.tree_map(lambda a, b=b: a[b], s), s_b)
        assert_trees_close(ys[b, :n], ys_b)


def test_no_gradient_flows_from_padding():
    cell, p = made("lstm")
    xs = normal(9, (3, T, 3))
    lengths = np.array([2, 6, 4])

    def loss(xs):
        s, ys = gr.scan(cell, p, xs, seq_lengths=lengths)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(s.c**2)

    g = np.asarray(jax.jit(jax.grad(loss))(xs))
    for b, n in enumerate(lengths.tolist()):
        assert not np.any(g[b, n:])
        assert np.all(np.abs(g[b, :n]).sum(-1) > 0)


def test_reverse_equals_scanning_flipped_valid_prefix(cell_name):
    (s, ys), prefixes = padded_scans(cell_name)["reverse"]
    lengths = padded_scans(cell_name)["lengths"]["reverse"]
    for b, (n, (s_b, ys_b)) in enumerate(zip(lengths, prefixes)):
        assert_trees_close(jax.tree_util.tree_map(lambda a, b=b: a[b], s), s_b)
        assert_trees_close(ys[b, :n], np.flip(ys_b, 0))
        assert not np.any(ys[b, n:])


def test_reverse_without_lengths_time_major():
    cell, p = made("gru")
    xs = normal(10, (T, 2, 3))
    (s, ys), (s2, ys2) = jax.jit(  # one compile for both
        lambda xs: (
            gr.scan(cell, p, xs, reverse=True, time_major=True),
            gr.scan(cell, p, jnp.flip(xs, 0), time_major=True),
        )
    )(xs)
    assert_trees_close(s, s2)
    assert_trees_close(ys, np.flip(ys2, 0))


def test_seq_lengths_traced_under_jit():
    cell, p = made("vanilla")
    xs = normal(11, (2, T, 3))
    lengths = np.array([3, 5])
    # one compile: lengths traced (an argument) and concrete (a constant of the program)
    a, b = jax.jit(
        lambda xs, n: (
            gr.scan(cell, p, xs, seq_lengths=n),
            gr.scan(cell, p, xs, seq_lengths=lengths),
        )
    )(xs, lengths)
    assert_trees_close(a, b)


# --------------------------------------------------------------------------------- resets


def test_reset_equals_two_scans_over_the_pieces(cell_name):
    out = padded_scans(cell_name)
    for reverse in (False, True):
        (s, ys), (a_s, a_ys), (b_s, b_ys), (_, ys_1) = out[f"resets_reverse={reverse}"]
        msg = f"reverse={reverse}"
        assert_trees_close(ys[0], np.concatenate([a_ys, b_ys], 0), custom_message=msg)
        assert_trees_close(
            jax.tree_util.tree_map(lambda a: a[0], s), a_s if reverse else b_s, custom_message=msg
        )
        # The row without a reset is unaffected.
        assert_trees_close(ys[1], ys_1, custom_message=msg)


def test_reset_with_seq_lengths_reverse():
    cell, p = made("lstm")
    xs = normal(12, (1, T, 3))
    resets = np.zeros((1, T), bool)
    resets[0, [2, 5]] = True
    # Length 5: the reset at 5 lies in the padding and must not matter.
    (s, ys), (a_s, a_ys), (_, b_ys) = jax.device_get(
        jax.jit(  # one compile: the scan and its two pieces
            lambda xs: (
                gr.scan(cell, p, xs, resets=resets, seq_lengths=jnp.array([5]), reverse=True),
                gr.scan(cell, p, xs[0, :2], reverse=True),
                gr.scan(cell, p, xs[0, 2:5], reverse=True),
            )
        )(xs)
    )
    assert_trees_close(ys[0, :5], np.concatenate([a_ys, b_ys], 0))
    assert not np.any(ys[0, 5:])
    assert_trees_close(jax.tree_util.tree_map(lambda a: a[0], s), a_s)


# ----------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru"])
def test_truncate_zero_gradient_beyond_window_exact_within(name):
    cell, p = made(name)
    Tn, win = 12, 4
    xs = normal(13, (Tn, 3))

    def last_out(xs, truncate):
        return jnp.sum(gr.scan(cell, p, xs, truncate=truncate)[1][-1])

    @jax.jit  # one compile: both gradients and both forward passes
    def run(xs):
        grads = [jax.grad(last_out)(xs, truncate) for truncate in (None, win)]
        return grads, gr.scan(cell, p, xs, truncate=win), gr.scan(cell, p, xs)

    (g_full, g_tr), fwd_tr, fwd = jax.device_get(run(xs))
    np.testing.assert_array_equal(g_tr[: Tn - win], 0.0)
    assert np.all(np.abs(g_full[: Tn - win]).sum(-1) > 0)
    chex.assert_trees_all_close(g_tr[Tn - win :], g_full[Tn - win :], rtol=1e-5, atol=1e-7)
    # The forward pass is unchanged.
    assert_trees_close(fwd_tr, fwd)


def test_truncate_gradient_never_reaches_more_than_k_back():
    """For every output t, d y_t / d x_s = 0 whenever t - s >= k."""
    cell, p = made("gru", hidden=3)
    Tn, win = 9, 3
    xs = normal(14, (Tn, 3))
    jac = jax.jit(jax.jacrev(lambda xs: gr.scan(cell, p, xs, truncate=win)[1]))(xs)  # (T,H,T,I)
    reach = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # (t, s)
    t, s = np.meshgrid(np.arange(Tn), np.arange(Tn), indexing="ij")
    assert np.all(reach[(t - s) >= win] == 0)
    assert np.all(reach[(s <= t) & (t // win == s // win)] > 0)


# --------------------------------------------------------------------- state_perturbations


def test_state_perturbation_gradient_is_state_gradient():
    """d loss / d delta_t at delta = 0 equals the gradient w.r.t. the state after step t."""
    cell, p = made("lstm")
    xs = normal(15, (T, 3))

    def loss_pert(d):
        return jnp.sum(gr.scan(cell, p, xs, state_perturbations=d)[1][-1] ** 2)

    @jax.jit  # one compile: the perturbation gradient and its reference
    def run():
        zeros = jax.tree_util.tree_map(
            lambda a: jnp.zeros((T, *a.shape), a.dtype), cell.initial_state(p, ())
        )
        g = jax.grad(loss_pert)(zeros)
        # Reference at t = 2: split the scan at t and differentiate the tail w.r.t. the state.
        s2, _ = gr.scan(cell, p, xs[:3])
        return g, jax.grad(lambda s: jnp.sum(gr.scan(cell, p, xs[3:], s)[1][-1] ** 2))(s2)

    g, g_ref = run()
    assert_trees_close(jax.tree_util.tree_map(lambda a: a[2], g), g_ref)


# -------------------------------------------------------------------------------- errors


def test_zero_length_sequence_returns_initial_state():
    cell, p = made("lstm")
    s0 = jax.tree_util.tree_map(lambda z: z + 1.0, to_numpy(cell.initial_state(p, (2,))))
    s, ys = gr.scan(cell, p, np.zeros((2, 0, 3), np.float32), s0)
    assert ys.shape == (2, 0, 5)
    assert_trees_close(s, s0)


def on_device(a: np.ndarray) -> jax.Array:
    """A JAX array of ``a`` by device_put, which compiles nothing (jnp.ones and the like
    compile a program per shape)."""
    return jax.device_put(a)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        (
            dict(xs=on_device(np.ones((3,)))),
            ValueError,
            r"xs must have shape \(\*batch, T, features\)",
        ),
        (dict(xs=on_device(np.ones((2, 4, 7)))), ValueError, r"7 features.*input_size=3"),
        (dict(xs=on_device(np.ones((2, 4, 3), np.int32))), TypeError, "floating point"),
        (
            dict(seq_lengths=on_device(np.array([1, 2, 3]))),
            ValueError,
            r"seq_lengths must have shape",
        ),
        (
            dict(seq_lengths=on_device(np.array([1, 5]))),
            ValueError,
            r"seq_lengths must lie in \[0, T=4\]",
        ),
        (dict(seq_lengths=on_device(np.array([-1, 2]))), ValueError, r"lie in \[0, T=4\]"),
        (
            dict(seq_lengths=on_device(np.array([1.0, 2.0]))),
            TypeError,
            "seq_lengths must be integers",
        ),
        (dict(resets=on_device(np.zeros((2, 5), bool))), ValueError, r"resets must have shape"),
        (dict(resets=on_device(np.zeros((2, 4)))), TypeError, "resets must be booleans"),
        (dict(truncate=0), ValueError, "truncate must be None or an int >= 1"),
        (dict(unroll=0), ValueError, "unroll must be None, an int >= 1"),
        (dict(initial_state=on_device(np.zeros((3, 5)))), ValueError, r"initial_state.*\(2, 5\)"),
    ],
)
def test_bad_scan_inputs_raise_helpful_errors(kwargs, exc, msg):
    cell, p = made("gru")
    args = dict(xs=on_device(np.ones((2, 4, 3))))
    args.update(kwargs)
    xs = args.pop("xs")
    with pytest.raises(exc, match=msg):
        gr.scan(cell, p, xs, **args)


def test_not_a_cell_raises():
    with pytest.raises(TypeError, match="cell must be a gatedrnn Cell"):
        gr.scan("lstm", None, jnp.ones((2, 3)))


PADDING_PATHS = {
    "default_reverse": {"reverse": True},
    "plain_loop": {"fused": False},
    "remat_chunks": {"remat": 2},
    "remat_steps_reverse": {"remat": True, "reverse": True},
}
PADDING_CELLS = [*sorted(CELLS), "gru_reset_before"]  # every registered cell


@pytest.mark.parametrize("name", PADDING_CELLS)
def test_nan_padding_does_not_poison_values_or_gradients(name):
    """Inputs at t >= seq_lengths never reach the math: NaN/inf there change nothing, on
    every path of PADDING_PATHS."""
    cell, p = made(name)
    xs = normal(16, (3, T, 3))
    lengths = np.array([T, 2, 0])
    t = np.arange(T)[None, :, None]
    pad = np.where(
        t < lengths[:, None, None], 0.0, np.array([np.nan, np.inf, -np.inf])[:, None, None]
    ).astype(np.float32)

    def loss(p, xs, options):
        s, ys = gr.scan(cell, p, xs, seq_lengths=lengths, **options)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(s))

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))
    paths = sorted(PADDING_PATHS)
    run = jax.jit(  # one compile: every path, clean and dirty inputs alike
        lambda p, xs: [value_and_grad(p, xs, PADDING_PATHS[path]) for path in paths]
    )
    clean = run(p, np.where(np.isfinite(pad), xs, np.float32(0.0)))
    dirty = run(p, xs + pad)
    for path, d, c in zip(paths, dirty, clean):
        chex.assert_tree_all_finite(d, custom_message=path)
        assert_trees_close(d, c, custom_message=path)


def test_default_unroll_is_the_measured_table_and_changes_no_value():
    """unroll=None takes gr.default_unroll(T, cell.name): 4 for the LSTM on the CPU (the
    unroll sweep's best), 1 elsewhere and on backends not measured, never more than T."""
    assert gr.default_unroll(100, "lstm", "cpu") == 4
    assert gr.default_unroll(3, "lstm", "cpu") == 3 and gr.default_unroll(0, "lstm", "cpu") == 1
    assert gr.default_unroll(100, "gru", "cpu") == gr.default_unroll(100, "vanilla", "cpu") == 1
    assert gr.default_unroll(100, "lstm", "gpu") == 1
    cell, params = made("lstm")
    xs = normal(17, (2, 9, 3))
    jaxpr = str(jax.make_jaxpr(lambda x: gr.scan(cell, params, x))(xs))
    want = gr.default_unroll(9, "lstm")
    assert f"unroll={want}" in jaxpr
    default, one = jax.jit(  # one compile for both
        lambda xs: (gr.scan(cell, params, xs), gr.scan(cell, params, xs, unroll=1))
    )(xs)
    chex.assert_trees_all_close(default, one, rtol=1e-6, atol=1e-6)
