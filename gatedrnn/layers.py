"""Layers on top of the time loop: bidirectional runs and stacks of several layers.

Both are built from :func:`gatedrnn.scan` only; they add no math of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells.base import Array, Cell, check_input_size, check_key
from gatedrnn.scan import scan


class Bidir(NamedTuple):
    """A pair of forward and backward things (params or states) of a bidirectional layer."""

    fw: Any
    bw: Any


def bidirectional_scan(
    cell: Cell,
    params: Bidir,
    xs: Array,
    initial_state: Bidir | None = None,
    *,
    seq_lengths: Array | None = None,
    time_major: bool = False,
    cell_bw: Cell | None = None,
    **scan_kwargs: Any,
) -> tuple[Bidir, Array]:
    """Run a forward and a backward scan over the valid part of each sequence.

    Args:
      cell: the forward cell (and the backward one unless ``cell_bw`` is given).
      params: ``Bidir(fw, bw)`` cell params.
      xs: ``(*batch, T, I)`` (``(T, *batch, I)`` with ``time_major``).
      initial_state: ``Bidir(fw, bw)`` states, or None for zeros.
      seq_lengths: ``(*batch,)``: the backward run starts at each sequence's last valid
        step.
      time_major: as in :func:`gatedrnn.scan`.
      cell_bw: a different cell for the backward direction (optional).
      **scan_kwargs: further :func:`gatedrnn.scan` options (``unroll``, ``truncate``,
        ``remat``, ``resets``).

    Returns:
      ``(Bidir(final_fw, final_bw), ys)`` with ``ys (*batch, T, H_fw + H_bw)``: forward and
      backward outputs concatenated on the last axis, both in the original time order.
    """
    if not isinstance(params, tuple) or len(params) != 2:
        raise ValueError(
            f"bidirectional_scan params must be Bidir(fw, bw), got {type(params).__name__}"
        )
    if initial_state is not None and (
        not isinstance(initial_state, tuple) or len(initial_state) != 2
    ):
        raise ValueError(
            "bidirectional_scan initial_state must be None or Bidir(fw, bw), got "
            f"{type(initial_state).__name__}"
        )
    if "reverse" in scan_kwargs:
        raise TypeError("bidirectional_scan runs both directions; it takes no reverse=")
    cell_bw = cell if cell_bw is None else cell_bw
    init = (None, None) if initial_state is None else initial_state
    s_fw, y_fw = scan(
        cell,
        params[0],
        xs,
        init[0],
        seq_lengths=seq_lengths,
        time_major=time_major,
        **scan_kwargs,
    )
    s_bw, y_bw = scan(
        cell_bw,
        params[1],
        xs,
        init[1],
        seq_lengths=seq_lengths,
        time_major=time_major,
        reverse=True,
        **scan_kwargs,
    )
    return Bidir(s_fw, s_bw), jnp.concatenate([y_fw, y_bw], axis=-1)


class Stack(NamedTuple):
    """Several recurrent layers, each layer's whole output sequence feeding the next.

    Made by :func:`stack`. Params and states are tuples with one entry per layer; with
    ``bidirectional`` each entry is a :class:`Bidir` ``(fw, bw)``.

    Attributes:
      init: ``init(key, input_size, dtype=jnp.float32) -> tuple of layer params``.
      initial_state: ``initial_state(params, batch_shape=()) -> tuple of layer states``.
      apply: ``apply(params, xs, initial_state=None, *, seq_lengths=None,
        time_major=False, dropout_key=None, **scan_kwargs) -> (final_states, ys)``;
        ``ys`` is the last layer's outputs ``(*batch, T, D * H)`` with ``D = 2`` if
        bidirectional else 1.
      cell: the cell every layer uses.
      num_layers: number of layers.
      bidirectional: whether each layer runs both ways.
      dropout: dropout rate on every layer's output except the last (training only: it is
        applied when ``apply`` gets a ``dropout_key``).
      origin: constructor options of the module this stack was converted from that its
        math does not hold, as sorted ``(name, value)`` pairs (``from_torch``:
        ``batch_first``, ``bias``), so that converting back rebuilds the same module;
        ``()`` for a stack made by :func:`stack`. ``apply`` never reads it.
    """

    init: Callable[..., tuple]
    initial_state: Callable[..., tuple]
    apply: Callable[..., tuple[tuple, Array]]
    cell: Cell
    num_layers: int
    bidirectional: bool
    dropout: float
    origin: tuple[tuple[str, Any], ...] = ()


def stack(
    cell: Cell, num_layers: int = 1, *, bidirectional: bool = False, dropout: float = 0.0
) -> Stack:
    """Stack ``num_layers`` layers of ``cell`` (like PyTorch's ``nn.LSTM(num_layers=...)``).

    Args:
      cell: the cell of every layer (all layers have its hidden size ``H``).
      num_layers: number of layers, >= 1.
      bidirectional: run each layer forwards and backwards and concatenate the outputs,
        so layers after the first take ``2H`` features.
      dropout: rate in ``[0, 1)`` of dropout between layers (not after the last).

    Returns:
      A :class:`Stack`.
    """
    num_layers, dropout = _check_stack_args(cell, num_layers, bidirectional, dropout)
    dirs = 2 if bidirectional else 1
    H = cell.hidden_size

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> tuple:
        """One params entry per layer; layer 0 takes ``input_size``, later ones ``D*H``."""
        check_key(key)
        input_size = check_input_size(input_size)
        out = []
        for layer, k in enumerate(jax.random.split(key, num_layers)):
            size = input_size if layer == 0 else dirs * H
            if bidirectional:
                kf, kb = jax.random.split(k)
                out.append(Bidir(cell.init(kf, size, dtype), cell.init(kb, size, dtype)))
            else:
                out.append(cell.init(k, size, dtype))
        return tuple(out)

    def initial_state(params: tuple, batch_shape: Any = ()) -> tuple:
        """Zeros for every layer (and direction)."""
        if bidirectional:
            return tuple(
                Bidir(
                    cell.initial_state(p.fw, batch_shape),
                    cell.initial_state(p.bw, batch_shape),
                )
                for p in params
            )
        return tuple(cell.initial_state(p, batch_shape) for p in params)

    def apply(
        params: tuple,
        xs: Array,
        initial_state: tuple | None = None,
        *,
        seq_lengths: Array | None = None,
        time_major: bool = False,
        dropout_key: Array | None = None,
        **scan_kwargs: Any,
    ) -> tuple[tuple, Array]:
        """Run all layers; returns ``(final states per layer, last layer's ys)``."""
        _check_per_layer(params, initial_state, num_layers)
        finals = []
        ys = xs
        for layer in range(num_layers):
            init_l = None if initial_state is None else initial_state[layer]
            run = bidirectional_scan if bidirectional else scan
            state, ys = run(
                cell,
                params[layer],
                ys,
                init_l,
                seq_lengths=seq_lengths,
                time_major=time_major,
                **scan_kwargs,
            )
            finals.append(state)
            if dropout > 0.0 and dropout_key is not None and layer < num_layers - 1:
                dropout_key, k = jax.random.split(dropout_key)
                ys = _dropout(k, ys, dropout)
        return tuple(finals), ys

    return Stack(
        init=init,
        initial_state=initial_state,
        apply=apply,
        cell=cell,
        num_layers=num_layers,
        bidirectional=bool(bidirectional),
        dropout=float(dropout),
    )


__all__ = ["Bidir", "Stack", "bidirectional_scan", "stack"]


def _check_stack_args(
    cell: Any, num_layers: Any, bidirectional: Any, dropout: Any
) -> tuple[int, float]:
    """Check :func:`stack`'s arguments; returns ``(num_layers, dropout)`` as int and float."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a gatedrnn Cell, got {type(cell).__name__}")
    if (
        isinstance(num_layers, bool)
        or not isinstance(num_layers, (int, np.integer))
        or num_layers < 1
    ):
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float, np.number))
        or not 0.0 <= float(dropout) < 1.0
    ):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
    return int(num_layers), float(dropout)


def _check_per_layer(params: Any, initial_state: Any, num_layers: int) -> None:
    """Raise ValueError unless ``params`` (and ``initial_state``, if given) have one entry
    per layer."""
    for what, value in (("params", params), ("initial_state", initial_state)):
        if what == "initial_state" and value is None:
            continue
        if not isinstance(value, (tuple, list)) or len(value) != num_layers:
            length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
            expect = "a tuple of" if what == "params" else "None or a tuple of"
            kind = "layer params" if what == "params" else "layer states"
            raise ValueError(
                f"{what} must be {expect} {num_layers} {kind}, got {type(value).__name__}{length}"
            )


def _dropout(key: Array, ys: Array, rate: float) -> Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest up."""
    keep = jax.random.bernoulli(key, 1.0 - rate, ys.shape)
    return jnp.where(keep, ys / (1.0 - rate), jnp.zeros_like(ys))
