"""The LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate, Gers et al. 2000)."""

from __future__ import annotations

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
    check_gate_bias,
    check_hidden_size,
    check_initializers,
    check_input,
    check_input_size,
    check_key,
    check_param_memory,
    check_params,
    fan_in_normal,
    gate_bias,
    make_config,
    make_state_zeros,
    orthogonal,
    sigmoid_tanh_blocks,
    zeros,
)


class LSTMParams(NamedTuple):
    """Parameters of an LSTM cell; gate blocks side by side in the order i, f, g, o.

    Attributes:
      w_x: ``(I, 4H)`` input weight.
      w_h: ``(H, 4H)`` recurrent weight.
      b: ``(4H,)`` bias (the forget block starts at ``forget_bias``).
    """

    w_x: Array
    w_h: Array
    b: Array


class LSTMState(NamedTuple):
    """LSTM state: hidden ``h (*batch, H)`` and cell ``c (*batch, H)``."""

    h: Array
    c: Array


def lstm_activations(z: Array) -> tuple[Array, Array, Array, Array]:
    """``(i, f, g, o)`` from the pre-activations ``z (*batch, 4H)`` (blocks i, f, g, o).

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)``, each ``(*batch, H)``.
    """
    i, f, g, o = sigmoid_tanh_blocks(z, "ssts")
    return i, f, g, o


def lstm_gates(params: LSTMParams, h: Array, xp: Array) -> tuple[Array, Array, Array, Array]:
    """The four gate activations ``(i, f, g, o)``, each ``(*batch, H)``.

    ``i, f, o = sigmoid(.)`` and ``g = tanh(.)`` of ``xp + h w_h + b`` split in blocks
    i, f, g, o, where ``xp = x w_x`` is the cell's ``project``.
    """
    return lstm_activations(xp + _recurrent(params, h))


def _recurrent(params: LSTMParams, h: Array) -> Array:
    return h @ params.w_h + params.b


def lstm_hidden(params: LSTMParams, state: LSTMState) -> Array:
    """The recurrent part ``h w_h + b``, ``(*batch, 4H)``.

    The bias is added here, inside the time loop, rather than in ``project``: there it would
    be one more pass over the ``(T, *batch, 4H)`` projection (benchmarks/rnn_speed.py,
    levers: ``hoisted`` vs ``bias_in_project``).
    """
    return _recurrent(params, state.h)


def lstm_pointwise(state: LSTMState, xp: Array, a: Array) -> tuple[LSTMState, Array]:
    """``c' = f c + i g``, ``h' = o tanh(c')``, gates from ``xp + a``; returns ``(state', h')``."""
    i, f, g, o = lstm_activations(xp + a)
    c = f * state.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h=h, c=c), h


@cached_factory
def lstm(
    hidden_size: int,
    forget_bias: float | str = 1.0,
    *,
    t_max: int | None = None,
    kernel_init: Initializer = fan_in_normal,
    recurrent_init: Initializer = orthogonal,
    bias_init: Initializer = zeros,
) -> Cell:
    """An LSTM cell.

    Args:
      hidden_size: number of hidden units ``H``.
      forget_bias: added to the forget gate's bias at init (Jozefowicz et al. 2015), so
        that ``f ~ sigmoid(forget_bias)`` at the start of training; or ``"chrono"``
        (Tallec & Ollivier 2018): the forget bias drawn per unit as ``log U(1, t_max-1)``
        and the input gate's bias its negative, so that the units' characteristic times
        ``1 / (1 - f)`` spread over ``[2, t_max]``.
      t_max: the longest dependency in steps, for ``forget_bias="chrono"`` only.
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype) -> array``;
        ``recurrent_init`` is applied to each ``(H, H)`` gate block of ``w_h``.

    Returns:
      A :class:`Cell` with :class:`LSTMParams` and state :class:`LSTMState` ``(h, c)``.

    Equations (``z = x w_x + h w_h + b`` split into blocks i, f, g, o)::

        i = sigmoid(z_i), f = sigmoid(z_f), g = tanh(z_g), o = sigmoid(z_o)
        c' = f * c + i * g
        h' = o * tanh(c'),   y = h'

    Gate-bias init (on top of ``bias_init``): :func:`gatedrnn.cells.base.gate_bias`.
    """
    hidden_size = check_hidden_size(hidden_size)
    check_initializers(kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init)
    H = hidden_size
    forget_bias = check_gate_bias(forget_bias, "forget_bias", t_max)

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> LSTMParams:
        """Draw params: ``w_x`` fan-in normal, ``w_h`` orthogonal per gate, ``b`` zeros
        plus ``forget_bias`` on the f block (chrono: also its negative on the i block)."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_param_memory("lstm", input_size, H, 4, dtype)
        check_key(key)
        kx, kh, kb = jax.random.split(key, 3)
        b = bias_init(kb, (4 * H,), dtype)
        b_f = gate_bias(jax.random.fold_in(key, 3), forget_bias, H, t_max, dtype)
        b = b.at[H : 2 * H].add(b_f)
        if forget_bias == "chrono":
            b = b.at[:H].add(-b_f)
        return LSTMParams(
            w_x=kernel_init(kx, (input_size, 4 * H), dtype),
            w_h=blockwise(recurrent_init, 4)(kh, (H, 4 * H), dtype),
            b=b,
        )

    def initial_state(params: LSTMParams, batch_shape: Any = ()) -> LSTMState:
        """Zeros ``h, c (*batch_shape, H)``."""
        check_params(params, LSTMParams, "lstm", H, 4)
        z = make_state_zeros(H, params.w_h.dtype, batch_shape)
        return LSTMState(h=z, c=z)

    def project(params: LSTMParams, x: Array) -> Array:
        """``(..., I) -> (..., 4H)``: ``x w_x`` (the bias is added in ``hidden``)."""
        check_params(params, LSTMParams, "lstm", H, 4)
        x = check_input(x, params.w_x)
        return x @ params.w_x

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=Split(lstm_hidden, lstm_pointwise, additive=True),
        output=lstm_output,
        hidden_size=H,
        name="lstm",
        config=make_config(
            hidden_size=H,
            forget_bias=forget_bias,
            **({} if t_max is None else {"t_max": int(t_max)}),
        ),
        gates=lstm_gate_dict,
        tanh_gates=("candidate",),
    )


def lstm_output(params: LSTMParams, state: LSTMState, xp: Array) -> Array:
    """What an LSTM step emits: ``h (*batch, H)``."""
    del params, xp
    return state.h


def lstm_gate_dict(params: LSTMParams, state: LSTMState, xp: Array) -> dict[str, Array]:
    """The step's gates by name (``Cell.gates``): input, forget, candidate (tanh), output."""
    i, f, g, o = lstm_gates(params, state.h, xp)
    return {"input": i, "forget": f, "candidate": g, "output": o}
