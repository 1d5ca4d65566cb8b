"""A character-level language model: embedding -> stacked RNN -> linear readout.

The model is pure functions over a :class:`CharLMParams` pytree; the RNN is
``gr.stack(cell, num_layers, dropout=...)`` of any cell (``vanilla``, ``lstm``, ``gru``).
Training is stateful truncated BPTT: the text is laid out as ``B`` contiguous rows, each
step reads the next ``T`` characters of every row (:func:`gatedrnn.text.get_chunk`), starts
from the RNN state the previous step ended in, and backpropagates only within its chunk
(the carried state enters each jitted step as a constant, so the gradient is stopped at the
chunk boundary). :func:`train` checkpoints with :mod:`gatedrnn.checkpoint` and resumes
exactly; :func:`sample` generates text in one compiled call (``lax.scan`` over characters).

Model, for input ids ``c_1..c_T`` and carried state ``s_0``::

    e_t = E[c_t]                              (embedding, E: (V, D))
    s_t, h_t = stack(s_{t-1}, e_t)            (num_layers cells, dropout between layers)
    logits_t = h_t W_out + b_out              (W_out: (H, V))
    loss = -mean_t log softmax(logits_t)[c_{t+1}]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gatedrnn.cells import CELLS
from gatedrnn.cells.base import fan_in_normal
from gatedrnn.layers import Stack, stack
from gatedrnn.training import checkpoint as ckpt
from gatedrnn.training import loop as train_lib
from gatedrnn.training import mesh as parallel
from gatedrnn.training.text import (
    UNK_ID,
    Vocab,
    bits_per_char,
    chunk_rows,
    get_chunk,
    num_chunks,
    split_train_val,
    unigram_bpc,
)


@dataclass(frozen=True)
class CharLMConfig:
    """The shape of a character LM (hashable, so it can be a static jit argument).

    Attributes:
      vocab_size: ``V``, including the unknown id 0.
      cell: ``"vanilla"`` (tanh), ``"lstm"`` or ``"gru"``.
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
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if not 1 <= self.num_layers <= 3:
            raise ValueError(f"num_layers must be 1, 2 or 3, got {self.num_layers}")
        for name in ("vocab_size", "hidden_size", "embed_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      steps: optimizer steps in all.
      batch_size: ``B`` rows read in parallel.
      seq_len: ``T`` characters per chunk (the truncated-BPTT window).
      lr: peak Adam learning rate (linear warm-up, then cosine decay to 0).
      warmup: warm-up steps.
      clip: global gradient-norm clip.
      val_fraction: trailing share of the text held out for validation.
      eval_every: steps between validation measurements (and learning-curve points).
      eval_chars: validation characters used for those (the final one uses all).
      ckpt_every: steps between checkpoints (the last step is always saved).
      seed: seeds init and dropout.
    """

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 100
    lr: float = 3e-3
    warmup: int = 100
    clip: float = 1.0
    val_fraction: float = 0.05
    eval_every: int = 200
    eval_chars: int = 20000
    ckpt_every: int = 500
    seed: int = 0


class CharLMParams(NamedTuple):
    """Params: ``embed (V, D)``, ``rnn`` (one cell params per layer), ``w_out (H, V)``,
    ``b_out (V,)``."""

    embed: jax.Array
    rnn: tuple
    w_out: jax.Array
    b_out: jax.Array


def rnn_stack(config: CharLMConfig) -> Stack:
    """The ``gr.stack`` the model uses."""
    return stack(CELLS[config.cell](config.hidden_size), config.num_layers, dropout=config.dropout)


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


def make_optimizer(train_cfg: TrainConfig) -> optax.GradientTransformation:
    """:func:`gatedrnn.train.make_optimizer` for ``train_cfg``: global-norm clipping, then
    Adam with linear warm-up and cosine decay to 0 over ``steps``."""
    return train_lib.make_optimizer(
        train_cfg.lr,
        clip_norm=train_cfg.clip,
        schedule="warmup_cosine",
        num_steps=train_cfg.steps,
        warmup_steps=train_cfg.warmup,
    )


def make_train_step(config: CharLMConfig, optimizer: optax.GradientTransformation) -> Callable:
    """A jitted ``step(params, opt_state, carry, x, y, key) -> (params, opt_state, carry, bpc)``.

    ``x, y (B, T)`` are a chunk and its next-character targets; ``carry`` is the state the
    previous chunk ended in (gradients do not flow into it); ``key`` drives dropout.
    """

    def loss_fn(params, carry, x, y, key):
        carry, logits = apply(params, config, x, carry, key if config.dropout > 0 else None)
        return bits_per_char(logits, y) * math.log(2.0), carry

    @jax.jit
    def step(params, opt_state, carry, x, y, key):
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, carry, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, jax.lax.stop_gradient(carry), loss / math.log(2.0)

    return step


@functools.lru_cache(maxsize=16)
def _train_step_for(model_cfg: CharLMConfig, train_cfg: TrainConfig) -> Callable:
    """One compiled step per (model, training) config, shared by runs in one process."""
    return make_train_step(model_cfg, make_optimizer(train_cfg))


@partial(jax.jit, static_argnames=("config",))
def _eval_chunk(params, config, carry, x, y):
    carry, logits = apply(params, config, x, carry)
    return carry, bits_per_char(logits, y) * x.size


def evaluate(
    params: CharLMParams,
    config: CharLMConfig,
    ids: np.ndarray,
    *,
    batch_size: int = 16,
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
        jax.random.PRNGKey(seed),
        int(length),
        int(top_k),
    )
    return np.asarray(out)


# ----------------------------------------------------------------------------- training


class TrainState(NamedTuple):
    """Everything a resumed run needs: params, optimizer state, the carried RNN state."""

    params: CharLMParams
    opt_state: Any
    carry: tuple


@dataclass
class Data:
    """A corpus prepared for training: vocabulary, encoded splits, unigram baseline."""

    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    unigram_bpc: float


def prepare_data(text: str, val_fraction: float = 0.05) -> Data:
    """Split ``text``, build the vocabulary on the train part, encode both parts."""
    train_text, val_text = split_train_val(text, val_fraction)
    vocab = Vocab.from_text(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    return Data(vocab, train_ids, val_ids, unigram_bpc(train_ids, val_ids, len(vocab)))


def _meta(model_cfg: CharLMConfig, train_cfg: TrainConfig, vocab: Vocab, sha: str) -> dict:
    return {
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(train_cfg),
        "vocab": vocab.to_json(),
        "corpus_sha256": sha,
    }


def train(
    text: str,
    model_cfg: CharLMConfig | dict[str, Any],
    train_cfg: TrainConfig,
    *,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    time_limit: float | None = None,
    corpus_sha256: str = "",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    mesh: Any = None,
) -> dict[str, Any]:
    """Train a character LM on ``text`` with stateful truncated BPTT.

    Step ``s`` reads chunk ``s mod n`` of the train rows (``n`` chunks per pass); the
    carried state is reset to zeros at the start of each pass. Everything a step depends on
    is a function of the step number and the saved :class:`TrainState` (dropout keys are
    ``fold_in(seed, step)``), so resuming from a checkpoint continues exactly.

    Args:
      text: the corpus.
      model_cfg: a :class:`CharLMConfig`, or a dict of its fields without ``vocab_size``
        (filled in from the vocabulary).
      train_cfg: a :class:`TrainConfig`.
      ckpt_dir: where checkpoints go (None = no checkpoints).
      resume: continue from the newest checkpoint in ``ckpt_dir`` (its config, vocabulary
        and corpus must match, else :class:`gatedrnn.checkpoint.CheckpointError`). Without
        it, a ``ckpt_dir`` that already holds checkpoints is an error too (never a silent
        fresh start over a run).
      stop_at: stop (and checkpoint) after this many steps, as if interrupted.
      time_limit: stop (and checkpoint) once this call has trained for this many seconds;
        a later ``resume`` continues from there (with a fresh time limit).
      corpus_sha256: recorded in checkpoints and checked on resume.
      progress: show a tqdm progress bar.
      log: called with a line of text at each evaluation.
      mesh: a ``jax.sharding.Mesh`` (:func:`gatedrnn.parallel.data_mesh`) for data-parallel
        training: chunks and carried state split over its devices along the batch rows,
        params and optimizer state replicated, gradients reduced by XLA.

    Returns:
      ``{"params", "config", "vocab", "history": [{"step", "train_bpc", "val_bpc",
      "time"}], "val_bpc", "unigram_bpc", "train_time", "steps_done"}``.
    """
    if ckpt_dir is not None and not resume and ckpt.latest_checkpoint(ckpt_dir) is not None:
        raise ckpt.CheckpointError(
            f"{Path(ckpt_dir)} already holds checkpoints: continue them with resume=True "
            "(--resume), or train into another folder (--out)"
        )
    data = prepare_data(text, train_cfg.val_fraction)
    if isinstance(model_cfg, dict):
        model_cfg = CharLMConfig(vocab_size=len(data.vocab), **model_cfg)
    if model_cfg.vocab_size != len(data.vocab):
        raise ValueError(
            f"model vocab_size={model_cfg.vocab_size} but the text has {len(data.vocab)} ids"
        )
    meta = _meta(model_cfg, train_cfg, data.vocab, corpus_sha256)
    optimizer = make_optimizer(train_cfg)
    step_fn = _train_step_for(model_cfg, train_cfg)
    rows = chunk_rows(data.train_ids, train_cfg.batch_size)
    n_chunks = num_chunks(data.train_ids, train_cfg.batch_size, train_cfg.seq_len)
    base_key = jax.random.PRNGKey(train_cfg.seed)

    params = init(jax.random.fold_in(base_key, 0), model_cfg)
    state = TrainState(
        params, optimizer.init(params), initial_carry(params, model_cfg, train_cfg.batch_size)
    )
    start, history, elapsed = 0, [], 0.0
    if resume:
        if ckpt_dir is None:
            raise ValueError("resume=True needs a ckpt_dir")
        path = ckpt.latest_checkpoint(ckpt_dir)
        if path is None:
            raise ckpt.CheckpointError(f"--resume: no checkpoint found in {Path(ckpt_dir)}")
        state, info = ckpt.restore_checkpoint(path, state, expect_meta=meta)
        start = info["step"]
        history = info["meta"].get("history", [])
        elapsed = info["meta"].get("train_time", 0.0)

    end = train_cfg.steps if stop_at is None else min(stop_at, train_cfg.steps)
    elapsed_before = elapsed  # time_limit counts this call's training time only
    split = (lambda t: t) if mesh is None else (lambda t: parallel.shard_batch(t, mesh))
    if mesh is not None:
        state = TrainState(*parallel.replicate(state[:2], mesh), split(state.carry))

    def save(step: int) -> None:
        if ckpt_dir is not None:
            extra = {"history": history, "train_time": elapsed}
            ckpt.save_checkpoint(ckpt_dir, step, state, {**meta, **extra}, keep=2)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_cfg.steps, initial=start, unit="step", dynamic_ncols=True)
    recent: list[float] = []
    t0 = time.perf_counter()
    for s in range(start, end):
        i = s % n_chunks
        carry = state.carry
        if i == 0:
            carry = initial_carry(state.params, model_cfg, train_cfg.batch_size)
        x, y = get_chunk(rows, i, train_cfg.seq_len)
        params, opt_state, carry, bpc = step_fn(
            state.params,
            state.opt_state,
            split(carry),
            split(jnp.asarray(x)),
            split(jnp.asarray(y)),
            jax.random.fold_in(base_key, s + 1),
        )
        state = TrainState(params, opt_state, carry)
        recent.append(bpc)
        done = s + 1
        this_call = elapsed - elapsed_before + time.perf_counter() - t0
        out_of_time = time_limit is not None and this_call > time_limit
        if done % train_cfg.eval_every == 0 or done == train_cfg.steps or out_of_time:
            train_bpc = float(np.mean([float(b) for b in recent]))
            recent = []
            elapsed += time.perf_counter() - t0
            val = evaluate(state.params, model_cfg, data.val_ids, max_chars=train_cfg.eval_chars)
            t0 = time.perf_counter()
            history.append({"step": done, "train_bpc": train_bpc, "val_bpc": val, "time": elapsed})
            if bar is not None:
                bar.set_postfix(train=f"{train_bpc:.3f}", val=f"{val:.3f}")
            if log is not None:
                log(f"step {done}: train {train_bpc:.3f} bpc, val {val:.3f} bpc, {elapsed:.0f}s")
        if bar is not None:
            bar.update(1)
        if done % train_cfg.ckpt_every == 0 or done == end or out_of_time:
            elapsed += time.perf_counter() - t0
            save(done)
            t0 = time.perf_counter()
        if out_of_time:
            end = done
            break
    elapsed += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    val_bpc = evaluate(state.params, model_cfg, data.val_ids)
    return {
        "params": state.params,
        "state": state,
        "config": model_cfg,
        "vocab": data.vocab,
        "history": history,
        "val_bpc": val_bpc,
        "unigram_bpc": data.unigram_bpc,
        "train_time": elapsed,
        "steps_done": end,
        "num_params": num_params(state.params),
    }


def load_model(path: str | Path) -> tuple[CharLMParams, CharLMConfig, Vocab, dict[str, Any]]:
    """Load params, config and vocabulary from a checkpoint directory (or the newest
    checkpoint in a run directory)."""
    path = Path(path)
    if not ckpt._STEP_DIR.match(path.name):
        latest = ckpt.latest_checkpoint(path)
        if latest is None:
            raise ckpt.CheckpointError(f"no checkpoint found in {path}")
        path = latest
    info = ckpt.load_meta(path)
    meta = info["meta"]
    try:
        config = CharLMConfig(**meta["model"])
        train_cfg = TrainConfig(**meta["train"])
        vocab = Vocab.from_json(meta["vocab"])
    except (KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {path} is not a char LM checkpoint: {e}") from None
    params = init(jax.random.PRNGKey(0), config)
    opt = make_optimizer(train_cfg)
    like = TrainState(params, opt.init(params), initial_carry(params, config, train_cfg.batch_size))
    state, info = ckpt.restore_checkpoint(path, like)
    return state.params, config, vocab, info


__all__ = [
    "CharLMConfig",
    "CharLMParams",
    "Data",
    "TrainConfig",
    "TrainState",
    "apply",
    "evaluate",
    "init",
    "initial_carry",
    "load_model",
    "make_optimizer",
    "make_train_step",
    "num_params",
    "param_count",
    "prepare_data",
    "sample",
    "train",
]
