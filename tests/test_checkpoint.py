"""Tests for gatedrnn.training.checkpoint: round trip, newest-first, keep, clear errors."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import scan_numpy

import gatedrnn as gr
from gatedrnn.training import checkpoint as ck

# each failed read runs a full gc.collect(): over this module's allocations only
pytestmark = pytest.mark.usefixtures("frozen_heap")


@functools.partial(jax.jit, static_argnums=0)
def _state(hidden: int = 5):
    """LSTM params, adam state and a carry: one compiled program per size (eagerly, every
    operation of init and adam compiles one program per shape)."""
    cell = gr.lstm(hidden)
    params = cell.init(jax.random.PRNGKey(0), 3)
    opt = optax.adam(1e-3)
    opt_state = opt.update(jax.tree_util.tree_map(jnp.ones_like, params), opt.init(params))[1]
    return {"params": params, "opt": opt_state, "carry": cell.initial_state(params, (2,))}


@functools.partial(jax.jit, static_argnums=0)
def _params_and_carry(cell: gr.Cell, key: jax.Array) -> dict:
    """``cell``'s params (input size 3) and a batched initial state, compiled once per cell."""
    params = cell.init(key, 3)
    return {"params": params, "carry": cell.initial_state(params, (2,))}


def test_round_trip_is_exact_and_keeps_structure(tmp_path: Path):
    st = _state()
    path = ck.save_checkpoint(tmp_path, 7, st, {"cell": "lstm"})
    assert path.name == "step_00000007"
    like = jax.jit(lambda t: jax.tree_util.tree_map(jnp.zeros_like, t))(st)  # one program
    out, info = ck.restore_checkpoint(path, like, expect_meta={"cell": "lstm"})
    assert info["step"] == 7 and info["meta"] == {"cell": "lstm"}
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(st)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(st)):
        chex.assert_trees_all_equal(a, b)
        assert a.dtype == b.dtype


def test_latest_and_keep(tmp_path: Path):
    st = _state()
    for s in (1, 2, 3):
        ck.save_checkpoint(tmp_path, s, st, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 3]
    # an unfinished (temporary) orbax directory is ignored
    (tmp_path / "step_00000009.orbax-checkpoint-tmp-123").mkdir()
    assert ck.latest_checkpoint(tmp_path).name == "step_00000003"
    assert ck.latest_checkpoint(tmp_path / "nothing") is None


def test_missing_truncated_and_incompatible_checkpoints_raise_clear_errors(tmp_path: Path):
    st = _state()
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.restore_checkpoint(tmp_path / "step_00000001", st)
    path = ck.save_checkpoint(tmp_path, 1, st, {"cell": "lstm"})
    with pytest.raises(ck.CheckpointError, match=r"cell: checkpoint has 'lstm', expected 'gru'"):
        ck.restore_checkpoint(path, st, expect_meta={"cell": "gru"})
    with pytest.raises(ck.CheckpointError, match=r"w_h.*\(5, 20\).*expected \(6, 24\)"):
        ck.restore_checkpoint(path, _state(6))
    with pytest.raises(ck.CheckpointError, match="missing leaves"):
        ck.restore_checkpoint(path, {**st, "extra": jnp.zeros(3)})
    # truncate: the array data is gone
    for p in (path / "state").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.restore_checkpoint(path, st)
    shutil.rmtree(path / "meta")
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.load_meta(path)


def test_metadata_odd_values_and_long_step_numbers(tmp_path: Path):
    """NaN and numpy scalars are stored as valid JSON; a tuple in expect_meta equals the
    list it was saved as; a step past 8 digits is still found (issue 22, item 10)."""
    import json

    import numpy as np

    st = _state()
    meta = {"loss": float("nan"), "lr": np.float32(0.5), "sizes": (1, 2)}
    path = ck.save_checkpoint(tmp_path, 123456789, st, meta)
    assert ck.latest_checkpoint(tmp_path) == path and path.name == "step_123456789"
    raw = (path / "meta" / "metadata").read_text()
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    _, info = ck.restore_checkpoint(path, st, expect_meta={"sizes": (1, 2), "lr": 0.5})
    assert info["meta"] == {"loss": "nan", "lr": 0.5, "sizes": [1, 2]}
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("name", sorted(gr.CELLS))
def test_every_registered_cell_round_trips(tmp_path: Path, name: str):
    """Each registered cell's params (and a batched state) come back equal, same type,
    dtypes and shapes, restored into a template of another seed's params; the restored
    params give the same outputs."""
    cell = gr.make_cell(name, 4)
    st = _params_and_carry(cell, jax.random.PRNGKey(1))
    params = st["params"]
    path = ck.save_checkpoint(tmp_path, 1, st, {"cell": name})
    like = {
        "params": _params_and_carry(cell, jax.random.PRNGKey(2))["params"],
        "carry": st["carry"],
    }
    out, _ = ck.restore_checkpoint(path, like, expect_meta={"cell": name})
    assert type(out["params"]) is type(params)
    chex.assert_trees_all_equal(out, st, strict=True)
    xs = np.ones((2, 3, 3), np.float32)  # one compiled scan serves both
    chex.assert_trees_all_equal(scan_numpy(cell, out["params"], xs), scan_numpy(cell, params, xs))
