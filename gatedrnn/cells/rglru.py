"""The RG-LRU, the Real-Gated Linear Recurrent Unit of Griffin (De et al. 2024).

De, Smith, Fernando et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local
Attention for Efficient Language Models" (arXiv:2402.19427), Section 2.4; the recurrence of
Hawk, Griffin and RecurrentGemma. Checked against the reference implementation,
``recurrentgemma.jax.layers.RGLRU`` (tests/test_rglru.py, benchmarks/parity_rglru.py).

Every gate depends on the input only, so the recurrence is linear in the state,
``h_t = a_t * h_{t-1} + b_t``: the whole input-side math (projection, both gates, the decay
and the normalized input) is done for all steps at once in ``project``, the step form
(``recur``) is one multiply-add per step, and the parallel form runs the same recurrence
with ``jax.lax.associative_scan`` (:func:`gatedrnn.cells.min_rnn.linear_recurrence`).

Equations, per step (``x`` the cell's input, ``c = 8``)::

    u   = x w_in + b_in                          (I -> H; the layer's input in Griffin)
    r   = sigmoid(u W_a + b_a)                   recurrence gate, block-diagonal over heads
    i   = sigmoid(u W_x + b_x)                   input gate, block-diagonal over heads
    log a_t = -c * softplus(-lam) * r            so a_t = sigmoid(lam) ** (c r) in (0, 1]
    h'  = a_t * h + sqrt(1 - a_t**2) * (i * u),  y = h'

``sqrt(1 - a_t**2)`` is computed as ``sqrt(-expm1(2 log a_t))`` (accurate for ``a_t`` near
1) with a square root whose derivative is bounded by 1000 (:func:`sqrt_bounded_derivative`,
the bound of recurrentgemma's ``sqrt_bound_derivative``), so the gradient stays finite
where ``a_t == 1``.

Init, as recurrentgemma's ``rnn_real_param_init``: ``sigmoid(lam)**2`` uniform in
``[min_rad**2, max_rad**2]`` (uniform on the area of a ring), so ``sigmoid(lam)`` lies in
``[0.9, 0.999]`` by default. (The paper's text says "a**c uniform in [0.9, 0.999]"; the
code it released puts ``sigmoid(lam)`` there, and we follow the code: at init, with
``r ~ 0.5``, ``a_t = sigmoid(lam)**4`` lies in about ``[0.66, 0.996]``.) Gate weights are
normal with variance ``1 / (H / num_heads)`` per block, biases zero, ``w_in`` fan-in normal.

Differences from recurrentgemma's layer (the parity test uses the layer's own input, i.e.
``w_in = identity``, ``b_in = 0``):

* recurrentgemma stores ``a_param = -lam`` (``log a_t = -8 r softplus(a_param)``) and the
  gate weights as ``(heads, H / heads, H / heads)`` with biases ``(heads, H / heads)``;
  ours are ``lam``, the same weight blocks and flat biases ``(H,)``.
* It resets the state where ``segment_pos == 0``: ``a_t = 0`` there and the input is not
  normalized (``h_t = i_t * u_t``). ``gr.scan(..., resets=)`` instead puts the initial state
  back before the step and keeps the normalization, ``h_t = a_t h_0 + sqrt(1 - a_t**2) i_t
  u_t``, as for every cell. With no resets (``segment_pos`` never 0) the two agree.
* It accumulates its scan in float32 whatever the input dtype; ours in the params' dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells.base import (
    Array,
    Cell,
    cached_factory,
    check_dtype,
    check_fits_in_memory,
    check_hidden_size,
    check_input,
    check_input_size,
    check_key,
    check_param_leaves,
    check_positive_int,
    fan_in_normal,
    make_config,
    make_state_zeros,
    mask_steps,
    state_output,
)
from gatedrnn.cells.min_rnn import linear_recurrence

C = 8.0
"""The constant ``c`` of ``a_t = sigmoid(lam) ** (c r_t)`` (De et al. 2024)."""

MAX_SQRT_GRADIENT = 1000.0
"""The bound on ``d sqrt(z) / dz`` in :func:`sqrt_bounded_derivative` (recurrentgemma's)."""


class RGLRUParams(NamedTuple):
    """Parameters of an RG-LRU cell with ``num_heads`` heads of ``H / num_heads`` units.

    Attributes:
      w_in: ``(I, H)`` input projection.
      b_in: ``(H,)`` its bias.
      w_a: ``(num_heads, H / num_heads, H / num_heads)`` recurrence gate weight, one block
        per head (``W_a`` of the paper; recurrentgemma's ``a_gate.w``).
      b_a: ``(H,)`` recurrence gate bias (recurrentgemma's ``a_gate.b``, flattened).
      w_x: ``(num_heads, H / num_heads, H / num_heads)`` input gate weight (``W_x`` of the
        paper; recurrentgemma's ``input_gate.w``). Not the input projection: that is ``w_in``.
      b_x: ``(H,)`` input gate bias.
      lam: ``(H,)`` ``Lambda``: ``sigmoid(lam)`` is the decay at ``r = 1/c``
        (recurrentgemma's ``a_param`` is ``-lam``).
    """

    w_in: Array
    b_in: Array
    w_a: Array
    b_a: Array
    w_x: Array
    b_x: Array
    lam: Array


class RGLRUInput(NamedTuple):
    """The input-only part of RG-LRU steps (``project``'s output), each ``(..., H)``.

    Attributes:
      a: the decay ``a_t = sigmoid(lam) ** (c r_t)``.
      b: the normalized gated input ``sqrt(1 - a_t**2) * i_t * u_t``.
      r: the recurrence gate ``r_t`` (kept for :attr:`Cell.gates`).
      i: the input gate ``i_t`` (kept for :attr:`Cell.gates`).
    """

    a: Array
    b: Array
    r: Array
    i: Array


@jax.custom_jvp
def sqrt_bounded_derivative(z: Array) -> Array:
    """``sqrt(z)`` whose derivative is at most :data:`MAX_SQRT_GRADIENT` (finite at 0).

    The derivative is ``1 / (2 sqrt(max(z, 1 / (4 M**2))))`` with ``M = 1000``: exact for
    ``z >= 2.5e-7``, ``M`` below (recurrentgemma's ``sqrt_bound_derivative``, written as a
    ``custom_jvp`` so that forward mode works as well as reverse mode).
    """
    return jnp.sqrt(z)


@sqrt_bounded_derivative.defjvp
def _sqrt_bounded_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (z,), (dz,) = primals, tangents
    floor = 1.0 / (4.0 * MAX_SQRT_GRADIENT**2)
    return jnp.sqrt(z), dz * (0.5 * jax.lax.rsqrt(jnp.maximum(z, floor)))


def block_diagonal(u: Array, w: Array) -> Array:
    """``u (..., H) @ blockdiag(w)``: ``w (heads, H/heads, H/heads)``, one block per head."""
    heads, size, _ = w.shape
    blocks = u.reshape(*u.shape[:-1], heads, size)
    return jnp.einsum("...hi,hij->...hj", blocks, w).reshape(u.shape)


def rglru_coefficients(params: RGLRUParams, x: Array) -> RGLRUInput:
    """All the input-only math of RG-LRU steps: ``x (..., I) -> RGLRUInput``, leaves ``(..., H)``.

    ``u = x w_in + b_in``, ``r = sigmoid(u W_a + b_a)``, ``i = sigmoid(u W_x + b_x)``,
    ``log a = -c softplus(-lam) r``, ``b = sqrt(1 - a**2) i u`` (see the module docstring).
    """
    u = x @ params.w_in + params.b_in
    r = jax.nn.sigmoid(block_diagonal(u, params.w_a) + params.b_a)
    i = jax.nn.sigmoid(block_diagonal(u, params.w_x) + params.b_x)
    log_a = -C * jax.nn.softplus(-params.lam) * r
    a = jnp.exp(log_a)
    b = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a)) * (i * u)
    return RGLRUInput(a=a, b=b, r=r, i=i)


def _check_params(params: Any, H: int, heads: int) -> None:
    """Raise TypeError / ValueError unless ``params`` is an :class:`RGLRUParams` of this size."""
    leaves = check_param_leaves(params, RGLRUParams, "rglru", "w_in")
    block = (heads, H // heads, H // heads)
    for f, a in leaves.items():
        shape = tuple(a.shape)
        if f == "w_in":
            ok, want = len(shape) == 2 and shape[1] == H, f"(input_size, {H})"
        elif f in ("w_a", "w_x"):
            ok, want = shape == block, f"(num_heads, H / num_heads, H / num_heads) = {block}"
        else:
            ok, want = shape == (H,), f"(H,) = ({H},)"
        if not ok:
            raise ValueError(
                f"params.{f} has shape {shape}, but an rglru cell with hidden_size={H} and "
                f"num_heads={heads} expects {want} (params from another cell or size?)"
            )


def _check_radii(min_rad: Any, max_rad: Any) -> tuple[float, float]:
    for name, v in (("min_rad", min_rad), ("max_rad", max_rad)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    lo, hi = float(min_rad), float(max_rad)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(
            f"the decay init needs 0 < min_rad <= max_rad < 1, got min_rad={lo}, max_rad={hi}"
        )
    return lo, hi


@cached_factory
def rglru(
    hidden_size: int, num_heads: int = 1, min_rad: float = 0.9, max_rad: float = 0.999
) -> Cell:
    """An RG-LRU cell (De et al. 2024, Griffin / RecurrentGemma): a gated linear recurrence.

    Args:
      hidden_size: number of hidden units ``H``.
      num_heads: number of diagonal blocks of the two gate weights; must divide ``H``.
      min_rad, max_rad: ``sigmoid(lam)`` is drawn at init with its square uniform in
        ``[min_rad**2, max_rad**2]`` (recurrentgemma's defaults 0.9, 0.999).

    Returns:
      A :class:`Cell` with :class:`RGLRUParams`, state ``h (*batch, H)``, ``y = h``, a
      ``parallel`` form (``jax.lax.associative_scan``) and gates ``"recurrence"`` (``r``),
      ``"input"`` (``i``) and ``"decay"`` (``a_t``).

    Equations (``u = x w_in + b_in``, block-diagonal ``W_a``, ``W_x``, ``c = 8``)::

        r = sigmoid(u W_a + b_a),   i = sigmoid(u W_x + b_x)
        a = sigmoid(lam) ** (c r)
        h' = a * h + sqrt(1 - a**2) * (i * u),   y = h'

    Raises:
      ValueError: ``hidden_size`` or ``num_heads`` not an integer >= 1, ``num_heads`` not
        dividing ``hidden_size``, or radii outside ``0 < min_rad <= max_rad < 1``.
      TypeError: a radius that is not a real number.
    """
    H = check_hidden_size(hidden_size)
    heads = check_positive_int(num_heads, "num_heads")
    if H % heads:
        raise ValueError(
            f"num_heads must divide hidden_size (the gates are block-diagonal over heads), "
            f"got hidden_size={H}, num_heads={heads}"
        )
    lo, hi = _check_radii(min_rad, max_rad)
    size = H // heads

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> RGLRUParams:
        """Draw params: ``w_in`` fan-in normal, gate blocks normal with variance
        ``1 / (H / num_heads)``, biases zero, ``lam`` on the ring (see :func:`rglru`)."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_key(key)
        count = (input_size + 2 * size + 4) * H
        check_fits_in_memory(
            count * dtype.itemsize,
            f"the params of an rglru cell with input_size={input_size}, hidden_size={H} "
            f"({dtype.name})",
        )
        k_in, k_a, k_x, k_lam = jax.random.split(key, 4)
        scale = 1.0 / np.sqrt(size)
        rad_sq = jax.random.uniform(k_lam, (H,), dtype, minval=lo**2, maxval=hi**2)
        rad = jnp.sqrt(rad_sq)
        zeros = jnp.zeros((H,), dtype)
        return RGLRUParams(
            w_in=fan_in_normal(k_in, (input_size, H), dtype),
            b_in=zeros,
            w_a=jax.random.normal(k_a, (heads, size, size), dtype) * scale,
            b_a=zeros,
            w_x=jax.random.normal(k_x, (heads, size, size), dtype) * scale,
            b_x=zeros,
            lam=jnp.log(rad) - jnp.log1p(-rad),  # logit: sigmoid(lam) = rad
        )

    def initial_state(params: RGLRUParams, batch_shape: Any = ()) -> Array:
        """Zeros ``(*batch_shape, H)``."""
        _check_params(params, H, heads)
        return make_state_zeros(H, params.w_in.dtype, batch_shape)

    def project(params: RGLRUParams, x: Array) -> RGLRUInput:
        """``x (..., I) -> RGLRUInput`` with leaves ``(..., H)`` (:func:`rglru_coefficients`)."""
        _check_params(params, H, heads)
        x = check_input(x, params.w_in)
        return rglru_coefficients(params, x)

    def recur(params: RGLRUParams, h: Array, xp: RGLRUInput) -> tuple[Array, Array]:
        """``h (*batch, H) -> (h', h')`` with ``h' = a h + b``."""
        del params
        h = xp.a * h + xp.b
        return h, h

    def parallel(
        params: RGLRUParams, xp: RGLRUInput, h0: Array, valid: Array | None
    ) -> tuple[Array, Array]:
        """``xp`` leaves ``(T, *batch, H)``, ``h0 (*batch, H) -> (h_T, hs (T, *batch, H))``;
        the state is kept at steps where ``valid (T, *batch)`` is False."""
        del params
        a, b = mask_steps(valid, xp.a, xp.b)
        hs = linear_recurrence(a, b, h0)
        return (hs[-1] if hs.shape[0] else h0), hs

    def gates(params: RGLRUParams, h: Array, xp: RGLRUInput) -> dict[str, Array]:
        """The step's gates (``Cell.gates``): recurrence ``r``, input ``i``, decay ``a_t``."""
        del params, h
        return {"recurrence": xp.r, "input": xp.i, "decay": xp.a}

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=recur,
        output=state_output,
        hidden_size=H,
        name="rglru",
        config=make_config(hidden_size=H, num_heads=heads, min_rad=lo, max_rad=hi),
        parallel=parallel,
        gates=gates,
    )
