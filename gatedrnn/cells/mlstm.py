"""The mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", section 2.3).

An LSTM whose memory is a matrix per head, written to by a covariance (outer product)
update and read by a query, with exponential input and forget gates kept finite by a
log-space stabilizer. Its gates see the input only, so the recurrence is linear in the
state and has a parallel (attention-like, quadratic in ``T``) form besides the step form.

Per head (``num_heads`` heads of ``d = H / num_heads`` units; ``x`` the input)::

    q = x w_q,   k = x w_k / sqrt(d),   v = x w_v                    (d each, per head)
    i~ = x w_i + b_i,   f~ = x w_f + b_f                             (one number per head)
    o = sigmoid(x w_o + b_o)                                         (H)
    m' = max(logsigmoid(f~) + m, i~)                                 (stabilizer)
    i = exp(i~ - m'),   f = exp(logsigmoid(f~) + m - m')
    C' = f C + i k v^T                                               (d x d)
    n' = f n + i k                                                   (d)
    h~ = C'^T q / (max(|n'^T q|, exp(-m')) + eps)                    (d)
    y = o * h~   (heads side by side: H)

``C, n`` are the paper's memory and normalizer scaled by ``exp(-m)``: the stabilizer
changes no output except through ``exp(-m')`` and ``eps`` (``eps = 1e-6`` as in the
xlstm package's ``recurrent_step_stabilized_simple``, whose layout ``C[a, b] = sum k_a
v_b`` this module keeps, so that ``h~ = C'^T q``; the paper writes ``C = v k^T``,
``h~ = C q``, the same numbers transposed). As in that package, the output norm of the
xLSTM block is not part of the cell.

Parallel form (:func:`mlstm_parallel`): with ``F_t = sum_{r<=t} logsigmoid(f~_r)``,
``log D_ts = F_t - F_s + i~_s`` for ``s <= t`` (``-inf`` above the diagonal) and the initial
state's weight ``log g_t = F_t + m_0``, the state after step ``t`` is
``m_t = max(log g_t, max_s log D_ts)``,
``C_t = exp(log g_t - m_t) C_0 + sum_s exp(log D_ts - m_t) k_s v_s^T`` (``n_t`` alike), so
``h~_t = (exp(log g_t - m_t) C_0^T q_t + sum_s exp(log D_ts - m_t) (q_t . k_s) v_s) / den``,
the step form's numbers computed in another order (the package's
``parallel_stabilized_simple`` is this with ``C_0 = n_0 = 0``, ``m_0 = -inf``).
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
    Initializer,
    cached_factory,
    check_batch_shape,
    check_dtype,
    check_fits_in_memory,
    check_hidden_size,
    check_initializers,
    check_input,
    check_input_size,
    check_key,
    check_param_leaves,
    check_positive_int,
    fan_in_normal,
    make_config,
    zeros,
)

FORGET_BIAS_RANGE = (3.0, 6.0)
"""The forget gate's bias at init, ``linspace(3, 6, num_heads)`` over the heads (as xlstm)."""
CHUNK_SIZE = 32
"""Steps per chunk of the parallel form by default (:func:`mlstm_chunkwise`)."""

INPUT_BIAS_STD = 0.1
"""The input gate's bias at init is drawn from ``N(0, 0.1^2)`` (as xlstm)."""


class MLSTMParams(NamedTuple):
    """Parameters of an mLSTM cell (``x @ W`` convention; heads side by side in each H).

    Attributes:
      w_q, w_k, w_v: ``(I, H)`` query, key and value weights (no biases, like xlstm's
        projections); the key is scaled by ``1 / sqrt(d)`` in :func:`mlstm_project`.
      w_i: ``(I, num_heads)`` input gate weight;  b_i: ``(num_heads,)`` its bias.
      w_f: ``(I, num_heads)`` forget gate weight;  b_f: ``(num_heads,)`` its bias.
      w_o: ``(I, H)`` output gate weight;  b_o: ``(H,)`` its bias.
    """

    w_q: Array
    w_k: Array
    w_v: Array
    w_i: Array
    b_i: Array
    w_f: Array
    b_f: Array
    w_o: Array
    b_o: Array


class MLSTMState(NamedTuple):
    """mLSTM state, flattened so that every leaf has one feature axis.

    Attributes:
      c: ``(*batch, num_heads * d * d)``: the matrix memories, head by head, each ``d x d``
        row-major with ``C[a, b] = sum_s weight_s k_s[a] v_s[b]``.
      n: ``(*batch, num_heads * d)``: the normalizers.
      m: ``(*batch, num_heads)``: the log-space stabilizers.
    """

    c: Array
    n: Array
    m: Array


class MLSTMInput(NamedTuple):
    """The input-only part of every step (:func:`mlstm_project`), leading axes as ``x``'s.

    Attributes:
      q, k, v: ``(..., H)`` query, key (already scaled by ``1 / sqrt(d)``) and value.
      log_i: ``(..., num_heads)`` the input gate's pre-activation ``i~`` (``i = exp(i~)``).
      log_f: ``(..., num_heads)`` ``logsigmoid(f~)``, the log of the forget gate.
      o: ``(..., H)`` the output gate ``sigmoid(x w_o + b_o)``.
    """

    q: Array
    k: Array
    v: Array
    log_i: Array
    log_f: Array
    o: Array


def _heads(a: Array, num_heads: int) -> Array:
    """``(..., num_heads * X) -> (..., num_heads, X)``."""
    return a.reshape(*a.shape[:-1], num_heads, a.shape[-1] // num_heads)


def _flat(a: Array, axes: int) -> Array:
    """Merge the last ``axes`` axes into one feature axis."""
    lead, tail = a.shape[: a.ndim - axes], a.shape[a.ndim - axes :]
    return a.reshape(*lead, math.prod(tail))  # not -1: a batch may be empty


def _check_params(params: Any, H: int, num_heads: int) -> None:
    """Check ``params`` against :class:`MLSTMParams` for ``H`` and ``num_heads``.

    Raises:
      TypeError: a field is missing or not an array, or the dtypes are not one float type.
      ValueError: a field has the wrong shape.
    """
    leaves = check_param_leaves(params, MLSTMParams, "mlstm", "w_q")
    I = params.w_q.shape[0] if params.w_q.ndim == 2 else -1
    want = {"w_q": (I, H), "w_k": (I, H), "w_v": (I, H), "w_o": (I, H), "b_o": (H,)}
    want |= {"w_i": (I, num_heads), "w_f": (I, num_heads)}
    want |= {"b_i": (num_heads,), "b_f": (num_heads,)}
    for f, shape in want.items():
        if tuple(leaves[f].shape) != shape or I < 1:
            raise ValueError(
                f"params.{f} has shape {tuple(leaves[f].shape)}, but an mlstm cell with "
                f"hidden_size={H}, num_heads={num_heads} and input_size={I} expects "
                f"{shape} (params from another cell or size?)"
            )


def mlstm_project(params: MLSTMParams, x: Array, num_heads: int) -> MLSTMInput:
    """The input-only part of every step: ``x (..., I) -> MLSTMInput`` (one matrix product).

    ``q = x w_q``, ``k = x w_k / sqrt(d)``, ``v = x w_v``, ``log_i = x w_i + b_i``,
    ``log_f = logsigmoid(x w_f + b_f)``, ``o = sigmoid(x w_o + b_o)``.
    """
    H = params.w_q.shape[1]
    w = jnp.concatenate(
        [params.w_q, params.w_k, params.w_v, params.w_o, params.w_i, params.w_f], axis=1
    )
    zero = jnp.zeros((3 * H,), params.b_o.dtype)
    b = jnp.concatenate([zero, params.b_o, params.b_i, params.b_f])
    z = x @ w + b
    q, k, v, o, log_i, f = jnp.split(z, np.cumsum([H, H, H, H, num_heads])[:5], axis=-1)
    scale = jnp.asarray(1.0 / math.sqrt(H // num_heads), z.dtype)
    return MLSTMInput(q, k * scale, v, log_i, jax.nn.log_sigmoid(f), jax.nn.sigmoid(o))


def _readout(num: Array, qn: Array, m: Array, eps: float, eps_scale: Array | float = 1.0) -> Array:
    """``h~ = C^T q / (max(|n^T q|, exp(-m)) + eps * eps_scale)`` per head, from the
    numerator ``num = C^T q (..., d)``, ``qn = n^T q (...)`` and the stabilizer ``m (...)``
    (``eps_scale``: see :func:`mlstm_parallel`)."""
    den = jnp.maximum(jnp.abs(qn), jnp.exp(-m)) + eps * eps_scale
    return num / den[..., None]


def mlstm_update(state: MLSTMState, xp: MLSTMInput, num_heads: int) -> MLSTMState:
    """One step of the state: ``(C, n, m) -> (C', n', m')`` (equations in the module doc)."""
    m_new = jnp.maximum(xp.log_f + state.m, xp.log_i)
    f = jnp.exp(xp.log_f + state.m - m_new)
    i = jnp.exp(xp.log_i - m_new)
    k, v = _heads(xp.k, num_heads), _heads(xp.v, num_heads)
    d = k.shape[-1]
    c = state.c.reshape(*state.c.shape[:-1], num_heads, d, d)
    c = f[..., None, None] * c + i[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f[..., None] * _heads(state.n, num_heads) + i[..., None] * k
    return MLSTMState(c=_flat(c, 3), n=_flat(n, 2), m=m_new)


def mlstm_output(state: MLSTMState, xp: MLSTMInput, num_heads: int, eps: float) -> Array:
    """What a step emits from the state it reached: ``y = o * h~ (*batch, H)``."""
    q = _heads(xp.q, num_heads)
    d = q.shape[-1]
    c = state.c.reshape(*state.c.shape[:-1], num_heads, d, d)
    num = jnp.einsum("...a,...ab->...b", q, c)
    qn = jnp.sum(q * _heads(state.n, num_heads), axis=-1)
    return xp.o * _flat(_readout(num, qn, state.m, eps), 2)


@jax.custom_jvp
def _row_max(x: Array) -> Array:
    """``max(x, axis=-1)`` whose derivative is the tangent at the (first) argmax: a gather,
    where ``jnp.max``'s is a mask over the whole row (the rows here are ``T`` long)."""
    return jnp.max(x, axis=-1)


@_row_max.defjvp
def _row_max_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (t,) = primals, tangents
    at = jnp.argmax(x, axis=-1)[..., None]
    return jnp.take_along_axis(x, at, -1)[..., 0], jnp.take_along_axis(t, at, -1)[..., 0]


def mlstm_parallel(
    xp: MLSTMInput, state0: MLSTMState, valid: Array | None, num_heads: int, eps: float
) -> tuple[MLSTMState, Array]:
    """All ``T`` steps at once: the stabilized quadratic form, with an initial state.

    Args:
      xp: :class:`MLSTMInput` with leaves time-major ``(T, *batch, ...)``.
      state0: :class:`MLSTMState` before the first step, leaves ``(*batch, ...)``.
      valid: None or ``(T, *batch)`` bools; a step where it is False leaves the state as
        it was (``log f = 0``, ``i~ = -inf``).
      num_heads: heads; eps: the denominator's ``eps``.

    Returns:
      ``(final_state, ys)``: the state after step ``T`` (closed form: a weighted sum over
      steps, no ``T x d x d`` intermediate) and ``ys (T, *batch, H)``.

    Equations: the module docstring ("Parallel form"); ``O(T^2 d)`` work per head and
    batch element, ``(T, T)`` intermediates.
    """
    T = xp.q.shape[0]
    if T == 0:
        return state0, jnp.zeros(xp.o.shape, xp.o.dtype)
    log_f, log_i = xp.log_f, xp.log_i
    if valid is not None:
        log_f = jnp.where(valid[..., None], log_f, jnp.zeros_like(log_f))
        log_i = jnp.where(valid[..., None], log_i, jnp.full_like(log_i, -jnp.inf))

    def per_head(a: Array) -> Array:  # (T, *batch, NH*X) -> (*batch, NH, T, X)
        return jnp.moveaxis(_heads(a, num_heads), 0, -2)

    q, k, v = per_head(xp.q), per_head(xp.k), per_head(xp.v)
    d = q.shape[-1]
    F = jnp.moveaxis(jnp.cumsum(log_f, axis=0), 0, -1)  # (*batch, NH, T)
    log_i = jnp.moveaxis(log_i, 0, -1)
    causal = np.tril(np.ones((T, T), dtype=bool))
    log_d = F[..., :, None] - F[..., None, :] + log_i[..., None, :]  # (*batch, NH, T, T)
    log_d = jnp.where(causal, log_d, -jnp.inf)
    log_g = F + state0.m[..., None]  # the initial state's weight, (*batch, NH, T)
    m = jnp.maximum(_row_max(log_d), log_g)
    # The readout is the same function of the inputs for any constant stabilizer: with
    # ms = m held constant, num and qn scale by exp(m - ms) = 1 and only eps keeps m's
    # own dependence on the inputs (eps * exp(m - ms), exact). So no gradient flows back
    # through the (T, T) weights into m: a cheaper training step (measured by
    # benchmarks/parity_mlstm.py --speed).
    ms = jax.lax.stop_gradient(m)
    D = jnp.exp(log_d - ms[..., None])
    g = jnp.exp(log_g - ms)
    c0 = state0.c.reshape(*state0.c.shape[:-1], num_heads, d, d)
    n0 = _heads(state0.n, num_heads)
    S = jnp.einsum("...ta,...sa->...ts", q, k) * D
    num = S @ v + g[..., None] * jnp.einsum("...ta,...ab->...tb", q, c0)
    qn = jnp.sum(S, axis=-1) + g * jnp.einsum("...ta,...a->...t", q, n0)
    h = _readout(num, qn, ms, eps, jnp.exp(m - ms))  # (*batch, NH, T, d)
    ys = xp.o * _flat(jnp.moveaxis(h, -2, 0), 2)
    # the final state's weights, (*batch, NH, T) and (*batch, NH), with m itself: the
    # state (C, n, m) is stabilized by its m
    w = jnp.exp(log_d[..., -1, :] - m[..., -1:])
    g_T = jnp.exp(log_g[..., -1] - m[..., -1])
    c = g_T[..., None, None] * c0 + jnp.einsum("...s,...sa,...sb->...ab", w, k, v)
    n = g_T[..., None] * n0 + jnp.einsum("...s,...sa->...a", w, k)
    return MLSTMState(c=_flat(c, 3), n=_flat(n, 2), m=m[..., -1]), ys


def mlstm_chunkwise(
    xp: MLSTMInput,
    state0: MLSTMState,
    valid: Array | None,
    num_heads: int,
    eps: float,
    chunk_size: int | None,
) -> tuple[MLSTMState, Array]:
    """All ``T`` steps, ``chunk_size`` at a time: the quadratic form within each chunk
    (:func:`mlstm_parallel`), its final state carried into the next (``jax.lax.scan``
    over chunks).

    Args: as :func:`mlstm_parallel`, plus ``chunk_size``: steps per chunk (None, or at
    least ``T``: one chunk, the whole quadratic form).

    Returns:
      ``(final_state, ys (T, *batch, H))``, the same numbers as one quadratic form over all
      ``T`` steps (the state after a chunk is what the step form reaches there), with
      ``(chunk, chunk)`` intermediates instead of ``(T, T)``: ``O(T (chunk + d) d)`` work per
      head instead of ``O(T^2 d)``. The last chunk is padded with steps
      that leave the state unchanged (``valid`` False), whose outputs are dropped.
    """
    T = xp.q.shape[0]
    if chunk_size is None or T <= chunk_size:
        return mlstm_parallel(xp, state0, valid, num_heads, eps)
    n = -(-T // chunk_size)
    pad = n * chunk_size - T
    if valid is None:
        valid = jnp.ones(xp.log_f.shape[:-1], bool)

    def chunks(a: Array, fill: Any) -> Array:  # (T, ...) -> (n, chunk_size, ...)
        a = jnp.concatenate([a, jnp.full((pad, *a.shape[1:]), fill, a.dtype)])
        return a.reshape(n, chunk_size, *a.shape[1:])

    xs = (jax.tree_util.tree_map(lambda a: chunks(a, 0), xp), chunks(valid, False))

    def step(state: MLSTMState, x: tuple[MLSTMInput, Array]) -> tuple[MLSTMState, Array]:
        return mlstm_parallel(x[0], state, x[1], num_heads, eps)

    final, ys = jax.lax.scan(step, state0, xs)
    return final, ys.reshape(n * chunk_size, *ys.shape[2:])[:T]


def mlstm_gate_values(params: Any, state: MLSTMState, xp: MLSTMInput) -> dict[str, Array]:
    """The step's gates, each in ``[0, 1]``, given the state before the step (``params``
    unused: the gates are in ``xp``); the cell's ``gates``.

    ``"forget"``: ``sigmoid(f~) (*batch, num_heads)``, the decay of the (unstabilized)
    memory per step; ``"input"``: the stabilized input gate ``exp(i~ - m') (*batch,
    num_heads)`` (1 where the new input sets the stabilizer); ``"output"``: ``o (*batch, H)``.
    """
    m_new = jnp.maximum(xp.log_f + state.m, xp.log_i)
    return {"input": jnp.exp(xp.log_i - m_new), "forget": jnp.exp(xp.log_f), "output": xp.o}


def _check_eps(eps: Any) -> float:
    """``eps`` as a float; a TypeError / ValueError unless a finite real number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number >= 0, got {eps!r}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def mlstm_init(
    key: Array,
    input_size: int,
    dtype: Any,
    hidden_size: int,
    num_heads: int,
    kernel_init: Initializer,
    gate_kernel_init: Initializer,
) -> MLSTMParams:
    """Draw :class:`MLSTMParams`: ``w_q, w_k, w_v, w_o (I, H)`` by ``kernel_init``,
    ``w_i, w_f (I, num_heads)`` by ``gate_kernel_init``, ``b_f = linspace(3, 6)``,
    ``b_i ~ N(0, 0.01)``, ``b_o = 0`` (as xlstm's mLSTM cell)."""
    H, NH = hidden_size, num_heads
    I = check_input_size(input_size)
    dtype = check_dtype(dtype)
    check_key(key)
    n = I * (4 * H + 2 * NH) + H + 2 * NH
    check_fits_in_memory(
        n * dtype.itemsize,
        f"the params of an mlstm cell with input_size={I}, hidden_size={H} ({dtype.name})",
    )
    kq, kk, kv, ko, ki, kf, kb = jax.random.split(key, 7)
    b_i = INPUT_BIAS_STD * jax.random.normal(kb, (NH,), jnp.float32)
    return MLSTMParams(
        w_q=kernel_init(kq, (I, H), dtype),
        w_k=kernel_init(kk, (I, H), dtype),
        w_v=kernel_init(kv, (I, H), dtype),
        w_i=gate_kernel_init(ki, (I, NH), dtype),
        b_i=b_i.astype(dtype),
        w_f=gate_kernel_init(kf, (I, NH), dtype),
        b_f=jnp.linspace(*FORGET_BIAS_RANGE, NH, dtype=jnp.float32).astype(dtype),
        w_o=kernel_init(ko, (I, H), dtype),
        b_o=jnp.zeros((H,), dtype),
    )


def mlstm_zero_state(
    params: MLSTMParams, batch_shape: Any, hidden_size: int, num_heads: int
) -> MLSTMState:
    """Zeros: ``c (*batch, NH*d*d)``, ``n (*batch, NH*d)``, ``m (*batch, NH)``."""
    _check_params(params, hidden_size, num_heads)
    batch = check_batch_shape(batch_shape)
    dtype = params.w_q.dtype
    NH, d = num_heads, hidden_size // num_heads
    size = NH * (d * d + d + 1) * math.prod(batch)
    check_fits_in_memory(size * dtype.itemsize, f"an mlstm state of batch {batch}")
    return MLSTMState(
        c=jnp.zeros((*batch, NH * d * d), dtype),
        n=jnp.zeros((*batch, NH * d), dtype),
        m=jnp.zeros((*batch, NH), dtype),
    )


@cached_factory
def mlstm(
    hidden_size: int,
    num_heads: int = 1,
    *,
    eps: float = 1e-6,
    chunk_size: int | None = CHUNK_SIZE,
    kernel_init: Initializer = fan_in_normal,
    gate_kernel_init: Initializer = zeros,
) -> Cell:
    """An mLSTM cell (Beck et al. 2024): matrix memory per head, exponential gating.

    Args:
      hidden_size: number of hidden units ``H`` (the size of ``y``), a multiple of
        ``num_heads``.
      num_heads: heads of ``d = H / num_heads`` units, each with its own ``d x d`` memory
        and scalar gates (the xLSTM paper's language models use 4).
      eps: added to the denominator of the readout (xlstm's 1e-6).
      chunk_size: steps per chunk of the parallel form (:func:`mlstm_chunkwise`; None:
        one quadratic form over the whole sequence). Changes speed and memory, not the
        numbers (beyond float rounding).
      kernel_init: initializer ``(key, shape, dtype) -> array`` for ``w_q, w_k, w_v, w_o``.
      gate_kernel_init: the same for ``w_i, w_f`` (zeros, as in xlstm).

    Returns:
      A :class:`Cell` with :class:`MLSTMParams`, state :class:`MLSTMState` ``(c, n, m)``
      with leaves ``(*batch, num_heads*d*d)``, ``(*batch, num_heads*d)``,
      ``(*batch, num_heads)``, and a ``parallel`` form (:func:`mlstm_parallel`).

    Equations: the module docstring. Init (as xlstm's mLSTM cell): ``b_f =
    linspace(3, 6, num_heads)``, ``b_i ~ N(0, 0.1^2)``, ``b_o = 0``. The state starts at
    zeros (``m = 0``, as xlstm's step form).
    """
    H = check_hidden_size(hidden_size)
    NH = check_positive_int(num_heads, "num_heads")
    if H % NH:
        raise ValueError(
            f"hidden_size must be a multiple of num_heads, got hidden_size={H}, num_heads={NH}"
        )
    eps = _check_eps(eps)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_initializers(kernel_init=kernel_init, gate_kernel_init=gate_kernel_init)

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> MLSTMParams:
        """Draw params (:func:`mlstm_init`)."""
        return mlstm_init(key, input_size, dtype, H, NH, kernel_init, gate_kernel_init)

    def initial_state(params: MLSTMParams, batch_shape: Any = ()) -> MLSTMState:
        """Zeros (:func:`mlstm_zero_state`)."""
        return mlstm_zero_state(params, batch_shape, H, NH)

    def project(params: MLSTMParams, x: Array) -> MLSTMInput:
        """``x (..., I) -> MLSTMInput`` (:func:`mlstm_project`)."""
        _check_params(params, H, NH)
        x = check_input(x, params.w_q)
        return mlstm_project(params, x, NH)

    def recur(params: MLSTMParams, state: MLSTMState, xp: MLSTMInput) -> tuple[MLSTMState, Array]:
        """One step: ``(state', y (*batch, H))`` (params unused: the gates are in ``xp``)."""
        state = mlstm_update(state, xp, NH)
        return state, mlstm_output(state, xp, NH, eps)

    def output(params: MLSTMParams, state: MLSTMState, xp: MLSTMInput) -> Array:
        """``y = o * h~ (*batch, H)`` from the state a step reached (params unused)."""
        return mlstm_output(state, xp, NH, eps)

    def parallel(
        params: MLSTMParams, xp: MLSTMInput, state0: MLSTMState, valid: Array | None
    ) -> tuple[MLSTMState, Array]:
        """All steps, a chunk at a time (:func:`mlstm_chunkwise`): ``(final_state,
        ys (T, *batch, H))``."""
        return mlstm_chunkwise(xp, state0, valid, NH, eps, chunk_size)

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=recur,
        output=output,
        hidden_size=H,
        name="mlstm",
        config=make_config(hidden_size=H, num_heads=NH, eps=eps, chunk_size=chunk_size),
        parallel=parallel,
        gates=mlstm_gate_values,
    )
