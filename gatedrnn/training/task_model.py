"""A recurrent cell plus a linear readout, trained on a task with the one loop.

* :func:`sequence_model`: any :class:`~gatedrnn.Cell` through :func:`gatedrnn.scan` and a
  linear readout at every step; :func:`task_model`, :func:`task_loss`,
  :func:`task_batches` fit it to a :class:`~gatedrnn.training.tasks.Task`.
* :func:`stream_batches` and :func:`stateful_task_loss`: stateful truncated BPTT over
  consecutive chunks of a task's streams.
* :func:`fit`: the one-call entry (clipped Adam, ensembles of seeds, early stop,
  checkpoints, meshes) on :func:`gatedrnn.training.loop.train`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from gatedrnn.cells.base import (
    Array,
    Cell,
    PyTree,
    check_fits_in_memory,
    check_input_size,
    fan_in_normal,
)
from gatedrnn.scan import scan
from gatedrnn.training.loop import (
    BatchFn,
    LossFn,
    Metrics,
    StatefulLossFn,
    TrainResult,
    TrainState,
    check_seed,
    init_ensemble,
    init_state,
    loss_metrics,
    make_optimizer,
    train,
)
from gatedrnn.training.tasks import Batch, Task


class ModelParams(NamedTuple):
    """Params of :func:`sequence_model`: the cell's, and the readout ``(H, O)``, ``(O,)``."""

    cell: PyTree
    w_out: Array
    b_out: Array


class SequenceModel(NamedTuple):
    """A recurrent cell run by :func:`gatedrnn.scan`, then a linear readout at every step.

    Attributes:
      cell: the :class:`~gatedrnn.Cell`.
      input_size: ``I``.
      output_size: ``O``.
      init: ``init(key, dtype=float32) -> ModelParams``.
      apply: ``apply(params, xs (B, T, I), initial_state=None, **scan_kwargs) ->
        (final_state, outputs (B, T, O))``; ``scan_kwargs`` go to :func:`gatedrnn.scan`
        (``truncate``, ``unroll``, ``remat``, ...).
    """

    cell: Cell
    input_size: int
    output_size: int
    init: Callable[..., ModelParams]
    apply: Callable[..., tuple[PyTree, Array]]


def sequence_model(cell: Cell, input_size: int, output_size: int) -> SequenceModel:
    """A cell plus a linear readout: ``outputs_t = h_t w_out + b_out``.

    Args:
      cell: e.g. ``gr.lstm(64)``.
      input_size: features per input step.
      output_size: outputs per step (logits or regression values).

    Returns:
      a :class:`SequenceModel`; the readout weight is LeCun-normal, its bias zero.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a gatedrnn Cell, got {type(cell).__name__}")
    input_size = check_input_size(input_size)
    output_size = check_input_size(output_size)

    def init(key: Array, dtype: Any = jnp.float32) -> ModelParams:
        k_cell, k_out = jax.random.split(key)
        return ModelParams(
            cell.init(k_cell, input_size, dtype=dtype),
            fan_in_normal(k_out, (cell.hidden_size, output_size), dtype),
            jnp.zeros((output_size,), dtype),
        )

    def apply(
        params: ModelParams, xs: Array, initial_state: PyTree = None, **scan_kwargs: Any
    ) -> tuple[PyTree, Array]:
        final, ys = scan(cell, params.cell, xs, initial_state, **scan_kwargs)
        return final, ys @ params.w_out + params.b_out

    return SequenceModel(cell, input_size, output_size, init, apply)


def task_model(cell: Cell, task: Task) -> SequenceModel:
    """:func:`sequence_model` sized for ``task``'s inputs and outputs."""
    return sequence_model(cell, task.input_size, task.output_size)


def task_loss(model: SequenceModel, task: Task, **scan_kwargs: Any) -> LossFn:
    """``loss_fn(params, batch) -> (loss, metrics)`` of ``model`` on ``task``.

    Args:
      model: from :func:`task_model`.
      task: the task whose ``loss_fn`` scores the outputs.
      **scan_kwargs: :func:`gatedrnn.scan` options, e.g. ``truncate=k`` for truncated BPTT.
    """

    def loss_fn(params: ModelParams, batch: Batch) -> tuple[Array, Metrics]:
        _, outputs = model.apply(params, batch.inputs, **scan_kwargs)
        return task.loss_fn(outputs, batch)

    return loss_fn


def check_batch_memory(
    task: Task, batch_size: int, count: int = 1, what: str = "a training batch"
) -> None:
    """Raise ValueError, with the size needed, if ``count`` batches of ``batch_size`` samples
    of ``task`` cannot fit in the devices' memory, rather than an allocation error from XLA.

    Counts what every batch holds at least, float32 ``inputs (B, T, input_size)`` and
    ``mask (B, T)`` (targets vary by task), so a batch that fits is never refused; nothing
    is drawn or traced.
    """
    nbytes = 4 * int(batch_size) * task.seq_len * (task.input_size + 1)
    times = f"{count} x " if count > 1 else ""
    sizes = f"{times}{batch_size:,} {task.name} sequences of length {task.seq_len}"
    check_fits_in_memory(count * nbytes, f"{what} ({sizes})")


def task_batches(task: Task, batch_size: int) -> BatchFn:
    """``batch_fn(rng, step) = task.sample(fold_in(rng, step), batch_size)``."""
    check_batch_memory(task, batch_size)

    def batch_fn(rng: Array, step: Array) -> Batch:
        return task.sample(jax.random.fold_in(rng, step), batch_size)

    return batch_fn


class Chunk(NamedTuple):
    """One chunk of a stream for stateful TBPTT: the batch slice and whether it starts one."""

    batch: Batch
    first: Array


def stream_batches(task: Task, batch_size: int, chunk: int) -> BatchFn:
    """Cut each sampled stream of ``task`` into consecutive chunks, one chunk per step.

    Step ``n`` serves chunk ``n % m`` of stream ``n // m`` (``m = T // chunk``); the
    streams are drawn with ``fold_in(rng, n // m)``.

    Args:
      task: a task whose ``seq_len`` is a multiple of ``chunk``.
      batch_size: streams per batch.
      chunk: steps per chunk (the TBPTT window).

    Returns:
      ``batch_fn(rng, step) -> Chunk`` with ``Batch`` leaves ``(B, chunk, ...)``.
    """
    chunk = int(chunk)
    if chunk < 1 or task.seq_len % chunk:
        raise ValueError(
            f"chunk must be >= 1 and divide the task's seq_len {task.seq_len}, got {chunk}"
        )
    m = task.seq_len // chunk

    def batch_fn(rng: Array, step: Array) -> Chunk:
        stream = task.sample(jax.random.fold_in(rng, step // m), batch_size)
        start = (step % m) * chunk
        piece = jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=1), stream
        )
        return Chunk(piece, step % m == 0)

    return batch_fn


def stateful_task_loss(model: SequenceModel, task: Task) -> StatefulLossFn:
    """A stateful loss over :class:`Chunk` s: the state enters from the previous chunk.

    The carry is reset to zeros at a stream's first chunk; :func:`make_train_step` stops its
    gradient, so each update backpropagates within its chunk only.
    """

    def loss_fn(
        params: ModelParams, chunk: Chunk, carry: PyTree
    ) -> tuple[Array, tuple[Metrics, PyTree]]:
        zeros = model.cell.initial_state(params.cell, chunk.batch.inputs.shape[:1])
        carry = jax.tree_util.tree_map(lambda z, c: jnp.where(chunk.first, z, c), zeros, carry)
        final, outputs = model.apply(params, chunk.batch.inputs, carry)
        loss, metrics = task.loss_fn(outputs, chunk.batch)
        return loss, (metrics, final)

    return loss_fn


def eval_batches_for(
    task: Task, batch_size: int, num_batches: int, seed: int = 12345
) -> list[Batch]:
    """Held-out batches from ``PRNGKey(seed)`` split (training batches use ``fold_in``)."""
    keys = jax.random.split(jax.random.PRNGKey(check_seed(seed, "eval_seed")), num_batches)
    check_batch_memory(task, batch_size, num_batches, "the evaluation set")
    return [task.sample(k, batch_size) for k in keys]


def param_key(seed: int) -> Array:
    """The key :func:`fit` draws a run's initial parameters from (batches use ``fold_in``)."""
    return jax.random.split(jax.random.PRNGKey(check_seed(seed)))[1]


def _fit_state(
    model: SequenceModel, optimizer: optax.GradientTransformation, seed: Any, carry: PyTree
) -> TrainState:
    """The first state of :func:`fit`: one run for an int seed, else one member per seed."""
    if isinstance(seed, (int, np.integer)):
        seed = check_seed(seed)
        return init_state(model.init(param_key(seed)), optimizer, seed, carry)
    seeds = [check_seed(s, "each seed") for s in seed]
    params = jax.vmap(model.init)(jnp.stack([param_key(s) for s in seeds]))
    if carry is not None:
        carry = jax.tree_util.tree_map(lambda c: jnp.stack([c] * len(seeds)), carry)
    return init_ensemble(params, optimizer, seeds, carry)


def _task_key(task: Task) -> Any:
    """What determines ``task``'s sampling and loss: the task itself (its factories return
    one object for equal arguments; its functions compare by identity)."""
    try:
        hash(task)
    except TypeError:  # a hand-made task with an unhashable field
        return (task.sample, task.loss_fn)
    return task


def _fit_loss(
    model: SequenceModel, task: Task, batch_size: int, truncate: int | None, chunk: int | None
) -> tuple[Any, Any, Any]:
    """:func:`fit`'s ``(loss_fn, batch_fn, carry)``: whole sequences (``truncate`` within
    them), or stateful chunks of streams starting from the zero state (``chunk``)."""
    if chunk is None:
        return task_loss(model, task, truncate=truncate), task_batches(task, batch_size), None
    carry = model.cell.initial_state(model.init(param_key(0)).cell, (batch_size,))
    return stateful_task_loss(model, task), stream_batches(task, batch_size, chunk), carry


def fit(
    task: Task,
    cell: Cell,
    *,
    num_steps: int = 2000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    clip_norm: float | None = 1.0,
    schedule: str = "constant",
    seed: int | Sequence[int] = 0,
    eval_every: int = 100,
    eval_batch_size: int = 256,
    num_eval_batches: int = 1,
    eval_seed: int = 12345,
    early_stop: bool = True,
    truncate: int | None = None,
    chunk: int | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    log_extra: Mapping[str, Any] | None = None,
    mesh: Mesh | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> tuple[SequenceModel, TrainResult]:
    """Train ``cell`` plus a linear readout on ``task`` with clipped Adam: the one-call entry.

    Args:
      task, cell: a :class:`~gatedrnn.training.tasks.Task`; e.g. ``gr.gru(64)``.
      num_steps, batch_size: update budget; training batch size.
      learning_rate, clip_norm, schedule: Adam's peak learning rate, the global-norm
        clipping threshold (None: none), the schedule (see :func:`make_optimizer`).
      seed: an int, or a sequence of ints to train one member per seed at once with
        ``jax.vmap`` (``ensemble=True`` in :func:`train`; history values become lists).
        A seed fixes the initial params (:func:`param_key`) and the training batches
        (``fold_in(PRNGKey(seed), step)``).
      eval_every: updates between evaluations (and checkpoints).
      eval_batch_size, num_eval_batches, eval_seed: the held-out set
        (:func:`eval_batches_for`), the same for every training seed.
      early_stop: stop when ``task.solved`` passes on the held-out set (for every member).
      truncate: truncated BPTT window passed to :func:`gatedrnn.scan` (None: full BPTT).
      chunk: stateful truncated BPTT instead: each update trains on the next ``chunk``
        steps of the current streams (:func:`stream_batches`), starting from the state the
        previous chunk ended in, with the gradient stopped there
        (:func:`stateful_task_loss`); ``T / chunk`` updates per stream. Evaluation runs
        on whole sequences.
      log_path, progress, desc, log_extra, mesh, checkpoint_dir, resume: see
        :func:`train`; the checkpoints record everything that changes the numbers (the
        task's whole definition, e.g. the echo delay, the cell, the training config and
        the evaluation set), and a resumed run must match them (a mismatch is one line
        naming the field).

    Compilation is shared by calls with equal arguments (the compiled code is keyed on
    the cell, the task and the optimizer's settings, see :func:`train`'s ``cache_key``;
    cell and task factories return one object for equal arguments), so a second ``fit``
    of the same configuration does not trace again.

    Returns:
      ``(model, result)``; ``result.state.params`` are the trained params (with a leading
      member axis for a sequence of seeds).
    """
    model = task_model(cell, task)
    optimizer = make_optimizer(
        learning_rate, clip_norm=clip_norm, schedule=schedule, num_steps=num_steps
    )
    if chunk is not None and truncate is not None:
        raise ValueError("give truncate (within a sequence) or chunk (stateful), not both")
    stateful = chunk is not None
    loss_fn, batch_fn, carry = _fit_loss(model, task, batch_size, truncate, chunk)
    ensemble = not isinstance(seed, (int, np.integer))
    state = _fit_state(model, optimizer, seed, carry)
    lr_steps = None if schedule == "constant" else num_steps
    key = ("fit", cell, _task_key(task), batch_size, learning_rate, clip_norm, schedule, lr_steps)
    key += (truncate, chunk)
    result = train(
        loss_fn,
        state,
        optimizer,
        batch_fn,
        num_steps=num_steps,
        stateful=stateful,
        ensemble=ensemble,
        eval_fn=loss_metrics(task_loss(model, task)) if stateful else None,
        eval_batches=eval_batches_for(task, eval_batch_size, num_eval_batches, eval_seed),
        eval_every=eval_every,
        solved=task.solved if early_stop else None,
        log_path=log_path,
        progress=progress,
        desc=desc,
        log_extra=log_extra,
        mesh=mesh,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_meta={
            **{"task": task.name, "seq_len": task.seq_len},
            **{f"task_{k}": v for k, v in task.definition.items() if k not in ("name", "seq_len")},
            "cell": cell.name,
            "cell_options": cell.options,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "clip_norm": clip_norm,
            "schedule": schedule,
            "schedule_steps": lr_steps,
            "seed": seed if ensemble else int(seed),
            "truncate": truncate,
            "chunk": chunk,
            **{"eval_seed": eval_seed, "eval_batch_size": eval_batch_size},
            **{"num_eval_batches": num_eval_batches, "eval_every": eval_every},
            "early_stop": early_stop,
        },
        cache_key=key,
    )
    return model, result


def fraction_of_baseline(loss: float, task: Task) -> float:
    """``loss / task.baseline`` (1 = no better than the memoryless predictor; nan if undefined)."""
    return float(loss) / task.baseline if task.baseline > 0 else math.nan


DIVERGENCE_FACTOR = 10.0


def diverged_finitely(
    loss: float,
    baseline: float,
    initial: float | None = None,
    factor: float = DIVERGENCE_FACTOR,
) -> bool:
    """Whether a run ended far above where it could have stood without learning anything:
    a divergence with finite numbers, which the NaN checks of the loop cannot see.

    Args:
      loss: the run's final held-out (or training) loss.
      baseline: the loss of the memoryless predictor (``task.baseline``; for a text model
        the unigram entropy); a run that learned nothing ends near it.
      initial: the loss at the start of the run (the first update's), if known; a run
        too short to reach the baseline stays near it.
      factor: how far above ``max(baseline, initial)`` counts as diverged (default 10).

    Returns:
      True if ``loss`` is not finite, or above ``factor * max(baseline, initial)``.
    """
    loss = float(loss)
    if not math.isfinite(loss):
        return True
    ref = max(float(baseline), float(initial) if initial is not None else -math.inf)
    return math.isfinite(ref) and ref > 0 and loss > factor * ref
