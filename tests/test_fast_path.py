"""The fused loop (gatedrnn._fused) gives the values and derivatives of the generic one.

Oracle: ``gr.scan(..., fused=False)``, i.e. ``jax.lax.scan``'s own autodiff, in float64,
for every cell and every scan option, in reverse mode (``jax.grad``) and forward mode
(``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``); and finite differences. The default
(``fused=None``) takes the fused path whenever the cell's ``recur`` is a ``gr.Split`` and
the options allow it, and its backward pass is the cuDNN-style one.
"""

from __future__ import annotations

import sys

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import to_numpy

import gatedrnn as gr

# Values and derivatives against the generic loop, not speed or memory: compiled without
# most XLA optimizations (tests/conftest.py::fast_compile; all pass either way).
pytestmark = pytest.mark.usefixtures("fast_compile")

B, T, I, H = 3, 7, 4, 5

CELLS = {
    "vanilla": lambda: gr.vanilla(H),
    "lstm": lambda: gr.lstm(H),
    "gru_after": lambda: gr.gru(H),
    "gru_before": lambda: gr.gru(H, reset_after=False),
}

OPTIONS = {
    "plain": {},
    "lengths_reverse": {"seq_lengths": np.array([7, 3, 0]), "reverse": True},
    "lengths_truncate": {"seq_lengths": np.array([5, 7, 1]), "truncate": 3},
    "resets_unroll": {
        "resets": np.eye(B, T, 2, dtype=bool) | np.eye(B, T, 5, dtype=bool),
        "unroll": 3,
    },
    "time_major_perturbed": {"time_major": True, "perturb": True},
}


def _loss_and_grads(cell, args_per_option):
    """Value and gradients on the fused (default) and the generic loop, for every option
    of :data:`OPTIONS` (``args_per_option[option] = (params, xs, state0, perts)``): one
    compile for all."""

    def loss(params, xs, state0, perts, options, fused):
        kw = {k: v for k, v in options.items() if k != "perturb"}
        final, ys = gr.scan(
            cell,
            params,
            xs,
            state0,
            state_perturbations=perts if options.get("perturb") else None,
            fused=fused,
            **kw,
        )
        leaves = jax.tree_util.tree_leaves(final)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(s**2) for s in leaves)

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))

    @jax.jit
    def run(args_per_option):
        return {
            option: [value_and_grad(*args, OPTIONS[option], fused) for fused in (None, False)]
            for option, args in args_per_option.items()
        }

    return run(args_per_option)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_equals_generic_values_and_grads_float64(name):
    """Every option of OPTIONS (one compile for the cell)."""
    with jax.enable_x64(True):
        cell = CELLS[name]()
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        state0 = jax.tree_util.tree_map(
            lambda s: np.full(s.shape, 0.3),
            jax.eval_shape(lambda p: cell.initial_state(p, (B,)), params),
        )
        perts = jax.tree_util.tree_map(lambda s: np.full((T, *s.shape), 0.01), state0)
        args = {}
        for option, options in OPTIONS.items():
            shape = (T, B, I) if options.get("time_major") else (B, T, I)
            xs = np.random.default_rng(1).standard_normal(shape)
            args[option] = (params, xs, state0, perts)
        for option, (fast, generic) in _loss_and_grads(cell, args).items():
            # Guard against a vacuous comparison: the gradients are not all zero.
            assert float(jnp.max(jnp.abs(generic[1][0].w_h))) > 1e-3, option
            chex.assert_trees_all_close(
                fast, generic, rtol=1e-10, atol=1e-12, custom_message=option
            )


def _abstract_params(cell, dtype=jnp.float32, inp: int = I):
    """The shapes and dtypes of ``cell.init(key, inp, dtype)``, computing nothing: for
    checks that only trace (jax.make_jaxpr) or raise before any computation."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.eval_shape(lambda key: cell.init(key, inp, dtype), key)


def _count_fused_calls(monkeypatch):
    scan_module = sys.modules["gatedrnn.scan"]  # (gr.scan, the function, shadows the name)
    calls = []
    original = scan_module.scan_split

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scan_module, "scan_split", spy)
    return calls


@pytest.mark.parametrize(
    "name, options, want",
    [
        ("lstm", {}, 1),
        ("vanilla", {"seq_lengths": np.array([1, 7, 0]), "reverse": True}, 1),
        ("gru_after", {"unroll": 2}, 1),
        ("gru_before", {}, 0),
        ("lstm", {"truncate": 2}, 0),
        ("lstm", {"resets": np.zeros((B, T), bool)}, 0),
        ("lstm", {"remat": True}, 0),
        ("lstm", {"fused": False}, 0),
        ("lstm", {"fused": True}, 1),
    ],
)
def test_fused_path_taken_by_default_where_possible(monkeypatch, name, options, want):
    calls = _count_fused_calls(monkeypatch)
    cell = CELLS[name]()
    params = _abstract_params(cell)  # traced only: nothing compiles
    xs = np.ones((B, T, I), np.float32)
    jax.make_jaxpr(lambda p: gr.scan(cell, p, xs, **options)[1])(params)
    assert len(calls) == want


def test_fused_batch_shapes_and_lengths():
    """Batch shapes (), (2, 3), (0,) by sequence lengths 0, 1, 6: one compile for all."""
    with jax.enable_x64(True):
        cell = gr.lstm(H)
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        rng = np.random.default_rng(1)
        cases = [(batch, T_) for batch in [(), (2, 3), (0,)] for T_ in [0, 1, 6]]
        xss = [rng.standard_normal((*batch, T_, I)) for batch, T_ in cases]

        def loss(params, xs, fused):
            final, ys = gr.scan(cell, params, xs, fused=fused)
            return jnp.sum(jnp.cos(ys)) + jnp.sum(final.c**2)

        value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))
        both = jax.jit(
            lambda p, xss: [[value_and_grad(p, x, fused) for fused in (True, False)] for x in xss]
        )
        for case, xs, (fast, generic) in zip(cases, xss, both(params, xss)):  # one compile
            chex.assert_trees_all_close(
                fast, generic, rtol=1e-10, atol=1e-12, custom_message=str(case)
            )
            chex.assert_shape(fast[1][1], xs.shape)


FORWARD_OPTIONS = {
    "plain": {},
    "lengths_reverse": {"seq_lengths": np.array([7, 3, 0]), "reverse": True},
    "lengths_unroll": {"seq_lengths": np.array([2, 7, 5]), "unroll": 2},
}


def _fn(cell, options, fused):
    """``(params, xs, state0) -> (final, ys)`` through gr.scan."""

    def f(params, xs, state0):
        return gr.scan(cell, params, xs, state0, fused=fused, **options)

    return f


def _problem(name):
    cell = CELLS[name]()
    params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
    xs = np.random.default_rng(1).standard_normal((B, T, I))
    state0 = jax.tree_util.tree_map(
        lambda s: np.full(s.shape, 0.3),
        jax.eval_shape(lambda p: cell.initial_state(p, (B,)), params),
    )
    return cell, (params, xs, state0)


def _tangents(primals, seed=2):
    """Random float64 tangents like ``primals``, drawn by NumPy (nothing compiles)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: rng.standard_normal(np.shape(x)), primals)


@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru_after"])
def test_forward_mode_by_default_equals_generic_float64(name):
    """jax.jvp with default options equals fused=False, for every option of
    FORWARD_OPTIONS; so do jax.linearize and jax.jacfwd (against jax.jacrev of the
    generic loop), checked on the plain options. And zero tangents (symbolic zeros) in
    any two of params, xs, state0 give the same result (the checks of the former
    test_forward_mode_wrt_inputs_or_params_only). One compile for the cell."""
    with jax.enable_x64(True):
        cell, primals = _problem(name)
        tangents = _tangents(primals)

        @jax.jit  # one compile for every option and derivative below
        def derivatives(primals, tangents):
            outs = {}
            params, xs, state0 = primals
            for option, options in FORWARD_OPTIONS.items():
                fast, generic = _fn(cell, options, None), _fn(cell, options, False)
                out = {"fast": jax.jvp(fast, primals, tangents)}
                out["generic"] = jax.jvp(generic, primals, tangents)
                if option == "plain":
                    out["linearize"] = jax.linearize(fast, *primals)[1](*tangents)
                    out["jacfwd"] = jax.jacfwd(lambda p, f=fast: f(p, xs, state0)[1])(params)
                    out["jacrev"] = jax.jacrev(lambda p, g=generic: g(p, xs, state0)[1])(params)
                outs[option] = out
            for argnum in range(3):  # a tangent in one argument only

                def f(arg, fused, argnum=argnum):
                    args = list(primals)
                    args[argnum] = arg
                    return gr.scan(cell, *args, fused=fused, seq_lengths=np.array([7, 3, 0]))

                primal, d = primals[argnum], tangents[argnum]
                _, got = jax.jvp(lambda a, f=f: f(a, None), (primal,), (d,))
                _, want = jax.jvp(lambda a, f=f: f(a, False), (primal,), (d,))
                outs[f"argnum {argnum}"] = (got, want)
            return outs

        outs = derivatives(primals, tangents)
        for argnum in range(3):
            got, want = outs.pop(f"argnum {argnum}")
            chex.assert_trees_all_close(
                got, want, rtol=1e-10, atol=1e-12, custom_message=f"argnum {argnum}"
            )
        for option, got in outs.items():
            (out, t_fast), (ref, t_generic) = got["fast"], got["generic"]
            chex.assert_trees_all_close(out, ref, rtol=1e-10, atol=1e-12, custom_message=option)
            chex.assert_trees_all_close(
                t_fast, t_generic, rtol=1e-10, atol=1e-12, custom_message=option
            )
            # The tangent is not vacuous.
            assert float(np.max(np.abs(t_generic[1]))) > 1e-3, option

            if option != "plain":
                continue
            chex.assert_trees_all_close(got["linearize"], t_generic, rtol=1e-10, atol=1e-12)
            chex.assert_trees_all_close(got["jacfwd"], got["jacrev"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru_after"])
def test_default_derivatives_match_finite_differences_float64(name):
    with jax.enable_x64(True):
        cell, (params, xs, state0) = _problem(name)

        def loss(params, xs, state0):
            final, ys = gr.scan(cell, params, xs, state0, seq_lengths=np.array([7, 3, 5]))
            return jnp.sum(jnp.sin(ys)) + sum(
                jnp.sum(s**2) for s in jax.tree_util.tree_leaves(final)
            )

        # NumPy arguments: check_grads' perturbations (x +- eps t) are then NumPy sums,
        # not an XLA program per leaf shape
        args = to_numpy((params, xs, state0))
        jax.test_util.check_grads(jax.jit(loss), args, order=1, modes=["fwd", "rev"], eps=1e-6)


@pytest.mark.parametrize("make", [gr.min_gru, gr.min_lstm], ids=["min_gru", "min_lstm"])
def test_forward_mode_min_cells(make):
    with jax.enable_x64(True):
        cell = make(H)
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I), jnp.float64)
        f = lambda p, x: gr.scan(cell, p, x, seq_lengths=np.array([7, 3, 0]))[1]  # noqa: E731
        t = _tangents((params, xs))
        loop = cell._replace(parallel=None)
        g = lambda p, x: gr.scan(loop, p, x, seq_lengths=np.array([7, 3, 0]))[1]  # noqa: E731
        got, want = jax.jit(  # one compile for both
            lambda primals, t: [jax.jvp(h, primals, t)[1] for h in (f, g)]
        )((params, xs), t)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_backward_loop_carries_only_the_state_cotangent():
    """jax.grad of the default loop: the reverse loop has ONE matrix product per step
    (``da @ w_h^T``) and ``dW_h`` is one product outside it, over all T * B rows."""
    cell = gr.lstm(H)
    params = _abstract_params(cell)  # traced only: nothing compiles
    xs = np.ones((B, T, I), np.float32)
    loss = lambda p, x: jnp.sum(gr.scan(cell, p, x)[1] ** 2)  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, xs).jaxpr
    scans = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    backward = [e for e in scans if e.params["reverse"]]
    assert len(scans) == 2 and len(backward) == 1  # the primal loop, the backward loop

    def dots(j):
        n = 0
        for e in j.eqns:
            n += e.primitive.name == "dot_general"
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                n += dots(sub)
        return n

    assert dots(backward[0].params["jaxpr"].jaxpr) == 1
    # dW_h: a (H, T*B) @ (T*B, 4H) product (contracting T * B rows) outside the loops.
    outside = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    shapes = [tuple(v.aval.shape) for e in outside for v in e.invars]
    assert (T * B, 4 * H) in shapes and (T * B, H) in shapes


def test_fused_rejects_what_it_cannot_do_and_bad_values():
    params = _abstract_params(gr.gru(H))  # the checks raise before any computation
    xs = np.ones((B, T, I), np.float32)
    with pytest.raises(ValueError, match=r"fused=True needs .* no resets.*\(got remat=True\)"):
        gr.scan(gr.gru(H), params, xs, fused=True, remat=True)
    with pytest.raises(ValueError, match="got 'gru' without one"):
        gr.scan(gr.gru(H, reset_after=False), params, xs, fused=True)
    with pytest.raises(ValueError, match="fused must be None, True or False"):
        gr.scan(gr.gru(H), params, xs, fused="yes")


def test_a_replaced_recur_turns_the_fused_path_off(monkeypatch):
    """cell._replace(recur=...) must run the new recur, not the old hidden/pointwise."""
    calls = _count_fused_calls(monkeypatch)
    cell = gr.lstm(H)
    with jax.enable_x64(True):  # the float64 init the other tests compile, cast to float32
        params = jax.tree_util.tree_map(
            lambda w: np.asarray(w, np.float32), cell.init(jax.random.PRNGKey(0), I, jnp.float64)
        )
    xs = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)

    def doubled(p, s, xp):
        new, y = cell.recur(p, s, xp)
        return new, 2.0 * y

    _, ys = gr.scan(cell._replace(recur=doubled), params, xs)
    _, ref = gr.scan(cell, params, xs)
    np.testing.assert_allclose(ys, 2.0 * ref, rtol=1e-6)
    assert len(calls) == 1  # only the unchanged cell took the fused path


def test_second_order_through_the_default_loop_float64():
    """Hessian-vector products (forward over reverse, reverse over forward) equal the
    plain loop's: the tangent rule is itself differentiable. One jitted computation (a
    compile, not hundreds of eager second-order ops), on the smallest LSTM that has a
    padded step and a sequence shorter than the loop."""
    with jax.enable_x64(True):
        cell = gr.lstm(2)
        # random params of the LSTM's shapes, drawn in NumPy (cell.init would compile its
        # random and QR operations for this one shape)
        rng = np.random.default_rng(0)
        params = jax.tree_util.tree_map(
            lambda w: 0.5 * rng.standard_normal(w.shape), _abstract_params(cell, jnp.float64, 2)
        )
        xs = rng.standard_normal((2, 4, 2))
        lengths = np.array([4, 2])

        def f(p, fused):
            return jnp.sum(jnp.sin(gr.scan(cell, p, xs, seq_lengths=lengths, fused=fused)[1]))

        @jax.jit
        def hvps(p, v):
            out = []
            for fused in (None, False):
                fwd_rev = jax.jvp(lambda p, fused=fused: jax.grad(f)(p, fused), (p,), (v,))[1]
                rev_fwd = jax.grad(
                    lambda p, fused=fused: jax.jvp(lambda q: f(q, fused), (p,), (v,))[1]
                )(p)
                out.append((fwd_rev, rev_fwd))
            return out

        got, want = hvps(params, _tangents(params))
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
