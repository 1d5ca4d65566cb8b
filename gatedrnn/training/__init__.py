"""The training side: the one optax loop, checkpoints and resume, the device mesh, tasks, text.

* :mod:`gatedrnn.training.loop`: :class:`TrainState`, :func:`make_optimizer`,
  :func:`train` (the one loop every script uses), :func:`check_seed` (the one seed check).
* :mod:`gatedrnn.training.task_model`: :func:`fit` (a cell plus a readout on a
  :class:`~gatedrnn.training.tasks.Task`), stateful chunks of a task's streams.
* :mod:`gatedrnn.training.checkpoint`: checkpoints on orbax's ``CheckpointManager`` and
  exact resume (the one module that reads and writes them).
* :mod:`gatedrnn.training.io`: atomic files, valid JSON, one writer per folder.
* :mod:`gatedrnn.training.mesh`: data-parallel training on a ``jax.sharding.Mesh``.
* :mod:`gatedrnn.training.tasks`, :mod:`gatedrnn.training.text`: synthetic long-range
  tasks; character vocabularies and corpora.
* :mod:`gatedrnn.training.char_lm`: the character language model (embedding -> stack ->
  readout) and its sampler; its trainer is ``experiments/char_lm.py``.
"""

from gatedrnn.training import checkpoint, io, mesh, tasks, text
from gatedrnn.training.checkpoint import CheckpointError
from gatedrnn.training.loop import (
    NonFiniteLossError,
    PeerLostError,
    TrainResult,
    TrainState,
    check_seed,
    init_ensemble,
    init_state,
    make_optimizer,
    make_train_step,
    train,
)
from gatedrnn.training.mesh import data_mesh, shard_batch
from gatedrnn.training.task_model import (
    Chunk,
    ModelParams,
    SequenceModel,
    diverged_finitely,
    eval_batches_for,
    fit,
    fraction_of_baseline,
    param_key,
    sequence_model,
    stateful_task_loss,
    stream_batches,
    task_batches,
    task_loss,
    task_model,
)

__all__ = [
    "CheckpointError",
    "Chunk",
    "ModelParams",
    "NonFiniteLossError",
    "PeerLostError",
    "SequenceModel",
    "TrainResult",
    "TrainState",
    "check_seed",
    "checkpoint",
    "data_mesh",
    "diverged_finitely",
    "eval_batches_for",
    "fit",
    "fraction_of_baseline",
    "init_ensemble",
    "init_state",
    "io",
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
