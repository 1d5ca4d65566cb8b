"""Task generators: shapes, target correctness against numpy oracles, baselines from data."""

from __future__ import annotations

import functools
import math

import chex
import jax
import numpy as np
import pytest
from conftest import to_numpy

from gatedrnn.training import tasks

KEY = jax.random.PRNGKey(0)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_sample(task: tasks.Task, key: jax.Array, batch_size: int) -> tasks.Batch:
    return task.sample(key, batch_size)


def _sample(task: tasks.Task, batch_size: int) -> tasks.Batch:
    """``task.sample(KEY, batch_size)`` compiled once per task and batch size (an eager call
    compiles every operation per shape), as NumPy arrays."""
    return to_numpy(_jit_sample(task, KEY, batch_size))


@functools.partial(jax.jit, static_argnums=0)
def _loss(task: tasks.Task, outputs, batch: tasks.Batch):
    """``task.loss_fn`` compiled once per task and shapes."""
    return task.loss_fn(outputs, batch)


@pytest.mark.parametrize(
    "task, T, I, O",
    [
        (tasks.adding(30), 30, 2, 1),
        (tasks.copy_memory(15), 35, 10, 10),
        (tasks.delayed_recall(25, num_keys=5, num_distractors=3), 25, 9, 5),
        (tasks.echo(12, 3, vocab=6), 12, 6, 6),
    ],
)
def test_shapes_dtypes_and_sizes(task: tasks.Task, T: int, I: int, O: int) -> None:
    b = _sample(task, 7)
    assert (task.seq_len, task.input_size, task.output_size) == (T, I, O)
    assert b.inputs.shape == (7, T, I) and b.inputs.dtype == np.float32
    assert b.targets.shape == (7, T) and b.mask.shape == (7, T)
    assert b.mask.dtype == np.float32


@pytest.mark.parametrize("make", [lambda: tasks.adding(10), lambda: tasks.copy_memory(5)])
def test_same_key_same_batch_and_jit_matches_eager(make) -> None:
    task = make()  # batch 8 of these tasks: the compiled sample of the tests below
    a = task.sample(KEY, 8)
    b = _jit_sample(task, KEY, 8)
    c = task.sample(jax.random.PRNGKey(1), 8)
    for x, y in zip(a, b):
        chex.assert_trees_all_equal(x, y)
    assert not np.array_equal(a.inputs, c.inputs)


def test_adding_marks_one_per_half_and_target_is_marked_sum() -> None:
    T = 31
    x, y, m = _sample(tasks.adding(T), 200)
    half = T // 2
    assert np.all(x[..., 1].sum(1) == 2)
    assert np.all(x[:, :half, 1].sum(1) == 1) and np.all(x[:, half:, 1].sum(1) == 1)
    assert np.all((x[..., 0] >= 0) & (x[..., 0] < 1))
    for i in range(200):  # python-loop oracle
        marked = [x[i, t, 0] for t in range(T) if x[i, t, 1] == 1.0]
        assert y[i, -1] == pytest.approx(sum(marked), abs=1e-6)
    chex.assert_trees_all_equal(m[:, :-1], 0)
    chex.assert_trees_all_equal(m[:, -1], 1)


def test_adding_baseline_predicting_the_mean_is_one_sixth_from_data() -> None:
    task = tasks.adding(40)
    b = _sample(task, 20000)
    mean = float(np.mean(b.targets[:, -1]))
    assert mean == pytest.approx(1.0, abs=0.01)
    outputs = np.ones((20000, 40, 1), np.float32)
    loss, _ = _loss(task, outputs, b)
    assert float(loss) == pytest.approx(task.baseline, rel=0.03)
    assert task.baseline == pytest.approx(1 / 6)


def test_copy_layout_and_targets() -> None:
    gap = 7
    task = tasks.copy_memory(gap)
    b = _sample(task, 50)
    tok, y = np.argmax(b.inputs, -1), b.targets
    T = gap + 20
    assert np.all((tok[:, :10] >= 1) & (tok[:, :10] <= 8))
    assert np.all(tok[:, 10 : 10 + gap - 1] == 0)
    assert np.all(tok[:, 10 + gap - 1] == 9)
    assert np.all(tok[:, 10 + gap :] == 0)
    chex.assert_trees_all_equal(y[:, : T - 10], 0)
    chex.assert_trees_all_equal(y[:, T - 10 :], tok[:, :10])


def test_copy_memoryless_baseline_from_data() -> None:
    """The best input-independent predictor (per-position marginals) scores 10 ln 8 / (T+20)."""
    gap = 30
    task = tasks.copy_memory(gap)
    b = _sample(task, 4000)
    y = b.targets
    counts = np.stack([(y == c).mean(0) for c in range(10)], -1)  # (T, 10) marginals
    logits = np.log(counts.astype(np.float32) + np.float32(1e-12))[None].repeat(4000, 0)
    loss, metrics = _loss(task, logits, b)
    assert float(loss) == pytest.approx(10 * math.log(8) / (gap + 20), rel=0.02)
    assert task.baseline == pytest.approx(10 * math.log(8) / (gap + 20))
    assert float(metrics["recall_accuracy"]) < 0.25


def test_recall_key_early_query_last_target_is_key() -> None:
    nk, nd, T = 4, 5, 40
    task = tasks.delayed_recall(T, num_keys=nk, num_distractors=nd, key_window=6)
    b = _sample(task, 300)
    tok = np.argmax(b.inputs, -1)
    is_key = tok < nk
    assert np.all(is_key.sum(1) == 1)
    pos = is_key.argmax(1)
    assert pos.max() < 6 and len(set(pos.tolist())) > 1
    assert np.all(tok[:, -1] == nk + nd)
    assert np.all(tok[:, :-1] < nk + nd)
    chex.assert_trees_all_equal(b.targets[:, -1], tok[np.arange(300), pos])
    assert task.baseline == pytest.approx(math.log(nk))


def test_recall_key_window_one_puts_key_at_step_zero() -> None:
    tok = np.argmax(_sample(tasks.delayed_recall(10, key_window=1), 20).inputs, -1)
    assert np.all(tok[:, 0] < 8) and np.all(tok[:, 1:] >= 8)


def test_echo_targets_are_inputs_delay_steps_back() -> None:
    d, T = 4, 15
    b = _sample(tasks.echo(T, d, vocab=3), 10)
    tok, y, m = np.argmax(b.inputs, -1), b.targets, b.mask
    chex.assert_trees_all_equal(y[:, d:], tok[:, : T - d])
    chex.assert_trees_all_equal(m[:, :d], 0)
    chex.assert_trees_all_equal(m[:, d:], 1)


def test_perfect_predictions_score_zero_and_count_as_solved() -> None:
    for task in (tasks.copy_memory(5), tasks.delayed_recall(12), tasks.echo(9, 2)):
        b = _sample(task, 8)
        logits = 50.0 * np.eye(task.output_size, dtype=np.float32)[b.targets]
        loss, metrics = _loss(task, logits, b)
        assert float(loss) < 1e-6
        assert task.solved({k: float(v) for k, v in metrics.items()})
    task = tasks.adding(10)
    b = _sample(task, 8)
    loss, metrics = _loss(task, b.targets[..., None], b)
    assert float(loss) == 0.0 and task.solved({"loss": 0.0})
    assert not task.solved({"loss": task.baseline})


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        tasks.adding(1)
    with pytest.raises(ValueError, match="seq_len"):
        tasks.echo(3, 3)
    with pytest.raises(ValueError, match="key_window"):
        tasks.delayed_recall(5, key_window=5)
    with pytest.raises(ValueError, match="batch_size"):
        tasks.adding(10).sample(KEY, 0)
    task = tasks.copy_memory(5)
    b = _sample(task, 8)
    with pytest.raises(ValueError, match="outputs must have shape"):
        task.loss_fn(np.zeros((8, 25, 9), np.float32), b)


def test_masked_mean_of_empty_mask_is_zero() -> None:
    masked_mean = jax.jit(tasks.masked_mean)  # one program, not one per operation
    assert float(masked_mean(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32))) == 0.0


def test_adding_within_tolerance_counts_sequences_and_can_be_the_success_test() -> None:
    """Hochreiter & Schmidhuber's (1997) criterion: a sequence is correct when its absolute
    error at the end is below 0.04; ``solved_within`` makes the fraction correct the test."""
    task = tasks.adding(10)
    b = _sample(task, 8)
    shift = np.array([0.0, 0.01, -0.039, 0.039, 0.041, -0.05, 0.5, -1.0], np.float32)  # 4 of 8 in
    outputs = (b.targets + shift[:, None])[..., None]
    _, metrics = _loss(task, outputs, b)
    chex.assert_trees_all_close(metrics["within_tolerance"], np.float32(0.5))
    assert task.solved({"loss": 0.0, "within_tolerance": 0.5})  # default: the MSE test
    strict = tasks.adding(10, solved_within=1.0)
    assert not strict.solved({"loss": 0.0, "within_tolerance": 0.99})
    assert strict.solved({"loss": 1.0, "within_tolerance": 1.0})
    _, wide = _loss(tasks.adding(10, tolerance=0.6), outputs, b)
    chex.assert_trees_all_close(wide["within_tolerance"], np.float32(7 / 8))
    with pytest.raises(ValueError, match="solved_within"):
        tasks.adding(10, solved_within=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        tasks.adding(10, tolerance=0.0)
