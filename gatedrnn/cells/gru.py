"""The GRU cell (Cho et al. 2014), in both the reset-after and reset-before forms."""

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
    state_output,
    zeros,
)


class GRUParams(NamedTuple):
    """Parameters of a GRU cell; gate blocks side by side in the order r, z, n.

    Attributes:
      w_x: ``(I, 3H)`` input weight.
      w_h: ``(H, 3H)`` recurrent weight.
      b_x: ``(3H,)`` input bias.
      b_h: ``(3H,)`` recurrent bias (kept apart: with ``reset_after`` the reset gate
        multiplies ``h w_hn + b_hn``).
    """

    w_x: Array
    w_h: Array
    b_x: Array
    b_h: Array


class GRUInput(NamedTuple):
    """The GRU's projected input ``x w_x + b_x``, one array per gate block, each
    ``(*batch, H)``.

    Three arrays rather than one ``(*batch, 3H)``: the time loop reads each step's blocks
    as whole arrays, which XLA CPU runs faster than slices of one row
    (benchmarks/rnn_speed.py, levers: ``gru`` vs ``gru_one_array``).
    """

    r: Array
    z: Array
    n: Array


def gru_activations(xp: GRUInput, a: Array) -> tuple[Array, Array, Array]:
    """``(r, z, n)`` of the ``reset_after=True`` GRU from the projected input ``xp`` and
    ``a = h w_h + b_h`` (``(*batch, 3H)``, blocks r, z, n); each ``(*batch, H)``.

    ``r = sigmoid(xp.r + a_r)``, ``z = sigmoid(xp.z + a_z)``, ``n = tanh(xp.n + r * a_n)``.
    """
    H = xp.n.shape[-1]
    r = jax.nn.sigmoid(xp.r + a[..., :H])
    z = jax.nn.sigmoid(xp.z + a[..., H : 2 * H])
    n = jnp.tanh(xp.n + r * a[..., 2 * H :])
    return r, z, n


def gru_gates(
    params: GRUParams, h: Array, xp: GRUInput, reset_after: bool
) -> tuple[Array, Array, Array]:
    """The reset gate ``r``, update gate ``z`` and candidate ``n``, each ``(*batch, H)``.

    ``xp`` is the projected input (:class:`GRUInput`, the cell's ``project``).
    """
    H = h.shape[-1]
    if reset_after:
        return gru_activations(xp, gru_hidden(params, h))
    a_rz = h @ params.w_h[:, : 2 * H] + params.b_h[: 2 * H]
    r = jax.nn.sigmoid(xp.r + a_rz[..., :H])
    z = jax.nn.sigmoid(xp.z + a_rz[..., H:])
    n = jnp.tanh(xp.n + (r * h) @ params.w_h[:, 2 * H :] + params.b_h[2 * H :])
    return r, z, n


def gru_hidden(params: GRUParams, h: Array) -> Array:
    """The recurrent matrix product of the ``reset_after=True`` GRU: ``h w_h + b_h``."""
    return h @ params.w_h + params.b_h


def gru_pointwise(h: Array, xp: GRUInput, a: Array) -> tuple[Array, Array]:
    """``h' = (1 - z) n + z h`` of the ``reset_after=True`` GRU; returns ``(h', h')``."""
    _, z, n = gru_activations(xp, a)
    h = (1.0 - z) * n + z * h
    return h, h


@cached_factory
def gru(
    hidden_size: int,
    reset_after: bool = True,
    *,
    update_bias: float | str = 0.0,
    t_max: int | None = None,
    kernel_init: Initializer = fan_in_normal,
    recurrent_init: Initializer = orthogonal,
    bias_init: Initializer = zeros,
) -> Cell:
    """A GRU cell.

    Args:
      hidden_size: number of hidden units ``H``.
      reset_after: True (PyTorch, cuDNN, Flax): the reset gate multiplies the recurrent
        candidate term after the matrix product; False (Cho et al. 2014): before it.
      update_bias: added to the update gate's input bias ``b_xz`` at init, so that
        ``z ~ sigmoid(update_bias)`` (the fraction of ``h`` kept per step); or
        ``"chrono"`` (Tallec & Ollivier 2018): drawn per unit as ``log U(1, t_max-1)``, so
        that the characteristic times ``1 / (1 - z)`` spread over ``[2, t_max]``.
      t_max: the longest dependency in steps, for ``update_bias="chrono"`` only.
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype) -> array``;
        ``recurrent_init`` is applied to each ``(H, H)`` gate block of ``w_h``.

    Returns:
      A :class:`Cell` with :class:`GRUParams`; the state is ``h (*batch, H)``.

    Equations (blocks r, z, n of ``x w_x + b_x`` and of ``w_h, b_h``)::

        r = sigmoid(x w_xr + b_xr + h w_hr + b_hr)
        z = sigmoid(x w_xz + b_xz + h w_hz + b_hz)
        reset_after=True:  n = tanh(x w_xn + b_xn + r * (h w_hn + b_hn))
        reset_after=False: n = tanh(x w_xn + b_xn + (r * h) w_hn + b_hn)
        h' = (1 - z) * n + z * h,   y = h'

    Gate-bias init (on top of ``bias_init``): :func:`gatedrnn.cells.base.gate_bias`.
    """
    hidden_size = check_hidden_size(hidden_size)
    check_initializers(kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init)
    if not isinstance(reset_after, bool):
        raise ValueError(f"reset_after must be True or False, got {reset_after!r}")
    update_bias = check_gate_bias(update_bias, "update_bias", t_max)
    H = hidden_size

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> GRUParams:
        """Draw params: ``w_x`` fan-in normal, ``w_h`` orthogonal per gate, biases zero
        (plus ``update_bias`` on the z block of ``b_x``)."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_param_memory("gru", input_size, H, 3, dtype)
        check_key(key)
        kx, kh, kbx, kbh = jax.random.split(key, 4)
        b_x = bias_init(kbx, (3 * H,), dtype)
        b_z = gate_bias(jax.random.fold_in(key, 4), update_bias, H, t_max, dtype)
        b_x = b_x.at[H : 2 * H].add(b_z)
        return GRUParams(
            w_x=kernel_init(kx, (input_size, 3 * H), dtype),
            w_h=blockwise(recurrent_init, 3)(kh, (H, 3 * H), dtype),
            b_x=b_x,
            b_h=bias_init(kbh, (3 * H,), dtype),
        )

    def initial_state(params: GRUParams, batch_shape: Any = ()) -> Array:
        """Zeros ``(*batch_shape, H)``."""
        check_params(params, GRUParams, "gru", H, 3)
        return make_state_zeros(H, params.w_h.dtype, batch_shape)

    def project(params: GRUParams, x: Array) -> GRUInput:
        """``(..., I) ->`` :class:`GRUInput` ``(r, z, n)``, each ``(..., H)``: the blocks
        of ``x w_x + b_x``."""
        check_params(params, GRUParams, "gru", H, 3)
        x = check_input(x, params.w_x)
        xp = x @ params.w_x + params.b_x
        return GRUInput(r=xp[..., :H], z=xp[..., H : 2 * H], n=xp[..., 2 * H :])

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=Split(gru_hidden, gru_pointwise) if reset_after else gru_recur_before,
        output=state_output,
        hidden_size=H,
        name="gru",
        config=make_config(
            hidden_size=H,
            reset_after=reset_after,
            # Only when set, so that the default's options stay as they were.
            **({} if update_bias == 0.0 else {"update_bias": update_bias}),
            **({} if t_max is None else {"t_max": int(t_max)}),
        ),
        gates=_gru_gates_after if reset_after else _gru_gates_before,
        tanh_gates=("candidate",),
    )


def _gates_dict(r: Array, z: Array, n: Array) -> dict[str, Array]:
    return {"reset": r, "update": z, "candidate": n}


def _gru_gates_after(params: GRUParams, h: Array, xp: GRUInput) -> dict[str, Array]:
    """The step's gates by name (``Cell.gates``), ``reset_after=True``."""
    return _gates_dict(*gru_gates(params, h, xp, True))


def _gru_gates_before(params: GRUParams, h: Array, xp: GRUInput) -> dict[str, Array]:
    """The step's gates by name (``Cell.gates``), ``reset_after=False``."""
    return _gates_dict(*gru_gates(params, h, xp, False))


def gru_recur_before(params: GRUParams, h: Array, xp: GRUInput) -> tuple[Array, Array]:
    """The recurrent part of a ``reset_after=False`` GRU: ``h (*batch, H), xp -> (h', h')``.

    Two matrix products in sequence (``(r * h) w_hn`` needs ``r``), so this form has no
    :class:`~gatedrnn.Split`.
    """
    _, z, n = gru_gates(params, h, xp, False)
    h = (1.0 - z) * n + z * h
    return h, h
