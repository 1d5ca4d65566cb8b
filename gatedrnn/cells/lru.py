"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences", ICML, arXiv:2303.06349).

A diagonal, complex, linear recurrence with ``N`` state units, read out to ``H`` outputs::

    lambda = exp(-exp(nu_log) + i exp(theta_log))          (N,) complex, |lambda| < 1
    gamma  = exp(gamma_log)                                 (N,) real
    h_t    = lambda * h_{t-1} + gamma * (x_t B)             (*batch, N) complex
    y_t    = Re(h_t C) + D x_t                              (*batch, H) real

with ``B = b_re + i b_im (I, N)``, ``C = c_re + i c_im (N, H)`` (the x @ W convention: the
paper's ``B (N, I)`` and ``C (H, N)`` transposed) and the skip ``D``. Every parameter is
real (:class:`LRUParams`) and the state is stored as its real and imaginary parts
(:class:`LRUState`), so optax, checkpoints and the diagnostics see real arrays only.

Initialization (the paper's Appendix A, ``init_lru_parameters``):

* ring init: ``|lambda|^2 ~ U[r_min^2, r_max^2]`` (uniform on the ring's area) and
  ``arg(lambda) ~ U[0, max_phase]``, stored as ``nu_log = log(-log|lambda|)`` and
  ``theta_log = log(arg lambda)``; the paper's defaults ``r_min = 0``, ``r_max = 1``,
  ``max_phase = 2 pi`` (its Long Range Arena runs use larger radii, e.g.
  ``[0.9, 0.999]`` on sCIFAR and ``[0.999, 0.9999]`` with ``max_phase = pi / 10`` on
  PathX: pass them as options);
* the normalization ``gamma_log = log(sqrt(1 - |lambda|^2))`` (trained afterwards), so
  that for white-noise input each unit's state has the variance of its input ``x B`` at
  init, however close ``|lambda|`` is to 1;
* ``B`` real and imaginary parts normal with variance ``1 / (2 I)``, ``C`` parts normal
  with variance ``1 / N``.

The skip ``D``: the paper (and memax's ``LRU``) has ``I = H`` and an elementwise
``D (H,)`` drawn ``N(0, 1)``, ``y += D * x``. With ``I != H`` an elementwise skip does not
exist; this cell then uses a dense real ``D (I, H)`` drawn normal with variance ``1 / I``
(the same output variance as the elementwise one), ``y += x D``. :func:`lru` draws the
elementwise form exactly when ``I == H``; params with either shape are accepted (the
elementwise one only when ``I == H``).

The step form (``recur``) does the complex multiply in real arithmetic; the parallel form
(``parallel``) runs all steps at once with ``jax.lax.associative_scan``
(:func:`~gatedrnn.cells.min_rnn.linear_recurrence`) in complex arithmetic (``complex64``
for float32 params, ``complex128`` for float64). Both are the same recurrence and differ
only in the order of the floating point operations.
"""

from __future__ import annotations

import math
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
    make_config,
    make_state_zeros,
    mask_steps,
)
from gatedrnn.cells.min_rnn import linear_recurrence


class LRUParams(NamedTuple):
    """Parameters of an LRU cell, all real (x @ W convention).

    Attributes:
      nu_log: ``(N,)``; ``|lambda| = exp(-exp(nu_log))``.
      theta_log: ``(N,)``; ``arg(lambda) = exp(theta_log)``.
      gamma_log: ``(N,)``; the input normalization ``gamma = exp(gamma_log)``.
      b_re, b_im: ``(I, N)`` each: the input matrix ``B = b_re + i b_im``.
      c_re, c_im: ``(N, H)`` each: the output matrix ``C = c_re + i c_im``.
      d: the skip ``D``: ``(H,)`` elementwise (only when ``I == H``) or ``(I, H)`` dense.
    """

    nu_log: Array
    theta_log: Array
    gamma_log: Array
    b_re: Array
    b_im: Array
    c_re: Array
    c_im: Array
    d: Array


class LRUState(NamedTuple):
    """LRU state ``h = re + i im``: ``re, im (*batch, N)``."""

    re: Array
    im: Array


class LRUInput(NamedTuple):
    """The input-only part of an LRU step (``Cell.project``).

    Attributes:
      re, im: ``(..., N)``: real and imaginary parts of ``gamma * (x B)``.
      skip: ``(..., H)``: the skip ``D x``.
    """

    re: Array
    im: Array
    skip: Array


def lru_lambda(params: LRUParams) -> tuple[Array, Array]:
    """Real and imaginary parts of ``lambda = exp(-exp(nu_log) + i exp(theta_log))``, ``(N,)``."""
    modulus = lru_decay(params)
    phase = jnp.exp(params.theta_log)
    return modulus * jnp.cos(phase), modulus * jnp.sin(phase)


def lru_decay(params: LRUParams) -> Array:
    """The per-unit decay ``|lambda| = exp(-exp(nu_log))`` in ``[0, 1]``, ``(N,)``."""
    return jnp.exp(-jnp.exp(params.nu_log))


def lru_readout(params: LRUParams, re: Array, im: Array, skip: Array) -> Array:
    """``y = Re(h C) + skip = re c_re - im c_im + skip``, ``(..., H)``."""
    return re @ params.c_re - im @ params.c_im + skip


def ring_init(
    key: Array, size: int, r_min: float, r_max: float, max_phase: float, dtype: Any
) -> tuple[Array, Array, Array]:
    """``(nu_log, theta_log, gamma_log)``, each ``(size,)``, of the paper's ring init.

    ``|lambda|^2 ~ U[r_min^2, r_max^2]``, ``arg lambda ~ U[0, max_phase]``,
    ``gamma = sqrt(1 - |lambda|^2)`` (Orvieto et al. 2023, Section 3 and Appendix A). The
    uniform draws start at the dtype's smallest normal number rather than 0, and
    ``1 - |lambda|^2`` is kept at or above it, so that no log is ever taken of 0 (which
    would give an infinite parameter).
    """
    tiny = float(jnp.finfo(dtype).tiny)
    u1, u2 = jax.random.uniform(key, (2, size), dtype, minval=tiny)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(jnp.maximum(1.0 - modulus**2, tiny)))
    return nu_log, theta_log, gamma_log


def _check_ring(r_min: Any, r_max: Any, max_phase: Any) -> tuple[float, float, float]:
    """The ring options as floats, or ValueError/TypeError saying what is allowed."""
    values = {"r_min": r_min, "r_max": r_max, "max_phase": max_phase}
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {float(v)}")
    r_min, r_max, max_phase = float(r_min), float(r_max), float(max_phase)
    if not 0.0 <= r_min <= r_max <= 1.0 or r_min >= 1.0:
        raise ValueError(
            "the ring init needs 0 <= r_min <= r_max <= 1 and r_min < 1 (|lambda| lies in "
            f"[r_min, r_max]), got r_min={r_min}, r_max={r_max}"
        )
    if max_phase <= 0.0:
        raise ValueError(f"max_phase must be > 0 (arg lambda ~ U[0, max_phase]), got {max_phase}")
    return r_min, r_max, max_phase


def _check_params(params: Any, H: int, N: int) -> None:
    """Check LRU params against the layout before any math touches them.

    Raises:
      TypeError: a field is missing or not an array, or the dtypes are not one float type.
      ValueError: a field has the wrong shape (params of another size or cell).
    """
    got = type(params).__name__
    leaves = check_param_leaves(params, LRUParams, "lru", "b_re")
    b_shape = tuple(leaves["b_re"].shape)
    I = b_shape[0] if len(b_shape) == 2 else None
    want = {
        "nu_log": [(N,)],
        "theta_log": [(N,)],
        "gamma_log": [(N,)],
        "b_re": [(I, N)],
        "b_im": [(I, N)],
        "c_re": [(N, H)],
        "c_im": [(N, H)],
        "d": [(I, H)] + ([(H,)] if I == H else []),
    }
    for f, shapes in want.items():
        shape = tuple(leaves[f].shape)
        if I is None or shape not in shapes:
            expect = " or ".join(str(s) for s in shapes) if I is not None else "(I, N)"
            raise ValueError(
                f"params.{f} has shape {shape}, but an lru cell with hidden_size={H}, "
                f"state_size={N} expects {expect} (params {got} from another cell or size?)"
            )


@cached_factory
def lru(
    hidden_size: int,
    state_size: int | None = None,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
) -> Cell:
    """A Linear Recurrent Unit (Orvieto et al. 2023).

    Args:
      hidden_size: output size ``H``.
      state_size: number of complex state units ``N`` (default ``H``).
      r_min, r_max: the ring init's radii: ``|lambda|^2 ~ U[r_min^2, r_max^2]``;
        ``0 <= r_min <= r_max <= 1``, ``r_min < 1``. The paper's defaults ``0`` and ``1``;
        on long-range tasks it uses larger radii, e.g. ``0.9`` and ``0.999``.
      max_phase: ``arg(lambda) ~ U[0, max_phase]``, ``> 0`` (default ``2 pi``, the
        paper's; ``pi / 10`` on its longest task, PathX).

    Returns:
      A :class:`Cell` with :class:`LRUParams`, state :class:`LRUState` ``(re, im)`` each
      ``(*batch, N)``, a ``parallel`` form and gates ``{"decay": |lambda|}``.

    Equations (``lambda``, ``gamma``, ``B``, ``C``, ``D`` from the params, see the module)::

        h' = lambda * h + gamma * (x B)          (complex, elementwise over N)
        y  = Re(h' C) + D x                      (D x = D * x if D is (H,), else x D)
    """
    H = check_hidden_size(hidden_size)
    N = H if state_size is None else check_positive_int(state_size, "state_size")
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> LRUParams:
        """Draw params: ring init of ``lambda`` and ``gamma``, Gaussian ``B``, ``C``, ``D``."""
        I = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_key(key)
        d_size = H if I == H else I * H
        nbytes = (3 * N + 2 * I * N + 2 * N * H + d_size) * dtype.itemsize
        check_fits_in_memory(
            nbytes,
            f"the params of an lru cell with input_size={I}, hidden_size={H}, "
            f"state_size={N} ({dtype.name})",
        )
        k_ring, k_b, k_c, k_d = jax.random.split(key, 4)
        nu_log, theta_log, gamma_log = ring_init(k_ring, N, r_min, r_max, max_phase, dtype)
        b_re, b_im = jax.random.normal(k_b, (2, I, N), dtype) / math.sqrt(2 * I)
        c_re, c_im = jax.random.normal(k_c, (2, N, H), dtype) / math.sqrt(N)
        if I == H:
            d = jax.random.normal(k_d, (H,), dtype)
        else:
            d = jax.random.normal(k_d, (I, H), dtype) / math.sqrt(I)
        return LRUParams(nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d)

    def initial_state(params: LRUParams, batch_shape: Any = ()) -> LRUState:
        """Zeros ``re, im (*batch_shape, N)``."""
        _check_params(params, H, N)
        z = make_state_zeros(N, params.b_re.dtype, batch_shape)
        return LRUState(re=z, im=z)

    def project(params: LRUParams, x: Array) -> LRUInput:
        """``x (..., I) -> LRUInput(re, im (..., N), skip (..., H))``: ``gamma (x B)``, ``D x``."""
        _check_params(params, H, N)
        x = check_input(x, params.b_re)
        gamma = jnp.exp(params.gamma_log)
        skip = x * params.d if params.d.ndim == 1 else x @ params.d
        return LRUInput(re=(x @ params.b_re) * gamma, im=(x @ params.b_im) * gamma, skip=skip)

    def recur(params: LRUParams, state: LRUState, xp: LRUInput) -> tuple[LRUState, Array]:
        """``h' = lambda h + xp`` (complex multiply in real arithmetic); ``y = Re(h' C) + D x``."""
        a_re, a_im = lru_lambda(params)
        re = a_re * state.re - a_im * state.im + xp.re
        im = a_re * state.im + a_im * state.re + xp.im
        return LRUState(re=re, im=im), lru_readout(params, re, im, xp.skip)

    def output(params: LRUParams, state: LRUState, xp: LRUInput) -> Array:
        """``y = Re(h C) + D x`` from the state ``h`` a step reached, ``(*batch, H)``."""
        return lru_readout(params, state.re, state.im, xp.skip)

    def parallel(
        params: LRUParams, xp: LRUInput, state0: LRUState, valid: Array | None
    ) -> tuple[LRUState, Array]:
        """All steps at once: ``xp`` time-major ``(T, *batch, .)``, ``state0 (*batch, N)`` ->
        ``(h_T, ys (T, *batch, H))``; the state is kept where ``valid (T, *batch)`` is False."""
        a_re, a_im = lru_lambda(params)
        b = jax.lax.complex(xp.re, xp.im)
        a = jnp.broadcast_to(jax.lax.complex(a_re, a_im), b.shape)
        a, b = mask_steps(valid, a, b)
        h0 = jnp.broadcast_to(jax.lax.complex(state0.re, state0.im), b.shape[1:])
        hs = linear_recurrence(a, b, h0)
        re, im = jnp.real(hs), jnp.imag(hs)
        final = LRUState(re=re[-1], im=im[-1]) if hs.shape[0] else LRUState(*state0)
        return final, lru_readout(params, re, im, xp.skip)

    def gates(params: LRUParams, state: LRUState, xp: LRUInput) -> dict[str, Array]:
        """``{"decay": |lambda|}`` broadcast to ``(*batch, N)``: constant in time, in [0, 1]."""
        shape = jnp.broadcast_shapes(state.re.shape, xp.re.shape)
        return {"decay": jnp.broadcast_to(lru_decay(params), shape)}

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=recur,
        output=output,
        hidden_size=H,
        name="lru",
        config=make_config(
            hidden_size=H, state_size=N, r_min=r_min, r_max=r_max, max_phase=max_phase
        ),
        parallel=parallel,
        gates=gates,
    )
