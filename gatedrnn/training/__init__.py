"""The training side: the one optax loop, checkpoints and resume, the device mesh, tasks, text.

* :mod:`gatedrnn.training.loop`: :class:`TrainState`, :func:`make_optimizer`,
  :func:`train` (the one loop every script uses), and :func:`fit` (a cell plus a readout
  on a :class:`~gatedrnn.training.tasks.Task`).
* :mod:`gatedrnn.training.checkpoint`: atomic checkpoints and exact resume (the one module
  that reads and writes them).
* :mod:`gatedrnn.training.mesh`: data-parallel training on a ``jax.sharding.Mesh``.
* :mod:`gatedrnn.training.tasks`, :mod:`gatedrnn.training.text`: synthetic long-range
  tasks; character vocabularies and corpora.
* :mod:`gatedrnn.training.char_lm`: the character language model (embedding -> stack ->
  readout) and its sampler; its trainer is ``experiments/char_lm.py``.
"""

from gatedrnn.training import checkpoint, mesh, tasks, text
from gatedrnn.training.checkpoint import CheckpointError
from gatedrnn.training.loop import (
    Chunk,
    ModelParams,
    NonFiniteLossError,
    SequenceModel,
    TrainResult,
    TrainState,
    eval_batches_for,
    fit,
    fraction_of_baseline,
    global_norm,
    init_ensemble,
    init_state,
    make_multi_step,
    make_optimizer,
    make_train_step,
    param_key,
    sequence_model,
    stateful_task_loss,
    stream_batches,
    task_batches,
    task_loss,
    task_model,
    train,
)
from gatedrnn.training.mesh import data_mesh, shard_batch

__all__ = [
    "CheckpointError",
    "Chunk",
    "ModelParams",
    "NonFiniteLossError",
    "SequenceModel",
    "TrainResult",
    "TrainState",
    "checkpoint",
    "data_mesh",
    "eval_batches_for",
    "fit",
    "fraction_of_baseline",
    "global_norm",
    "init_ensemble",
    "init_state",
    "make_multi_step",
    "make_optimizer",
    "make_train_step",
    "mesh",
    "param_key",
    "sequence_model",
    "shard_batch",
    "stateful_task_loss",
    "stream_batches",
    "task_batches",
    "task_loss",
    "task_model",
    "tasks",
    "text",
    "train",
]
