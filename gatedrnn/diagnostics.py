"""Gradient and Jacobian measurements: how gradients vanish or explode through time.

Everything here runs the cells through :func:`gatedrnn.scan` and reads the gates each cell
reports (``Cell.gates``); no cell math is restated and nothing depends on a cell's name.

States are numbered ``s_0`` (the initial state, before the first step) to ``s_T`` (the
state after the last step), so every per-step result has a leading axis of size ``T + 1``
and the *distance* of ``s_t`` from the end is ``T - t``.

* :func:`state_gradients` / :func:`state_gradient_norms`: ``dL/ds_t`` for every ``t`` in
  one backward pass, for any cell and any scalar loss (LSTM: ``h`` and ``c`` apart).
* :func:`jacobians` (dense, small ``H``) and :func:`jacobian_norms` (spectral norm of
  ``ds_T/ds_t`` by power iteration with jvp/vjp, or exactly from the dense Jacobians).
* :func:`gate_statistics`: mean gate values and fraction of saturated units per step.
* :func:`decay_factor` / :func:`vanishing_distance`: summarise a norm-by-step curve.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells.base import Array, Cell, PyTree, check_fits_in_memory, check_positive_int
from gatedrnn.scan import _broadcast_state, check_cell_and_xs, scan

__all__ = [
    "decay_factor",
    "decay_profile",
    "gate_statistics",
    "jacobian_norms",
    "jacobians",
    "last_output_loss",
    "state_gradient_norms",
    "state_gradients",
    "state_trajectory",
    "vanishing_distance",
    "whole_state_norms",
]


# ----------------------------------------------------------------------------- checks


def _prepare(
    cell: Cell, params: PyTree, xs: Any, initial_state: PyTree | None, time_major: bool
) -> tuple[Array, PyTree, tuple[int, ...]]:
    """Check inputs; return time-major ``xs (T, *batch, I)``, the initial state, batch shape."""
    xs = check_cell_and_xs(cell, xs, time_major)
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)
    if xs_tm.shape[0] < 1:
        raise ValueError(f"xs must have at least one time step, got shape {tuple(xs.shape)}")
    batch_shape = tuple(xs_tm.shape[1:-1])
    if initial_state is None:
        state0 = cell.initial_state(params, batch_shape)
    else:
        state0 = _broadcast_state(cell, params, initial_state, batch_shape)
    # every diagnostic keeps a value per step and state unit: (T + 1) states at least
    leaves = jax.tree_util.tree_leaves(state0)
    per_step = sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves)
    check_fits_in_memory(
        (xs_tm.shape[0] + 1) * per_step,
        f"the states of {math.prod(batch_shape):,} sequences x {xs_tm.shape[0] + 1:,} steps",
    )
    return xs_tm, state0, batch_shape


def _leaf_names(state: PyTree) -> tuple[str, ...] | None:
    """Field names of a NamedTuple state (e.g. ``("h", "c")`` for LSTM), else None."""
    return getattr(type(state), "_fields", None)


def _check_leaf(state: PyTree, leaf: str | None) -> None:
    if leaf is None:
        return
    names = _leaf_names(state)
    if names is None or leaf not in names:
        raise ValueError(
            f"leaf={leaf!r} does not name a part of this cell's state; expected None"
            + (f" or one of {list(names)}" if names else " (the state has a single part)")
        )


def _norm(x: Array, axis: int, keepdims: bool = False) -> Array:
    """The L2 norm along ``axis``, scaled by the largest entry first so that tiny vectors
    (say 1e-20 in float32, whose squares underflow) keep an accurate norm."""
    m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    safe = jnp.where(m > 0, m, jnp.ones_like(m))
    n = safe * jnp.sqrt(jnp.sum(jnp.square(x / safe), axis=axis, keepdims=True))
    return n if keepdims else jnp.squeeze(n, axis)


# ------------------------------------------------------------------- state gradients


def _perturbed_scan(
    cell: Cell, params: PyTree, xs_tm: Array, state0: PyTree, perts: PyTree
) -> tuple[PyTree, Array]:
    """Scan with ``perts`` (leaves ``(T + 1, *batch, H)``) added to ``s_0 .. s_T``."""
    init = jax.tree_util.tree_map(lambda s, p: s + p[0], state0, perts)
    rest = jax.tree_util.tree_map(lambda p: p[1:], perts)
    return scan(cell, params, xs_tm, init, time_major=True, state_perturbations=rest)


def state_gradients(
    cell: Cell,
    params: PyTree,
    xs: Array,
    loss_fn: Callable[..., Array],
    initial_state: PyTree | None = None,
    *,
    loss_args: tuple = (),
    time_major: bool = False,
) -> tuple[Array, PyTree]:
    """``dL/ds_t`` for every state ``s_0 .. s_T`` of a sequence, in one backward pass.

    Zero perturbations are added to each state (``gr.scan(..., state_perturbations=)``
    and to the initial state) and the loss is differentiated with respect to them.

    Args:
      cell: any :class:`~gatedrnn.Cell`.
      params: the cell's params.
      xs: ``(*batch, T, I)`` (``(T, *batch, I)`` with ``time_major``).
      loss_fn: ``loss_fn(final_state, ys, *loss_args) -> scalar``; ``ys`` is time-major
        ``(T, *batch, H)``. Calls with the same cell and ``loss_fn`` objects and the same
        shapes reuse one compilation.
      initial_state: ``s_0``, leaves ``(*batch, H)``; zeros if None.
      loss_args: arrays (any pytree) the loss reads, e.g. targets or readout weights;
        passed as arguments, so changing their values does not recompile.
      time_major: ``xs`` has time on axis 0.

    Returns:
      ``(loss, grads)``: the scalar loss and a pytree like the state whose leaves are
      ``(T + 1, *batch, H)``, time-major: ``grads[t] = dL/ds_t`` (``t = 0`` is the
      initial state, ``t = T`` the final one). For LSTM, ``LSTMState(h=..., c=...)``
      holds the partial gradients with respect to ``h_t`` and ``c_t``.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (final_state, ys) -> scalar, got {loss_fn!r}")
    if not isinstance(loss_args, tuple):
        raise TypeError(f"loss_args must be a tuple, got {type(loss_args).__name__}")
    xs_tm, state0, _ = _prepare(cell, params, xs, initial_state, time_major)
    return _state_gradients(cell, loss_fn, params, xs_tm, state0, loss_args)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _state_gradients(
    cell: Cell,
    loss_fn: Callable[..., Array],
    params: PyTree,
    xs_tm: Array,
    state0: PyTree,
    loss_args: tuple,
) -> tuple[Array, PyTree]:
    T = xs_tm.shape[0]
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros((T + 1, *s.shape), s.dtype), state0)

    def loss_of(perts: PyTree) -> Array:
        final, ys = _perturbed_scan(cell, params, xs_tm, state0, perts)
        loss = jnp.asarray(loss_fn(final, ys, *loss_args))
        if loss.shape != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        return loss

    return jax.value_and_grad(loss_of)(zeros)


def state_gradient_norms(
    cell: Cell,
    params: PyTree,
    xs: Array,
    loss_fn: Callable[..., Array],
    initial_state: PyTree | None = None,
    *,
    loss_args: tuple = (),
    per_example: bool = False,
    time_major: bool = False,
) -> PyTree:
    """The L2 norms ``||dL/ds_t||`` for ``t = 0 .. T`` (see :func:`state_gradients`).

    Args:
      cell, params, xs, loss_fn, initial_state, loss_args, time_major: as in
        :func:`state_gradients`.
      per_example: keep the batch axes (norm over ``H`` only) instead of taking the norm
        over the whole ``(*batch, H)`` slice.

    Returns:
      A pytree like the state (``LSTMState(h, c)`` for LSTM, one array otherwise) with
      leaves ``(T + 1,)``, or ``(T + 1, *batch)`` with ``per_example``.
    """
    _, grads = state_gradients(
        cell, params, xs, loss_fn, initial_state, loss_args=loss_args, time_major=time_major
    )
    if per_example:
        return jax.tree_util.tree_map(lambda g: _norm(g, -1), grads)
    return jax.tree_util.tree_map(lambda g: _norm(g.reshape(g.shape[0], -1), -1), grads)


# ------------------------------------------------------------------------- Jacobians


def _to_vec(state: PyTree, leaf: str | None) -> Array:
    """The selected part of a state as one vector per example: ``(..., H or sum of H)``."""
    if leaf is not None:
        return getattr(state, leaf)
    return jnp.concatenate(jax.tree_util.tree_leaves(state), axis=-1)


def _from_vec(vec: Array, like: PyTree, leaf: str | None) -> PyTree:
    """Inverse of :func:`_to_vec` (other parts zero); ``vec`` may have extra leading axes."""
    lead = vec.shape[:-1]
    if leaf is not None:
        return like._replace(
            **{
                field: (
                    vec
                    if field == leaf
                    else jnp.zeros((*lead, getattr(like, field).shape[-1]), vec.dtype)
                )
                for field in like._fields
            }
        )
    leaves, treedef = jax.tree_util.tree_flatten(like)
    splits = np.cumsum([leaf_.shape[-1] for leaf_ in leaves])[:-1]
    return jax.tree_util.tree_unflatten(treedef, jnp.split(vec, splits, axis=-1))


def _final_map(
    cell: Cell, params: PyTree, xs_tm: Array, state0: PyTree, leaf: str | None
) -> Callable[[Array], Array]:
    """``P (T + 1, *batch, n) -> s_T (*batch, n)``: the final (selected) state as a function
    of perturbations of the (selected part of the) states ``s_0 .. s_T``."""

    def f(P: Array) -> Array:
        perts = _from_vec(P, state0, leaf)
        final, _ = _perturbed_scan(cell, params, xs_tm, state0, perts)
        return _to_vec(final, leaf)

    return f


def jacobians(
    cell: Cell,
    params: PyTree,
    xs: Array,
    initial_state: PyTree | None = None,
    *,
    leaf: str | None = None,
    time_major: bool = False,
) -> Array:
    """Dense Jacobians ``ds_T/ds_t`` for ``t = 0 .. T`` with ``jax.jacrev`` (small ``H``).

    Args:
      cell, params, xs, initial_state, time_major: as in :func:`state_gradients`.
      leaf: which part of the state, e.g. ``"h"`` or ``"c"`` for LSTM (the block
        ``dc_T/dc_t``); None: the whole state, its parts concatenated in order (``(h, c)``).

    Returns:
      ``(T + 1, *batch, n, n)``: ``J[t, b, i, j] = d s_T[b, i] / d s_t[b, j]`` (examples do
      not interact, so only per-example blocks are returned). ``n`` is ``H`` for one part,
      ``2H`` for the whole LSTM state.
    """
    xs_tm, state0, batch_shape = _prepare(cell, params, xs, initial_state, time_major)
    _check_leaf(state0, leaf)
    T = xs_tm.shape[0]
    B = int(np.prod(batch_shape))
    xs_flat = xs_tm.reshape(T, B, xs_tm.shape[-1])
    s_flat = jax.tree_util.tree_map(lambda s: s.reshape(B, s.shape[-1]), state0)
    J = _dense_jacobians(cell, leaf, params, xs_flat, s_flat)  # (T+1, B, n, n)
    return J.reshape(T + 1, *batch_shape, *J.shape[-2:])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dense_jacobians(
    cell: Cell, leaf: str | None, params: PyTree, xs_flat: Array, s_flat: PyTree
) -> Array:
    T = xs_flat.shape[0]

    def one(x: Array, s0: PyTree) -> Array:  # x (T, I), s0 leaves (H,)
        n = _to_vec(s0, leaf).shape[-1]
        f = _final_map(cell, params, x, s0, leaf)
        J = jax.jacrev(f)(jnp.zeros((T + 1, n), x.dtype))  # (n, T + 1, n)
        return jnp.moveaxis(J, 1, 0)

    return jax.vmap(one, in_axes=(1, 0), out_axes=1)(xs_flat, s_flat)


def jacobian_norms(
    cell: Cell,
    params: PyTree,
    xs: Array,
    initial_state: PyTree | None = None,
    *,
    leaf: str | None = None,
    method: str = "power",
    num_iters: int = 50,
    key: Array | None = None,
    chunk: int | None = None,
    time_major: bool = False,
) -> Array:
    """Spectral norms ``||ds_T/ds_t||_2`` for ``t = 0 .. T``, per example.

    ``method="power"`` never builds a Jacobian: it linearizes the scan once
    (``jax.linearize``) and runs power iteration on ``J_t^T J_t`` for all ``t`` at once,
    with ``J_t v`` from the linearized map (a jvp) and ``J_t^T u`` from its transpose
    (a vjp). ``method="dense"`` takes the largest singular value of :func:`jacobians`.

    Args:
      cell, params, xs, initial_state, time_major: as in :func:`state_gradients`.
      leaf: which part of the state (see :func:`jacobians`).
      method: ``"power"`` or ``"dense"``.
      num_iters: power iterations (each costs about ``2 (T + 1)`` sequence passes,
        vectorised over ``t``); the estimate approaches the norm from below at the rate
        ``(sigma_2 / sigma_1)^(2k)``.
      key: PRNG key for the start vectors (``PRNGKey(0)`` if None).
      chunk: how many ``t`` are vectorised together (memory ``~ chunk * T * batch * H``);
        None chooses one that keeps that under about 2**24 numbers.

    Returns:
      ``(T + 1, *batch)`` spectral norms; entry ``T`` is 1 (the identity).
    """
    if method not in ("power", "dense"):
        raise ValueError(f"method must be 'power' or 'dense', got {method!r}")
    check_positive_int(num_iters, "num_iters")
    if chunk is not None and (
        isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1
    ):
        raise ValueError(f"chunk must be None or an integer >= 1, got {chunk!r}")
    if method == "dense":
        J = jacobians(cell, params, xs, initial_state, leaf=leaf, time_major=time_major)
        return jnp.linalg.norm(J, ord=2, axis=(-2, -1))

    xs_tm, state0, batch_shape = _prepare(cell, params, xs, initial_state, time_major)
    _check_leaf(state0, leaf)
    T = xs_tm.shape[0]
    n = _to_vec(state0, leaf).shape[-1]
    if chunk is None:
        per_t = (T + 1) * max(int(np.prod(batch_shape)), 1) * n
        chunk = int(max(1, min(T + 1, 2**24 // max(per_t, 1))))
    key = jax.random.PRNGKey(0) if key is None else key
    return _power_norms(cell, leaf, int(num_iters), int(chunk), params, xs_tm, state0, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _power_norms(
    cell: Cell,
    leaf: str | None,
    num_iters: int,
    chunk: int,
    params: PyTree,
    xs_tm: Array,
    state0: PyTree,
    key: Array,
) -> Array:
    T = xs_tm.shape[0]
    v0 = _to_vec(state0, leaf)
    P0 = jnp.zeros((T + 1, *v0.shape), v0.dtype)
    f = _final_map(cell, params, xs_tm, state0, leaf)
    _, f_lin = jax.linearize(f, P0)
    f_t = jax.linear_transpose(f_lin, P0)
    ts = jnp.arange(T + 1)

    def per_t(fn: Callable[[Array, Array], Array], V: Array) -> Array:
        if chunk >= T + 1:
            return jax.vmap(fn)(ts, V)
        return jax.lax.map(lambda a: fn(*a), (ts, V), batch_size=chunk)

    def jv(V: Array) -> Array:  # V (T+1, *batch, n) -> J_t V_t
        return per_t(lambda t, v: f_lin(P0.at[t].set(v)), V)

    def jtu(U: Array) -> Array:  # U (T+1, *batch, n) -> J_t^T U_t
        return per_t(lambda t, u: f_t(u)[0][t], U)

    def normalize(V: Array) -> Array:
        norm = _norm(V, -1, keepdims=True)
        return V / jnp.where(norm > 0, norm, 1.0)

    V = normalize(jax.random.normal(key, P0.shape, P0.dtype))
    # Normalizing J v before applying J^T keeps sigma^2 from underflowing (or overflowing).
    V = jax.lax.fori_loop(0, num_iters, lambda _, V: normalize(jtu(normalize(jv(V)))), V)
    return _norm(jv(V), -1)


# ---------------------------------------------------------------------- gate statistics


def state_trajectory(
    cell: Cell,
    params: PyTree,
    xs: Array,
    initial_state: PyTree | None = None,
    *,
    time_major: bool = False,
) -> PyTree:
    """Every state ``s_0 .. s_T`` of a run: a pytree like the state, leaves ``(T + 1, *batch, H)``.

    Runs :func:`gatedrnn.scan` with a view of the cell that emits its whole state.
    """
    xs_tm, state0, _ = _prepare(cell, params, xs, initial_state, time_major)
    return _trajectory(cell, params, xs_tm, state0)


@functools.partial(jax.jit, static_argnums=0)
def _trajectory(cell: Cell, params: PyTree, xs_tm: Array, state0: PyTree) -> PyTree:
    def recur(p: PyTree, s: PyTree, xp: Array) -> tuple[PyTree, PyTree]:
        new, _ = cell.recur(p, s, xp)
        return new, new

    emitting = cell._replace(recur=recur, output=lambda p, s, xp: s, parallel=None)
    _, states = scan(emitting, params, xs_tm, state0, time_major=True)
    return jax.tree_util.tree_map(lambda s0, s: jnp.concatenate([s0[None], s]), state0, states)


def gate_statistics(
    cell: Cell,
    params: PyTree,
    xs: Array,
    initial_state: PyTree | None = None,
    *,
    saturation: float = 0.05,
    time_major: bool = False,
) -> dict[str, Array]:
    """Mean gate values and the fraction of saturated units at each step ``t = 1 .. T``.

    Reads the gates every cell reports (``Cell.gates``), so it works for any cell. A gate
    unit in ``[0, 1]`` is saturated when its value is within ``saturation`` of 0 or 1; a
    unit of a tanh activation (``Cell.tanh_gates``) when ``|value| > 1 - saturation``.

    Args:
      cell: any :class:`~gatedrnn.Cell`.
      params, xs, initial_state, time_major: as in :func:`state_gradients`.
      saturation: the margin ``eps`` in ``(0, 0.5)``.

    Returns:
      A dict of ``(T,)`` arrays (averaged over batch and units), entry ``t - 1`` for step
      ``t``: for each gate ``g`` the cell reports (LSTM: ``input``, ``forget``,
      ``candidate``, ``output``; GRU: ``reset``, ``update``, ``candidate``; a tanh RNN:
      ``state``; ...), its mean ``g`` and, for gates in ``[0, 1]``,
      ``g_saturated_low`` (``< eps``) and ``g_saturated_high`` (``> 1 - eps``); and
      ``saturated``, the fraction of all gate units saturated (zeros for a cell that
      reports no gates, such as a relu or linear RNN).
    """
    if not 0.0 < float(saturation) < 0.5:
        raise ValueError(f"saturation must lie in (0, 0.5), got {saturation!r}")
    if not isinstance(cell, Cell):
        raise ValueError(f"gate_statistics expects a gatedrnn Cell, got {type(cell).__name__}")
    xs_tm, state0, _ = _prepare(cell, params, xs, initial_state, time_major)
    return _gate_statistics(cell, float(saturation), params, xs_tm, state0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _gate_statistics(
    cell: Cell, eps: float, params: PyTree, xs_tm: Array, state0: PyTree
) -> dict[str, Array]:
    T = xs_tm.shape[0]
    if cell.gates is None:
        return {"saturated": jnp.zeros((T,), xs_tm.dtype)}
    states = _trajectory(cell, params, xs_tm, state0)
    prev = jax.tree_util.tree_map(lambda s: s[:-1], states)  # state before each step
    gates = cell.gates(params, prev, cell.project(params, xs_tm))

    def mean(a: Array) -> Array:  # over everything but time
        return jnp.mean(a.astype(xs_tm.dtype).reshape(T, -1), axis=1)

    out: dict[str, Array] = {}
    saturated = []
    for name, g in gates.items():
        out[name] = mean(g)
        if name in cell.tanh_gates:
            saturated.append(jnp.abs(g) > 1 - eps)
        else:
            low, high = g < eps, g > 1 - eps
            out[f"{name}_saturated_low"] = mean(low)
            out[f"{name}_saturated_high"] = mean(high)
            saturated.append(low | high)
    flat = [s.reshape(T, -1) for s in saturated]
    out["saturated"] = mean(jnp.concatenate(flat, axis=1)) if flat else jnp.zeros((T,))
    return out


# ------------------------------------------------------------------- curve summaries


def _as_curve(norms: Any) -> np.ndarray:
    a = np.asarray(norms, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 2:
        raise ValueError(
            f"norms must be a 1-D curve over t = 0 .. T with T >= 1, got shape {a.shape}"
        )
    return a


def decay_factor(norms: Any, *, floor: float | None = None, min_distance: int = 0) -> float:
    """The per-step factor ``gamma`` of a least-squares fit ``||g_t|| ~ C gamma^(T - t)``.

    Args:
      norms: ``(T + 1,)`` norms for ``t = 0 .. T`` (e.g. from :func:`state_gradient_norms`).
      floor: ignore values at or below it (underflow); default: the smallest normal
        float32, ``1.18e-38``. Non-finite values are ignored as well.
      min_distance: ignore distances ``T - t`` below this (a start-up transient).

    Returns:
      ``gamma = exp(slope)`` of ``log ||g||`` against distance; < 1 vanishes, > 1
      explodes. NaN if fewer than two points are usable.
    """
    a = _as_curve(norms)
    floor = float(np.finfo(np.float32).tiny) if floor is None else float(floor)
    d = np.arange(a.shape[0])[::-1]  # distance T - t
    ok = np.isfinite(a) & (a > floor) & (d >= min_distance)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(d[ok], np.log(a[ok]), 1)[0]
    return float(np.exp(slope))


def vanishing_distance(norms: Any, ratio: float = 1e-6) -> int | None:
    """The first distance ``T - t`` at which ``||g_t|| < ratio * ||g_T||``.

    Args:
      norms: ``(T + 1,)`` norms for ``t = 0 .. T``; ``norms[T]`` (distance 0, the state
        nearest the loss) is the reference and must be positive.
      ratio: the fraction, in ``(0, 1)``.

    Returns:
      The distance, or None if the norm never falls that low within the sequence.
    """
    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio!r}")
    a = _as_curve(norms)[::-1]  # by distance
    if not np.isfinite(a[0]) or a[0] <= 0:
        raise ValueError(f"the nearest norm (distance 0) must be finite and > 0, got {a[0]}")
    below = np.nonzero(a < ratio * a[0])[0]
    return int(below[0]) if below.size else None


# ------------------------------------------------------------- the decay measurement


def last_output_loss(final: PyTree, ys: Array) -> Array:
    """``L = sum(ys[-1]) / sqrt(H)``: a fixed readout of the last output, summed over the
    batch; the loss the studies measure gradient decay with.

    Args:
      final: the final state (unused).
      ys: time-major outputs ``(T, *batch, H)``, as :func:`state_gradients` passes them.
    """
    return jnp.sum(ys[-1]) / jnp.sqrt(ys.shape[-1])


def whole_state_norms(norms: PyTree) -> np.ndarray:
    """Norms with respect to the whole state from per-part norms: ``sqrt(sum_parts n^2)``
    (``sqrt(|g_h|^2 + |g_c|^2)`` for the LSTM; the norms themselves for a one-array state).

    Args:
      norms: a pytree of ``(T + 1,)`` norms (:func:`state_gradient_norms`).

    Returns:
      ``(T + 1,)`` float64.
    """
    leaves = jax.tree_util.tree_leaves(norms)
    return np.sqrt(sum(np.asarray(n, np.float64) ** 2 for n in leaves))


def decay_profile(
    cell: Cell,
    params: PyTree,
    xs: Array,
    loss_fn: Callable[..., Array] = last_output_loss,
    *,
    loss_args: tuple = (),
    ratio: float = 1e-6,
    floor: float | None = None,
) -> dict[str, Any]:
    """How the gradient of ``loss_fn`` decays with distance back in time: the one chain
    every study measures (:func:`state_gradient_norms` -> :func:`whole_state_norms` ->
    :func:`decay_factor`, :func:`vanishing_distance`).

    Args:
      cell, params, xs, loss_fn, loss_args: as in :func:`state_gradients`; ``xs`` is
        batch-major ``(*batch, T, I)``. Default loss: :func:`last_output_loss`.
      ratio: the fraction of the nearest norm that counts as vanished.
      floor: :func:`decay_factor`'s underflow floor (``1e-300`` for float64 runs).

    Returns:
      ``norms`` (per state part, leaves ``(T + 1,)``), ``grad_norm`` (whole state,
      ``(T + 1,)`` float64), ``relative`` (``grad_norm / grad_norm[T]``), ``decay_factor``
      (per step) and ``vanish_distance`` (None: never within the sequence).
    """
    norms = state_gradient_norms(cell, params, xs, loss_fn, loss_args=loss_args)
    total = whole_state_norms(norms)
    return {
        "norms": jax.tree_util.tree_map(lambda n: np.asarray(n, np.float64), norms),
        "grad_norm": total,
        "relative": total / total[-1],
        "decay_factor": decay_factor(total, floor=floor),
        "vanish_distance": vanishing_distance(total, ratio),
    }
