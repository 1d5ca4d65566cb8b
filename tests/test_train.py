"""The optax loop: it learns, it is deterministic and resumable, it names the NaN step."""

from __future__ import annotations

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import to_numpy

import gatedrnn as gr
from gatedrnn import training
from gatedrnn.training import checkpoint, tasks

KEY = jax.random.PRNGKey(0)


def test_fit_reduces_loss_on_a_tiny_task(tmp_path) -> None:
    task = tasks.echo(6, 1, vocab=2)
    log = tmp_path / "log.jsonl"
    _, res = training.fit(
        task,
        gr.gru(16),  # the size of the other fits here (and the docs' example): shared compiles
        num_steps=300,
        batch_size=16,
        learning_rate=1e-2,
        eval_every=50,
        progress=False,
        log_path=log,
        early_stop=False,
        log_extra={"run": "tiny"},
    )
    first, last = res.history[0]["eval_loss"], res.history[-1]["eval_loss"]
    assert last < 0.3 * task.baseline and last < first
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert [r["step"] for r in lines] == [50, 100, 150, 200, 250, 300]
    assert {"train_loss", "eval_loss", "eval_accuracy", "steps_per_s", "run"} <= set(lines[0])
    assert int(res.state.step) == 300


def test_early_stop_records_the_solving_step() -> None:
    task = tasks.echo(6, 0, vocab=2)  # memoryless: solved quickly
    _, res = training.fit(
        task, gr.vanilla(8), num_steps=2000, learning_rate=3e-2, eval_every=20, progress=False
    )
    assert res.solved_step is not None and res.solved_step < 2000
    assert int(res.state.step) == res.solved_step == res.history[-1]["step"]
    assert task.solved({k[5:]: v for k, v in res.history[-1].items() if k.startswith("eval_")})


def test_same_seed_same_numbers_and_an_ensemble_run_matches_single_runs(fast_compile) -> None:
    task = tasks.adding(12)
    model = training.task_model(gr.lstm(6), task)
    opt = training.make_optimizer(1e-2)
    loss, batches = training.task_loss(model, task), training.task_batches(task, 8)
    # the held-out set in one compile (eagerly, each sampling op compiles one)
    held_out = jax.jit(lambda: training.eval_batches_for(task, 64, 1))()
    kw = dict(num_steps=40, eval_every=20, progress=False, eval_batches=held_out)

    # every initial state in one compile (eagerly, each random draw and each optimizer
    # zero compiles one): seeds 3 and 4 one at a time, and both at once with vmap (the
    # ensemble's)
    @jax.jit
    def inits(keys):
        singles = [training.init_state(model.init(k), opt, s) for k, s in zip(keys, (3, 4))]
        return singles, training.init_ensemble(jax.vmap(model.init)(keys), opt, [3, 4])

    keys = np.stack([training.param_key(3), training.param_key(4)])

    def single(seed):
        state = inits(keys)[0][[3, 4].index(seed)]  # a fresh state each run (program reused)
        return training.train(loss, state, opt, batches, **kw)

    a, b, c = single(3), single(3), single(4)
    for ra, rb in zip(a.history, b.history):
        assert ra["train_loss"] == rb["train_loss"] and ra["eval_loss"] == rb["eval_loss"]
    same = jax.tree_util.tree_map(np.array_equal, a.state.params, b.state.params)
    assert all(jax.tree_util.tree_leaves(same))
    assert c.history[-1]["train_loss"] != a.history[-1]["train_loss"]
    # seeds 3 and 4 at once with vmap give the two single runs' numbers
    ens = training.train(loss, inits(keys)[1], opt, batches, ensemble=True, **kw)
    assert ens.history[-1]["train_loss"] == pytest.approx(
        [a.history[-1]["train_loss"], c.history[-1]["train_loss"]], rel=1e-4
    )
    assert ens.history[-1]["eval_loss"] == pytest.approx(
        [a.history[-1]["eval_loss"], c.history[-1]["eval_loss"]], rel=1e-4
    )
    chex.assert_trees_all_close(  # member 1 taken in NumPy (a JAX index compiles programs)
        np.asarray(ens.state.params.w_out)[1], c.state.params.w_out, rtol=1e-3, atol=1e-5
    )


def test_resuming_from_a_state_continues_the_same_run() -> None:
    task = tasks.adding(10)
    model = training.task_model(gr.gru(5), task)
    opt = training.make_optimizer(1e-2, schedule="cosine", num_steps=60)
    # params and optimizer state in one compile (eagerly, each zero compiles one)
    st = jax.jit(lambda key: training.init_state(model.init(key), opt, 7))(KEY)
    loss = training.task_loss(model, task)
    batches = training.task_batches(task, 8)
    kw = dict(eval_every=15, progress=False)
    straight = training.train(loss, st, opt, batches, num_steps=60, **kw)
    half = training.train(loss, st, opt, batches, num_steps=30, **kw)
    resumed = training.train(loss, half.state, opt, batches, num_steps=60, **kw)
    chex.assert_trees_all_close(
        jax.tree_util.tree_leaves(straight.state.params)[0],
        jax.tree_util.tree_leaves(resumed.state.params)[0],
        rtol=1e-6,
    )
    assert [r["train_loss"] for r in straight.history] == pytest.approx(
        [r["train_loss"] for r in half.history + resumed.history], rel=1e-6
    )


def test_non_finite_loss_raises_naming_the_step() -> None:
    # SGD on log(w): w <- w - lr / w. With lr=0.3: 1, 0.7, 0.2714, -0.834 -> log < 0 is NaN
    # at step 3 (0-based). Python oracle below finds the step independently.
    lr, w, oracle = 0.3, 1.0, None
    for s in range(10):
        if w <= 0:
            oracle = s
            break
        w -= lr / w
    assert oracle == 3

    def loss_fn(params, batch):
        return jnp.log(params["w"]), {}

    opt = training.make_optimizer(lr, clip_norm=None, optimizer="sgd")
    st = training.init_state({"w": jnp.array(1.0)}, opt, 0)
    with pytest.raises(training.NonFiniteLossError, match="at step 3") as err:
        training.train(
            loss_fn, st, opt, lambda r, s: None, num_steps=10, eval_every=2, progress=False
        )
    assert err.value.step == 3


def test_sequence_model_is_scan_plus_readout() -> None:
    cell = gr.gru(7)
    model = training.sequence_model(cell, 3, 2)

    @jax.jit  # one compile: params, inputs, the model and the scan
    def run(key):
        p, xs = model.init(key), jax.random.normal(key, (4, 9, 3))
        return p, model.apply(p, xs), gr.scan(cell, p.cell, xs)

    p, (final, out), (ref_final, hs) = to_numpy(run(KEY))
    chex.assert_trees_all_close(out, hs @ p.w_out + p.b_out, rtol=1e-6)
    chex.assert_trees_all_close(final, ref_final)
    assert out.shape == (4, 9, 2)
    with pytest.raises(TypeError, match="Cell"):
        training.sequence_model("lstm", 3, 2)


def test_stream_chunks_tile_the_stream_and_reset_at_its_start() -> None:
    task = tasks.echo(12, 2)
    fn = training.stream_batches(task, 3, 4)

    @jax.jit  # one compile (eagerly, each sampling and slicing op compiles one)
    def run(key):
        full = task.sample(jax.random.fold_in(key, 1), 3)  # stream 1 = steps 3, 4, 5
        return full, [fn(key, jnp.int32(s)) for s in (3, 4, 5)]

    full, chunks = to_numpy(run(KEY))
    chex.assert_trees_all_equal(np.concatenate([c.batch.inputs for c in chunks], 1), full.inputs)
    assert [bool(c.first) for c in chunks] == [True, False, False]
    with pytest.raises(ValueError, match="divide"):
        training.stream_batches(task, 3, 5)


def test_stateful_step_gradient_equals_truncated_scan_gradient() -> None:
    """On the 2nd chunk, carried-state BPTT == gr.scan(truncate=k) on the whole stream."""
    k, T = 5, 10
    task = tasks.echo(T, 2, vocab=3)
    model = training.task_model(gr.lstm(6), task)
    fn = training.stream_batches(task, 4, k)
    sloss = training.stateful_task_loss(model, task)

    @jax.jit  # params, data and both gradients in one compiled program
    def both(key):
        p = model.init(key)
        stream = task.sample(jax.random.fold_in(key, 0), 4)  # stream 0 = chunks at steps 0, 1
        chunk0, chunk1 = fn(key, jnp.int32(0)), fn(key, jnp.int32(1))
        zero = model.cell.initial_state(p.cell, (4,))
        second = stream._replace(mask=stream.mask.at[:, :k].set(0.0))

        def full_loss(q):
            _, out = model.apply(q, stream.inputs, truncate=k)
            return task.loss_fn(out, second)[0]

        _, (_, carry) = sloss(p, chunk0, zero)
        g_state = jax.grad(lambda q: sloss(q, chunk1, jax.lax.stop_gradient(carry))[0])(p)
        return p, zero, g_state, jax.grad(full_loss)(p)

    p, zero, g_state, g_full = both(KEY)
    for a, b in zip(jax.tree_util.tree_leaves(g_state), jax.tree_util.tree_leaves(g_full)):
        chex.assert_trees_all_close(a, b, rtol=2e-4, atol=1e-6)
    # and the stateful loop trains through it with the carry threaded
    opt = training.make_optimizer(1e-2)
    st = training.init_state(p, opt, 0, carry=zero)
    res = training.train(
        sloss, st, opt, fn, num_steps=4, stateful=True, eval_every=2, progress=False
    )
    assert int(res.state.step) == 4
    assert jax.tree_util.tree_structure(res.state.carry) == jax.tree_util.tree_structure(zero)


def test_make_optimizer_schedules_and_errors() -> None:
    for sched in ("constant", "cosine", "warmup_cosine"):
        opt = training.make_optimizer(1e-3, schedule=sched, num_steps=10, warmup_steps=2)
        assert isinstance(opt, optax.GradientTransformation)
    with pytest.raises(ValueError, match="num_steps"):
        training.make_optimizer(1e-3, schedule="cosine")
    with pytest.raises(ValueError, match="schedule"):
        training.make_optimizer(1e-3, schedule="linear")
    with pytest.raises(ValueError, match="optimizer"):
        training.make_optimizer(1e-3, optimizer="nope")
    with pytest.raises(ValueError, match="learning_rate"):
        training.make_optimizer(0.0)


def test_train_rejects_bad_arguments() -> None:
    opt = training.make_optimizer(1e-3)
    st = training.init_state({"w": jnp.zeros(())}, opt, 0)
    with pytest.raises(ValueError, match="eval_every"):
        training.train(
            lambda p, b: (p["w"], {}),
            st,
            opt,
            lambda r, s: None,
            num_steps=3,
            eval_every=0,
            progress=False,
        )
    with pytest.raises(TypeError, match="TrainState"):
        training.train(lambda p, b: (p["w"], {}), (1, 2), opt, lambda r, s: None, num_steps=3)


def test_readme_training_example_runs() -> None:
    from _readme import readme_block

    code = readme_block("train-loop")
    exec(compile(code, "README.md:train-loop", "exec"), {"__name__": "train_loop"})


def _finite_json_lines(path) -> list[dict]:
    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in {path}")

    return [json.loads(ln, parse_constant=refuse) for ln in path.read_text().splitlines()]


def test_stop_mode_reports_the_first_bad_step_and_saves_nothing_non_finite(tmp_path) -> None:
    # the loss is finite for updates 0..4 and NaN from update 5 on
    def loss_fn(p, step):
        return jnp.where(step >= 5, jnp.nan, 1.0) * jnp.sum(p["w"] ** 2), {}

    opt = training.make_optimizer(1e-2)
    st = training.init_state({"w": jnp.ones(3)}, opt, 0)
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    res = training.train(
        loss_fn, st, opt, lambda rng, step: step, num_steps=10, eval_every=2, progress=False,
        checkpoint_dir=ckpt, log_path=log, on_nonfinite="stop",
    )  # fmt: skip
    assert res.diverged_step == 5
    assert int(res.state.step) == 4 and [h["step"] for h in res.history] == [2, 4]
    chex.assert_shape(res.per_step["loss"], (6,))
    assert np.isnan(res.per_step["loss"][-1]) and np.all(np.isfinite(res.per_step["loss"][:5]))
    assert [s for s, _ in checkpoint.list_checkpoints(ckpt)] == [2, 4]
    restored, _ = checkpoint.restore_checkpoint(checkpoint.latest_checkpoint(ckpt), res.state)
    chex.assert_trees_all_close(restored, res.state)
    assert [r["step"] for r in _finite_json_lines(log)] == [2, 4]


def test_params_that_overflow_with_a_finite_loss_are_never_saved(tmp_path) -> None:
    # update 3 sees a finite loss (1e38 * mean(w), w = 1) but its SGD step sends w to -inf
    def loss_fn(p, step):
        return jnp.where(step == 3, 1e38, 0.0) * jnp.mean(p["w"]), {}

    opt = training.make_optimizer(100.0, clip_norm=None, optimizer="sgd")
    st = training.init_state({"w": jnp.ones(2)}, opt, 0)
    kw = dict(num_steps=8, eval_every=4, progress=False)
    with pytest.raises(training.NonFiniteLossError, match="at step 4") as err:
        training.train(loss_fn, st, opt, lambda r, s: s, checkpoint_dir=tmp_path / "a", **kw)
    assert err.value.step == 4
    assert checkpoint.list_checkpoints(tmp_path / "a") == []
    res = training.train(
        loss_fn, st, opt, lambda r, s: s, checkpoint_dir=tmp_path / "b", on_nonfinite="stop", **kw
    )
    assert res.diverged_step == 4 and res.history == [] and int(res.state.step) == 0
    assert checkpoint.list_checkpoints(tmp_path / "b") == []


def test_a_finite_divergence_is_flagged_against_the_baseline_and_the_first_loss() -> None:
    """Loss far above both where a run starts and the memoryless baseline: flagged, as
    are non-finite losses; a run that only failed to learn is not."""
    flag = training.diverged_finitely
    assert flag(float("nan"), 1.0) and flag(float("inf"), 1.0, 1.0)
    assert flag(11.0, 1.0) and not flag(9.0, 1.0)
    assert not flag(2.3, 0.1, initial=2.3)  # stuck near the start: not a divergence
    assert flag(30.0, 0.1, initial=2.3) and not flag(20.0, 0.1, initial=2.3)
    assert flag(5.0, 0.1, initial=2.3, factor=2.0)


def _tiny_fit(task, **kw):
    base = dict(num_steps=4, batch_size=4, eval_every=2, eval_batch_size=8, progress=False)
    # gru(16): the size of test_fit_reduces_loss's and the docs' example (fit compiles the
    # cell's init one operation at a time, per shape: shared)
    return training.fit(task, gr.gru(16), **{**base, "early_stop": False, "seed": 3, **kw})


# the task of the small fits below (vocab 2: test_fit_reduces_loss's input size, so the
# cell's init and the optimizer's zeros reuse its compiled operations)
ECHO = tasks.echo(6, 2, vocab=2)


def test_a_second_equal_fit_does_not_trace_again() -> None:
    task, traced = ECHO, []

    def sample(key, batch_size):
        traced.append(isinstance(key, jax.core.Tracer))
        return task.sample(key, batch_size)

    counted = task._replace(sample=sample)  # same definition, so the same compiled code
    _, first = _tiny_fit(counted)
    assert sum(traced) > 0
    before = sum(traced)
    _, second = _tiny_fit(counted)  # fresh closures inside fit: keyed on what they compute
    assert sum(traced) == before
    chex.assert_trees_all_equal(first.state.params, second.state.params)


def test_train_reuses_compilation_for_an_equal_cache_key() -> None:
    traces: list[int] = []

    def make_loss():
        def loss_fn(p, b):
            traces.append(1)
            return jnp.sum((p["w"] - b) ** 2), {}

        return loss_fn

    opt = training.make_optimizer(1e-2)
    st = training.init_state({"w": jnp.ones(3)}, opt, 0)
    kw = dict(num_steps=4, eval_every=2, progress=False)
    counts = []
    for key in ("quadratic", "quadratic", None, None):
        training.train(make_loss(), st, opt, lambda r, s: jnp.zeros(3) + s, cache_key=key, **kw)
        counts.append(len(traces))
    assert counts[1] == counts[0] > 0  # equal key: no new trace
    assert counts[3] > counts[2] > counts[1]  # no key: fresh functions are traced anew


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"task": tasks.echo(6, 3, vocab=2)}, "task_delay: checkpoint has 2, expected 3"),
        ({"eval_seed": 7}, "eval_seed: checkpoint has 12345, expected 7"),
        ({"eval_batch_size": 4}, "eval_batch_size: checkpoint has 8, expected 4"),
        ({"num_eval_batches": 2}, "num_eval_batches: checkpoint has 1, expected 2"),
    ],
)
def test_resume_refuses_another_task_definition_or_evaluation_set(tmp_path, change, needle):
    ckpt = tmp_path / "ckpt"
    _tiny_fit(ECHO, num_steps=2, checkpoint_dir=ckpt)
    kw = {"task": ECHO, **change}
    with pytest.raises(checkpoint.CheckpointError, match="incompatible") as err:
        _tiny_fit(kw.pop("task"), checkpoint_dir=ckpt, resume=True, **kw)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_resuming_one_run_keeps_the_other_runs_lines_of_a_shared_log(tmp_path):
    log, task = tmp_path / "log.jsonl", ECHO
    _tiny_fit(task, checkpoint_dir=tmp_path / "a", log_path=log, log_extra={"run": "a"})
    _tiny_fit(task, checkpoint_dir=tmp_path / "b", log_path=log, log_extra={"run": "b"})
    shutil.rmtree(checkpoint.step_dir(tmp_path / "a", 4))  # run a was killed after step 2
    _tiny_fit(task, checkpoint_dir=tmp_path / "a", log_path=log, log_extra={"run": "a"},
              resume=True)  # fmt: skip
    rows = [(r["run"], r["step"]) for r in _finite_json_lines(log)]
    assert sorted(rows) == [("a", 2), ("a", 4), ("b", 2), ("b", 4)], rows
