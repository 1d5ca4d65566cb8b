"""A character-level language model: embedding -> stacked RNN -> linear readout.

The model is pure functions over a :class:`CharLMParams` pytree; the RNN is
``gr.stack(cell, num_layers, dropout=...)`` of any registered cell
(:data:`gatedrnn.cells.CELLS`). :func:`evaluate` scores a text statefully in bits per
character; :func:`sample` generates text in one compiled call (``lax.scan`` over
characters). The trainer (stateful truncated BPTT on the one loop,
:func:`gatedrnn.training.train`) and its command line are ``experiments/char_lm.py``.

Model, for input ids ``c_1..c_T`` and carried state ``s_0``::

    e_t = E[c_t]                              (embedding, E: (V, D))
    s_t, h_t = stack(s_{t-1}, e_t)            (num_layers cells, dropout between layers)
    logits_t = h_t W_out + b_out              (W_out: (H, V))
    loss = -mean_t log softmax(logits_t)[c_{t+1}]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells import make_cell
from gatedrnn.cells.base import check_fits_in_memory, fan_in_normal
from gatedrnn.layers import Stack, stack
from gatedrnn.training.loop import check_seed
from gatedrnn.training.text import (
    UNK_ID,
    bits_per_char,
    chunk_rows,
    get_chunk,
    num_chunks,
)


@dataclass(frozen=True)
class CharLMConfig:
    """The shape of a character LM (hashable, so it can be a static jit argument).

    Attributes:
      vocab_size: ``V``, including the unknown id 0.
      cell: a name in :data:`gatedrnn.cells.CELLS` (``"vanilla"`` (tanh), ``"lstm"``,
        ``"gru"``, ...).
      hidden_size: ``H`` of every layer.
      num_layers: 1 to 3.
      embed_size: ``D``, the embedding width.
      dropout: rate between RNN layers during training (0 = none).
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    embed_size: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        make_cell(self.cell, 1)  # ValueError naming the registered cells
        if not 1 <= self.num_layers <= 3:
            raise ValueError(f"num_layers must be 1, 2 or 3, got {self.num_layers}")
        for name in ("vocab_size", "hidden_size", "embed_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CharLMParams(NamedTuple):
    """Params: ``embed (V, D)``, ``rnn`` (one cell params per layer), ``w_out (H, V)``,
    ``b_out (V,)``."""

    embed: jax.Array
    rnn: tuple
    w_out: jax.Array
    b_out: jax.Array


def rnn_stack(config: CharLMConfig) -> Stack:
    """The ``gr.stack`` the model uses."""
    return stack(
        make_cell(config.cell, config.hidden_size), config.num_layers, dropout=config.dropout
    )


def init(key: jax.Array, config: CharLMConfig) -> CharLMParams:
    """Draw params: embedding ``N(0, 1)``, the cells' own init, readout fan-in normal."""
    ke, kr, ko = jax.random.split(key, 3)
    V, D, H = config.vocab_size, config.embed_size, config.hidden_size
    return CharLMParams(
        embed=jax.random.normal(ke, (V, D), jnp.float32),
        rnn=rnn_stack(config).init(kr, D),
        w_out=fan_in_normal(ko, (H, V)),
        b_out=jnp.zeros((V,), jnp.float32),
    )


def num_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ``ShapeDtypeStruct``)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def param_count(config: CharLMConfig) -> int:
    """Number of parameters of a model with ``config`` (counted from real params shapes)."""
    return num_params(jax.eval_shape(partial(init, config=config), jax.random.PRNGKey(0)))


def initial_carry(params: CharLMParams, config: CharLMConfig, batch_size: int) -> tuple:
    """Zero RNN state for ``batch_size`` rows (one entry per layer)."""
    return rnn_stack(config).initial_state(params.rnn, (batch_size,))


def apply(
    params: CharLMParams,
    config: CharLMConfig,
    ids: jax.Array,
    carry: tuple,
    dropout_key: jax.Array | None = None,
) -> tuple[tuple, jax.Array]:
    """Run the model over ``ids (B, T)`` from ``carry``; returns ``(carry', logits (B, T, V))``."""
    if ids.ndim != 2:
        raise ValueError(f"ids must be (batch, time), got shape {ids.shape}")
    xs = jnp.take(params.embed, ids, axis=0)
    carry, hs = rnn_stack(config).apply(params.rnn, xs, carry, dropout_key=dropout_key)
    return carry, hs @ params.w_out + params.b_out


@partial(jax.jit, static_argnames=("config",))
def _eval_chunk(params, config, carry, x, y):
    carry, logits = apply(params, config, x, carry)
    return carry, bits_per_char(logits, y) * x.size


EVAL_ROWS = 16  # rows :func:`evaluate` reads in parallel by default (each needs >= 2 ids)


def evaluate(
    params: CharLMParams,
    config: CharLMConfig,
    ids: np.ndarray,
    *,
    batch_size: int = EVAL_ROWS,
    seq_len: int = 200,
    max_chars: int | None = None,
) -> float:
    """Validation bits per character, reading ``ids`` statefully in ``batch_size`` rows.

    Args:
      ids: ``(N,)`` ids (e.g. the validation split).
      max_chars: use only the first ``max_chars`` ids (None = all).
    """
    ids = np.asarray(ids)[:max_chars]
    rows = chunk_rows(ids, batch_size)
    seq_len = min(seq_len, rows.shape[1] - 1)
    carry = initial_carry(params, config, batch_size)
    total, count = 0.0, 0
    for i in range(num_chunks(ids, batch_size, seq_len)):
        x, y = get_chunk(rows, i, seq_len)
        carry, bits = _eval_chunk(params, config, carry, jnp.asarray(x), jnp.asarray(y))
        total += float(bits)
        count += x.size
    return total / count


# ----------------------------------------------------------------------------- sampling


def _pick(logits: jax.Array, temperature: jax.Array, top_k: int, key: jax.Array) -> jax.Array:
    """Next ids ``(B,)`` from ``logits (B, V)``: greedy if ``temperature == 0``, else a draw
    from ``softmax(logits / temperature)`` restricted to the ``top_k`` best (0 = all)."""
    logits = logits.at[..., UNK_ID].set(-jnp.inf)  # never write the unknown character
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    greedy = jnp.argmax(logits, axis=-1)
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "length", "top_k"))
def _generate(params, config, prime, temperature, key, length, top_k):
    carry = initial_carry(params, config, prime.shape[0])
    carry, logits = apply(params, config, prime, carry)

    def body(c, k):
        carry, last = c
        nxt = _pick(last, temperature, top_k, k)
        carry, lg = apply(params, config, nxt[:, None], carry)
        return (carry, lg[:, 0]), nxt

    _, out = jax.lax.scan(body, (carry, logits[:, -1]), jax.random.split(key, length))
    return out.T


def sample(
    params: CharLMParams,
    config: CharLMConfig,
    prime_ids: np.ndarray,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    num_samples: int = 1,
) -> np.ndarray:
    """Generate ``length`` ids after ``prime_ids`` in one compiled call.

    Args:
      prime_ids: ``(P,)`` ids read first (P >= 1) to set the state.
      length: number of ids to generate.
      temperature: ``>= 0``; 0 is greedy (argmax at every step).
      top_k: sample only among the ``top_k`` most likely ids (0 = all).
      seed: the random seed of the draws.
      num_samples: independent samples generated side by side.

    Returns:
      ``(num_samples, length)`` int32 ids (never the unknown id 0).
    """
    prime_ids = np.asarray(prime_ids, np.int32)
    if prime_ids.ndim != 1 or prime_ids.shape[0] < 1:
        raise ValueError(f"prime_ids must be a non-empty 1-d array, got shape {prime_ids.shape}")
    if prime_ids.min() < 0 or prime_ids.max() >= config.vocab_size:
        raise ValueError(
            f"prime_ids must lie in [0, vocab_size={config.vocab_size}), got values from "
            f"{prime_ids.min()} to {prime_ids.max()}"
        )
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    check_fits_in_memory(  # the ids written, one int32 per step and sample
        4 * int(num_samples) * int(length), f"{num_samples:,} samples of {length:,} ids"
    )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k must be in [0, vocab_size={config.vocab_size}], got {top_k}")
    prime = jnp.broadcast_to(jnp.asarray(prime_ids), (num_samples, prime_ids.shape[0]))
    out = _generate(
        params,
        config,
        prime,
        jnp.float32(temperature),
        jax.random.PRNGKey(check_seed(seed)),
        int(length),
        int(top_k),
    )
    return np.asarray(out)


__all__ = [
    "EVAL_ROWS",
    "CharLMConfig",
    "CharLMParams",
    "apply",
    "evaluate",
    "init",
    "initial_carry",
    "num_params",
    "param_count",
    "sample",
]
