"""Long-range dependency tasks: batched, jit-friendly, seeded generators with baselines.

Every task is a :class:`Task`: a NamedTuple holding a pure ``sample(key, batch_size)``
that returns a :class:`Batch`, a ``loss_fn(outputs, batch) -> (loss, metrics)`` that
scores a model's per-step outputs, the loss of the trivial (memoryless) baseline, and a
success test. All of a batch's arrays carry a time axis, so a model reads out at every
step and the task's ``mask`` says which steps count:

* :func:`adding` (Le et al. 2015 form): regress the sum of the two marked values;
  predicting the mean 1 gives MSE 1/6.
* :func:`copy_memory` (Arjovsky et al. 2016): reproduce 10 symbols after ``T`` blanks;
  the memoryless baseline has cross-entropy ``10 ln 8 / (T + 20)``.
* :func:`delayed_recall`: a key token early, distractors, a query at the end asking for
  the key ("I grew up in France ... I speak fluent ___"); baseline ``ln(num_keys)``.
* :func:`echo`: at every step output the symbol seen exactly ``delay`` steps earlier: a
  dependency at one exact distance, for truncated-BPTT studies; baseline ``ln(vocab)``.

Adding a task takes a few lines: write ``sample`` and reuse a loss helper::

    def parity(seq_len: int) -> Task:
        def sample(key, batch_size):
            bits = jax.random.bernoulli(key, 0.5, (batch_size, seq_len))
            odd = jnp.cumsum(bits, axis=1) % 2
            mask = jnp.zeros((batch_size, seq_len)).at[:, -1].set(1.0)
            return Batch(bits[..., None].astype(jnp.float32), odd.astype(jnp.int32), mask)

        return Task("parity", seq_len, 1, 2, sample,
                    lambda out, b: masked_cross_entropy(out, b.targets, b.mask),
                    baseline=math.log(2), solved=accuracy_at_least(0.95))

Everything here is a pure function of a PRNG key, so it can be called inside ``jax.jit``
(``batch_size`` and the task's sizes are static), and the same key gives the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gatedrnn.cells.base import Array, cached_factory, make_config

Metrics = dict[str, Array]


class Batch(NamedTuple):
    """One batch of a task; every array has the time axis second.

    Attributes:
      inputs: ``(B, T, input_size)`` float32.
      targets: ``(B, T)``: int32 class indices (classification) or float32 values
        (regression); entries where ``mask`` is 0 are ignored.
      mask: ``(B, T)`` float32 weights of the steps that count in the loss.
    """

    inputs: Array
    targets: Array
    mask: Array


class Task(NamedTuple):
    """A sequence task: data, loss, trivial baseline and success test.

    Attributes:
      name: short name, e.g. ``"adding"``.
      seq_len: ``T``, the number of time steps of a sample.
      input_size: features per step of ``Batch.inputs``.
      output_size: what the model emits per step (logits or values).
      sample: ``sample(key, batch_size) -> Batch``; pure and jit-able (``batch_size``
        static).
      loss_fn: ``loss_fn(outputs (B, T, output_size), batch) -> (loss, metrics)``; the
        scalar loss and a dict of scalar metrics that contains ``"loss"``.
      baseline: the loss of the trivial memoryless predictor (see each task).
      solved: ``solved(metrics) -> bool`` on evaluation metrics (Python floats).
      config: the factory's arguments as sorted ``(name, value)`` pairs (hashable), e.g.
        ``(("delay", 5), ("seq_len", 20), ...)`` for :func:`echo`; with ``name`` it
        defines the task (:attr:`definition`, what a resumed run must match). Empty for a
        hand-made task.

    The factories below return the same :class:`Task` for equal arguments (as the cell
    factories do), so code keyed on a task (compiled training steps) is reused.
    """

    name: str
    seq_len: int
    input_size: int
    output_size: int
    sample: Callable[[Array, int], Batch]
    loss_fn: Callable[[Array, Batch], tuple[Array, Metrics]]
    baseline: float
    solved: Callable[[Mapping[str, float]], bool]
    config: tuple[tuple[str, Any], ...] = ()

    @property
    def definition(self) -> dict[str, Any]:
        """Everything that defines the task's numbers, as JSON-able fields: name, sizes and
        the factory's arguments (a hand-made task without ``config`` is known by these
        only; give it one to tell its variants apart)."""
        sizes = {"seq_len": self.seq_len, "input_size": self.input_size}
        return {"name": self.name, **sizes, "output_size": self.output_size, **dict(self.config)}


# ----------------------------------------------------------------------- loss helpers


def _check_outputs(outputs: Array, batch: Batch, output_size: int) -> None:
    want = (*batch.mask.shape, output_size)
    if tuple(outputs.shape) != want:
        raise ValueError(
            f"outputs must have shape (B, T, output_size) = {want}, got {tuple(outputs.shape)}"
        )


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` over the entries where ``mask`` is nonzero (weighted by it).

    Args:
      values: ``(B, T)``.
      mask: ``(B, T)`` weights; an all-zero mask gives 0 (not NaN).

    Returns:
      scalar ``sum(mask * values) / max(sum(mask), 1e-12)``.
    """
    total = jnp.sum(mask)
    return jnp.sum(mask * values) / jnp.maximum(total, 1e-12)


def masked_mse(outputs: Array, targets: Array, mask: Array) -> tuple[Array, Metrics]:
    """Mean squared error of ``outputs[..., 0]`` against ``targets`` on the masked steps.

    Args:
      outputs: ``(B, T, 1)`` predictions.
      targets: ``(B, T)`` float targets.
      mask: ``(B, T)`` weights.

    Returns:
      ``(loss, {"loss": loss})``.
    """
    loss = masked_mean(jnp.square(outputs[..., 0] - targets), mask)
    return loss, {"loss": loss}


def masked_cross_entropy(logits: Array, targets: Array, mask: Array) -> tuple[Array, Metrics]:
    """Softmax cross-entropy (nats) and accuracy on the masked steps.

    Args:
      logits: ``(B, T, C)``.
      targets: ``(B, T)`` int class indices in ``[0, C)``.
      mask: ``(B, T)`` weights.

    Returns:
      ``(loss, {"loss": loss, "accuracy": accuracy})`` with
      ``loss = mean(-log softmax(logits)[target])``.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    loss = masked_mean(nll, mask)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return loss, {"loss": loss, "accuracy": masked_mean(correct, mask)}


def loss_below(threshold: float) -> Callable[[Mapping[str, float]], bool]:
    """A success test: evaluation ``metrics["loss"] < threshold``."""

    def solved(metrics: Mapping[str, float]) -> bool:
        return bool(metrics["loss"] < threshold)

    return solved


def accuracy_at_least(
    threshold: float, key: str = "accuracy"
) -> Callable[[Mapping[str, float]], bool]:
    """A success test: evaluation ``metrics[key] >= threshold``."""

    def solved(metrics: Mapping[str, float]) -> bool:
        return bool(metrics[key] >= threshold)

    return solved


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_batch_size(batch_size: object) -> int:
    return _check_int(batch_size, "batch_size", 1)


def _last_step_mask(batch_size: int, seq_len: int) -> Array:
    return jnp.zeros((batch_size, seq_len), jnp.float32).at[:, -1].set(1.0)


# ---------------------------------------------------------------------------- adding


@cached_factory
def adding(
    seq_len: int,
    *,
    solved_mse: float = 0.01,
    tolerance: float = 0.04,
    solved_within: float | None = None,
) -> Task:
    """The adding problem in the form of Le et al. (2015).

    Each step has two channels: a value drawn from U[0, 1] and a marker that is 1 at
    exactly two steps, one drawn uniformly from the first half ``[0, T//2)`` and one from
    the second half ``[T//2, T)``, and 0 elsewhere. The target, read at the last step, is
    the sum of the two marked values. Predicting the mean 1 gives MSE
    ``Var(u1 + u2) = 2/12 = 1/6`` (the baseline).

    Args:
      seq_len: ``T >= 2``.
      solved_mse: the task counts as solved when the evaluation MSE is below this
        (default 0.01, 6% of the baseline).
      tolerance: a sequence counts as correct when its absolute error is below this
        (Hochreiter & Schmidhuber 1997 used 0.04); metric ``within_tolerance``.
      solved_within: if given, the task counts as solved when ``within_tolerance``
        reaches this fraction (e.g. 1.0: every held-out sequence correct) instead of the
        MSE test.

    Returns:
      a :class:`Task` with ``input_size=2``, ``output_size=1``, loss MSE at the last step;
      metrics ``loss`` and ``within_tolerance`` (the fraction of sequences whose absolute
      error at the last step is below ``tolerance``).
    """
    T = _check_int(seq_len, "seq_len", 2)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    if solved_within is not None and not 0.0 < solved_within <= 1.0:
        raise ValueError(f"solved_within must lie in (0, 1], got {solved_within!r}")
    half = T // 2

    def sample(key: Array, batch_size: int) -> Batch:
        B = _check_batch_size(batch_size)
        k_val, k_a, k_b = jax.random.split(key, 3)
        values = jax.random.uniform(k_val, (B, T), jnp.float32)
        first = jax.random.randint(k_a, (B,), 0, half)
        second = jax.random.randint(k_b, (B,), half, T)
        t = jnp.arange(T)
        marks = (t == first[:, None]) | (t == second[:, None])
        total = jnp.sum(jnp.where(marks, values, 0.0), axis=1)
        inputs = jnp.stack([values, marks.astype(jnp.float32)], axis=-1)
        targets = jnp.zeros((B, T), jnp.float32).at[:, -1].set(total)
        return Batch(inputs, targets, _last_step_mask(B, T))

    def loss_fn(outputs: Array, batch: Batch) -> tuple[Array, Metrics]:
        _check_outputs(outputs, batch, 1)
        loss, metrics = masked_mse(outputs, batch.targets, batch.mask)
        err = jnp.abs(outputs[:, -1, 0] - batch.targets[:, -1])  # (B,): the scored step
        metrics["within_tolerance"] = jnp.mean((err < tolerance).astype(jnp.float32))
        return loss, metrics

    if solved_within is None:
        solved = loss_below(solved_mse)
    else:
        solved = accuracy_at_least(solved_within, "within_tolerance")
    config = make_config(
        seq_len=T, solved_mse=solved_mse, tolerance=tolerance, solved_within=solved_within
    )
    return Task("adding", T, 2, 1, sample, loss_fn, 1.0 / 6.0, solved, config)


# ----------------------------------------------------------------------- copy memory

COPY_NUM_SYMBOLS = 8
COPY_LENGTH = 10


@cached_factory
def copy_memory(seq_len: int, *, solved_accuracy: float = 0.95) -> Task:
    """The copy memory task of Arjovsky et al. (2016).

    Alphabet: 0 blank, 1..8 data symbols, 9 delimiter; inputs are one-hot (10 channels).
    A sample has ``T + 20`` steps: 10 symbols drawn uniformly from 1..8, ``T - 1`` blanks,
    the delimiter, then 10 blanks. The target is blank for the first ``T + 10`` steps and
    then the 10 symbols in order. The loss is the cross-entropy averaged over all
    ``T + 20`` steps. The memoryless baseline (blank with certainty, then uniform over the
    8 symbols) scores ``10 ln 8 / (T + 20)``.

    Args:
      seq_len: ``T >= 1``, the gap (the sample has ``T + 20`` steps).
      solved_accuracy: solved when the accuracy on the 10 recalled symbols reaches this.

    Returns:
      a :class:`Task` with ``input_size = output_size = 10``; metrics ``loss``,
      ``accuracy`` (all steps) and ``recall_accuracy`` (the last 10 steps).
    """
    gap = _check_int(seq_len, "seq_len", 1)
    n, K = COPY_LENGTH, COPY_NUM_SYMBOLS
    T = gap + 2 * n
    vocab = K + 2
    delimiter = K + 1

    def sample(key: Array, batch_size: int) -> Batch:
        B = _check_batch_size(batch_size)
        data = jax.random.randint(key, (B, n), 1, K + 1)
        tokens = jnp.zeros((B, T), jnp.int32)
        tokens = tokens.at[:, :n].set(data).at[:, n + gap - 1].set(delimiter)
        targets = jnp.zeros((B, T), jnp.int32).at[:, T - n :].set(data)
        inputs = jax.nn.one_hot(tokens, vocab, dtype=jnp.float32)
        return Batch(inputs, targets, jnp.ones((B, T), jnp.float32))

    def loss_fn(outputs: Array, batch: Batch) -> tuple[Array, Metrics]:
        _check_outputs(outputs, batch, vocab)
        loss, metrics = masked_cross_entropy(outputs, batch.targets, batch.mask)
        recall = jnp.argmax(outputs[:, T - n :], axis=-1) == batch.targets[:, T - n :]
        metrics["recall_accuracy"] = jnp.mean(recall.astype(jnp.float32))
        return loss, metrics

    baseline = n * math.log(K) / (gap + 2 * n)
    solved = accuracy_at_least(solved_accuracy, "recall_accuracy")
    config = make_config(seq_len=T, solved_accuracy=solved_accuracy)
    return Task("copy", T, vocab, vocab, sample, loss_fn, baseline, solved, config)


# -------------------------------------------------------------------- delayed recall


@cached_factory
def delayed_recall(
    seq_len: int,
    *,
    num_keys: int = 8,
    num_distractors: int = 8,
    key_window: int | None = None,
    solved_accuracy: float = 0.95,
) -> Task:
    """Delayed recall: a key early, distractors, and a query at the end that asks for it.

    The task form of "I grew up in France ... so I speak fluent ___". Tokens: ``num_keys``
    keys, ``num_distractors`` distractors, one query token; inputs are one-hot. One key
    token sits at a step drawn uniformly from ``[0, key_window)``; every other step but the
    last is a distractor drawn uniformly; the last step is the query, where the target is
    the key's index. The dependency spans ``T - 1 - key_position`` steps. Guessing gives
    cross-entropy ``ln(num_keys)`` (the baseline) and accuracy ``1 / num_keys``.

    Args:
      seq_len: ``T >= 2``.
      num_keys: number of possible answers.
      num_distractors: number of filler tokens (>= 1).
      key_window: the key appears in the first ``key_window`` steps (default
        ``max(1, T // 10)``); 1 puts it at step 0, so the distance is exactly ``T - 1``.
      solved_accuracy: solved when the query accuracy reaches this.

    Returns:
      a :class:`Task` with ``input_size = num_keys + num_distractors + 1``,
      ``output_size = num_keys``, loss cross-entropy at the last step.
    """
    T = _check_int(seq_len, "seq_len", 2)
    nk = _check_int(num_keys, "num_keys", 2)
    nd = _check_int(num_distractors, "num_distractors", 1)
    window = max(1, T // 10) if key_window is None else _check_int(key_window, "key_window", 1)
    if window > T - 1:
        raise ValueError(f"key_window must be <= seq_len - 1 = {T - 1}, got {window}")
    vocab = nk + nd + 1
    query = nk + nd

    def sample(key: Array, batch_size: int) -> Batch:
        B = _check_batch_size(batch_size)
        k_key, k_pos, k_dis = jax.random.split(key, 3)
        answer = jax.random.randint(k_key, (B,), 0, nk)
        pos = jax.random.randint(k_pos, (B,), 0, window)
        tokens = jax.random.randint(k_dis, (B, T), nk, nk + nd)
        t = jnp.arange(T)
        tokens = jnp.where(t == pos[:, None], answer[:, None], tokens)
        tokens = tokens.at[:, -1].set(query)
        targets = jnp.zeros((B, T), jnp.int32).at[:, -1].set(answer)
        inputs = jax.nn.one_hot(tokens, vocab, dtype=jnp.float32)
        return Batch(inputs, targets, _last_step_mask(B, T))

    def loss_fn(outputs: Array, batch: Batch) -> tuple[Array, Metrics]:
        _check_outputs(outputs, batch, nk)
        return masked_cross_entropy(outputs, batch.targets, batch.mask)

    config = make_config(
        seq_len=T, num_keys=nk, num_distractors=nd, key_window=window,
        solved_accuracy=solved_accuracy,
    )  # fmt: skip
    solved = accuracy_at_least(solved_accuracy)
    return Task("recall", T, vocab, nk, sample, loss_fn, math.log(nk), solved, config)


# ------------------------------------------------------------------------------ echo


@cached_factory
def echo(seq_len: int, delay: int, *, vocab: int = 4, solved_accuracy: float = 0.95) -> Task:
    """Echo: at every step ``t >= delay`` output the symbol that came in at ``t - delay``.

    Inputs are i.i.d. uniform symbols (one-hot, ``vocab`` channels); targets are the inputs
    shifted by ``delay``; the first ``delay`` steps do not count. Every scored output
    depends on exactly one input, ``delay`` steps back, and on nothing else, which makes the
    task a ruler for truncated BPTT. Without memory the best is ``ln(vocab)`` (baseline).

    Args:
      seq_len: ``T > delay``.
      delay: ``d >= 0``, the distance of the dependency.
      vocab: number of symbols (>= 2).
      solved_accuracy: solved when the accuracy on the scored steps reaches this.

    Returns:
      a :class:`Task` with ``input_size = output_size = vocab``.
    """
    d = _check_int(delay, "delay", 0)
    T = _check_int(seq_len, "seq_len", d + 1)
    V = _check_int(vocab, "vocab", 2)

    def sample(key: Array, batch_size: int) -> Batch:
        B = _check_batch_size(batch_size)
        tokens = jax.random.randint(key, (B, T), 0, V)
        targets = jnp.roll(tokens, d, axis=1)
        mask = jnp.broadcast_to((jnp.arange(T) >= d).astype(jnp.float32), (B, T))
        return Batch(jax.nn.one_hot(tokens, V, dtype=jnp.float32), targets, mask)

    def loss_fn(outputs: Array, batch: Batch) -> tuple[Array, Metrics]:
        _check_outputs(outputs, batch, V)
        return masked_cross_entropy(outputs, batch.targets, batch.mask)

    config = make_config(seq_len=T, delay=d, vocab=V, solved_accuracy=solved_accuracy)
    solved = accuracy_at_least(solved_accuracy)
    return Task("echo", T, V, V, sample, loss_fn, math.log(V), solved, config)


TASKS: dict[str, Callable[..., Task]] = {
    "adding": adding,
    "copy": copy_memory,
    "recall": delayed_recall,
    "echo": echo,
}
