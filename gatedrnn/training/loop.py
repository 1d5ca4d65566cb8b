"""The one optax training loop.

The pieces, from the bottom up:

* :class:`TrainState` ``(params, opt_state, step, rng, carry)``: everything a run needs
  to go on, a pytree (so it can be sharded, checkpointed and restored as it is).
* :func:`make_train_step`: ``train_step(state, batch) -> (state, metrics)``, a pure
  function of a loss and an optax optimizer; the one place in the project where an
  optimizer's updates are applied to the params.
* :func:`train`: the loop every script uses: draws batches inside the jitted step from
  ``batch_fn(state.rng, state.step)`` (so batch ``n`` depends on the seed and ``n`` only:
  deterministic and resumable), runs ensembles (``vmap`` over seeds) and data-parallel
  meshes, evaluates, stops early on success or on a time limit, checkpoints and resumes,
  shows a tqdm bar, writes a JSON-lines log, and on a non-finite loss either raises
  :class:`NonFiniteLossError` or stops and reports (``on_nonfinite="stop"``), naming the
  first bad update; nothing non-finite is ever checkpointed.

A cell plus a readout trained on a task (:func:`~gatedrnn.training.fit`) is
:mod:`gatedrnn.training.task_model`.

Stateful truncated BPTT (a long stream cut into consecutive chunks, the recurrent state
carried from one chunk to the next with its gradient stopped at the boundary) uses the
``carry`` field: a stateful loss is ``loss_fn(params, batch, carry) -> (loss, (metrics,
new_carry))``; :mod:`gatedrnn.training.task_model` builds one for a task,
``experiments/char_lm.py`` one for text.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from gatedrnn.cells.base import Array, PyTree
from gatedrnn.training import checkpoint as checkpoints
from gatedrnn.training import mesh as parallel
from gatedrnn.training.checkpoint import CheckpointError
from gatedrnn.training.io import FolderInUseError, FolderLock, jsonable

Metrics = dict[str, Array]
LossFn = Callable[[PyTree, Any], tuple[Array, Metrics]]
StatefulLossFn = Callable[[PyTree, Any, PyTree], tuple[Array, tuple[Metrics, PyTree]]]
BatchFn = Callable[[Array, Array], Any]


# ------------------------------------------------------------------------------ state


class TrainState(NamedTuple):
    """Everything a training run carries from one step to the next (a pytree).

    Attributes:
      params: the model's parameters.
      opt_state: the optax optimizer's state.
      step: int32 scalar, the number of updates done.
      rng: PRNG key (``jax.random.PRNGKey`` layout, uint32 ``(2,)``); fixed for the run:
        step ``n`` draws its batch from ``batch_fn(rng, n)``.
      carry: the recurrent state carried across batches by a stateful loss (stateful
        truncated BPTT), or None.
    """

    params: PyTree
    opt_state: PyTree
    step: Array
    rng: Array
    carry: PyTree = None


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``.step`` is the first such update (0-based)."""

    def __init__(self, step: int, value: float) -> None:
        self.step = int(step)
        self.value = float(value)
        super().__init__(
            f"training loss became non-finite ({self.value}) at step {self.step}; "
            "lower the learning rate, clip gradients harder, or check the data"
        )


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      state: the final :class:`TrainState` (after early stop, if any).
      history: one dict per evaluation: ``step``, ``train_loss`` and ``grad_norm`` (means
        over the updates since the last evaluation), ``train_*`` (the loss's other
        metrics, likewise), ``eval_*`` metrics, ``time`` (s), ``steps_per_s``.
      solved_step: the number of updates after which the success test first passed, or
        None; for an ensemble run, one such entry per member.
      diverged_step: with ``on_nonfinite="stop"``, the first update (0-based) whose loss
        was not finite (for any member), else None.
      per_step: ``{"loss", "grad_norm"}``: every update's value run by this call, in
        order, ``(n,)`` (``(n, S)`` for an ensemble); after a divergence, up to and
        including the first non-finite loss.
    """

    state: TrainState
    history: list[dict[str, float]]
    solved_step: int | list[int | None] | None
    diverged_step: int | None = None
    per_step: dict[str, np.ndarray] | None = None


SEED_LIMIT = 2**32  # jax.random.PRNGKey keeps 32 bits of a seed (without x64): larger ones alias


def check_seed(seed: Any, what: str = "seed") -> int:
    """Check a random seed and return it as an int: an integer in ``[0, 2**32)``.

    ``jax.random.PRNGKey`` keeps only the low 32 bits of a seed (without x64), so
    ``2**32`` would train exactly as ``0``, and a seed past ``2**63`` overflows inside JAX;
    both are refused here, for every entry point (``fit``, ``init_state``, the scripts'
    ``--seed``).

    Args:
      seed: an int (or numpy integer).
      what: the name the message uses (``"seed"``, ``"eval_seed"``, ``"--seed"``).

    Returns:
      ``int(seed)``.

    Raises:
      TypeError: ``seed`` is not an integer (a bool, a float, a string).
      ValueError: ``seed`` is outside ``[0, 2**32)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{what} must be an integer in [0, 2**32), got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(
            f"{what} must be an integer in [0, 2**32) = [0, {SEED_LIMIT}) (larger seeds would "
            f"alias smaller ones in jax.random.PRNGKey), got {int(seed)}"
        )
    return int(seed)


def init_state(
    params: PyTree, optimizer: optax.GradientTransformation, seed: int | Array, carry: PyTree = None
) -> TrainState:
    """A fresh :class:`TrainState` at step 0.

    Args:
      params: initial parameters.
      optimizer: an optax transformation (e.g. from :func:`make_optimizer`).
      seed: an int seed or a ``PRNGKey``; the run's batches derive from it.
      carry: initial carried state for a stateful loss, or None.
    """
    if isinstance(seed, (int, np.integer)):
        rng = jax.random.PRNGKey(check_seed(seed))
    else:
        rng = jnp.asarray(seed)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), rng, carry)


def init_ensemble(
    params: PyTree,
    optimizer: optax.GradientTransformation,
    seeds: Sequence[int],
    carry: PyTree = None,
) -> TrainState:
    """A :class:`TrainState` for ``S = len(seeds)`` members trained at once (``ensemble=True``).

    Args:
      params: params with a leading member axis ``S`` on every leaf (e.g. from
        ``jax.vmap(model.init)(keys)``).
      optimizer: the optax transformation.
      seeds: one batch seed per member; member ``i`` sees the batches a single run
        ``init_state(..., seeds[i])`` would see.
      carry: initial carried state for a stateful loss, leaves with the member axis, or
        None.
    """
    rng = jnp.stack([jax.random.PRNGKey(check_seed(s, "each seed")) for s in seeds])
    step = jnp.zeros((len(seeds),), jnp.int32)
    return TrainState(params, jax.vmap(optimizer.init)(params), step, rng, carry)


def make_optimizer(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    clip_norm: float | None = 1.0,
    schedule: str = "constant",
    num_steps: int | None = None,
    warmup_steps: int = 0,
    optimizer: str = "adam",
) -> optax.GradientTransformation:
    """Clip by global norm, then Adam (or another optax optimizer) with an LR schedule.

    Args:
      learning_rate: peak learning rate, or an optax schedule (then ``schedule`` is
        ignored).
      clip_norm: clip the gradient to this global L2 norm first; None to skip.
      schedule: ``"constant"``, ``"cosine"`` (decay to 0 over ``num_steps``) or
        ``"warmup_cosine"`` (linear warmup over ``warmup_steps``, then cosine).
      num_steps: the run's length, needed by the cosine schedules.
      warmup_steps: warmup length for ``"warmup_cosine"`` (and a linear warmup for
        ``"constant"`` if > 0).
      optimizer: the name of an optax optimizer taking a learning rate (``"adam"``,
        ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ...).

    Returns:
      ``optax.chain(clip_by_global_norm(clip_norm), optimizer(schedule))``.
    """
    if callable(learning_rate):
        lr: optax.Schedule | float = learning_rate
    else:
        peak = float(learning_rate)
        if not peak > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if schedule == "constant":
            lr = peak
            if warmup_steps > 0:
                lr = optax.join_schedules(
                    [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
                    [warmup_steps],
                )
        elif schedule in ("cosine", "warmup_cosine"):
            if num_steps is None or num_steps < 1:
                raise ValueError(f"schedule={schedule!r} needs num_steps >= 1, got {num_steps!r}")
            if schedule == "cosine":
                lr = optax.cosine_decay_schedule(peak, num_steps)
            else:
                lr = optax.warmup_cosine_decay_schedule(
                    0.0, peak, max(warmup_steps, 1), max(num_steps, warmup_steps + 1)
                )
        else:
            raise ValueError(
                f"schedule must be 'constant', 'cosine' or 'warmup_cosine', got {schedule!r}"
            )
    opt_factory = getattr(optax, optimizer, None)
    if opt_factory is None or not callable(opt_factory):
        raise ValueError(f"optimizer must name an optax optimizer, got {optimizer!r}")
    parts = []
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(opt_factory(lr))
    return optax.chain(*parts)


# ------------------------------------------------------------------------------- step


def make_train_step(
    loss_fn: LossFn | StatefulLossFn,
    optimizer: optax.GradientTransformation,
    *,
    stateful: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """Build the pure update ``train_step(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (loss, metrics)``; with ``stateful=True``,
        ``loss_fn(params, batch, carry) -> (loss, (metrics, new_carry))``.
      optimizer: an optax transformation.
      stateful: thread ``state.carry`` through the loss; the new carry is stored with its
        gradient stopped, so backpropagation ends at the batch boundary.

    Returns:
      a pure function (no jit applied) whose metrics hold the loss, the loss's own
      metrics and ``grad_norm`` (global L2 norm before clipping).
    """

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        if stateful:
            (loss, (metrics, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch, state.carry
            )
            carry = jax.lax.stop_gradient(carry)
        else:
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
            carry = state.carry
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1, state.rng, carry), metrics

    return train_step


def _make_multi_step(
    train_step: Callable[[TrainState, Any], tuple[TrainState, Metrics]],
    batch_fn: BatchFn,
    num_steps: int,
) -> Callable[[TrainState], tuple[TrainState, Metrics]]:
    """``num_steps`` updates in one ``jax.lax.scan``, each drawing its own batch.

    Args:
      train_step: from :func:`make_train_step`.
      batch_fn: ``batch_fn(rng, step, *data) -> batch``; pure and jit-able.
      num_steps: updates per call.

    Returns:
      ``multi_step(state, *data) -> (state, metrics)`` with metrics stacked
      ``(num_steps,)``; ``data`` (e.g. a corpus) is passed on to ``batch_fn``.
    """

    def multi_step(state: TrainState, *data: Any) -> tuple[TrainState, Metrics]:
        def one(state: TrainState, _: None) -> tuple[TrainState, Metrics]:
            return train_step(state, batch_fn(state.rng, state.step, *data))

        return jax.lax.scan(one, state, None, length=num_steps)

    return multi_step


# ------------------------------------------------------------------------------- loop


_COMPILED: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()


def _compiled(key: Hashable, build: Callable[[], Callable]) -> Callable:
    """The jitted function stored under ``key``, built on first use (the newest 64 kept).
    A jitted function keeps its traces and executables, so equal keys never retrace."""
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    fn = _COMPILED[key] = build()
    while len(_COMPILED) > 64:
        _COMPILED.popitem(last=False)
    return fn


def _block(
    loss_fn: Callable, optimizer: optax.GradientTransformation, batch_fn: BatchFn,
    num_steps: int, stateful: bool, ensemble: bool, mesh: Mesh | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:  # fmt: skip
    """The jitted ``num_steps``-update block ``block(state, *batch_data)``. With a ``mesh``:
    batches split over its devices, state, batch data and metrics replicated."""
    step = make_train_step(loss_fn, optimizer, stateful=stateful)
    if ensemble:
        step, member_batch = jax.vmap(step), batch_fn

        def batch_fn(rng: Array, step_: Array, *data: Any) -> Any:
            return jax.vmap(lambda r, s: member_batch(r, s, *data))(rng, step_)

    if mesh is not None:
        rep = parallel.replicated(mesh)
        batch_fn = parallel.sharded_batch_fn(batch_fn, mesh)
        return jax.jit(_make_multi_step(step, batch_fn, num_steps), out_shardings=rep)
    return jax.jit(_make_multi_step(step, batch_fn, num_steps))


def _all_finite(tree: PyTree) -> bool:
    """Whether every inexact leaf of ``tree`` is finite (integer leaves always are)."""
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]
    return all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.inexact))


def _first_nonfinite(losses: np.ndarray, params: PyTree, first_step: int) -> tuple[int, float]:
    """``(step, value)`` of the first update (0-based, counting from ``first_step``) whose
    loss is not finite, for any member; ``(first_step + n, nan)`` if every loss of the
    ``n``-update block is finite but the params it ends with are not (the next update's loss
    cannot be finite); ``(-1, 0.0)`` if all is finite."""
    flat = losses.reshape(losses.shape[0], -1)
    rows = np.flatnonzero(~np.all(np.isfinite(flat), axis=1))
    if rows.size:
        row = flat[rows[0]]
        return first_step + int(rows[0]), float(row[~np.isfinite(row)][0])
    if not _all_finite(params):
        return first_step + losses.shape[0], math.nan
    return -1, 0.0


def _mean_over_steps(x: Any) -> float | list[float]:
    m = np.mean(np.asarray(x), axis=0)
    return m.tolist() if m.ndim else float(m)


def _next_stop(done: int, num_steps: int, every: Sequence[int | None]) -> int:
    """The next step count at which the loop must stop to evaluate or checkpoint."""
    stops = [num_steps] + [(done // e + 1) * e for e in every if e]
    return min(stops)


class _Evaluator(NamedTuple):
    """Held-out evaluation, one dict of floats per member (empty list: none configured)."""

    eval_fn: Callable | None
    batches: Sequence[Any]
    evaluate: Callable[[PyTree], Mapping[str, float]] | None
    ensemble: bool
    members: int
    key: Hashable = None

    def __call__(self, params: PyTree) -> list[dict[str, float]]:
        if self.evaluate is not None:
            return [{k: float(v) for k, v in self.evaluate(params).items()}]
        if self.eval_fn is None or not self.batches:
            return []
        fn = _compiled(
            ("eval", self.key, self.ensemble),
            lambda: jax.jit(
                jax.vmap(self.eval_fn, in_axes=(0, None)) if self.ensemble else self.eval_fn
            ),
        )
        runs = [jax.device_get(fn(params, b)) for b in self.batches]
        mean = {k: np.mean([np.asarray(r[k]) for r in runs], axis=0) for k in runs[0]}
        return [
            {k: float(np.reshape(v, -1)[i]) for k, v in mean.items()} for i in range(self.members)
        ]


def _history_row(
    done: int, blocks: list[Metrics], ev: list[dict[str, float]], ensemble: bool
) -> dict[str, Any]:
    """One history line: step, the mean since the last one of the training loss, grad norm
    and every other metric of the loss (as ``train_<name>``), then ``eval_<name>``."""
    mean = {k: _mean_over_steps(np.concatenate([b[k] for b in blocks])) for k in blocks[0]}
    row: dict[str, Any] = {"step": done, "train_loss": mean.pop("loss")}
    row["grad_norm"] = mean.pop("grad_norm")
    row.update({f"train_{k}": v for k, v in mean.items()})
    for k in ev[0] if ev else ():
        vals = [e[k] for e in ev]
        row[f"eval_{k}"] = vals if ensemble else vals[0]
    return row


@contextlib.contextmanager
def _progress_bar(show: bool, total: int, initial: int, desc: str | None) -> Iterator[Any]:
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _log_file(log_path: str | Path | None) -> Iterator[Any]:
    if log_path is None:
        yield None
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        yield f


class _Options(NamedTuple):
    """The keyword options of :func:`train` (documented there), passed on as one value."""

    num_steps: int
    stateful: bool
    ensemble: bool
    batch_data: PyTree
    eval_fn: Callable | None
    eval_batches: Sequence[Any]
    evaluate: Callable | None
    eval_every: int
    solved: Callable | None
    log_path: str | Path | None
    progress: bool
    desc: str | None
    log_extra: Mapping[str, Any] | None
    mesh: Mesh | None
    checkpoint_dir: str | Path | None
    resume: bool
    checkpoint_meta: Mapping[str, Any] | None
    checkpoint_every: int | None
    time_limit: float | None
    on_nonfinite: str
    cache_key: Hashable


def _check_train_args(state: Any, o: _Options) -> None:
    for name, value, low in (
        ("num_steps", o.num_steps, 0),
        ("eval_every", o.eval_every, 1),
        ("checkpoint_every", 1 if o.checkpoint_every is None else o.checkpoint_every, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    if o.on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {o.on_nonfinite!r}")
    if o.stateful and o.eval_fn is None and o.eval_batches:
        raise ValueError("a stateful loss needs an explicit eval_fn(params, batch) -> metrics")
    if o.evaluate is not None and (o.eval_fn is not None or o.eval_batches):
        raise ValueError("give evaluate(params) or eval_fn with eval_batches, not both")
    if o.evaluate is not None and o.ensemble:
        raise ValueError("evaluate(params) is for single runs; use eval_fn with an ensemble")
    if o.mesh is not None and o.ensemble:
        raise ValueError("mesh= (data parallel) and ensemble=True cannot be combined")
    if o.resume and o.checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")


class _Setup(NamedTuple):
    state: TrainState
    history: list[dict[str, Any]]
    solved_at: list[int | None]
    evaluator: _Evaluator
    batch_data: tuple


def _setup(loss_fn: Callable, batch_fn: BatchFn, state: TrainState, o: _Options) -> _Setup:
    """Resume from a checkpoint if asked, place everything on the mesh (after checking that
    the training batch, then every evaluation batch, splits over it), build the evaluator."""
    eval_fn = o.eval_fn
    if eval_fn is None and not o.stateful:
        eval_fn = loss_metrics(loss_fn)
    members = int(np.shape(state.step)[0]) if o.ensemble else 1
    history: list[dict[str, Any]] = []
    solved_at: list[int | None] = [None] * members
    if o.checkpoint_dir is not None:
        state, history, solved_at = checkpoints.start(
            state,
            o.checkpoint_dir,
            resume=o.resume,
            meta=o.checkpoint_meta,
            members=members,
            log_path=o.log_path,
            log_tag=o.log_extra,
        )
    data = () if o.batch_data is None else (o.batch_data,)
    eval_batches = list(o.eval_batches)
    if o.mesh is not None:
        parallel.check_mesh(o.mesh)
        # the training batch first, so that an error names the batch the user chose
        shapes = jax.eval_shape(batch_fn, state.rng, state.step, *data)
        parallel.check_batch_divides(shapes, o.mesh, "training batch")
        for i, b in enumerate(eval_batches):
            parallel.check_batch_divides(b, o.mesh, f"evaluation batch {i}")
        state, data = parallel.replicate((state, data), o.mesh)
        eval_batches = [parallel.shard_batch(b, o.mesh) for b in eval_batches]
    key = eval_fn if o.cache_key is None else o.cache_key
    evaluator = _Evaluator(eval_fn, eval_batches, o.evaluate, o.ensemble, members, key)
    return _Setup(state, history, solved_at, evaluator, data)


def train(
    loss_fn: LossFn | StatefulLossFn,
    state: TrainState,
    optimizer: optax.GradientTransformation,
    batch_fn: BatchFn,
    *,
    num_steps: int,
    stateful: bool = False,
    ensemble: bool = False,
    batch_data: PyTree = None,
    eval_fn: Callable[[PyTree, Any], Metrics] | None = None,
    eval_batches: Sequence[Any] = (),
    evaluate: Callable[[PyTree], Mapping[str, float]] | None = None,
    eval_every: int = 100,
    solved: Callable[[Mapping[str, float]], bool] | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    log_extra: Mapping[str, Any] | None = None,
    mesh: Mesh | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_meta: Mapping[str, Any] | None = None,
    checkpoint_every: int | None = None,
    time_limit: float | None = None,
    on_nonfinite: str = "raise",
    cache_key: Hashable = None,
) -> TrainResult:
    """Run updates from ``state.step`` up to ``num_steps``: the one training loop.

    Updates run in blocks inside one jitted ``lax.scan``. Compilation is reused across
    calls: the jitted block is stored under what determines it, ``cache_key`` (or, without
    one, the identities of ``loss_fn``, ``optimizer`` and ``batch_fn``) with the block size,
    ``stateful``, ``ensemble`` and ``mesh``; a later call with an equal key runs the stored
    executable without tracing again (and the evaluation likewise).

    After each block the losses (and the params) are checked for NaN/inf; every
    ``eval_every`` updates the model is evaluated, a history row and a log line are
    written, and the run stops early if ``solved(eval metrics)`` holds; every
    ``checkpoint_every`` updates (and at the end) the whole state is checkpointed.

    Args:
      loss_fn: see :func:`make_train_step`.
      state: where to start (:func:`init_state` or a restored state); counting starts at
        ``state.step``, so a resumed run continues the same batch sequence.
      optimizer: the optax transformation ``state.opt_state`` belongs to.
      batch_fn: ``batch_fn(rng, step) -> batch``, pure and jit-able, e.g.
        :func:`task_batches`; ``batch_fn(rng, step, batch_data)`` if ``batch_data`` is given.
      num_steps: total updates to reach (``state.step`` counts toward it).
      stateful: the loss threads ``state.carry`` (stateful truncated BPTT, see
        :func:`make_train_step`, :func:`stream_batches`).
      ensemble: every leaf of ``state`` has a leading member axis ``S`` (several seeds
        trained at once with ``jax.vmap``, see :func:`init_ensemble`); history values
        become per-member lists, ``solved_step`` a per-member list, and the run stops
        early only when every member is solved.
      batch_data: a pytree of arrays ``batch_fn`` reads from (e.g. an encoded corpus),
        passed to the jitted block as an argument rather than baked in as a constant.
      eval_fn: ``eval_fn(params, batch) -> metrics`` (defaults to the loss's metrics
        for a stateless loss); averaged over ``eval_batches``.
      eval_batches: held-out batches (from a key the training batches never use).
      evaluate: instead of ``eval_fn``: ``evaluate(params) -> {name: float}`` on the host
        (e.g. a stateful pass over a validation text); not with ``ensemble``.
      eval_every: updates between evaluations and history rows (>= 1).
      solved: success test on the eval metrics (``eval_`` prefix stripped).
      log_path: append one JSON object per history row to this file.
      progress: show a tqdm bar (loss, steps/s).
      desc: the bar's label.
      log_extra: constant fields added to every log line (run name, config, ...); they
        mark the run's lines in a log that several runs share, so that resuming drops
        only this run's lines past its checkpoint.
      mesh: data-parallel training on a ``jax.sharding.Mesh`` with a ``"data"`` axis
        (:func:`gatedrnn.training.data_mesh`): each batch is split over it, state and
        ``batch_data`` are replicated, XLA reduces the gradients. Not with ``ensemble``.
      checkpoint_dir: save the whole state (and history) here atomically
        (:mod:`gatedrnn.training.checkpoint`); the folder must hold no checkpoint unless
        ``resume``. Nothing non-finite is ever saved. The run holds the folder's lock
        (:class:`~gatedrnn.training.io.FolderLock`) until it returns: one lock per run,
        taken by process 0 of a multi-process run (``jax.distributed``), whose other
        processes stop with one line if process 0 cannot take it. Every process saves
        (orbax coordinates them) and, on resume, reads and verifies the same checkpoint;
        the log and the bar come from process 0 only. A process of such a run that loses
        the others raises :class:`PeerLostError` (one line).
      resume: continue from the newest intact checkpoint in ``checkpoint_dir`` (corrupt
        newer ones are reported and moved aside); the run then ends with the same params
        and history as one that never stopped.
      checkpoint_meta: the run's config, saved with each checkpoint; resuming with a
        different config is refused, naming the key.
      checkpoint_every: updates between checkpoints (default ``eval_every``); the last
        update, an early stop and a time-out are always saved.
      time_limit: stop (evaluate, checkpoint) once this call has run this many seconds.
      on_nonfinite: ``"raise"``: a non-finite loss raises :class:`NonFiniteLossError`;
        ``"stop"``: the run stops and the result records it (``diverged_step``), its state
        the last one whose block was all finite.
      cache_key: a hashable value that determines ``loss_fn``, ``optimizer``,
        ``batch_fn`` and ``eval_fn`` (e.g. :func:`~gatedrnn.training.fit` uses the cell,
        the task and the optimizer's settings), so that calls with freshly
        built but equal functions share compiled code; calls with equal keys must compute
        the same thing. None: the functions' identities.

    Returns:
      a :class:`TrainResult`.

    Raises:
      NonFiniteLossError: a training loss was NaN/inf (``on_nonfinite="raise"``); names the
        first such update, 0-based (= the updates done before it); the last checkpoint is
        the last one whose losses and params were all finite.
      gatedrnn.training.CheckpointError: nothing (intact) to resume, a checkpoint that
        does not fit this run, or another live process holds ``checkpoint_dir``.
    """
    opts = _Options(**{k: v for k, v in locals().items() if k in _Options._fields})
    _check_train_args(state, opts)
    with _run_lock(checkpoint_dir), _peers_alive():
        return _run(loss_fn, optimizer, batch_fn, _setup(loss_fn, batch_fn, state, opts), opts)


@contextlib.contextmanager
def _run_lock(checkpoint_dir: str | Path | None) -> Iterator[None]:
    """Hold the checkpoint folder's lock for the run: one lock per run, taken by process 0;
    in a run of several processes the others learn from process 0 whether it got it."""
    if checkpoint_dir is None:
        yield
        return
    lock, error = FolderLock(checkpoint_dir, what=f"checkpoint folder {checkpoint_dir}"), None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except FolderInUseError as e:
            error = e
    if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(error is None):
        error = error or CheckpointError(
            f"process 0 could not take the lock of checkpoint folder {checkpoint_dir} "
            "(another run holds it)"
        )
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.release()


def _record(
    o: _Options, setup: _Setup, done: int, since: list[Metrics], rate: float, start: float
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Evaluate, append a history row, and mark members solved; returns the row and evals."""
    ev = setup.evaluator(setup.state.params)
    row = _history_row(done, since, ev, o.ensemble)
    row["time"] = time.perf_counter() - start
    row["steps_per_s"] = rate
    setup.history.append(row)
    if o.solved is not None and ev:
        for i, e in enumerate(ev):
            if setup.solved_at[i] is None and o.solved(e):
                setup.solved_at[i] = done
    return row, ev


def _run(
    loss_fn: Callable, optimizer: optax.GradientTransformation, batch_fn: BatchFn, setup: _Setup,
    o: _Options,
) -> TrainResult:  # fmt: skip
    """The loop of :func:`train`: blocks of updates, checks, evaluations, logs, checkpoints."""
    history, solved_at = setup.history, setup.solved_at
    every = o.checkpoint_every or o.eval_every
    done = int(np.max(np.asarray(setup.state.step)))
    start = time.perf_counter() - (history[-1]["time"] if history else 0.0)
    call_start = time.perf_counter()
    since_eval: list[Metrics] = []
    per_step: tuple[list, list] = ([], [])
    diverged, finished = None, o.solved is not None and all(s is not None for s in solved_at)
    first = jax.process_index() == 0  # logs and the bar come from process 0 only
    bar_ctx = _progress_bar(o.progress and first, o.num_steps, done, o.desc)
    with bar_ctx as bar, _log_file(o.log_path if first else None) as log:
        while done < o.num_steps and not finished:
            n = _next_stop(done, o.num_steps, (o.eval_every, every)) - done
            what = (loss_fn, optimizer, batch_fn) if o.cache_key is None else o.cache_key
            block = _compiled(
                ("block", what, n, o.stateful, o.ensemble, o.mesh),
                functools.partial(
                    _block, loss_fn, optimizer, batch_fn, n, o.stateful, o.ensemble, o.mesh
                ),
            )
            t0 = time.perf_counter()
            new_state, metrics = block(setup.state, *setup.batch_data)
            metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
            bad, value = _first_nonfinite(metrics["loss"], new_state.params, done)
            kept = n if bad < 0 else min(n, bad - done + 1)
            per_step[0].append(metrics["loss"][:kept])
            per_step[1].append(metrics["grad_norm"][:kept])
            if bad >= 0:
                if o.on_nonfinite == "raise":
                    raise NonFiniteLossError(bad, value)
                diverged = bad
                break
            setup, done = setup._replace(state=new_state), done + n
            since_eval.append(metrics)
            rate = n / max(time.perf_counter() - t0, 1e-9)
            timed_out = o.time_limit is not None and time.perf_counter() - call_start > o.time_limit
            if done % o.eval_every == 0 or done == o.num_steps or timed_out:
                row, ev = _record(o, setup, done, since_eval, rate, start)
                since_eval = []
                finished = o.solved is not None and all(s is not None for s in solved_at)
                if log is not None:
                    log.write(json.dumps(jsonable({**(o.log_extra or {}), **row})) + "\n")
                    log.flush()
                if bar is not None:
                    shown = {"loss": f"{np.mean(row['train_loss']):.4g}", "steps/s": f"{rate:.0f}"}
                    bar.set_postfix(
                        {**shown, **{k: f"{v:.4g}" for k, v in (ev or [{}])[0].items()}}
                    )
            if bar is not None:
                bar.update(n)
            end = done == o.num_steps or finished or timed_out
            if o.checkpoint_dir is not None and (done % every == 0 or end):
                checkpoints.save(
                    o.checkpoint_dir, done, setup.state, history, solved_at, o.checkpoint_meta
                )
            if timed_out:
                break
    steps = {k: _concat(v) for k, v in zip(("loss", "grad_norm"), per_step)}
    solved_step = solved_at if o.ensemble else solved_at[0]
    return TrainResult(setup.state, history, solved_step, diverged, steps)


class PeerLostError(RuntimeError):
    """A process of a multi-process run died or lost contact with the others."""


_PEER_FAULTS = ("Gloo", "Connection", "DEADLINE_EXCEEDED", "UNAVAILABLE", "coordination")


@contextlib.contextmanager
def _peers_alive() -> Iterator[None]:
    """In a run of several processes, turn the runtime error of a collective or barrier
    whose peer is gone (JAX's own message runs to many lines) into one line. Any exception
    type: orbax re-raises a failed collective of its save from its own thread."""
    try:
        yield
    except Exception as e:
        if jax.process_count() == 1 or not any(k in str(e) for k in _PEER_FAULTS):
            raise
        why = " ".join(str(e).split())[:160]
        raise PeerLostError(
            f"process {jax.process_index()} of {jax.process_count()} lost the other processes "
            f"of the run ({why}); restart every process with resume=True"
        ) from None


def _concat(blocks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros((0,), np.float32)


@functools.lru_cache(maxsize=64)
def loss_metrics(loss_fn: LossFn) -> Callable[[PyTree, Any], Metrics]:
    """``eval_fn(params, batch)`` from a stateless loss: its metrics (with ``loss``); cached
    per loss, so evaluations share compiled code."""
    return lambda params, batch: loss_fn(params, batch)[1]
