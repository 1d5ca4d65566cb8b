"""A time loop whose backward pass carries only the state gradient (as cuDNN does).

:func:`scan_fused_vjp` is ``jax.lax.scan`` with a custom VJP:

* forward: the loop, keeping only the state before every step;
* backward loop: per step, ``jax.vjp`` of the step with respect to the state and the
  per-step inputs (the cell's own ``recur``: no math is restated here); it carries the
  state gradient only, and emits each step's input gradient and the cotangent that
  reached each step's outputs;
* after the loop: the gradient with respect to the loop constants (the cell's params) as
  ONE ``jax.vjp`` of the step vectorized over all time steps, so that e.g.
  ``dW_h = sum_t h_{t-1}^T dz_t`` is a single ``(H, T*B) @ (T*B, G*H)`` matrix product
  instead of ``T`` small ones accumulated in the loop.

The price is one recomputation of each step's forward inside the backward loop and one
batched recomputation after it; the gain is that the loop carries ``O(B H)`` instead of
``O(H^2)`` and that the weight gradient runs at large-matmul speed. ``gatedrnn.scan``
dispatches here when its options allow (see there).
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


def scan_fused_vjp(
    body: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, Any]],
    consts: PyTree,
    carry0: PyTree,
    xs: PyTree,
    *,
    length: int,
    unroll: int | bool = 1,
) -> tuple[PyTree, Any]:
    """``jax.lax.scan(lambda c, x: body(consts, c, x), carry0, xs)`` with a fused backward.

    Args:
      body: ``body(consts, carry, x) -> (carry, y)``, a pure function.
      consts: loop constants (e.g. params); float leaves get gradients, other leaves
        (ints, bools) are passed through.
      carry0: the initial carry (float leaves).
      xs: per-step inputs, leaves with a leading time axis ``length``; float leaves get
        gradients.
      length: number of steps ``T``.
      unroll: as in ``jax.lax.scan`` (used by both loops).

    Returns:
      ``(final_carry, ys)`` exactly as ``jax.lax.scan`` returns them.
    """
    return _fused(body, length, unroll, consts, carry0, xs)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(body: Callable, length: int, unroll: Any, consts: PyTree, carry0: PyTree, xs: PyTree):
    return jax.lax.scan(partial(body, consts), carry0, xs, length=length, unroll=unroll)


def _fused_fwd(body: Callable, length: int, unroll: Any, consts: PyTree, carry0: PyTree, xs: Any):
    x_diff, x_rest, x_def = _partition(xs)
    frozen = jax.lax.stop_gradient(consts)

    def loop(carry0: PyTree, xd: list, zeros: PyTree) -> tuple:
        def step(carry: PyTree, inputs: tuple) -> tuple[PyTree, tuple]:
            xd_t, xr_t, zero_t = inputs
            new, y = body(frozen, carry, _combine(xd_t, xr_t, x_def))
            # A zero added to the new state: its cotangent is the one reaching the step.
            new = jax.tree_util.tree_map(jnp.add, new, zero_t)
            return new, (y, carry)

        final, (ys, prev) = jax.lax.scan(
            step, carry0, (xd, x_rest, zeros), length=length, unroll=unroll
        )
        return (final, ys), prev

    zeros = jax.tree_util.tree_map(lambda c: jnp.zeros((length, *c.shape), c.dtype), carry0)
    out, vjp_loop, prev = jax.vjp(loop, carry0, x_diff, zeros, has_aux=True)
    return out, (consts, xs, jax.lax.stop_gradient(prev), vjp_loop)


def _fused_bwd(body: Callable, length: int, unroll: Any, res: tuple, cts: tuple):
    consts, xs, prev, vjp_loop = res
    d_carry0, d_xs, d_new = vjp_loop(cts)
    _, d_ys = cts
    c_diff, c_rest, c_def = _partition(consts)
    x_def = jax.tree_util.tree_structure(xs)

    def all_steps(cd: list) -> tuple:
        full = _combine(cd, c_rest, c_def)
        return jax.vmap(lambda c, x: body(full, c, x))(prev, xs)

    _, vjp_consts = jax.vjp(all_steps, c_diff)
    (d_consts,) = vjp_consts((d_new, d_ys))
    return (
        jax.tree_util.tree_unflatten(c_def, d_consts),
        d_carry0,
        jax.tree_util.tree_unflatten(x_def, d_xs),
    )


_fused.defvjp(_fused_fwd, _fused_bwd)
