"""The vanilla (Elman) RNN cell: ``h' = act(x w_x + h w_h + b)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatedrnn.cells.base import (
    Array,
    Cell,
    Initializer,
    Split,
    blockwise,
    cached_factory,
    check_dtype,
    check_hidden_size,
    check_initializers,
    check_input,
    check_input_size,
    check_key,
    check_param_memory,
    check_params,
    fan_in_normal,
    make_config,
    make_state_zeros,
    orthogonal,
    state_output,
    zeros,
)

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "linear": lambda z: z,
}


class VanillaParams(NamedTuple):
    """Parameters of a vanilla RNN cell.

    Attributes:
      w_x: ``(I, H)`` input weight.
      w_h: ``(H, H)`` recurrent weight.
      b: ``(H,)`` bias.
    """

    w_x: Array
    w_h: Array
    b: Array


@cached_factory
def vanilla(
    hidden_size: int,
    activation: str = "tanh",
    *,
    kernel_init: Initializer = fan_in_normal,
    recurrent_init: Initializer = orthogonal,
    bias_init: Initializer = zeros,
) -> Cell:
    """A vanilla (Elman) RNN cell.

    Args:
      hidden_size: number of hidden units ``H``.
      activation: ``"tanh"`` (default), ``"relu"`` or ``"linear"`` (identity; useful to
        study the exact ``s^k`` gradient law).
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype) -> array``
        for ``w_x (I, H)``, ``w_h (H, H)`` and ``b (H,)``.

    Returns:
      A :class:`Cell` whose params are :class:`VanillaParams` and whose state is the
      hidden state ``h (*batch, H)``.

    Equations::

        h' = act(x w_x + h w_h + b),   y = h'
    """
    hidden_size = check_hidden_size(hidden_size)
    check_initializers(kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    act = ACTIVATIONS[activation]
    H = hidden_size

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> VanillaParams:
        """Draw params: ``w_x`` fan-in normal, ``w_h`` orthogonal, ``b`` zeros."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_param_memory("vanilla", input_size, H, 1, dtype)
        check_key(key)
        kx, kh, kb = jax.random.split(key, 3)
        return VanillaParams(
            w_x=kernel_init(kx, (input_size, H), dtype),
            w_h=blockwise(recurrent_init, 1)(kh, (H, H), dtype),
            b=bias_init(kb, (H,), dtype),
        )

    def initial_state(params: VanillaParams, batch_shape: Any = ()) -> Array:
        """Zeros ``(*batch_shape, H)``."""
        check_params(params, VanillaParams, "vanilla", H, 1)
        return make_state_zeros(H, params.w_h.dtype, batch_shape)

    def project(params: VanillaParams, x: Array) -> Array:
        """``(..., I) -> (..., H)``: ``x w_x`` (the bias is added in ``hidden``)."""
        check_params(params, VanillaParams, "vanilla", H, 1)
        x = check_input(x, params.w_x)
        return x @ params.w_x

    def hidden(params: VanillaParams, h: Array) -> Array:
        """The recurrent part ``h w_h + b``, ``(*batch, H)``.

        The bias is added here, inside the time loop, rather than in ``project``, where it
        would be one more pass over the ``(T, *batch, H)`` projection (as for the LSTM,
        :func:`gatedrnn.cells.lstm.lstm_hidden`).
        """
        return h @ params.w_h + params.b

    def pointwise(h: Array, xp: Array, a: Array) -> tuple[Array, Array]:
        """``h' = act(xp + a)``; returns ``(h', h')``."""
        h = act(xp + a)
        return h, h

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=Split(hidden, pointwise, additive=True),
        output=state_output,
        hidden_size=H,
        name="vanilla",
        config=make_config(hidden_size=H, activation=activation),
        gates=_tanh_state if activation == "tanh" else None,
        tanh_gates=("state",) if activation == "tanh" else (),
    )


def _tanh_state(params: VanillaParams, h: Array, xp: Array) -> dict[str, Array]:
    """A tanh RNN's only saturating activation: the new state ``tanh(xp + h w_h + b)``."""
    return {"state": jnp.tanh(xp + h @ params.w_h + params.b)}
