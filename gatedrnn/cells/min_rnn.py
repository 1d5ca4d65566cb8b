"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?").

Their gates depend on the input only, so the recurrence is linear in the state,
``h_t = a_t * h_{t-1} + b_t``, and runs over the whole time axis at once with
``jax.lax.associative_scan`` in ``O(log T)`` depth (the cell's ``parallel`` field, used by
:func:`gatedrnn.scan`). The step form (``recur``) is the same recurrence one step at a
time, for generation and exact tests. Both read ``(a, b)`` from the same coefficient
function, so the two forms differ only in the order of the floating point operations.

The parallel form is the plain one (pairs ``(a, b)`` composed by
``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``): it never divides by a running product, so
it needs no log-space trick to stay finite. minLSTM's normalisation ``f / (f + i)`` is
computed from log-sigmoids (as in the log-space form of Feng et al. 2024):
``f / (f + i) = sigmoid(log f - log i)``, finite with finite gradients for every finite
pre-activation, where the quotient is 0/0 once both sigmoids underflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatedrnn.cells.base import (
    Array,
    Cell,
    Initializer,
    cached_factory,
    check_dtype,
    check_hidden_size,
    check_input,
    check_input_size,
    check_key,
    check_param_memory,
    check_params_type,
    fan_in_normal,
    make_config,
    make_state_zeros,
    mask_steps,
    split_gates,
    state_output,
    zeros,
)


class MinGRUParams(NamedTuple):
    """Parameters of a minGRU cell; blocks z (update gate), c (candidate) side by side.

    Attributes:
      w_x: ``(I, 2H)`` input weight.
      b: ``(2H,)`` bias.
    """

    w_x: Array
    b: Array


class MinLSTMParams(NamedTuple):
    """Parameters of a minLSTM cell; blocks f, i (gates), c (candidate) side by side.

    Attributes:
      w_x: ``(I, 3H)`` input weight.
      b: ``(3H,)`` bias (the f block starts at ``forget_bias``).
    """

    w_x: Array
    b: Array


def min_gru_coefficients(xp: Array) -> tuple[Array, Array]:
    """``(a, b)`` of the minGRU recurrence ``h' = a h + b`` from ``xp (..., 2H)``.

    ``z = sigmoid(xp_z)``, ``a = 1 - z``, ``b = z * xp_c``.
    """
    xz, c = split_gates(xp, 2)
    z = jax.nn.sigmoid(xz)
    return 1.0 - z, z * c


def _min_lstm_mix(xp: Array) -> tuple[Array, Array, Array]:
    """minLSTM's normalised gates and candidate from ``xp (..., 3H)``: ``(f', i', c)``,
    each ``(..., H)``, with ``f' = f / (f + i)``, ``i' = i / (f + i)`` computed in log space.

    ``d = log f - log i = log_sigmoid(xp_f) - log_sigmoid(xp_i)``, ``f' = sigmoid(d)``,
    ``i' = sigmoid(-d)``: equal to the quotients where those are finite, and finite (values
    and gradients) for any finite ``xp``, where ``f / (f + i)`` is 0/0 once both sigmoids
    underflow (float32 near -90, float16 near -17; the gradient from about -60 in float32).
    """
    xf, xi, c = split_gates(xp, 3)
    d = jax.nn.log_sigmoid(xf) - jax.nn.log_sigmoid(xi)
    return jax.nn.sigmoid(d), jax.nn.sigmoid(-d), c


def min_lstm_coefficients(xp: Array) -> tuple[Array, Array]:
    """``(a, b)`` of the minLSTM recurrence ``h' = a h + b`` from ``xp (..., 3H)``.

    ``f = sigmoid(xp_f)``, ``i = sigmoid(xp_i)``, ``a = f / (f + i)``,
    ``b = i / (f + i) * xp_c`` (the normalised, time-independent form of the paper),
    computed in log space as ``a = sigmoid(log f - log i)``, ``i / (f + i) = sigmoid(log i
    - log f)`` (see :func:`_min_lstm_mix`), so finite for any finite ``xp``.
    """
    a, a_in, c = _min_lstm_mix(xp)
    return a, a_in * c


def _min_lstm_gates(xp: Array) -> dict[str, Array]:
    """minLSTM's normalised gates: ``forget = f / (f + i)`` (the decay), ``input = i / (f + i)``."""
    a, a_in, _ = _min_lstm_mix(xp)
    return {"forget": a, "input": a_in}


def linear_recurrence(a: Array, b: Array, h0: Array) -> Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` at once, time on axis 0.

    Args:
      a, b: ``(T, *batch, H)`` coefficients.
      h0: ``(*batch, H)`` state before the first step.

    Returns:
      ``hs (T, *batch, H)`` with ``hs[t] = h_{t+1}`` (the state after step ``t``),
      computed with ``jax.lax.associative_scan`` in ``O(log T)`` depth.
    """
    if a.shape[0] == 0:
        return b
    b = b.at[0].add(a[0] * h0)

    def compose(left: tuple[Array, Array], right: tuple[Array, Array]) -> tuple[Array, Array]:
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    _, hs = jax.lax.associative_scan(compose, (a, b), axis=0)
    return hs


def _min_cell(
    name: str,
    hidden_size: int,
    num_blocks: int,
    coefficients: Callable[[Array], tuple[Array, Array]],
    gate_values: Callable[[Array], dict[str, Array]],
    params_type: type,
    kernel_init: Initializer,
    bias_init: Initializer,
    bias_offsets: dict[int, float],
    options: dict[str, Any],
) -> Cell:
    """A cell with ``h' = a h + b`` where ``(a, b) = coefficients(x w_x + b)``."""
    H = check_hidden_size(hidden_size)

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> Any:
        """Draw params: ``w_x`` fan-in normal, ``b`` zeros (plus the block offsets)."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_param_memory(params_type.__name__, input_size, H, num_blocks, dtype, False)
        check_key(key)
        kx, kb = jax.random.split(key)
        b = bias_init(kb, (num_blocks * H,), dtype)
        for block, offset in bias_offsets.items():
            b = b.at[block * H : (block + 1) * H].add(jnp.asarray(offset, dtype))
        return params_type(w_x=kernel_init(kx, (input_size, num_blocks * H), dtype), b=b)

    def initial_state(params: Any, batch_shape: Any = ()) -> Array:
        """Zeros ``(*batch_shape, H)``."""
        check_params_type(params, params_type, name)
        return make_state_zeros(H, params.w_x.dtype, batch_shape)

    def project(params: Any, x: Array) -> Array:
        """``(..., I) -> (..., blocks * H)``: ``x w_x + b``."""
        check_params_type(params, params_type, name)
        x = check_input(x, params.w_x)
        return x @ params.w_x + params.b

    def recur(params: Any, h: Array, xp: Array) -> tuple[Array, Array]:
        """``h (*batch, H), xp -> (h', h')`` with ``h' = a h + b``."""
        del params
        a, b = coefficients(xp)
        h = a * h + b
        return h, h

    def parallel(params: Any, xp: Array, h0: Array, valid: Array | None) -> tuple[Array, Array]:
        """``xp (T, *batch, blocks * H), h0 (*batch, H) -> (h_T, hs (T, *batch, H))``; the
        state is kept at steps where ``valid (T, *batch)`` is False."""
        del params
        a, b = mask_steps(valid, *coefficients(xp))
        hs = linear_recurrence(a, b, h0)
        return (hs[-1] if hs.shape[0] else h0), hs

    def gates(params: Any, h: Array, xp: Array) -> dict[str, Array]:
        """The step's gates by name (``Cell.gates``), from the input only."""
        del params, h
        return gate_values(xp)

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=recur,
        output=state_output,
        hidden_size=H,
        name=name,
        config=make_config(**options),
        parallel=parallel,
        gates=gates,
    )


@cached_factory
def min_gru(
    hidden_size: int,
    *,
    kernel_init: Initializer = fan_in_normal,
    bias_init: Initializer = zeros,
) -> Cell:
    """A minGRU cell (Feng et al. 2024): a GRU whose gate sees the input only.

    Args:
      hidden_size: number of hidden units ``H``.
      kernel_init, bias_init: initializers ``(key, shape, dtype) -> array`` for
        ``w_x (I, 2H)`` and ``b (2H,)``.

    Returns:
      A :class:`Cell` with :class:`MinGRUParams`, state ``h (*batch, H)`` and a
      ``parallel`` form that :func:`gatedrnn.scan` uses.

    Equations (blocks z, c of ``x w_x + b``)::

        z = sigmoid(x w_xz + b_z),   c = x w_xc + b_c
        h' = (1 - z) * h + z * c,    y = h'
    """
    return _min_cell(
        "min_gru",
        hidden_size,
        2,
        min_gru_coefficients,
        lambda xp: {"update": jax.nn.sigmoid(split_gates(xp, 2)[0])},
        MinGRUParams,
        kernel_init,
        bias_init,
        {},
        {"hidden_size": hidden_size},
    )


@cached_factory
def min_lstm(
    hidden_size: int,
    forget_bias: float = 1.0,
    *,
    kernel_init: Initializer = fan_in_normal,
    bias_init: Initializer = zeros,
) -> Cell:
    """A minLSTM cell (Feng et al. 2024): normalised input-only forget and input gates.

    Args:
      hidden_size: number of hidden units ``H``.
      forget_bias: added to the forget gate's bias at init (as in :func:`gatedrnn.lstm`).
      kernel_init, bias_init: initializers ``(key, shape, dtype) -> array`` for
        ``w_x (I, 3H)`` and ``b (3H,)``.

    Returns:
      A :class:`Cell` with :class:`MinLSTMParams`, state ``h (*batch, H)`` and a
      ``parallel`` form that :func:`gatedrnn.scan` uses.

    Equations (blocks f, i, c of ``x w_x + b``)::

        f = sigmoid(x w_xf + b_f),   i = sigmoid(x w_xi + b_i),   c = x w_xc + b_c
        h' = f / (f + i) * h + i / (f + i) * c,   y = h'
    """
    forget_bias = float(forget_bias)
    return _min_cell(
        "min_lstm",
        hidden_size,
        3,
        min_lstm_coefficients,
        _min_lstm_gates,
        MinLSTMParams,
        kernel_init,
        bias_init,
        {0: forget_bias},
        {"hidden_size": hidden_size, "forget_bias": forget_bias},
    )
