"""gatedrnn.training.mesh: data-parallel training on 8 simulated CPU devices (a subprocess
that calls chex.set_n_cpu_devices(8) first) follows the one-device run: the same
loss curve and parameters within float tolerance (also across a checkpoint and resume),
with the batch really split and the parameters really replicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    r"""
    import json, os, sys, tempfile
    import chex
    chex.set_n_cpu_devices(8)  # before anything asks JAX for its devices
    import jax, jax.numpy as jnp, numpy as np
    # What is checked here is how work is split over devices and resumed, not XLA's
    # optimizations: compile without most of them (about half the compile time).
    jax.config.update("jax_disable_most_optimizations", True)
    import gatedrnn as gr
    from gatedrnn.training import tasks
    from gatedrnn import training

    assert jax.device_count() == 8, jax.devices()
    mesh = training.data_mesh()
    out = {"devices": mesh.size}

    def max_rel(a, b):
        diffs = []
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            x, y = np.asarray(x), np.asarray(y)
            diffs.append(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)))
        return max(diffs)

    # --- the long-range task through training.fit: 1 device vs the 8-device mesh
    task = tasks.adding(12)
    kw = dict(num_steps=30, batch_size=16, learning_rate=1e-2, eval_every=10,
              eval_batch_size=64, early_stop=False, progress=False, seed=3)
    _, one = training.fit(task, gr.gru(16), **kw)
    # on 8 devices: stopped after 20 steps, then resumed from the checkpoint up to 30
    ckpt = tempfile.mkdtemp()
    training.fit(task, gr.gru(16), mesh=mesh, checkpoint_dir=ckpt, **{**kw, "num_steps": 20})
    _, many = training.fit(task, gr.gru(16), mesh=mesh, checkpoint_dir=ckpt, resume=True, **kw)
    out["adding"] = {
        "train_loss_one": [h["train_loss"] for h in one.history],
        "train_loss_many": [h["train_loss"] for h in many.history],
        "eval_loss_one": [h["eval_loss"] for h in one.history],
        "eval_loss_many": [h["eval_loss"] for h in many.history],
        "param_rel_diff": max_rel(many.state.params, one.state.params),
        "param_devices": len(many.state.params.w_out.sharding.device_set),
        "param_replicated": bool(many.state.params.w_out.sharding.is_fully_replicated),
    }

    # --- a batch is split over the devices
    batch = training.shard_batch(task.sample(jax.random.PRNGKey(0), 16), mesh)
    out["batch_shard_shape"] = list(batch.inputs.addressable_shards[0].data.shape)

    # --- a batch that does not split evenly is refused before anything runs
    try:
        training.fit(task, gr.gru(16), **{**kw, "batch_size": 12}, mesh=mesh)
        out["indivisible"] = None
    except ValueError as e:
        out["indivisible"] = str(e)
    # ... naming the batch that does not split: the training batch before the held-out ones
    for name, extra in [("eval", {"eval_batch_size": 12}), ("small", {"batch_size": 3})]:
        try:
            training.fit(task, gr.gru(16), **{**kw, **extra}, mesh=mesh)
            out[f"indivisible_{name}"] = None
        except ValueError as e:
            out[f"indivisible_{name}"] = str(e)

    # --- the char model (stateful TBPTT on the same loop): 1 device vs the 8-device mesh
    from experiments import char_lm as lm
    text = ("def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 20)[:600]
    model = {"cell": "gru", "hidden_size": 16, "num_layers": 2, "embed_size": 8}
    cfg = lm.TrainConfig(steps=6, batch_size=8, seq_len=8, learning_rate=1e-2, warmup=2,
                         eval_every=3, eval_chars=400, checkpoint_every=6, val_fraction=0.1)
    one_lm = lm.train(text, model, cfg)
    many_lm = lm.train(text, model, cfg, mesh=mesh)
    out["char_lm"] = {
        "train_bpc_one": [h["train_bpc"] for h in one_lm["history"]],
        "train_bpc_many": [h["train_bpc"] for h in many_lm["history"]],
        "val_bpc": [one_lm["val_bpc"], many_lm["val_bpc"]],
        "param_rel_diff": max_rel(many_lm["params"], one_lm["params"]),
        "carry_devices": len(
            jax.tree_util.tree_leaves(many_lm["state"].carry)[0].sharding.device_set
        ),
    }

    # --- the README's data-parallel example, as written
    import re
    readme = open(sys.argv[1]).read()
    block = re.search(r"<!-- test: data-parallel -->\s*```python\n(.*?)```", readme, re.S)
    exec(compile(block.group(1), "README.md:data-parallel", "exec"), {"__name__": "readme"})
    out["readme_checkpoints"] = sorted(os.listdir("runs/adding"))

    print("RESULT " + json.dumps(out))
    """
)


def _run_child(cwd: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    """The 8-device child's results, computed once (under pytest-xdist a module runs whole
    on one worker, tests/conftest.py)."""
    return _run_child(tmp_path_factory.mktemp("parallel"))


def test_eight_devices_with_a_resume_follow_one_device_on_the_adding_task(result):
    r = result["adding"]
    assert result["devices"] == 8
    assert len(r["train_loss_one"]) == 3
    for key in ("train_loss", "eval_loss"):
        one, many = r[f"{key}_one"], r[f"{key}_many"]
        assert one == pytest.approx(many, rel=1e-4, abs=1e-6), key
    assert r["param_rel_diff"] < 1e-4


def test_params_are_replicated_and_the_batch_split(result):
    r = result["adding"]
    assert r["param_devices"] == 8 and r["param_replicated"]
    assert result["batch_shard_shape"] == [2, 12, 2]  # 16 sequences / 8 devices


def test_indivisible_batch_is_a_clear_error(result):
    msg = result["indivisible"]
    assert msg is not None
    assert "multiple of the 8 devices" in msg and "(12, 12, 2)" in msg and "16" in msg
    assert msg.startswith("the training batch has 12 rows")
    eval_msg = result["indivisible_eval"]
    assert eval_msg is not None and eval_msg.startswith("the evaluation batch 0 has 12 rows")
    small = result["indivisible_small"]
    assert small is not None and "training batch has 3 rows" in small
    assert "use a batch size of 8," in small and "8 or 8" not in small


def test_batch_size_advice_names_the_nearest_valid_sizes():
    from gatedrnn.training.mesh import batch_size_advice

    assert batch_size_advice(12, 8).startswith("use a batch size of 8 or 16, or a mesh of 6 ")
    assert batch_size_advice(3, 8) == (
        "use a batch size of 8, or a mesh of 3 devices (data_mesh(jax.devices()[:3]))"
    )
    assert batch_size_advice(7, 8) == "use a batch size of 8, or a mesh of 7 devices" + (
        " (data_mesh(jax.devices()[:7]))"
    )
    assert batch_size_advice(17, 4) == "use a batch size of 16 or 20"


def test_readme_example_runs_on_eight_devices_and_checkpoints(result):
    assert result["readme_checkpoints"] == ["step_00000020", "step_00000040"]


def test_eight_devices_follow_one_device_on_the_char_model(result):
    r = result["char_lm"]
    assert len(r["train_bpc_one"]) == 2
    assert r["train_bpc_one"] == pytest.approx(r["train_bpc_many"], rel=1e-4)
    assert r["val_bpc"][0] == pytest.approx(r["val_bpc"][1], rel=1e-4)
    assert r["param_rel_diff"] < 1e-4
    assert r["carry_devices"] == 8
