"""A time loop whose backward pass carries only the state gradient (as cuDNN does).

:func:`scan_split_vjp` is the loop ``a = hidden(params, s); s, y = pointwise(s, x, a)``
over time (``jax.lax.scan``) with a custom VJP, for cells that split their recurrent part
into ``hidden`` (the recurrent matrix product) and ``pointwise`` (elementwise, no params),
see :class:`gatedrnn.Cell`:

* forward: the loop, keeping each step's previous state and its ``a``;
* backward loop: per step, ``jax.vjp`` of the cell's own ``pointwise`` (recomputed from
  the saved state and ``a``: elementwise only, no matrix product) and of ``hidden`` with
  respect to the state (``da @ w_h^T``); it carries the state gradient only and emits each
  step's input gradient and ``da``;
* after the loop: the gradient with respect to the params as ONE ``jax.vjp`` of
  ``hidden`` over all time steps and batch rows at once, so ``dW_h = sum_t h_{t-1}^T da_t``
  is a single ``(H, T*B) @ (T*B, G*H)`` matrix product instead of ``T`` small ones
  accumulated in the loop (what ``jax.lax.scan``'s autodiff does).

No cell math is restated here: the derivatives are JAX's, of the cell's own functions.
Because the backward pass is a ``jax.custom_vjp``, forward-mode differentiation
(``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) of this loop is not defined:
``gatedrnn.scan(..., fused=False)`` gives the plain loop for that.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _partition(tree: PyTree) -> tuple[list, list, Any]:
    """Split a pytree's leaves into (float leaves or None, other leaves or None, treedef)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    diff = [x if _is_float(x) else None for x in leaves]
    rest = [None if _is_float(x) else x for x in leaves]
    return diff, rest, treedef


def _combine(diff: list, rest: list, treedef: Any) -> PyTree:
    return jax.tree_util.tree_unflatten(
        treedef, [r if d is None else d for d, r in zip(diff, rest, strict=True)]
    )


def _rows(x: Any) -> Any:
    """``(T, *batch, F) -> (T * prod(batch), F)``: every step's batch rows as one batch."""
    return x.reshape((-1, x.shape[-1]))


def scan_split_vjp(
    hidden: Callable[[PyTree, PyTree], Any],
    pointwise: Callable[[PyTree, PyTree, Any], tuple[PyTree, Any]],
    params: PyTree,
    state0: PyTree,
    xs: PyTree,
    *,
    length: int,
    unroll: int | bool = 1,
) -> tuple[PyTree, Any]:
    """The loop ``s, y = pointwise(s, x_t, hidden(params, s))`` with the fused backward.

    Args:
      hidden: ``hidden(params, state) -> a``, applied row by row over the batch axes (so
        that its parameter gradient over all steps is one call on all rows).
      pointwise: ``pointwise(state, x_t, a) -> (state, y)``, elementwise; ``x_t`` is one
        step of ``xs`` (float leaves get gradients, other leaves are passed through).
      params: the params ``hidden`` uses (float leaves).
      state0: the initial state, leaves ``(*batch, H)``.
      xs: per-step inputs, leaves with a leading time axis ``length``.
      length: number of steps ``T``.
      unroll: as in ``jax.lax.scan`` (used by both loops).

    Returns:
      ``(final_state, ys)`` exactly as ``jax.lax.scan`` returns them.
    """
    return _split(hidden, pointwise, length, unroll, params, state0, xs)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _split(
    hidden: Callable, pointwise: Callable, length: int, unroll: Any, params, state0, xs
) -> tuple[PyTree, Any]:
    def body(s: PyTree, x: PyTree) -> tuple[PyTree, Any]:
        return pointwise(s, x, hidden(params, s))

    return jax.lax.scan(body, state0, xs, length=length, unroll=unroll)


def _split_fwd(
    hidden: Callable, pointwise: Callable, length: int, unroll: Any, params, state0, xs
) -> tuple:
    def body(s: PyTree, x: PyTree) -> tuple[PyTree, tuple]:
        a = hidden(params, s)
        new, y = pointwise(s, x, a)
        return new, (y, s, a)

    final, (ys, prev, A) = jax.lax.scan(body, state0, xs, length=length, unroll=unroll)
    return (final, ys), (params, prev, A, xs)


def _split_bwd(
    hidden: Callable, pointwise: Callable, length: int, unroll: Any, res: tuple, cts: tuple
) -> tuple:
    params, prev, A, xs = res
    d_final, d_ys = cts
    x_diff, x_rest, x_def = _partition(xs)

    # Leaves of the input gradient that ARE the gradient of ``a`` (the same traced value,
    # e.g. when pointwise uses ``xp + a``): emitted once, not twice.
    aliased: list[bool] = []

    def body(ds: PyTree, inputs: tuple) -> tuple[PyTree, tuple]:
        s, xd, xr, a, dy = inputs
        _, vjp_pw = jax.vjp(lambda s, xd, a: pointwise(s, _combine(xd, xr, x_def), a), s, xd, a)
        ds_direct, dxd, da = vjp_pw((ds, dy))
        (ds_hidden,) = jax.vjp(lambda s: hidden(params, s), s)[1](da)
        aliased[:] = [d is da for d in dxd]
        dxd = [None if same else d for d, same in zip(dxd, aliased, strict=True)]
        return jax.tree_util.tree_map(jnp.add, ds_direct, ds_hidden), (dxd, da)

    ds0, (dxd, dA) = jax.lax.scan(
        body, d_final, (prev, x_diff, x_rest, A, d_ys), length=length, reverse=True, unroll=unroll
    )
    dxd = [dA if same else d for d, same in zip(dxd, aliased, strict=True)]
    rows = jax.tree_util.tree_map(_rows, prev)
    (d_params,) = jax.vjp(lambda p: hidden(p, rows), params)[1](_rows(dA))
    return d_params, ds0, jax.tree_util.tree_unflatten(x_def, dxd)


_split.defvjp(_split_fwd, _split_bwd)
