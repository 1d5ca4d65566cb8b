"""The sLSTM cell (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", section 2.2).

An LSTM with exponential input and forget gates: a normalizer state ``n`` divides the cell
``c`` so that the output stays bounded, and a stabilizer state ``m`` (a running maximum in
log space) keeps every ``exp`` at most 1, so nothing overflows. The recurrent weights are
block-diagonal over ``num_heads`` heads (memory mixing within a head only).

Equations (``raw = x w_x + h R + b`` split into blocks i, f, z, o, each ``(*batch, H)``;
``log f = log_sigmoid(f_raw)`` for the sigmoid forget gate, ``f_raw`` for the exponential
one)::

    m' = max(log f + m, i_raw)                     (m' = i_raw where n = 0: no history yet)
    i' = exp(i_raw - m'),   f' = exp(log f + m - m')          (both in [0, 1])
    c' = f' c + i' tanh(z_raw)
    n' = f' n + i'
    h' = sigmoid(o_raw) * c' / n',   y = h'

``c'`` and ``n'`` are the unstabilized sums ``C = F C + exp(i_raw) tanh(z)`` and
``N = F N + exp(i_raw)`` (``F = exp(log f)``) scaled by ``exp(-m')``: the ratio ``c / n``,
hence ``h``, does not depend on the stabilizer at all. ``c / n`` is a convex combination
of the candidates, ``c'/n' = (f' n / n') (c / n) + (i' / n') tanh(z_raw)``: those two
weights are what :attr:`Cell.gates` reports as ``forget`` and ``input``.

Reference: the pure-PyTorch ("vanilla") backend of the ``xlstm`` package
(``xlstm/blocks/slstm/src/vanilla/slstm.py``), which this module matches to float
round-off (``tests/test_slstm.py``, ``benchmarks/parity_slstm.py``). Its gate order
(i, f, z, o), its bias layout (gate-major ``(4, heads, head_dim)`` flattened) and its
recurrent kernel (``recurrent_kernel (heads, head_dim, 4, head_dim)``, ``r`` here is that
array reshaped) are ours, so parity is a reshape. Two choices differ in form, not value:

* the package restarts the stabilizer with ``if torch.all(n == 0): m_new = i_raw`` (one
  Python branch for the whole batch); here the same holds row by row with a ``jnp.where``
  (jit-safe, and right for rows reset mid-sequence by ``gr.scan(resets=...)``). From the
  zero state it gives the package's states exactly. Without it (plain ``max`` from
  ``m = 0``) the outputs are the same, since ``c / n`` is invariant to the stabilizer, but
  ``n`` could underflow to 0 at the first step when ``i_raw`` is very negative.
* the package clamps ``min(exp(.), 1)``; with ``m'`` the maximum both exponents are
  already ``<= 0``, so the clamp never acts here.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells.base import (
    Array,
    Cell,
    Initializer,
    Split,
    blockwise,
    cached_factory,
    check_dtype,
    check_fits_in_memory,
    check_gate_bias,
    check_hidden_size,
    check_initializers,
    check_input,
    check_input_size,
    check_key,
    check_param_leaves,
    check_positive_int,
    fan_in_normal,
    make_config,
    make_state_zeros,
    split_gates,
    zeros,
)

FORGET_GATES = ("sigmoid", "exp")
"""``forget_gate`` options: ``log f = log_sigmoid(f_raw)`` (xlstm's) or ``f_raw``."""

FORGET_BIASES = ("powerlaw", "linspace")
"""Named ``forget_bias`` inits (besides a number), xlstm's ``powerlaw_blockdependent``
(block 0 of 1) and ``small_init``."""


class SLSTMParams(NamedTuple):
    """Parameters of an sLSTM cell; gate blocks side by side in the order i, f, z, o.

    Attributes:
      w_x: ``(I, 4H)`` input weight.
      r: ``(num_heads, head_dim, 4 * head_dim)`` recurrent weight, one block per head
        (``head_dim = H / num_heads``); ``r[k]`` maps head ``k``'s slice of ``h`` to that
        head's slices of the four gate blocks (columns: i, f, z, o, ``head_dim`` each).
        The block-diagonal ``(H, 4H)`` matrix it stands for is never formed.
      b: ``(4H,)`` bias (the f block starts at ``forget_bias``).
    """

    w_x: Array
    r: Array
    b: Array


class SLSTMState(NamedTuple):
    """sLSTM state, each ``(*batch, H)``: hidden ``h``, cell ``c``, normalizer ``n`` and
    stabilizer ``m`` (the log of the scale ``c`` and ``n`` are stored at)."""

    h: Array
    c: Array
    n: Array
    m: Array


def slstm_hidden(params: SLSTMParams, state: SLSTMState) -> Array:
    """The recurrent part ``h R + b``, ``(*batch, 4H)``, blocks i, f, z, o.

    ``R`` is block-diagonal over heads: head ``k``'s slice of ``h (*batch, H)`` meets
    ``r[k] (head_dim, 4 * head_dim)`` only; one einsum for all heads (a plain matrix
    product for one head).
    """
    r, h = params.r, state.h
    heads, dh, _ = r.shape
    if heads == 1:
        return h @ r.reshape(dh, 4 * dh) + params.b
    a = jnp.einsum(
        "...kd,kdge->...gke", h.reshape(*h.shape[:-1], heads, dh), r.reshape(heads, dh, 4, dh)
    )
    return a.reshape(*a.shape[:-3], 4 * heads * dh) + params.b


def _stabilized_gates(
    state: SLSTMState, raw: Array, forget_gate: str
) -> tuple[Array, Array, Array, Array, Array]:
    """``(i', f', z_raw, o_raw, m')`` of one step from ``raw = x w_x + h R + b``."""
    i_raw, f_raw, z_raw, o_raw = split_gates(raw, 4)
    log_f = jax.nn.log_sigmoid(f_raw) if forget_gate == "sigmoid" else f_raw
    # n = 0: no history (the zero state, or a reset row); the old terms carry weight 0
    # (c = n = 0 there) and m' = i_raw, as xlstm's `if torch.all(n == 0): m_new = i_raw`.
    log_fm = jnp.where(state.n == 0, -jnp.inf, log_f + state.m)
    m = jnp.maximum(log_fm, i_raw)
    return jnp.exp(i_raw - m), jnp.exp(log_fm - m), z_raw, o_raw, m


def slstm_pointwise(
    state: SLSTMState, xp: Array, a: Array, forget_gate: str = "sigmoid"
) -> tuple[SLSTMState, Array]:
    """One step's elementwise part: ``raw = xp + a`` (``a = h R + b``) -> ``(state', h')``.

    Args:
      state: :class:`SLSTMState`, leaves ``(*batch, H)``.
      xp: ``(*batch, 4H)`` projected input ``x w_x`` (or 0 with ``a`` already the sum).
      a: ``(*batch, 4H)`` recurrent part from :func:`slstm_hidden`.
      forget_gate: ``"sigmoid"`` or ``"exp"`` (see :func:`slstm`).

    Returns:
      ``(SLSTMState(h', c', n', m'), h')``, by the equations of the module docstring.
    """
    i, f, z_raw, o_raw, m = _stabilized_gates(state, xp + a, forget_gate)
    c = f * state.c + i * jnp.tanh(z_raw)
    n = f * state.n + i
    h = jax.nn.sigmoid(o_raw) * c / n
    return SLSTMState(h=h, c=c, n=n, m=m), h


def slstm_output(params: SLSTMParams, state: SLSTMState, xp: Array) -> Array:
    """What an sLSTM step emits: ``h (*batch, H)``."""
    del params, xp
    return state.h


def slstm_gate_dict(
    params: SLSTMParams, state: SLSTMState, xp: Array, forget_gate: str = "sigmoid"
) -> dict[str, Array]:
    """The step's gates by name (``Cell.gates``), each ``(*batch, H)``.

    The exponential gates ``i'``, ``f'`` are not in ``[0, 1]`` as gates of the
    unstabilized sums, so the entries are the weights of the normalized state
    ``c'/n' = forget * (c / n) + input * tanh(z_raw)``:

    * ``forget = f' n / n'``: the share of the old normalizer kept (0 at the first step);
    * ``input = i' / n'``: the share of the new candidate (``forget + input = 1``);
    * ``output = sigmoid(o_raw)``; ``candidate = tanh(z_raw)`` (in ``[-1, 1]``).
    """
    i, f, z_raw, o_raw, _ = _stabilized_gates(state, xp + slstm_hidden(params, state), forget_gate)
    kept = f * state.n
    n = kept + i
    return {
        "input": i / n,
        "forget": kept / n,
        "candidate": jnp.tanh(z_raw),
        "output": jax.nn.sigmoid(o_raw),
    }


def forget_bias_values(value: float | str, head_dim: int) -> np.ndarray:
    """The forget block's init bias for one head, ``(head_dim,)`` (tiled over heads).

    ``"powerlaw"`` (xlstm's default ``powerlaw_blockdependent`` for block 0 of 1):
    ``b_j = 5 - 12 (j / (head_dim - 1))^0.3`` for ``j = 0 .. head_dim - 1``, from 5
    (``sigmoid = 0.993``, a memory of ~150 steps) down to -7, most units short; 5 for
    ``head_dim = 1``. ``"linspace"`` (xlstm's ``small_init``): evenly from 3 to 6. A
    number: that value everywhere.
    """
    if value == "powerlaw":
        j = np.arange(head_dim) / max(head_dim - 1, 1)
        return 5.0 - 12.0 * j**0.3
    if value == "linspace":
        return np.linspace(3.0, 6.0, head_dim)
    return np.full((head_dim,), float(value))


def check_slstm_params(params: Any, hidden_size: int, num_heads: int) -> None:
    """Check params against :class:`SLSTMParams` for ``H = hidden_size`` and ``num_heads``.

    Raises:
      TypeError: a field is missing, not an array, or the dtypes are not one float type.
      ValueError: ``w_x`` not ``(I, 4H)``, ``r`` not ``(heads, H/heads, 4H/heads)``, or
        ``b`` not ``(4H,)`` (params of another size, head count or cell).
    """
    got = type(params).__name__
    leaves = check_param_leaves(params, SLSTMParams, "slstm", "w_x")
    H, dh = hidden_size, hidden_size // num_heads
    want = {
        "w_x": f"(input_size, 4H) = (I, {4 * H})",
        "r": f"(num_heads, H/num_heads, 4H/num_heads) = {(num_heads, dh, 4 * dh)}",
        "b": f"(4H,) = {(4 * H,)}",
    }
    for f, a in leaves.items():
        shape = tuple(a.shape)
        if f == "w_x":
            ok = len(shape) == 2 and shape[1] == 4 * H
        else:
            ok = shape == ((num_heads, dh, 4 * dh) if f == "r" else (4 * H,))
        if not ok:
            raise ValueError(
                f"params.{f} has shape {shape}, but an slstm cell with hidden_size={H} and "
                f"num_heads={num_heads} expects {want[f]} (params {got} from another cell "
                "or size?)"
            )


@cached_factory
def slstm(
    hidden_size: int,
    num_heads: int = 1,
    forget_gate: str = "sigmoid",
    forget_bias: float | str = "powerlaw",
    *,
    kernel_init: Initializer = fan_in_normal,
    recurrent_init: Initializer = zeros,
    bias_init: Initializer = zeros,
) -> Cell:
    """An sLSTM cell (Beck et al. 2024): exponential gating, normalizer and stabilizer.

    Args:
      hidden_size: number of hidden units ``H``.
      num_heads: heads of the block-diagonal recurrent weight; must divide ``H``
        (xlstm's layers use 4; 1, the default, is a full ``(H, 4H)`` recurrent matrix and
        works for any ``H``).
      forget_gate: ``"sigmoid"`` (default, as in the xlstm package): ``log f =
        log_sigmoid(f_raw)``, so ``f`` in ``(0, 1)``; ``"exp"``: ``log f = f_raw``, the
        paper's exponential forget gate (unbounded, ``f = exp(f_raw)``).
      forget_bias: the forget block's init bias per head: ``"powerlaw"`` (default, xlstm's
        default ``powerlaw_blockdependent``: from 5 down to -7 across each head's units,
        a spread of memory lengths), ``"linspace"`` (xlstm's ``small_init``: 3 to 6), or a
        number; see :func:`forget_bias_values`. Added to ``bias_init``'s draw.
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype) -> array``
        for ``w_x (I, 4H)``, each ``(head_dim, head_dim)`` gate block of every head of
        ``r``, and ``b (4H,)``. ``recurrent_init`` defaults to zeros, as in xlstm.

    Returns:
      A :class:`Cell` with :class:`SLSTMParams`, state :class:`SLSTMState` ``(h, c, n,
      m)`` and ``recur`` a :class:`Split` (``h R + b``, then elementwise), so
      :func:`gatedrnn.scan` runs its fused loop.

    Equations (``raw = x w_x + h R + b`` in blocks i, f, z, o; see the module docstring)::

        m' = max(log f + m, i_raw)      (i_raw where n = 0)
        i' = exp(i_raw - m'),  f' = exp(log f + m - m')
        c' = f' c + i' tanh(z_raw),  n' = f' n + i'
        h' = sigmoid(o_raw) * c' / n',  y = h'

    Raises:
      ValueError: ``num_heads`` not an int >= 1 dividing ``H``, an unknown
        ``forget_gate`` or named ``forget_bias``, or a non-finite one.
      TypeError: ``forget_bias`` neither a number nor a name; an initializer not callable.
    """
    H = check_hidden_size(hidden_size)
    heads = check_positive_int(num_heads, "num_heads")
    if H % heads:
        raise ValueError(
            f"num_heads must divide hidden_size, got hidden_size={H} and num_heads={heads}"
        )
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
    if isinstance(forget_bias, str):
        if forget_bias not in FORGET_BIASES:
            raise ValueError(
                f"forget_bias must be a number or one of {FORGET_BIASES}, got {forget_bias!r}"
            )
    else:
        forget_bias = check_gate_bias(forget_bias, "forget_bias", None)
    check_initializers(kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init)
    dh = H // heads

    def init(key: Array, input_size: int, dtype: Any = jnp.float32) -> SLSTMParams:
        """Draw params: ``w_x`` fan-in normal, ``r`` zeros (``recurrent_init`` per head
        and gate block), ``b`` zeros plus the forget block's ``forget_bias``."""
        input_size = check_input_size(input_size)
        dtype = check_dtype(dtype)
        check_key(key)
        count = (input_size + 1) * 4 * H + heads * dh * 4 * dh
        check_fits_in_memory(
            count * dtype.itemsize,
            f"the params of an slstm cell with input_size={input_size}, hidden_size={H} "
            f"({dtype.name})",
        )
        kx, kr, kb = jax.random.split(key, 3)
        per_head = blockwise(recurrent_init, 4)
        r = jnp.stack([per_head(k, (dh, 4 * dh), dtype) for k in jax.random.split(kr, heads)])
        b = bias_init(kb, (4 * H,), dtype)
        b_f = np.tile(forget_bias_values(forget_bias, dh), heads)
        b = b.at[H : 2 * H].add(jnp.asarray(b_f, dtype))
        return SLSTMParams(w_x=kernel_init(kx, (input_size, 4 * H), dtype), r=r, b=b)

    def initial_state(params: SLSTMParams, batch_shape: Any = ()) -> SLSTMState:
        """Zeros ``h, c, n, m (*batch_shape, H)``."""
        check_slstm_params(params, H, heads)
        z = make_state_zeros(H, params.w_x.dtype, batch_shape)
        return SLSTMState(h=z, c=z, n=z, m=z)

    def project(params: SLSTMParams, x: Array) -> Array:
        """``(..., I) -> (..., 4H)``: ``x w_x`` (the bias is added in ``hidden``)."""
        check_slstm_params(params, H, heads)
        x = check_input(x, params.w_x)
        return x @ params.w_x

    return Cell(
        init=init,
        initial_state=initial_state,
        project=project,
        recur=Split(
            slstm_hidden,
            functools.partial(slstm_pointwise, forget_gate=forget_gate),
            additive=True,
        ),
        output=slstm_output,
        hidden_size=H,
        name="slstm",
        config=make_config(
            hidden_size=H, num_heads=heads, forget_gate=forget_gate, forget_bias=forget_bias
        ),
        gates=functools.partial(slstm_gate_dict, forget_gate=forget_gate),
        tanh_gates=("candidate",),
    )
