"""What the Flax Linen and NNX wrappers share (no Flax import here): turning the modules'
options into a pure cell through the one registry, dropout's on/off rule, and running a
:func:`gatedrnn.stack` the way both ``RNN`` modules do.

Both ``RNN`` modules take the same options with the same defaults (a test compares their
signatures): ``cell`` (a name of :data:`gatedrnn.cells.CELLS` or a :class:`gatedrnn.Cell`),
``hidden_size``, ``num_layers``, ``bidirectional``, ``dropout``, ``deterministic``,
``time_major``, ``unroll``, ``param_dtype``, the cell options ``activation``,
``forget_bias``, ``reset_after``, ``update_bias``, ``t_max`` (``"chrono"`` gate biases,
Tallec & Ollivier 2018), and the initializers ``kernel_init``,
``recurrent_init``, ``bias_init``. Cell options and initializers default to None: the pure
cell's own default.
"""

from __future__ import annotations

import inspect
from typing import Any

from gatedrnn.cells import CELLS, make_cell
from gatedrnn.cells.base import Array, Cell
from gatedrnn.layers import Stack


def cell_options(**given: Any) -> dict[str, Any]:
    """The options that were given (None means: the pure cell's default)."""
    return {k: v for k, v in given.items() if v is not None}


def resolve_cell(cell: str | Cell, hidden_size: int | None, options: dict[str, Any]) -> Cell:
    """The pure cell a module runs: ``cell`` itself, or ``make_cell(cell, hidden_size, ...)``.

    Args:
      cell: a registered name (``"vanilla"``, ``"lstm"``, ``"gru"``, ...) or a Cell.
      hidden_size: ``H``; required with a name, optional (must match) with a Cell.
      options: cell options and initializers that are not None (see :func:`cell_options`).

    Raises:
      ValueError: an unknown name, a missing or mismatched ``hidden_size``, options given
        together with a Cell, or an option the named cell does not take.
    """
    if isinstance(cell, Cell):
        if hidden_size is not None and hidden_size != cell.hidden_size:
            raise ValueError(
                f"hidden_size={hidden_size} but the cell has hidden size {cell.hidden_size}"
            )
        if options:
            raise ValueError(
                f"{sorted(options)} go to the cell factory; a ready-made Cell was given, so "
                f"pass them there (e.g. gr.{cell.name}(H, ...)) or pass the cell's name"
            )
        return cell
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)} or a gatedrnn Cell, got {cell!r}")
    if hidden_size is None:
        raise ValueError(f"cell={cell!r} needs hidden_size")
    takes = inspect.signature(CELLS[cell]).parameters
    unknown = sorted(set(options) - set(takes))
    if unknown:
        accepted = sorted(set(takes) - {"hidden_size"})
        raise ValueError(f"the {cell!r} cell takes no {unknown}; its options are {accepted}")
    return make_cell(cell, hidden_size, **options)


def is_deterministic(call: bool | None, attribute: bool | None) -> bool:
    """Dropout's switch: the call's ``deterministic``, else the module's, else True (off)."""
    if call is not None:
        return bool(call)
    return True if attribute is None else bool(attribute)


def uses_dropout(st: Stack, deterministic: bool) -> bool:
    """Whether a stack call needs a dropout key: rate > 0, training, and >= 2 layers."""
    return st.dropout > 0.0 and not deterministic and st.num_layers > 1


def check_xs(xs: Any) -> None:
    """Raise ValueError unless ``xs`` is an array of shape ``(*batch, T, features)``."""
    if not hasattr(xs, "ndim") or xs.ndim < 2:
        raise ValueError(
            f"xs must have shape (*batch, T, features), got {getattr(xs, 'shape', xs)!r}"
        )


def run_stack(
    st: Stack,
    params: tuple,
    xs: Array,
    initial_state: tuple | None,
    *,
    seq_lengths: Array | None,
    reverse: bool,
    time_major: bool,
    unroll: int | None,
    dropout_key: Array | None,
) -> tuple[tuple, Array]:
    """``st.apply`` with a ``reverse`` option for unidirectional stacks.

    Args:
      xs: ``(*batch, T, I)`` (``(T, *batch, I)`` with ``time_major``).

    Returns:
      ``(final_states, ys)`` as :func:`gatedrnn.stack`'s ``apply``; ``ys`` is
      ``(*batch, T, D * H)``.

    Raises:
      ValueError: ``reverse=True`` on a bidirectional stack, or ``xs`` of rank < 2.
    """
    check_xs(xs)
    if reverse and st.bidirectional:
        raise ValueError("reverse=True makes no sense with bidirectional=True")
    extra = {"reverse": True} if reverse else {}
    return st.apply(
        params,
        xs,
        initial_state,
        seq_lengths=seq_lengths,
        time_major=time_major,
        dropout_key=dropout_key,
        unroll=unroll,
        **extra,
    )
