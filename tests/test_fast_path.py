"""The fused backward pass (gatedrnn._fused) gives the values and gradients of the generic one.

Oracle: ``gr.scan(..., fused=False)``, i.e. ``jax.lax.scan``'s own autodiff, in float64,
for every cell and every scan option. The default (``fused=None``) takes the fused path
whenever the cell has a hidden/pointwise split and the options allow it.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gatedrnn as gr

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


def _loss_and_grads(cell, params, xs, state0, perts, options, fused):
    def loss(params, xs, state0, perts):
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

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(params, xs, state0, perts)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_equals_generic_values_and_grads_float64(name, option):
    options = OPTIONS[option]
    with jax.enable_x64(True):
        cell = CELLS[name]()
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        shape = (T, B, I) if options.get("time_major") else (B, T, I)
        xs = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float64)
        state0 = jax.tree_util.tree_map(
            lambda s: 0.3 * jnp.ones_like(s), cell.initial_state(params, (B,))
        )
        perts = jax.tree_util.tree_map(lambda s: 0.01 * jnp.ones((T, *s.shape), s.dtype), state0)
        fast = _loss_and_grads(cell, params, xs, state0, perts, options, None)
        generic = _loss_and_grads(cell, params, xs, state0, perts, options, False)
        # Guard against a vacuous comparison: the gradients are not all zero.
        assert float(jnp.max(jnp.abs(generic[1][0].w_h))) > 1e-3
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), fast, generic
        )


def _count_fused_calls(monkeypatch):
    scan_module = sys.modules["gatedrnn.scan"]  # (gr.scan, the function, shadows the name)
    calls = []
    original = scan_module.scan_split_vjp

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scan_module, "scan_split_vjp", spy)
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
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
    jax.make_jaxpr(lambda p: gr.scan(cell, p, xs, **options)[1])(params)
    assert len(calls) == want


@pytest.mark.parametrize("batch", [(), (2, 3), (0,)])
@pytest.mark.parametrize("T_", [0, 1, 6])
def test_fused_batch_shapes_and_lengths(batch, T_):
    with jax.enable_x64(True):
        cell = gr.lstm(H)
        params = cell.init(jax.random.PRNGKey(0), I, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (*batch, T_, I), jnp.float64)

        def loss(params, xs, fused):
            final, ys = gr.scan(cell, params, xs, fused=fused)
            return jnp.sum(jnp.cos(ys)) + jnp.sum(final.c**2)

        fast = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, True)
        generic = jax.value_and_grad(loss, argnums=(0, 1))(params, xs, False)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), fast, generic
        )


def test_fused_needs_forward_mode_off():
    """jax.jvp needs the plain loop (fused=False); the fused one is reverse-mode only."""
    cell = gr.gru(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
    f = lambda x, fused: gr.scan(cell, params, x, fused=fused)[1]  # noqa: E731
    _, tangent = jax.jvp(lambda x: f(x, False), (xs,), (xs,))
    assert tangent.shape == (B, T, H)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: f(x, None), (xs,), (xs,))


def test_fused_rejects_what_it_cannot_do_and_bad_values():
    params = gr.gru(H).init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
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
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))

    def doubled(p, s, xp):
        new, y = cell.recur(p, s, xp)
        return new, 2.0 * y

    _, ys = gr.scan(cell._replace(recur=doubled), params, xs)
    _, ref = gr.scan(cell, params, xs)
    np.testing.assert_allclose(ys, 2.0 * ref, rtol=1e-6)
    assert len(calls) == 1  # only the unchanged cell took the fused path
