"""What the Flax Linen and NNX wrappers share (no Flax import here): cell lookup, init
options, and running a :func:`gatedrnn.stack` the way both ``RNN`` modules do."""

from __future__ import annotations

from collections.abc import Callable

from gatedrnn.cells import gru, lstm, vanilla
from gatedrnn.cells.base import Array, Cell, Initializer
from gatedrnn.layers import Stack

CELLS: dict[str, Callable[..., Cell]] = {"vanilla": vanilla, "lstm": lstm, "gru": gru}


def init_options(
    kernel_init: Initializer | None,
    recurrent_init: Initializer | None,
    bias_init: Initializer | None,
) -> dict[str, Initializer]:
    """The initializers that were given (None means: the pure cell's default)."""
    given = {"kernel_init": kernel_init, "recurrent_init": recurrent_init, "bias_init": bias_init}
    return {k: v for k, v in given.items() if v is not None}


def uses_dropout(st: Stack, deterministic: bool) -> bool:
    """Whether a stack call needs a dropout key: rate > 0, training, and >= 2 layers."""
    return st.dropout > 0.0 and not deterministic and st.num_layers > 1


def run_stack(
    st: Stack,
    params: tuple,
    xs: Array,
    initial_state: tuple | None,
    *,
    seq_lengths: Array | None,
    reverse: bool,
    time_major: bool,
    unroll: int,
    dropout_key: Array | None,
) -> tuple[tuple, Array]:
    """``st.apply`` with a ``reverse`` option for unidirectional stacks.

    Returns:
      ``(final_states, ys)`` as :func:`gatedrnn.stack`'s ``apply``.

    Raises:
      ValueError: ``reverse=True`` on a bidirectional stack.
    """
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
