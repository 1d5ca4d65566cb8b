"""Bad input to the library core gives a ValueError/TypeError naming what was expected and
what came, never an XLA or attribute error; edge sizes (T = 0, empty batch) just work."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

import gatedrnn as gr

KEY = jax.random.PRNGKey(0)
I, H, B, T = 3, 4, 2, 5
CELLS = {
    "vanilla": lambda h=H: gr.vanilla(h),
    "lstm": lambda h=H: gr.lstm(h),
    "gru": lambda h=H: gr.gru(h),
}


@functools.cache
def params_of(name: str, hidden_size: int = H):
    return CELLS[name](hidden_size).init(KEY, I)


@pytest.fixture(params=sorted(CELLS), scope="module")
def setup(request):
    make = CELLS[request.param]
    return make, make(), params_of(request.param)


def xs_of(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def normal_xs():
    """(B, T, I) standard normal inputs drawn in NumPy (jax.random compiles per shape)."""
    return normal(0, (B, T, I))


def state_like(cell, params, fn):
    return jax.tree_util.tree_map(fn, cell.initial_state(params, (B,)))


# ------------------------------------------------------------------ rank and feature size


def test_scan_rejects_rank_below_two(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match=r"at least 2 axes, got shape \(3,\)"):
        gr.scan(cell, params, xs_of(I))


def test_scan_rejects_scalar_and_non_arrays(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match="at least 2 axes"):
        gr.scan(cell, params, 1.0)
    with pytest.raises(TypeError, match="xs must be an array, got NoneType"):
        gr.scan(cell, params, None)
    with pytest.raises(TypeError, match="xs must be an array, got str"):
        gr.scan(cell, params, "abc")


def test_feature_size_mismatch_names_both_sizes(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match=r"has 7 features .* expect input_size=3"):
        gr.scan(cell, params, xs_of(B, T, 7))
    with pytest.raises(ValueError, match=r"has 7 features .* expect input_size=3"):
        cell.step(params, cell.initial_state(params, (B,)), xs_of(B, 7))


def test_step_rejects_scalar_input(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match="got a scalar"):
        cell.step(params, cell.initial_state(params), jnp.float32(1.0))


# ------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_integer_and_bool_inputs_are_a_type_error(setup, dtype):
    _, cell, params = setup
    with pytest.raises(TypeError, match=r"floating point like the params \(float32\)"):
        gr.scan(cell, params, xs_of(B, T, I, dtype=dtype))
    with pytest.raises(TypeError, match="floating point"):
        cell.step(params, cell.initial_state(params, (B,)), xs_of(B, I, dtype=dtype))


def test_dtype_mismatch_between_params_and_inputs(setup):
    _, cell, params = setup
    with pytest.raises(TypeError, match="x has dtype bfloat16 but the params are float32"):
        gr.scan(cell, params, xs_of(B, T, I, dtype=jnp.bfloat16))
    p16 = jax.eval_shape(lambda k: cell.init(k, I, dtype=jnp.float16), KEY)  # shapes only
    xs = xs_of(B, T, I)
    with pytest.raises(TypeError, match="float32 but the params are float16"):
        jax.eval_shape(lambda p: gr.scan(cell, p, xs), p16)
    # numpy's float64 becomes float32 like everywhere in JAX without x64 (not an error);
    # closed over, gr.scan sees the numpy array as eagerly (and it runs: one compile)
    _, ys = jax.jit(lambda p: gr.scan(cell, p, np.ones((B, T, I))))(params)
    assert ys.dtype == jnp.float32


def test_params_of_mixed_dtypes(setup):
    _, cell, params = setup
    mixed = params._replace(w_h=params.w_h.astype(jnp.float16))
    with pytest.raises(TypeError, match=r"params.w_x is float32, params.w_h is float16"):
        gr.scan(cell, mixed, xs_of(B, T, I))


def test_init_rejects_integer_dtype_and_bad_sizes(setup):
    make, cell, _ = setup
    with pytest.raises(TypeError, match="floating point, got int32"):
        cell.init(KEY, I, dtype=jnp.int32)
    for bad in (0, -2, 2.0, True, "3"):
        with pytest.raises(ValueError, match="input_size must be an integer >= 1"):
            cell.init(KEY, bad)
        with pytest.raises(ValueError, match="hidden_size must be an integer >= 1"):
            make(bad)


def test_state_dtype_mismatch_in_step_and_scan(setup):
    _, cell, params = setup
    s16 = state_like(cell, params, lambda a: a.astype(jnp.bfloat16))
    with pytest.raises(TypeError, match="state has dtype bfloat16 but the params are float32"):
        cell.step(params, s16, xs_of(B, I))
    with pytest.raises(TypeError, match="initial_state has dtype bfloat16"):
        gr.scan(cell, params, xs_of(B, T, I), s16)


# ----------------------------------------------------------------- params and state shape


@pytest.mark.parametrize("other", sorted(CELLS))
def test_params_of_another_cell_or_size_are_refused(setup, other):
    _, cell, _ = setup
    xs, state = xs_of(B, T, I), cell.initial_state(params_of(cell.name), (B,))
    # the other size's params on shapes alone (jax.eval_shape: the same checks, no init run)
    bigger = jax.eval_shape(lambda k: CELLS[other](H + 1).init(k, I), KEY)
    for wrong in (bigger, params_of(other)):
        if other == cell.name and wrong.w_h.shape[0] == H:
            continue  # that's the right params
        with pytest.raises((ValueError, TypeError), match=f"a {cell.name} cell"):
            jax.eval_shape(lambda w: gr.scan(cell, w, xs), wrong)
        with pytest.raises((ValueError, TypeError), match=f"a {cell.name} cell"):
            jax.eval_shape(lambda w: cell.step(w, state, xs[:, 0]), wrong)


def test_params_not_arrays(setup):
    _, cell, params = setup
    with pytest.raises(TypeError, match=r"params\.w_h must be an array, got NoneType"):
        gr.scan(cell, params._replace(w_h=None), xs_of(B, T, I))
    with pytest.raises(TypeError, match="needs params"):
        gr.scan(cell, {"w_x": params.w_x}, xs_of(B, T, I))


def test_step_state_of_wrong_size_or_batch(setup):
    _, cell, params = setup
    wrong_h = state_like(cell, params, lambda a: jnp.zeros((B, H + 1)))
    with pytest.raises(ValueError, match=rf"H={H}, got \(2, 5\)"):
        cell.step(params, wrong_h, xs_of(B, I))
    with pytest.raises(ValueError, match=r"batch \(3,\) .* got \(2, 4\)"):
        cell.step(params, cell.initial_state(params, (B,)), xs_of(3, I))
    with pytest.raises(ValueError, match="must have the structure"):
        cell.step(params, (cell.initial_state(params, (B,)),), xs_of(B, I))


def test_step_state_broadcasts_like_scan():
    cell = gr.lstm(H)
    params = cell.init(KEY, I)
    _, y = cell.step(params, cell.initial_state(params), xs_of(B, I))
    assert y.shape == (B, H)


def test_scan_initial_state_of_wrong_shape_or_structure(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match=r"\(\*batch, H\) = \(2, 4\)"):
        gr.scan(cell, params, xs_of(B, T, I), state_like(cell, params, lambda a: a[:, :3]))
    with pytest.raises(ValueError, match="structure"):
        gr.scan(cell, params, xs_of(B, T, I), [cell.initial_state(params, (B,))])


# ------------------------------------------------------------------------- edge sizes


def test_zero_steps_returns_initial_state_and_empty_outputs(setup):
    _, cell, params = setup
    s0 = state_like(cell, params, lambda a: a + 0.5)

    @jax.jit  # one compile: the plain, time-major reversed and seq_lengths scans of T = 0
    def jitted(p, xs, s):
        return (
            gr.scan(cell, p, xs, s),
            gr.scan(cell, p, jnp.swapaxes(xs, 0, 1), s, time_major=True, reverse=True),
            gr.scan(cell, p, xs, seq_lengths=np.zeros(B, np.int32)),
        )

    final, ys = gr.scan(cell, params, xs_of(B, 0, I), s0)  # eagerly
    assert ys.shape == (B, 0, H)
    chex.assert_trees_all_equal(final, s0)
    (final, ys), (final_tm, ys_tm), (_, ys_len) = jitted(params, xs_of(B, 0, I), s0)
    assert ys.shape == (B, 0, H)
    chex.assert_trees_all_equal(final, s0)
    assert ys_tm.shape == (0, B, H)
    chex.assert_trees_all_equal(final_tm, s0)
    assert ys_len.shape == (B, 0, H)


def test_zero_steps_gradient_is_zero_for_params_and_identity_for_state(setup):
    _, cell, params = setup
    s0 = cell.initial_state(params, (B,))

    def loss(p, s):
        final, ys = gr.scan(cell, p, xs_of(B, 0, I), s)
        return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(final)) + jnp.sum(ys)

    gp, gs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, s0)
    for g in jax.tree_util.tree_leaves(gp):
        np.testing.assert_array_equal(g, 0.0)
    for g in jax.tree_util.tree_leaves(gs):
        np.testing.assert_array_equal(g, 1.0)


def test_empty_batch(setup):
    _, cell, params = setup

    @jax.jit  # one compile: a scan with lengths, a gradient and a step on an empty batch
    def run(params):
        xs = jnp.ones((0, T, I))
        return (
            gr.scan(cell, params, xs, seq_lengths=np.zeros(0, np.int32)),
            jax.grad(lambda p: jnp.sum(gr.scan(cell, p, xs)[1]))(params),
            cell.step(params, cell.initial_state(params, (0,)), jnp.ones((0, I))),
        )

    (final, ys), g, (_, y) = jax.device_get(run(params))
    assert ys.shape == (0, T, H)
    assert all(leaf.shape == (0, H) for leaf in jax.tree_util.tree_leaves(final))
    assert all(np.all(leaf == 0) for leaf in jax.tree_util.tree_leaves(g))
    assert y.shape == (0, H)


# ------------------------------------------------------------------------ seq_lengths


def test_seq_lengths_wrong_shape_dtype_or_range(setup):
    _, cell, params = setup
    xs = xs_of(B, T, I)
    with pytest.raises(ValueError, match=r"shape \(\*batch,\) = \(2,\), got \(3,\)"):
        gr.scan(cell, params, xs, seq_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"= \(2,\), got \(2, 1\)"):
        gr.scan(cell, params, xs, seq_lengths=jnp.array([[1], [2]]))
    with pytest.raises(TypeError, match="seq_lengths must be integers, got dtype float32"):
        gr.scan(cell, params, xs, seq_lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, T=5\], got values from -1 to 2"):
        gr.scan(cell, params, xs, seq_lengths=jnp.array([-1, 2]))
    with pytest.raises(ValueError, match=r"\[0, T=5\], got values from 2 to 6"):
        gr.scan(cell, params, xs, seq_lengths=np.array([6, 2]))


@pytest.mark.parametrize("reverse", [False, True])
def test_traced_out_of_range_lengths_are_clipped_not_nan(setup, reverse):
    _, cell, params = setup
    xs = normal_xs()
    run = jax.jit(lambda lengths: gr.scan(cell, params, xs, seq_lengths=lengths, reverse=reverse))
    got = jax.device_get(run(np.array([T + 3, -2], np.int32)))
    want = jax.device_get(run(np.array([T, 0], np.int32)))
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(got))
    chex.assert_trees_all_equal(got, want)


def test_concrete_lengths_closed_over_under_jit_are_checked_not_traced(setup):
    _, cell, params = setup
    lengths = jnp.array([2, 5])
    ys = jax.jit(lambda x: gr.scan(cell, params, x, seq_lengths=lengths)[1])(xs_of(B, T, I))
    assert ys.shape == (B, T, H)
    with pytest.raises(ValueError, match=r"\[0, T=5\], got values from 2 to 6"):
        too_long = jnp.array([2, 6])
        jax.jit(lambda x: gr.scan(cell, params, x, seq_lengths=too_long))(xs_of(B, T, I))


def test_resets_wrong_shape_or_dtype(setup):
    _, cell, params = setup
    xs = xs_of(B, T, I)
    with pytest.raises(ValueError, match=r"resets must have shape \(\*batch, T\) = \(2, 5\)"):
        gr.scan(cell, params, xs, resets=jnp.zeros((T, B), bool))
    with pytest.raises(TypeError, match="resets must be booleans, got dtype int32"):
        gr.scan(cell, params, xs, resets=jnp.zeros((B, T), jnp.int32))


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reverse": "yes"}, TypeError, "reverse must be True or False, got 'yes'"),
        ({"time_major": 1}, TypeError, "time_major must be True or False, got 1"),
        ({"remat": None}, ValueError, 'remat must be a bool, "sqrt" or an int >= 1, got None'),
        ({"unroll": 0}, ValueError, "unroll must be None, an int >= 1 or a bool, got 0"),
        ({"truncate": 0}, ValueError, "truncate must be None or an int >= 1, got 0"),
        ({"truncate": 2.5}, ValueError, "truncate must be None or an int >= 1, got 2.5"),
    ],
)
def test_scan_options(setup, kwargs, error, match):
    _, cell, params = setup
    with pytest.raises(error, match=match):
        gr.scan(cell, params, xs_of(B, T, I), **kwargs)


def test_scan_rejects_a_non_cell(setup):
    _, _, params = setup
    with pytest.raises(TypeError, match="cell must be a gatedrnn Cell, got function"):
        gr.scan(gr.lstm, params, xs_of(B, T, I))


def test_unknown_cell_options():
    with pytest.raises(TypeError, match="unexpected keyword argument 'nonlinearity'"):
        gr.vanilla(H, nonlinearity="tanh")
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoid'; expected one of"):
        gr.vanilla(H, activation="sigmoid")
    with pytest.raises(ValueError, match="unknown activation"):
        gr.vanilla(H, activation=["tanh"])
    with pytest.raises(TypeError, match="forget_bias must be a real number, got 'one'"):
        gr.lstm(H, forget_bias="one")
    with pytest.raises(ValueError, match="forget_bias must be finite, got nan"):
        gr.lstm(H, forget_bias=float("nan"))
    with pytest.raises(ValueError, match="reset_after must be True or False, got 'yes'"):
        gr.gru(H, reset_after="yes")
    with pytest.raises(TypeError, match=r"kernel_init must be a function .* got str"):
        gr.gru(H, kernel_init="orthogonal")
    with pytest.raises(TypeError, match="unexpected keyword argument 'bias'"):
        gr.lstm(H, bias=False)


def test_initial_state_batch_shape(setup):
    _, cell, params = setup
    with pytest.raises(ValueError, match=r"sizes >= 0, got \(-1,\)"):
        cell.initial_state(params, (-1,))
    with pytest.raises(ValueError, match="batch_shape must be a tuple of ints"):
        cell.initial_state(params, "ab")


# ---------------------------------------------------------------------- stack, bidir


def test_stack_options():
    cell = gr.lstm(H)
    with pytest.raises(TypeError, match="cell must be a gatedrnn Cell"):
        gr.stack("lstm", 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"num_layers must be an int >= 1, got {bad!r}"):
            gr.stack(cell, bad)
    for bad in (1.0, -0.1, "0.5", None):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got"):
            gr.stack(cell, 2, dropout=bad)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        gr.stack(cell, 2, bidirectional="yes")
    assert gr.stack(cell, np.int64(2)).num_layers == 2


def test_stack_apply_wrong_params_state_or_input():
    layers = gr.stack(gr.gru(H), 2)
    params = layers.init(KEY, I)
    xs = xs_of(B, T, I)
    with pytest.raises(ValueError, match="tuple of 2 layer params, got tuple of length 1"):
        layers.apply(params[:1], xs)
    with pytest.raises(ValueError, match="tuple of 2 layer states, got int"):
        layers.apply(params, xs, 5)
    with pytest.raises(ValueError, match="tuple of 2 layer states, got tuple of length 3"):
        layers.apply(params, xs, (None, None, None))
    with pytest.raises(ValueError, match="expect input_size=3"):
        layers.apply(params, xs_of(B, T, I + 1))
    # layer 2 takes H features, not I
    swapped = (params[0], gr.gru(H).init(KEY, I))
    with pytest.raises(ValueError, match="expect input_size=3"):
        layers.apply(swapped, xs)
    _, ys = jax.jit(layers.apply)(params, xs_of(B, 0, I))
    assert ys.shape == (B, 0, H)


def test_bidirectional_wrong_params_or_state(setup):
    _, cell, params = setup
    xs = xs_of(B, T, I)
    with pytest.raises(ValueError, match=r"params must be Bidir\(fw, bw\)"):
        gr.bidirectional_scan(cell, params.w_x, xs)
    with pytest.raises(ValueError, match=r"initial_state must be None or Bidir\(fw, bw\)"):
        gr.bidirectional_scan(cell, gr.Bidir(params, params), xs, jnp.zeros((B, H)))
    with pytest.raises(TypeError, match="takes no reverse="):
        gr.bidirectional_scan(cell, gr.Bidir(params, params), xs, reverse=True)
    run = jax.jit(lambda p, xs: gr.bidirectional_scan(cell, p, xs))
    _, ys = run(gr.Bidir(params, params), xs_of(B, 0, I))
    assert ys.shape == (B, 0, 2 * H)


# ---------------------------------------------------- numpy float64 and huge seq_lengths


def test_float64_numpy_input_is_treated_alike_in_every_layout_and_under_jit(setup):
    """A float64 numpy input follows JAX's own rule (as ``jax.jit`` applies it): float32
    without x64, the same batch-major, time-major, in ``step`` and under ``jit``; with x64
    on it is float64 and refused against float32 params in every layout."""
    _, cell, params = setup
    xs64 = np.random.default_rng(0).normal(size=(B, T, I))
    xs32 = xs64.astype(np.float32)

    @jax.jit  # one compile; the numpy inputs closed over reach gr.scan as they do eagerly
    def closed_over(params):
        # a copy: JAX caches a closed-over numpy constant's conversion by identity, and the
        # x64 checks below must see xs64 converted afresh
        x = xs64.copy()
        state0 = cell.initial_state(params, (B,))
        return (
            gr.scan(cell, params, xs32),
            gr.scan(cell, params, x),
            gr.scan(cell, params, x.transpose(1, 0, 2), time_major=True),
            cell.step(params, state0, x[:, 0]),
            cell.step(params, state0, x[:, 0].astype(np.float32)),
        )

    want, got, (final_tm, ys_tm), step64, step32 = closed_over(params)
    chex.assert_trees_all_equal(got, want)
    jitted = jax.jit(lambda x: gr.scan(cell, params, x))
    chex.assert_trees_all_equal(jitted(xs64), jitted(xs32))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6)
    jax.tree_util.tree_map(close, final_tm, want[0])
    close(ys_tm, np.asarray(want[1]).transpose(1, 0, 2))
    chex.assert_trees_all_equal(step64, step32)
    with jax.enable_x64(True):
        for x, kw in [(xs64, {}), (xs64.transpose(1, 0, 2), {"time_major": True})]:
            with pytest.raises(TypeError, match="float64 but the params are float32"):
                gr.scan(cell, params, x, **kw)


@pytest.mark.parametrize(
    "lengths",
    [np.array([2**32 + 3, 2], np.int64), [2**32 + 3, 2], np.array([2**64 - 1, 2], np.uint64)],
    ids=["int64", "list", "uint64"],
)
def test_lengths_beyond_int32_are_refused_before_any_cast(setup, lengths):
    _, cell, params = setup
    with pytest.raises(ValueError, match=r"\[0, T=5\], got values from 2 to 1844|from 2 to 4294"):
        gr.scan(cell, params, xs_of(B, T, I), seq_lengths=lengths)


def test_traced_int64_lengths_beyond_int32_are_clipped_not_wrapped(setup):
    _, cell, params = setup
    xs = normal_xs()
    with jax.enable_x64(True):
        run = jax.jit(lambda n: gr.scan(cell, params, xs, seq_lengths=n))
        got = run(jnp.array([2**32 + 3, 2], jnp.int64))  # 3 after a cast to int32
        want = run(jnp.array([T, 2], jnp.int64))
    chex.assert_trees_all_equal(got, want)


def test_int64_lengths_passed_into_jit_wrap_before_gatedrnn_sees_them(setup):
    """Outside gatedrnn's reach (docs/bad_input.md): without x64, ``jax.jit`` turns an int64
    argument into int32 at its boundary, wrapping silently; closed over (or outside
    ``jit``) the same lengths are refused."""
    _, cell, params = setup
    lengths = np.array([2**32 + 3, 2], np.int64)
    assert np.asarray(jax.jit(lambda n: n)(lengths)).tolist() == [3, 2]  # JAX, not gatedrnn
    with pytest.raises(ValueError, match="got values from 2 to 4294967299"):
        jax.jit(lambda x: gr.scan(cell, params, x, seq_lengths=lengths))(xs_of(B, T, I))


def test_a_size_too_large_for_memory_fails_at_init_with_the_size_it_needs():
    with pytest.raises(ValueError, match=r"params of a lstm cell .* would take [\d,.]+ GiB"):
        gr.lstm(10**6).init(jax.random.PRNGKey(0), 10**6)
    with pytest.raises(ValueError, match=r"MinGRUParams .* would take [\d,.]+ GiB"):
        gr.min_gru(10**6).init(jax.random.PRNGKey(0), 10**6)


def test_an_input_projection_too_large_for_memory_fails_before_xla_allocates():
    cell = gr.gru(1024)
    params = jax.eval_shape(lambda k: cell.init(k, 8), jax.random.PRNGKey(0))  # shapes only
    huge = jax.ShapeDtypeStruct((10**5, 10**4, 8), jnp.float32)  # never allocated
    with pytest.raises(ValueError, match=r"input projection of xs .* would take [\d,.]+ GiB"):
        jax.eval_shape(lambda p, xs: gr.scan(cell, p, xs), params, huge)


def test_batches_too_large_for_memory_fail_before_anything_is_drawn():
    """A training batch or an evaluation set that cannot fit: one ValueError with the size
    it would take (from jax.eval_shape), not XLA's RESOURCE_EXHAUSTED. fit and the small
    sizes run on shapes alone (jax.eval_shape: the same checks, nothing compiled): without
    the check fit would not raise there either."""
    from gatedrnn import training
    from gatedrnn.training import tasks

    task = tasks.adding(1000)
    with pytest.raises(ValueError, match=r"a training batch \(1,000,000,000 adding .* GiB"):
        training.task_batches(task, 10**9)
    match = r"the evaluation set \(4 x 100,000,000 adding sequences of length 1000\) would take"
    with pytest.raises(ValueError, match=match):
        training.eval_batches_for(task, 10**8, 4)
    with pytest.raises(ValueError, match="the evaluation set"):
        jax.eval_shape(
            lambda: training.fit(
                task, gr.gru(4), num_steps=1, eval_batch_size=10**9, progress=False
            )
        )
    small = jax.eval_shape(lambda: training.eval_batches_for(task, 4, 2))
    assert len(small) == 2 and small[0].inputs.shape == (4, 1000, 2)  # small sizes still work


def test_diagnostics_too_large_for_memory_fail_before_xla_allocates():
    """Every diagnostic keeps (T + 1) states per sequence: a size that cannot fit is one
    ValueError with the GiB it would take (checked on shapes alone, nothing allocated)."""
    from gatedrnn import diagnostics as dg

    cell = gr.lstm(64)
    params = jax.eval_shape(lambda k: cell.init(k, 4), jax.random.PRNGKey(0))  # shapes only
    huge = jax.ShapeDtypeStruct((10**6, 10**4, 4), jnp.float32)
    match = r"the states of 1,000,000 sequences x 10,001 steps would take [\d,.]+ GiB"
    for run in (
        lambda p, xs: dg.state_gradient_norms(cell, p, xs, dg.last_output_loss),
        lambda p, xs: dg.gate_statistics(cell, p, xs),
    ):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(run, params, huge)


# --------------------------------------------------- params by type, foreign arrays, keys


def test_params_of_another_type_with_the_same_fields_are_refused_naming_both_types():
    """Params are checked by type, not field names: MinGRUParams(w_x, b) that fit a
    min_lstm's sizes, or a user NamedTuple with LSTMParams' fields and shapes, are refused
    with a TypeError naming both types; the cell's own NamedTuple (also rebuilt by a tree
    map) is accepted."""
    from typing import NamedTuple

    xs = xs_of(B, T, I)
    min_lstm, min_gru = gr.min_lstm(2), gr.min_gru(3)  # both w_x (I, 6), b (6,)
    gru_params = min_gru.init(KEY, I)
    with pytest.raises(
        TypeError, match="min_lstm cell needs params of type MinLSTMParams, got MinGRUParams"
    ):
        gr.scan(min_lstm, gru_params, xs)
    with pytest.raises(TypeError, match="MinLSTMParams, got MinGRUParams"):
        min_lstm.step(gru_params, jnp.zeros((B, 2)), xs_of(B, I))

    class Mine(NamedTuple):
        w_x: jax.Array
        w_h: jax.Array
        b: jax.Array

    lstm = gr.lstm(H)
    params = lstm.init(KEY, I)
    with pytest.raises(TypeError, match="lstm cell needs params of type LSTMParams, got Mine"):
        gr.scan(lstm, Mine(*params), xs)
    # same type (also rebuilt by a tree map): fine; one compile for both runs
    jax.jit(
        lambda p, q: (
            gr.scan(lstm, jax.tree_util.tree_map(lambda a: a * 2, p), xs),
            gr.scan(min_lstm, q, xs),
        )
    )(params, min_lstm.init(KEY, I))


def test_a_torch_tensor_is_refused_saying_how_to_convert_it(setup):
    """A torch tensor as xs, initial state, step input or params leaf: one TypeError that
    says to convert it (never torch's or JAX's own error from deep inside)."""
    torch = pytest.importorskip("torch")
    _, cell, params = setup
    with pytest.raises(TypeError, match=r"xs is a torch\.Tensor.*\.numpy\(\).*jnp\.asarray"):
        gr.scan(cell, params, torch.ones(B, T, I))
    state = jax.tree_util.tree_map(lambda a: torch.zeros(a.shape), cell.initial_state(params, (B,)))
    with pytest.raises(TypeError, match=r"initial_state is a torch\.Tensor"):
        gr.scan(cell, params, xs_of(B, T, I), state)
    with pytest.raises(TypeError, match=r"x is a torch\.Tensor"):
        cell.step(params, cell.initial_state(params, (B,)), torch.ones(B, I))
    with pytest.raises(TypeError, match=r"params\.w_x is a torch\.Tensor"):
        gr.scan(cell, params._replace(w_x=torch.ones(I, 1)), xs_of(B, T, I))


@pytest.mark.parametrize("key", [0, 7, 1.5, None, "seed", np.int64(3), jnp.zeros(2, jnp.int32)])
def test_init_with_something_else_than_a_prng_key_says_how_to_make_one(key):
    for init in (gr.lstm(H).init, gr.min_gru(H).init, gr.stack(gr.gru(H), 2).init):
        with pytest.raises(TypeError, match=r"key must be a JAX PRNG key, e\.g\. jax\.random\.key"):
            init(key, I)
    gr.lstm(H).init(jax.random.key(0), I)  # typed and raw keys both work
    gr.lstm(H).init(jax.random.PRNGKey(0), I)
    gr.lstm(H).init(np.asarray(jax.random.PRNGKey(0)), I)


# ------------------------------------------- every registered cell: the common checks


_scan_ys = jax.jit(lambda cell, params, xs: gr.scan(cell, params, xs)[1], static_argnums=0)


@functools.cache
def registered(name: str):
    cell = gr.make_cell(name, H)
    return cell, cell.init(KEY, I)


@pytest.mark.parametrize("name", sorted(gr.CELLS))
def test_every_registered_cell_gives_the_common_clear_errors(name):
    """Every cell in the registry (today's and any future one) refuses, with one
    TypeError/ValueError saying what it expected: an integer key, the params of another
    registered cell, a NamedTuple impostor with its own params' fields and arrays, a wrong
    input size, integer or other-float inputs, and a torch tensor as xs."""
    from collections import namedtuple

    cell, params = registered(name)
    xs = xs_of(B, T, I)
    with pytest.raises(TypeError, match=r"key must be a JAX PRNG key"):
        cell.init(0, I)
    other = next(n for n in sorted(gr.CELLS) if type(registered(n)[1]) is not type(params))
    with pytest.raises(TypeError, match=rf"{name} cell needs params"):
        gr.scan(cell, registered(other)[1], xs)
    Impostor = namedtuple("Impostor", type(params)._fields)
    with pytest.raises(TypeError, match=rf"of type {type(params).__name__}, got Impostor"):
        gr.scan(cell, Impostor(*params), xs)
    with pytest.raises(TypeError, match=rf"of type {type(params).__name__}, got Impostor"):
        cell.initial_state(Impostor(*params), (B,))
    with pytest.raises(ValueError, match=rf"4 features on its last axis.*input_size={I}"):
        gr.scan(cell, params, xs_of(B, T, I + 1))
    for dtype in (jnp.int32, jnp.float16):
        with pytest.raises(TypeError, match=r"x must be floating point|dtype"):
            gr.scan(cell, params, xs_of(B, T, I, dtype=dtype))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"xs is a torch\.Tensor.*\.numpy\(\)"):
        gr.scan(cell, params, torch.ones(B, T, I))
    ys = _scan_ys(cell, params, xs)  # and the good input still works
    assert ys.shape == (B, T, cell.hidden_size)
