"""The time loop of a split cell, with a tangent rule whose transpose is cuDNN's backward.

:func:`scan_split` is the loop ``a = hidden(params, s); s, y = pointwise(s, x, a)`` over
time (``jax.lax.scan``) for cells whose recurrent part is a :class:`gatedrnn.Split`
(``hidden``: the recurrent matrix product; ``pointwise``: elementwise, no params). It is a
``jax.custom_jvp`` whose tangent rule is:

* the primal loop, keeping each step's previous state ``s_{t-1}`` and its ``a_t``;
* the weight-tangent term of every step at once, before the loop: ONE ``jax.jvp`` of
  ``hidden`` with respect to the params over all ``T * batch`` rows, i.e. one
  ``(T*B, H) @ (H, G*H)`` product ``H_prev @ dW_h`` (plus the tangent of the optional
  per-step ``offsets`` added to ``a``, see :func:`scan_split`);
* a tangent loop carrying only the state tangent ``ds``: per step
  ``da = dA_w[t] + jvp(hidden wrt state)(ds)``, then ``jax.jvp`` of ``pointwise`` with
  respect to ``(state, x_t, a)``, under ``jax.checkpoint`` so that reverse mode
  recomputes the elementwise values from the saved ``s_{t-1}`` and ``a_t`` instead of
  storing them for every step.

Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) uses the rule as it is.
Reverse mode is JAX's transpose of it, which is exactly the cuDNN-style backward: the
reverse loop carries only the state cotangent (``da @ w_h^T`` per step), and
``dW_h = H_prev^T @ dA`` is one matrix product after the loop instead of ``T`` small ones
accumulated inside it (what ``jax.lax.scan``'s own autodiff does). Zero tangents
(``symbolic_zeros``: params not differentiated, integer or boolean inputs) cost nothing.

No cell math is restated here: the derivatives are JAX's, of the cell's own functions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

PyTree = Any


def _rows(x: Any) -> Any:
    """``(T, *batch, F) -> (T * prod(batch), F)``: every step's batch rows as one batch."""
    return x.reshape((-1, x.shape[-1]))


def _is_zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)


def _has_tangent(primal: Any, tangent: Any) -> bool:
    """False for a symbolic zero or a leaf that cannot have a tangent (ints, bools)."""
    return not isinstance(tangent, SymbolicZero) and jnp.issubdtype(
        jnp.result_type(primal), jnp.inexact
    )


def _materialize(primals: PyTree, tangents: PyTree) -> PyTree:
    """Tangents with symbolic zeros replaced by real zeros (for a loop carry)."""
    return jax.tree_util.tree_map(
        lambda p, t: jnp.zeros_like(p) if isinstance(t, SymbolicZero) else t,
        primals,
        tangents,
        is_leaf=_is_zero,
    )


def scan_split(
    hidden: Callable[[PyTree, PyTree], Any],
    pointwise: Callable[[PyTree, PyTree, Any], tuple[PyTree, Any]],
    params: PyTree,
    state0: PyTree,
    xs: PyTree,
    *,
    length: int,
    offsets: PyTree | None = None,
    unroll: int | bool = 1,
) -> tuple[PyTree, Any]:
    """The loop ``s, y = pointwise(s, x_t, hidden(params, s) + offsets_t)`` with the rule above.

    Args:
      hidden: ``hidden(params, state) -> a``, applied row by row over the batch axes (so
        that its params tangent over all steps is one call on all rows).
      pointwise: ``pointwise(state, x_t, a) -> (state, y)``, elementwise; ``x_t`` is one
        step of ``xs`` (float leaves carry tangents, other leaves are passed through).
      params: the params ``hidden`` uses (float leaves).
      state0: the initial state, leaves ``(*batch, H)``.
      xs: per-step inputs, leaves with a leading time axis ``length``.
      length: number of steps ``T``.
      offsets: optional per-step terms added to ``a``, like ``a`` with a leading time axis
        (the input projection of a cell whose ``pointwise`` only uses ``xp + a``): their
        tangent joins the weight-tangent term before the loop, so the backward loop emits
        one gradient for both.
      unroll: as in ``jax.lax.scan`` (used by both loops).

    Returns:
      ``(final_state, ys)`` exactly as ``jax.lax.scan`` returns them.
    """
    return _split(hidden, pointwise, length, unroll, params, state0, xs, offsets)


def _hidden_plus(hidden: Callable, params: PyTree, s: PyTree, offset: Any) -> Any:
    """``hidden(params, s)``, plus the step's ``offset`` where there is one."""
    a = hidden(params, s)
    return a if offset is None else jax.tree_util.tree_map(jnp.add, a, offset)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _split(
    hidden: Callable, pointwise: Callable, length: int, unroll: Any, params, state0, xs, offsets
) -> tuple[PyTree, Any]:
    def body(s: PyTree, inputs: tuple) -> tuple[PyTree, Any]:
        x, offset = inputs
        return pointwise(s, x, _hidden_plus(hidden, params, s, offset))

    return jax.lax.scan(body, state0, (xs, offsets), length=length, unroll=unroll)


def _split_jvp(
    hidden: Callable, pointwise: Callable, length: int, unroll: Any, primals, tangents
) -> tuple:
    params, state0, xs, offsets = primals
    d_params, d_state0, d_xs, d_offsets = tangents

    # The primal loop; it keeps each step's previous state and ``a``.
    def primal(s: PyTree, inputs: tuple) -> tuple[PyTree, tuple]:
        x, offset = inputs
        a = _hidden_plus(hidden, params, s, offset)
        new, y = pointwise(s, x, a)
        return new, (y, s, a)

    final, (ys, prev, A) = jax.lax.scan(primal, state0, (xs, offsets), length=length, unroll=unroll)
    dA_w = _add_tangents(_weight_tangent(hidden, params, d_params, prev), offsets, d_offsets)
    x_live, x_dead, dx_live, join = _split_inputs(xs, d_xs)

    # The tangent loop: it carries the state tangent only. The pointwise jvp is
    # rematerialized, so that its transpose (the backward loop) recomputes the elementwise
    # values from the saved state and ``a`` rather than storing them for every step.
    @partial(jax.checkpoint, prevent_cse=False)
    def pointwise_jvp(s, xl, xd, a, ds, dxl, da):
        f = lambda s, xl, a: pointwise(s, join(xl, xd), a)  # noqa: E731
        return jax.jvp(f, (s, xl, a), (ds, dxl, da))[1]

    def tangent(ds: PyTree, inputs: tuple) -> tuple[PyTree, Any]:
        s, a, xl, xd, dxl, daw = inputs
        _, da = jax.jvp(lambda s: hidden(params, s), (s,), (ds,))
        if daw is not None:
            da = jax.tree_util.tree_map(jnp.add, da, daw)
        return pointwise_jvp(s, xl, xd, a, ds, dxl, da)

    d_final, d_ys = jax.lax.scan(
        tangent,
        _materialize(state0, d_state0),
        (prev, A, x_live, x_dead, dx_live, dA_w),
        length=length,
        unroll=unroll,
    )
    return (final, ys), (d_final, d_ys)


def _add_tangents(dA_w: Any, offsets: PyTree | None, d_offsets: PyTree) -> Any:
    """``dA_w + d_offsets`` where each may be absent (None) or a symbolic zero."""
    if offsets is None:
        return dA_w
    leaves = jax.tree_util.tree_leaves(d_offsets, is_leaf=_is_zero)
    if not any(_has_tangent(o, t) for o, t in zip(jax.tree_util.tree_leaves(offsets), leaves)):
        return dA_w
    d_off = _materialize(offsets, d_offsets)
    return d_off if dA_w is None else jax.tree_util.tree_map(jnp.add, dA_w, d_off)


def _weight_tangent(hidden: Callable, params: PyTree, d_params: PyTree, prev: PyTree) -> Any:
    """``dA_w[t] = jvp(hidden wrt params)`` at every step's previous state, as ONE call on
    all ``T * batch`` rows (one ``H_prev @ dW_h`` product); None if ``d_params`` is zero."""
    dp_leaves = jax.tree_util.tree_leaves(d_params, is_leaf=_is_zero)
    p_leaves = jax.tree_util.tree_leaves(params)
    if not any(_has_tangent(p, t) for p, t in zip(p_leaves, dp_leaves, strict=True)):
        return None
    rows = jax.tree_util.tree_map(_rows, prev)
    _, dA = jax.jvp(lambda p: hidden(p, rows), (params,), (_materialize(params, d_params),))
    lead = jax.tree_util.tree_leaves(prev)[0].shape[:-1]  # (T, *batch)
    return jax.tree_util.tree_map(lambda d: d.reshape((*lead, d.shape[-1])), dA)


def _split_inputs(xs: PyTree, d_xs: PyTree) -> tuple[list, list, list, Callable]:
    """The per-step inputs with a tangent (``live``) and without (zeros, masks).

    Returns:
      ``(x_live, x_dead, dx_live, join)``; ``join(live, dead)`` rebuilds the input pytree.
    """
    x_leaves, x_def = jax.tree_util.tree_flatten(xs)
    dx_leaves = jax.tree_util.tree_leaves(d_xs, is_leaf=_is_zero)
    live = [_has_tangent(x, t) for x, t in zip(x_leaves, dx_leaves, strict=True)]
    x_live = [x for x, on in zip(x_leaves, live, strict=True) if on]
    x_dead = [x for x, on in zip(x_leaves, live, strict=True) if not on]
    dx_live = [t for t, on in zip(dx_leaves, live, strict=True) if on]

    def join(live_x: list, dead_x: list) -> PyTree:
        it_live, it_dead = iter(live_x), iter(dead_x)
        leaves = [next(it_live) if on else next(it_dead) for on in live]
        return jax.tree_util.tree_unflatten(x_def, leaves)

    return x_live, x_dead, dx_live, join


_split.defjvp(_split_jvp, symbolic_zeros=True)
