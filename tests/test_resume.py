"""Faults: a training run killed with SIGKILL (a real subprocess) and restarted with
--resume ends with the same params and metrics as one that never stopped; a missing,
truncated or incompatible checkpoint is a clear error, never a silent fresh start; a
non-finite loss stops the run naming the step and keeps the last good checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

import gatedrnn as gr
from experiments import cli
from gatedrnn import training
from gatedrnn.training import checkpoint, io, tasks

# each failed read runs a full gc.collect(): over this module's allocations only
pytestmark = pytest.mark.usefixtures("frozen_heap")

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 40, 10
FIT = {
    "batch_size": 8,
    "learning_rate": 1e-2,
    "eval_every": EVERY,
    "eval_batch_size": 32,
    "early_stop": False,
    "progress": False,
    "seed": 1,
}

# A training script: GRU on the adding task with checkpoints; --hang-at sleeps for good after
# that step's checkpoint so that the test can kill it mid-run; --nan-at poisons the inputs
# from a step. The SIGKILLed run and its resume are real processes; the other runs call
# the script's main in the test's process (through cli.run: exit status and stderr as a
# process has them, without paying a fresh JAX import and compiles per run).
CHILD = textwrap.dedent(
    f"""
    import time
    import jax.numpy as jnp
    import numpy as np
    import gatedrnn as gr
    from experiments import cli
    from gatedrnn.training import checkpoint, tasks
    from gatedrnn import training

    def main(argv=None):
        p = cli.ArgumentParser()
        p.add_argument("--out", type=cli.output_dir, required=True)
        p.add_argument("--resume", action="store_true")
        p.add_argument("--hang-at", type=int, default=-1)
        p.add_argument("--hidden-size", type=cli.positive_int, default=8)
        p.add_argument("--nan-at", type=int, default=-1)
        args = p.parse_args(argv)
        if args.hang_at >= 0:
            save = checkpoint.save
            def hanging_save(directory, step, *a, **k):
                path = save(directory, step, *a, **k)
                if step == args.hang_at:
                    time.sleep(600)
                return path
            checkpoint.save = hanging_save
        task = tasks.adding(10)
        if args.nan_at >= 0:
            batches = training.task_batches(task, {FIT["batch_size"]})
            def batch_fn(rng, step):
                b = batches(rng, step)
                bad = jnp.where(step >= args.nan_at, jnp.nan, 1.0)
                return b._replace(inputs=b.inputs * bad)
            model = training.task_model(gr.gru(args.hidden_size), task)
            opt = training.make_optimizer(1e-2)
            state = training.init_state(model.init(training.param_key(1)), opt, 1)
            training.train(training.task_loss(model, task), state, opt, batch_fn,
                        num_steps={STEPS}, eval_every={EVERY}, progress=False,
                        checkpoint_dir=args.out / "ckpt", resume=args.resume)
            return 0
        kw = {FIT!r}
        _, result = training.fit(task, gr.gru(args.hidden_size), num_steps={STEPS},
                              checkpoint_dir=args.out / "ckpt", resume=args.resume, **kw)
        leaves = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(
            result.state.params)]
        with cli.atomic_path(args.out / "params.npz") as tmp:
            np.savez(tmp, *leaves)
        hist = [{{k: h[k] for k in ("step", "train_loss", "grad_norm", "eval_loss")}}
                for h in result.history]
        cli.write_json(args.out / "history.json", hist)

    if __name__ == "__main__":
        cli.run(main)
    """
)


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> dict:
    """The script, its ``main`` loaded in this process, and an environment sharing a
    compilation cache between its runs."""
    base = tmp_path_factory.mktemp("resume")
    script = base / "trainer.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        # the test run's cache (tests/conftest.py) if there is one: shared with the other
        # children and this process
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or str(base / "xla-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    env.pop("GATEDRNN_DEBUG", None)
    spec = importlib.util.spec_from_file_location("resume_trainer", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"script": script, "env": env, "base": base, "main": module.main}


def launch(child: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(child["script"]), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child["env"],
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_here(child: dict, capfd: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The script's exit status and stderr (file descriptor 2, so what C++ libraries write
    too), run in this process through ``cli.run`` as its ``__main__`` does."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run(child["main"], list(args))
    return stop.value.code, capfd.readouterr().err


@pytest.fixture(scope="module")
def uninterrupted(child) -> Path:
    out = child["base"] / "whole"
    # compiled as the children compile (JAX_DISABLE_MOST_OPTIMIZATIONS=1, tests/conftest.py;
    # its per-test fixture has not run yet for a module-scoped one)
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        child["main"](["--out", str(out)])
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        cli.release_outputs()
    return out


def load(out: Path) -> tuple[list, list]:
    with np.load(out / "params.npz") as z:
        params = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    return params, json.loads((out / "history.json").read_text())


def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(child, uninterrupted):
    out = child["base"] / "killed"
    proc = launch(child, "--out", str(out), "--hang-at", "20")
    first = out / "ckpt" / "step_00000020"
    deadline = time.monotonic() + 600
    while not first.exists():
        assert proc.poll() is None, finish(proc).stderr[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    killed = finish(proc)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "params.npz").exists() and not (out / "history.json").exists()
    saved = [step for step, _ in checkpoint.list_checkpoints(out / "ckpt")]
    assert saved and max(saved) < STEPS  # stopped mid-way, with a checkpoint to go on from

    # starting again without resume must not silently start from scratch
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        training.fit(
            tasks.adding(10), gr.gru(8), num_steps=STEPS, checkpoint_dir=out / "ckpt", **FIT
        )

    resumed = finish(launch(child, "--out", str(out), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    params, history = load(out)
    want_params, want_history = load(uninterrupted)
    assert len(params) == len(want_params)
    for got, want in zip(params, want_params):
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    for got, want in zip(history, want_history):
        for key in ("train_loss", "grad_norm", "eval_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="cannot resume: no checkpoint in"):
        training.fit(
            tasks.adding(10),
            gr.gru(8),
            num_steps=STEPS,
            checkpoint_dir=tmp_path,
            resume=True,
            **FIT,
        )
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        training.fit(tasks.adding(10), gr.gru(8), num_steps=STEPS, resume=True, **FIT)


def copy_run(uninterrupted: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(uninterrupted / "ckpt", dst)
    return dst


@pytest.mark.parametrize(
    ("cell", "needle"),
    [
        (gr.gru(9), "cell_options: checkpoint has {'hidden_size': 8"),
        (gr.lstm(8), "cell: checkpoint has 'gru', expected 'lstm'"),
        (gr.gru(8, reset_after=False), "'reset_after': False"),
    ],
)
def test_incompatible_checkpoint_names_the_mismatch(uninterrupted, tmp_path, cell, needle):
    ckpt = copy_run(uninterrupted, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="incompatible") as err:
        training.fit(
            tasks.adding(10), cell, num_steps=STEPS, checkpoint_dir=ckpt, resume=True, **FIT
        )
    assert needle in str(err.value)
    with pytest.raises(checkpoint.CheckpointError, match="seq_len: checkpoint has 10, expected 12"):
        training.fit(
            tasks.adding(12), gr.gru(8), num_steps=STEPS, checkpoint_dir=ckpt, resume=True, **FIT
        )


def test_state_of_other_shapes_is_refused_even_with_matching_config(uninterrupted, tmp_path):
    ckpt = copy_run(uninterrupted, tmp_path)
    model = training.task_model(gr.gru(9), tasks.adding(10))
    opt = training.make_optimizer(1e-2)
    state = training.init_state(model.init(training.param_key(1)), opt, 1)
    with pytest.raises(checkpoint.CheckpointError, match=r"\.w_h: checkpoint has shape \(8, 24\)"):
        training.train(
            training.task_loss(model, tasks.adding(10)),
            state,
            opt,
            training.task_batches(tasks.adding(10), 8),
            num_steps=STEPS,
            checkpoint_dir=ckpt,
            resume=True,
            progress=False,
        )


def _break(ckpt: Path, how: str) -> None:
    if how == "truncate_arrays":
        victims = [p for p in (ckpt / "state").rglob("*") if p.is_file()]
        for p in victims:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "delete_meta":
        shutil.rmtree(ckpt / "meta")
    elif how == "empty":
        shutil.rmtree(ckpt)
        ckpt.mkdir()


@pytest.mark.parametrize("how", ["truncate_arrays", "delete_meta", "empty"])
def test_broken_latest_checkpoint_falls_back_to_the_older_intact_one(
    uninterrupted, tmp_path, how, capsys
):
    ckpt = copy_run(uninterrupted, tmp_path)
    _break(ckpt / "step_00000040", how)
    _, result = training.fit(
        tasks.adding(10), gr.gru(8), num_steps=STEPS, checkpoint_dir=ckpt, resume=True, **FIT
    )
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "skipped checkpoint step_00000040" in notice[0], notice
    assert "using step_00000030" in notice[0] and "step_00000040.corrupt" in notice[0]
    assert (ckpt / "step_00000040.corrupt").is_dir()  # kept for inspection, never resumed
    # resumed from step 30, so it ends where the uninterrupted run ended
    want, _ = load(uninterrupted)
    got = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state.params)]
    for g, w in zip(got, want):
        chex.assert_trees_all_close(g, w, rtol=1e-6, atol=1e-7)
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]


@pytest.mark.parametrize("how", ["truncate_arrays", "delete_meta", "empty"])
def test_no_intact_checkpoint_is_a_one_line_error_not_a_fresh_start(uninterrupted, tmp_path, how):
    ckpt = copy_run(uninterrupted, tmp_path)
    for _, path in checkpoint.list_checkpoints(ckpt):
        _break(path, how)
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint") as err:
        training.fit(
            tasks.adding(10), gr.gru(8), num_steps=STEPS, checkpoint_dir=ckpt, resume=True, **FIT
        )
    assert "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)


def test_unfinished_checkpoint_folder_is_ignored(uninterrupted, tmp_path):
    ckpt = copy_run(uninterrupted, tmp_path)
    # what orbax leaves behind when killed while saving: a temporary folder, never step_*
    (ckpt / "step_00000050.orbax-checkpoint-tmp-1234").mkdir()
    assert checkpoint.latest_checkpoint(ckpt).name == "step_00000040"


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    child, tmp_path, capfd
):
    code, stderr = run_here(child, capfd, "--out", str(tmp_path), "--nan-at", "25")
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert "training loss became non-finite (nan) at step 25" in lines[0]
    saved = [step for step, _ in checkpoint.list_checkpoints(tmp_path / "ckpt")]
    assert saved == [10, 20]
    info = checkpoint.load_meta(tmp_path / "ckpt" / "step_00000020")
    assert all(np.isfinite(h["train_loss"]) for h in info["meta"]["history"])


def test_resume_drops_log_lines_written_after_the_checkpoint(tmp_path):

    log = tmp_path / "log.jsonl"
    rows = [{"step": s, "train_loss": 1.0 / s} for s in (10, 20, 30)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4')  # cut by a kill
    io.trim_log(log, 20)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [10, 20]


def _flip_array_data(step: Path) -> None:
    """Sixteen bytes flipped in the middle of the largest array data file (size unchanged)."""
    data = max(
        (p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(data.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    data.write_bytes(bytes(raw))


def test_cli_resume_skips_flipped_bytes_and_stops_in_one_line_when_nothing_is_intact(
    child, uninterrupted, tmp_path, capfd
):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted / "ckpt", out / "ckpt")
    _flip_array_data(out / "ckpt" / "step_00000040")
    code, stderr = run_here(child, capfd, "--out", str(out), "--resume")
    assert code == 0, stderr[-3000:]
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "skipped checkpoint step_00000040" in err[0], err
    assert "using step_00000030" in err[0] and "step_00000040.corrupt" in err[0]
    for got, want in zip(load(out)[0], load(uninterrupted)[0]):
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)

    for _, step in checkpoint.list_checkpoints(out / "ckpt"):
        _flip_array_data(step)
    code, stderr = run_here(child, capfd, "--out", str(out), "--resume")
    assert code == 2
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "error: cannot resume: no intact checkpoint in" in err[0] and len(err[0]) < 400
