"""The fused backward pass (gatedrnn._fused) gives the values and gradients of the generic one.

Oracle: ``gr.scan(..., fused=False)``, i.e. ``jax.lax.scan``'s own autodiff, in float64,
for every cell and every scan option.
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
        fast = _loss_and_grads(cell, params, xs, state0, perts, options, True)
        generic = _loss_and_grads(cell, params, xs, state0, perts, options, False)
        # Guard against a vacuous comparison: the gradients are not all zero.
        assert float(jnp.max(jnp.abs(generic[1][0].w_h))) > 1e-3
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), fast, generic
        )


def test_fused_only_when_asked(monkeypatch):
    scan_module = sys.modules["gatedrnn.scan"]  # (gr.scan, the function, shadows the name)
    calls = []
    original = scan_module.scan_fused_vjp

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scan_module, "scan_fused_vjp", spy)
    cell = gr.lstm(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
    for fused, want in ((True, 1), (None, 0), (False, 0)):
        calls.clear()
        jax.make_jaxpr(lambda p, fused=fused: gr.scan(cell, p, xs, fused=fused)[1])(params)
        assert len(calls) == want, fused


def test_fused_rejects_remat_and_bad_values():
    cell = gr.gru(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="fused=True needs remat=False"):
        gr.scan(cell, params, xs, fused=True, remat=True)
    with pytest.raises(ValueError, match="fused must be None, True or False"):
        gr.scan(cell, params, xs, fused="yes")
