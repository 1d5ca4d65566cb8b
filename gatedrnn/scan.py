"""The one time loop: :func:`scan` runs any :class:`~gatedrnn.Cell` over a sequence.

Every wrapper (layers, Flax modules, experiments) goes through this function, so the
options below are implemented once. ``jax.grad`` through :func:`scan` is
backpropagation through time (BPTT); ``truncate=k`` gives truncated BPTT.

:func:`scan` checks its inputs, brings them to time-major processing order, and hands
them to one of four loops, all with the same values:

* the fused loop (:func:`_split_loop`, ``gatedrnn._fused``), the default for cells whose
  ``recur`` is a :class:`~gatedrnn.Split` (``gr.vanilla``, ``gr.lstm``, ``gr.gru`` with
  ``reset_after=True``) when no ``resets``, ``truncate``, ``state_perturbations`` or
  ``remat`` is given: its backward pass carries only the state gradient and the
  recurrent weight gradient is one matrix product after it, as cuDNN does (speed:
  docs/performance.md); forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``)
  works as well; values and derivatives are those of ``jax.lax.scan``'s own autodiff
  (tested to 1e-10 in float64);
* the parallel form (:func:`_parallel_scan`) of cells that have one (``gr.min_gru``,
  ``gr.min_lstm``, LRU, RG-LRU: ``jax.lax.associative_scan``; mLSTM: its quadratic form):
  all steps at once, where it is the faster of the two for that cell on the backend
  (:func:`parallel_crossover`) and no ``resets``,
  ``truncate``, ``state_perturbations`` or chunked ``remat`` is given;
* chunked rematerialization (:func:`_chunked_scan`) for ``remat="sqrt"`` or an int;
* otherwise the plain loop of :func:`_step` (checkpointed per step with ``remat=True``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn._fused import scan_split
from gatedrnn.cells.base import (
    Array,
    Cell,
    PyTree,
    Split,
    check_fits_in_memory,
    check_not_foreign_array,
    to_jax_array,
)

# Steps per loop iteration that ``unroll=None`` picks, per (backend, cell name); 1 where
# absent. Measured by ``python -m benchmarks.rnn_speed --sections unroll`` (table:
# docs/performance.md): on the CPU unroll=4 made the LSTM's training step 1.01-1.06x and its
# forward pass up to 1.44x faster, while no unroll above 1 helped the vanilla RNN or the
# GRU at every shape. Not yet measured on a GPU or TPU, where it stays 1 until it is.
_UNROLL = {("cpu", "lstm"): 4}
# The sequence length from which a cell's parallel form is faster than its step-by-step
# loop, per (backend, cell name) (None: never on the lengths measured); measured by
# ``python -m benchmarks.rnn_speed --sections crossover --cells lru rglru mlstm``
# (docs/performance.md). The forms differ per cell (minGRU, minLSTM, LRU, RG-LRU: an
# associative scan, O(T log T) work; mLSTM: (chunk, chunk) quadratic forms in a loop over
# chunks, where its step form updates a d x d memory every step), so each cell has its own
# entry. On the CPU the mLSTM's parallel form won the training step at every length
# measured (15x-25x, T = 16 to 4096; at 16384 its step form ran out of memory); the LRU's
# at none (16 to 16384), the RG-LRU's only at T = 16 (1.03x) and minGRU's only at T = 1024
# (1.14x), so from no length on.
_PARALLEL_FROM: dict[tuple[str, str], int | None] = {("cpu", "mlstm"): 16}
# The per-backend fallback: on the CPU the parallel forms of minGRU, LRU and RG-LRU were
# not faster for the training step from any length measured on (None: step by step). A
# backend not yet measured (GPU, TPU) keeps the parallel form at every length (1).
_PARALLEL_FROM_BACKEND: dict[str, int | None] = {"cpu": None}


def _backend(backend: str | None) -> str:
    return jax.default_backend() if backend is None else backend


def default_unroll(T: int, cell: str = "", backend: str | None = None) -> int:
    """The ``unroll`` that :func:`scan` uses when none is given.

    Args:
      T: sequence length.
      cell: the cell's name (``Cell.name``), the key of the measured table.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; JAX's default backend if None.

    Returns:
      Steps per loop iteration, at least 1 and at most ``T``: the value that was fastest
      for that cell's training step on that backend in ``benchmarks/rnn_speed.py
      --sections unroll`` (docs/performance.md has the table): 4 for the LSTM on the CPU,
      else 1 (also on a backend not yet measured).
    """
    return max(1, min(_UNROLL.get((_backend(backend), cell), 1), T))


def parallel_crossover(cell: Cell | str | None = None, backend: str | None = None) -> int | None:
    """The sequence length from which :func:`scan` runs a cell's parallel form.

    Cells with a parallel form (``Cell.parallel`` is not None: ``gr.min_gru``,
    ``gr.min_lstm``, the LRU, RG-LRU and mLSTM) can run all steps at once or step by step;
    with ``parallel=None``, :func:`scan` uses the parallel form for ``T`` at or above this
    length. The crossover is measured per (backend, cell): an associative scan (minGRU,
    LRU, RG-LRU) and mLSTM's quadratic form do not break even at the same length.

    Args:
      cell: a :class:`Cell` or its name (``Cell.name``), the key of the measured table;
        None: the backend's default.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; JAX's default backend if None.

    Returns:
      The measured crossover length for that cell on that backend
      (``benchmarks/rnn_speed.py --sections crossover``), None where the step-by-step loop
      was faster at every length measured; for a cell not measured on that backend, the
      backend's default: None (step by step) on the CPU, 1 (always parallel) on a backend
      not yet measured.

    Raises:
      TypeError: ``cell`` is not a Cell, a string or None.
      ValueError: ``cell`` is a backend's name (the backend is the second argument).
    """
    name = cell.name if isinstance(cell, Cell) else cell
    if name is not None and not isinstance(name, str):
        raise TypeError(f"cell must be a gr.Cell, a cell name or None, got {cell!r}")
    if name in ("cpu", "gpu", "tpu", "cuda", "rocm"):
        raise ValueError(
            f"parallel_crossover's first argument is the cell, got the backend {name!r}; "
            f"pass it as parallel_crossover(backend={name!r})"
        )
    backend = _backend(backend)
    if name is not None and (backend, name) in _PARALLEL_FROM:
        return _PARALLEL_FROM[(backend, name)]
    return _PARALLEL_FROM_BACKEND.get(backend, 1)


def _is_concrete(x: Any) -> bool:
    """True if ``x`` holds values we can inspect now (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def _as_array(x: Any, what: str) -> Array:
    """``x`` as a JAX array: numpy arrays, lists and scalars go through :func:`to_jax_array`
    (JAX's own dtype rules, so a float64 numpy input is float32 unless x64 is on, in every
    layout and with or without ``jit``); JAX arrays and tracers pass unchanged; a torch (or
    other framework's) tensor is refused (:func:`check_not_foreign_array`)."""
    check_not_foreign_array(x, what)
    if isinstance(x, np.ndarray) or not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = to_jax_array(x)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"{what} must be an array, got {type(x).__name__}") from e
    return x


def check_cell_and_xs(cell: Any, xs: Any, time_major: bool) -> Array:
    """Check that ``cell`` is a :class:`Cell` and ``xs`` has time and feature axes.

    Returns:
      ``xs`` as an array.

    Raises:
      TypeError: ``cell`` is not a Cell, or ``xs`` is not an array.
      ValueError: ``xs`` has fewer than 2 axes.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a gatedrnn Cell, got {type(cell).__name__}")
    xs = _as_array(xs, "xs")
    layout = "(T, *batch, features)" if time_major else "(*batch, T, features)"
    if xs.ndim < 2:
        raise ValueError(
            f"xs must have shape {layout} with at least 2 axes, got shape {tuple(xs.shape)}"
        )
    return xs


def _broadcast_state(
    cell: Cell, params: PyTree, state: PyTree, batch_shape: tuple[int, ...]
) -> PyTree:
    """Check a user-given initial state against ``(*batch_shape, H)`` and broadcast it."""
    ref = cell.initial_state(params, batch_shape)
    ref_leaves, ref_def = jax.tree_util.tree_flatten(ref)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    if treedef != ref_def:
        raise ValueError(
            f"initial_state must have the structure of cell.initial_state "
            f"({ref_def}), got {treedef}"
        )
    out = []
    for leaf, r in zip(leaves, ref_leaves, strict=True):
        leaf = _as_array(leaf, "initial_state")
        try:
            shape = jnp.broadcast_shapes(leaf.shape, r.shape)
        except ValueError:
            shape = None
        if shape != r.shape:
            raise ValueError(
                f"initial_state leaves must have shape (*batch, H) = {r.shape} "
                f"(or broadcast to it), got {tuple(leaf.shape)}"
            )
        if leaf.dtype != r.dtype:
            raise TypeError(f"initial_state has dtype {leaf.dtype} but the params are {r.dtype}")
        out.append(jnp.broadcast_to(leaf, r.shape))
    return jax.tree_util.tree_unflatten(ref_def, out)


def _where(mask: Array, a: PyTree, b: PyTree) -> PyTree:
    """Per batch element select between two states; ``mask`` is ``(*batch,)``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(mask[..., None], x, y), a, b)


def reverse_valid(x: Array, seq_lengths: Array | None) -> Array:
    """Reverse each sequence's valid prefix along axis 0 (time-major), leave padding.

    Args:
      x: ``(T, *batch, ...)``.
      seq_lengths: ``(*batch,)`` ints, or None to reverse the whole time axis.

    Returns:
      ``x`` with ``x[t]`` for ``t < len`` replaced by ``x[len - 1 - t]``; an involution.
    """
    if seq_lengths is None:
        return jnp.flip(x, axis=0)
    T = x.shape[0]
    t = jnp.arange(T).reshape((T,) + (1,) * seq_lengths.ndim)
    idx = jnp.where(t < seq_lengths, seq_lengths - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=0)


def scan(
    cell: Cell,
    params: PyTree,
    xs: Array,
    initial_state: PyTree | None = None,
    *,
    seq_lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool | None = None,
    truncate: int | None = None,
    remat: bool | str | int = False,
    state_perturbations: PyTree | None = None,
    fused: bool | None = None,
    parallel: bool | None = None,
) -> tuple[PyTree, Array]:
    """Run ``cell`` over the time axis of ``xs`` with ``jax.lax.scan``.

    Args:
      cell: a :class:`~gatedrnn.Cell` (``gr.vanilla``, ``gr.lstm``, ``gr.gru``, ...).
      params: the cell's params, e.g. from ``cell.init``.
      xs: ``(*batch, T, I)``; or ``(T, *batch, I)`` with ``time_major=True``. ``batch``
        may be empty (one sequence) or have several axes.
      initial_state: the state before the first step, leaves ``(*batch, H)`` (anything
        that broadcasts to it); zeros if None.
      seq_lengths: ``(*batch,)`` ints in ``[0, T]``. Steps at or past a sequence's length
        leave its state unchanged and output zeros; the final state is the state after the
        last valid step; the inputs there are never used (NaN padding is harmless).
        Concrete values outside ``[0, T]`` raise ValueError; traced ones (under
        ``jit``/``vmap``) cannot be checked and are clipped to ``[0, T]``.
      resets: ``(*batch, T)`` bools (``(T, *batch)`` with ``time_major``). Where true, the
        state is set back to ``initial_state`` before that step (episode or document
        boundaries inside one sequence).
      reverse: run each sequence from its last valid step back to its first; outputs are
        returned in the original time order. With ``resets``, each segment is run
        backwards, as if the pieces were scanned in reverse one by one.
      time_major: ``xs`` (and ``ys``, ``resets``) have time on axis 0.
      unroll: passed to ``jax.lax.scan`` (steps unrolled per loop iteration); None (the
        default): :func:`default_unroll` for the cell and backend on the fused loop, where
        it was measured; 1 on the other loops (with ``remat``, unroll 4 measured slower).
      truncate: truncated BPTT window ``k``: the gradient through the state is stopped
        before every step whose index (in processing order) is a positive multiple of
        ``k``; the forward pass is unchanged.
      remat: memory for compute in the backward pass. ``False``: store every step's
        internals. ``True``: recompute each step's internals (``jax.checkpoint`` per step).
        ``"sqrt"`` or an int ``k``: checkpoint chunks of ``k`` steps (``"sqrt"``:
        ``k = round(sqrt(T))``; each chunk's projection included), so memory goes from
        ``O(T)`` to ``O(T / k + k)`` steps.
      fused: None (default): the fused loop (see the module docstring) wherever it can
        run; True: insist on it (ValueError where it cannot); False: the plain loop and
        ``jax.lax.scan``'s own autodiff.
      parallel: for cells with a parallel form (``Cell.parallel`` is not None). None
        (default): the parallel form where ``T >= parallel_crossover(cell)`` (where it
        measured faster for this cell on this backend), else the step-by-step loop; True:
        insist on it (ValueError where an option rules it out); False: step by step.
      state_perturbations: for diagnostics; like the state with a leading time axis,
        leaves ``(T, *batch, H)`` (always time-major, original time order), added to the
        state right after each step. The gradient with respect to zeros here is
        ``dL/dstate_t`` for every ``t`` in one pass.

    Returns:
      ``(final_state, ys)``: the state after the last valid step (leaves ``(*batch, H)``)
      and the outputs ``(*batch, T, H)`` (``(T, *batch, H)`` with ``time_major``). With
      ``T = 0`` or an empty batch this is the initial state and empty outputs.

    Raises:
      ValueError: on a rank, size or option that does not fit, before tracing.
      TypeError: on integer inputs or a dtype that differs from the params'.
    """
    xs = check_cell_and_xs(cell, xs, time_major)
    _check_options(reverse, time_major, unroll, truncate, fused, parallel)
    xs_tm = xs if time_major else jnp.moveaxis(xs, -2, 0)
    T, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    chunk = remat_chunk(remat, T)
    loop_only = dict(resets=resets, truncate=truncate, state_perturbations=state_perturbations)
    use_split = _use_split(cell, fused, {**loop_only, "remat": remat})
    if unroll is None:  # measured on the fused loop; the other loops keep 1
        unroll = default_unroll(T, cell.name) if use_split else 1
    use_parallel = _use_parallel(cell, parallel, T, {**loop_only, "remat": chunk})

    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        check_not_foreign_array(leaf, "params" + jax.tree_util.keystr(path))
    jax.eval_shape(cell.project, params, xs_tm)  # the cell checks features and dtype
    state0_given = _initial_state(cell, params, initial_state, batch_shape)
    lengths = _check_lengths(seq_lengths, batch_shape, T)
    xs_tm, state0 = _mask_padding(cell, params, xs_tm, state0_given, lengths)
    # With chunked remat each chunk projects its own inputs inside the loop.
    if chunk is None:
        _check_projection_memory(cell, params, xs_tm)
    xp = cell.project(params, xs_tm) if chunk is None else xs_tm
    rs = _check_resets(resets, T, batch_shape, time_major)
    perts = _check_perturbations(state_perturbations, state0, T, cell.hidden_size)
    if reverse:
        xp, rs, perts = _to_processing_order(xp, rs, perts, lengths)

    if use_split:
        final_state, ys = _split_loop(cell.recur, params, xp, state0, lengths, unroll)
    elif use_parallel:
        final_state, ys = _parallel_scan(cell, params, xp, state0, lengths)
    else:
        body = partial(_step, cell, truncate, (params, state0, lengths))
        inputs = (jnp.arange(T), xp, rs, perts)
        if chunk is not None:
            in_place = not time_major and not reverse  # xs is batch-major as given
            final_state, ys = _chunked_scan(
                cell, params, body, state0, inputs, chunk, unroll, in_place
            )
        else:
            body = jax.checkpoint(body) if remat else body
            final_state, ys = jax.lax.scan(body, state0, inputs, length=T, unroll=unroll)
    if reverse:
        ys = reverse_valid(ys, lengths)
    if lengths is not None:
        final_state = _where(lengths > 0, final_state, state0_given)
    return final_state, ys if time_major else jnp.moveaxis(ys, 0, -2)


# --------------------------------------------------------------------------- checks


def _check_projection_memory(cell: Cell, params: PyTree, xs_tm: Array) -> None:
    """Refuse, with the size it needs, an input projection larger than the devices' memory."""
    out = jax.eval_shape(cell.project, params, xs_tm)
    nbytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(out))
    check_fits_in_memory(
        nbytes,
        f"the input projection of xs {tuple(xs_tm.shape)} (time-major) by a {cell.name} cell",
    )


def _check_options(
    reverse: Any, time_major: Any, unroll: Any, truncate: Any, fused: Any, parallel: Any
) -> None:
    """Raise TypeError/ValueError for flags and loop options of the wrong type or range."""
    for flag, value in (("reverse", reverse), ("time_major", time_major)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if unroll is not None and (
        not isinstance(unroll, (bool, int, np.integer))
        or (not isinstance(unroll, bool) and unroll < 1)
    ):
        raise ValueError(f"unroll must be None, an int >= 1 or a bool, got {unroll!r}")
    if truncate is not None and (
        isinstance(truncate, bool) or not isinstance(truncate, (int, np.integer)) or truncate < 1
    ):
        raise ValueError(f"truncate must be None or an int >= 1, got {truncate!r}")
    for name, value in (("fused", fused), ("parallel", parallel)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be None, True or False, got {value!r}")


def _use_parallel(cell: Cell, parallel: bool | None, T: int, loop_only: dict[str, Any]) -> bool:
    """Whether to run the cell's parallel form: it has one, no loop-only option is set, and
    ``parallel`` asks for it or (None) ``T`` is at or past the backend's crossover."""
    given = sorted(k for k, v in loop_only.items() if v is not None and v is not False)
    if parallel:
        if cell.parallel is None or given:
            raise ValueError(
                f"parallel=True needs a cell with a parallel form (Cell.parallel; got "
                f"{cell.name!r}{'' if cell.parallel is not None else ' without one'}) and "
                f"no resets, truncate, state_perturbations or chunked remat (got {given})"
            )
        return True
    if parallel is False or cell.parallel is None or given:
        return False
    start = parallel_crossover(cell)
    return start is not None and T >= start


def _use_split(cell: Cell, fused: bool | None, loop_only: dict[str, Any]) -> bool:
    """Whether to run the fused loop: the cell's ``recur`` is a :class:`Split` and none
    of the loop-only options is set; ``fused=True`` insists (ValueError if it cannot)."""
    has_split = isinstance(cell.recur, Split)
    given = {k: v for k, v in loop_only.items() if v is not None and v is not False}
    ok = has_split and not given
    if fused and not ok:
        shown = ", ".join(
            f"{k}={'...' if k in ('resets', 'state_perturbations') else repr(v)}"
            for k, v in given.items()
        )
        raise ValueError(
            "fused=True needs a cell whose recur is a hidden/pointwise Split (Cell.split; "
            f"got {cell.name!r}"
            + ("" if has_split else " without one")
            + f") and no resets, truncate, state_perturbations or remat (got {shown})"
        )
    return ok if fused is None else bool(fused)


def _initial_state(
    cell: Cell, params: PyTree, initial_state: PyTree | None, batch_shape: tuple[int, ...]
) -> PyTree:
    """The cell's zeros, or a user-given state checked and broadcast to ``(*batch, H)``."""
    if initial_state is None:
        return cell.initial_state(params, batch_shape)
    return _broadcast_state(cell, params, initial_state, batch_shape)


def _check_lengths(seq_lengths: Any, batch_shape: tuple[int, ...], T: int) -> Array | None:
    """``seq_lengths (*batch,)`` as int32 clipped to ``[0, T]``, or None.

    Concrete values (numpy, lists, concrete JAX arrays) are checked in their own integer
    type before any cast: outside ``[0, T]`` raises ValueError (so ``2**32 + 3`` is an
    error, never a wrapped-around 3). Traced ones cannot be checked and are clipped to
    ``[0, T]``, also before the cast to int32, so that out-of-range lengths act as 0 or T
    (without it, ``reverse=True`` would gather out of bounds and give NaN).
    """
    if seq_lengths is None:
        return None
    if not isinstance(seq_lengths, jax.Array):  # numpy, lists: check before JAX casts
        values = np.asarray(seq_lengths)
        if values.dtype == object:
            raise TypeError(f"seq_lengths must be an array of integers, got {values.dtype}")
        _check_length_values(values, batch_shape, T)
        return jnp.asarray(values.astype(np.int64).clip(0, T), jnp.int32)
    _check_length_values(seq_lengths, batch_shape, T)
    return jnp.clip(seq_lengths, 0, T).astype(jnp.int32)


def _check_length_values(lengths: Any, batch_shape: tuple[int, ...], T: int) -> None:
    """Shape and integer dtype of ``seq_lengths``; its range too where values are concrete."""
    if tuple(lengths.shape) != batch_shape:
        raise ValueError(
            f"seq_lengths must have shape (*batch,) = {batch_shape}, got {tuple(lengths.shape)}"
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"seq_lengths must be integers, got dtype {lengths.dtype}")
    if _is_concrete(lengths) and lengths.size:
        # numpy, not jnp: under an outer jit, jnp.min of a closed-over array is traced
        values = np.asarray(lengths)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > T:
            raise ValueError(f"seq_lengths must lie in [0, T={T}], got values from {lo} to {hi}")


def _check_resets(
    resets: Any, T: int, batch_shape: tuple[int, ...], time_major: bool
) -> Array | None:
    """``resets`` checked (bools, ``(*batch, T)`` or ``(T, *batch)``) and made time-major."""
    if resets is None:
        return None
    rs = _as_array(resets, "resets")
    want = (T, *batch_shape) if time_major else (*batch_shape, T)
    if tuple(rs.shape) != want:
        raise ValueError(
            f"resets must have shape {'(T, *batch)' if time_major else '(*batch, T)'}"
            f" = {want}, got {tuple(rs.shape)}"
        )
    if rs.dtype != jnp.bool_:
        raise TypeError(f"resets must be booleans, got dtype {rs.dtype}")
    return rs if time_major else jnp.moveaxis(rs, -1, 0)


def _check_perturbations(perts: PyTree | None, state0: PyTree, T: int, H: int) -> PyTree | None:
    """Check ``state_perturbations`` against the state with a leading time axis ``T``."""
    if perts is None:
        return None
    ref_leaves, ref_def = jax.tree_util.tree_flatten(state0)
    leaves, treedef = jax.tree_util.tree_flatten(perts)
    if treedef != ref_def or any(
        tuple(getattr(p, "shape", ())) != (T, *r.shape)
        for p, r in zip(leaves, ref_leaves, strict=True)
    ):
        batch = ref_leaves[0].shape[:-1] if ref_leaves else ()
        raise ValueError(
            "state_perturbations must be like the state with a leading time axis, "
            f"leaves (T, *batch, H) = {(T, *batch, H)}"
        )
    return perts


# ----------------------------------------------------------------------- time order


def _to_processing_order(
    xp: PyTree, rs: Array | None, perts: PyTree | None, lengths: Array | None
) -> tuple[PyTree, Array | None, PyTree | None]:
    """For ``reverse=True``: each sequence's valid steps reversed (inputs, resets, perts)."""
    xp = jax.tree_util.tree_map(lambda a: reverse_valid(a, lengths), xp)
    if rs is not None:
        # A reset before original step t marks the boundary between t-1 and t; going
        # backwards that boundary comes before step t-1.
        T = rs.shape[0]
        shifted = jnp.concatenate([rs[1:], jnp.zeros_like(rs[:1])], axis=0)
        if lengths is not None:
            t = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim)
            shifted = shifted & (t < lengths - 1)
        rs = reverse_valid(shifted, lengths)
    if perts is not None:
        perts = jax.tree_util.tree_map(lambda p: reverse_valid(p, lengths), perts)
    return xp, rs, perts


# ---------------------------------------------------------------------------- loops


def _step(
    cell: Cell, truncate: int | None, consts: tuple, state: PyTree, inputs: tuple
) -> tuple[PyTree, Array]:
    """The plain loop body: resets, truncation, ``cell.recur``, perturbations, lengths.

    ``consts = (params, state0, lengths)``; ``inputs = (t, xp_t, reset_t, pert_t)`` with
    None for an option not given.
    """
    params, state0, lengths = consts
    t, xp_t, r_t, p_t = inputs
    if r_t is not None:
        state = _where(r_t, state0, state)
    if truncate is not None:
        cut = (t > 0) & (t % truncate == 0)
        state = jax.tree_util.tree_map(lambda s: jnp.where(cut, jax.lax.stop_gradient(s), s), state)
    new_state, y = cell.recur(params, state, xp_t)
    if p_t is not None:
        new_state = jax.tree_util.tree_map(jnp.add, new_state, p_t)
        y = cell.output(params, new_state, xp_t)
    if lengths is not None:
        valid = t < lengths
        new_state = _where(valid, new_state, state)
        y = jnp.where(valid[..., None], y, jnp.zeros_like(y))
    return new_state, y


def _mask_padding(
    cell: Cell, params: PyTree, xs_tm: Array, state0: PyTree, lengths: Array | None
) -> tuple[Array, PyTree]:
    """Keep padding out of the math: inputs at or past a sequence's length become zeros,
    and a row of length 0 starts from the cell's zeros (double where: :func:`scan` puts the
    given state back as its final state). Otherwise a NaN/inf there, multiplied by its zero
    cotangent in the masked steps' matrix products, would make the params' gradient NaN."""
    if lengths is None:
        return xs_tm, state0
    T, batch_shape = xs_tm.shape[0], tuple(xs_tm.shape[1:-1])
    t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
    xs_tm = jnp.where((t < lengths)[..., None], xs_tm, jnp.zeros_like(xs_tm))
    zeros = cell.initial_state(params, batch_shape)
    return xs_tm, _where(lengths > 0, state0, zeros)


def _split_loop(
    split: Split,
    params: PyTree,
    xp: PyTree,
    state0: PyTree,
    lengths: Array | None,
    unroll: int | bool,
) -> tuple[PyTree, Array]:
    """The fused loop (:func:`gatedrnn._fused.scan_split`) of a :class:`Split` cell, with
    steps at or past a sequence's length keeping the state and giving zeros."""
    T = jax.tree_util.tree_leaves(xp)[0].shape[0]
    valid = None
    if lengths is not None:
        valid = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim) < lengths

    def pointwise(state: PyTree, inputs: tuple, a: Array) -> tuple[PyTree, Array]:
        xp_t, valid_t = inputs
        if split.additive:  # ``a`` already holds ``xp_t + a``
            xp_t = jnp.zeros((), a.dtype)
        new_state, y = split.pointwise(state, xp_t, a)
        if valid_t is not None:
            new_state = _where(valid_t, new_state, state)
            y = jnp.where(valid_t[..., None], y, jnp.zeros_like(y))
        return new_state, y

    if split.additive:
        xs, offsets = (None, valid), xp
    else:
        xs, offsets = (xp, valid), None
    return scan_split(
        split.hidden, pointwise, params, state0, xs, length=T, offsets=offsets, unroll=unroll
    )


def remat_chunk(remat: Any, T: int) -> int | None:
    """The chunk length of chunked rematerialization, or None for ``remat`` in (False, True).

    ``"sqrt"`` gives ``max(1, round(sqrt(T)))``; an int ``k >= 1`` gives ``k``.
    """
    if isinstance(remat, bool):
        return None
    if isinstance(remat, str):
        if remat != "sqrt":
            raise ValueError(f'remat must be a bool, "sqrt" or an int >= 1, got {remat!r}')
        return max(1, round(float(np.sqrt(T))))
    if isinstance(remat, (int, np.integer)) and remat >= 1:
        return int(remat)
    raise ValueError(f'remat must be a bool, "sqrt" or an int >= 1, got {remat!r}')


def _chunked_scan(
    cell: Cell,
    params: PyTree,
    body: Any,
    state0: PyTree,
    inputs: tuple,
    chunk: int,
    unroll: int | bool,
    in_place: bool = False,
) -> tuple[PyTree, Array]:
    """The loop as nested scans over chunks of ``chunk`` steps, each chunk checkpointed.

    ``inputs`` are time-major ``(t, xs, resets, perturbations)`` with the raw inputs ``xs``:
    each chunk projects its own inputs, so neither the projection nor the steps' internals
    are stored for more than one chunk at a time. With ``in_place`` (``xs`` came
    batch-major, in processing order) each chunk reads its steps from the batch-major
    array with a dynamic slice, so no time-major copy of ``xs`` (or of its gradient) exists.
    """
    T = inputs[0].shape[0]
    xs_batch_major = None
    if in_place and 0 < chunk <= T:  # moveaxis back: XLA cancels the pair of transposes
        xs_batch_major = jnp.moveaxis(inputs[1], 0, -2)
        inputs = (inputs[0], None, *inputs[2:])

    def run_chunk(state: PyTree, chunk_inputs: tuple) -> tuple[PyTree, Array]:
        t, x, r, p = chunk_inputs
        if x is None:  # this chunk's steps of the batch-major input, time-major
            size = t.shape[0]
            x = jax.lax.dynamic_slice_in_dim(xs_batch_major, t[0], size, axis=-2)
            x = jnp.moveaxis(x, -2, 0)
        return jax.lax.scan(body, state, (t, cell.project(params, x), r, p), unroll=unroll)

    run_chunk = jax.checkpoint(run_chunk)
    n = T // chunk
    head = jax.tree_util.tree_map(
        lambda a: a[: n * chunk].reshape((n, chunk, *a.shape[1:])), inputs
    )
    state, ys = jax.lax.scan(run_chunk, state0, head)
    ys = ys.reshape((n * chunk, *ys.shape[2:]))
    if n * chunk < T:
        tail = jax.tree_util.tree_map(lambda a: a[n * chunk :], inputs)
        state, ys_tail = run_chunk(state, tail)
        ys = jnp.concatenate([ys, ys_tail], axis=0)
    return state, ys


def _parallel_scan(
    cell: Cell,
    params: PyTree,
    xp: PyTree,
    state0: PyTree,
    lengths: Array | None,
) -> tuple[PyTree, Array]:
    """The loop for a cell with a ``parallel`` form: all steps at once.

    ``xp`` is time-major and already in processing order (reversed if ``reverse``); so
    are the outputs ``(T, *batch, H)``. The cell keeps the state at steps past a
    sequence's length (``valid`` False); their outputs are zeroed here.
    """
    T = jax.tree_util.tree_leaves(xp)[0].shape[0]
    valid = None
    if lengths is not None:
        valid = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim) < lengths
    final_state, ys = cell.parallel(params, xp, state0, valid)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros_like(ys))
    return final_state, ys
