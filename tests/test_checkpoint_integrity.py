"""Checkpoints prove their integrity on restore: for every file of a saved checkpoint,
flipped bytes (size unchanged), truncation or deletion never load anything but what was
saved; the newest intact checkpoint is used instead, or a one-line error is raised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gatedrnn as gr
from gatedrnn.training import checkpoint as ck

pytestmark = [
    # each failed read runs a full gc.collect(): over this module's allocations only
    pytest.mark.usefixtures("frozen_heap"),
    # an echo of a failed read that escapes its scope (sys.unraisablehook) fails the test
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


@jax.jit
def _state(seed: int):
    """LSTM params (big enough that array data is not inlined in the index), adam state,
    a step count and a key: a TrainState-like pytree. One compiled program for every seed
    (eagerly, each operation of init and adam compiles a program per shape)."""
    cell = gr.lstm(24)
    params = cell.init(jax.random.PRNGKey(seed), 8)
    opt = optax.adam(1e-3)
    grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.5 + seed), params)
    opt_state = opt.update(grads, opt.init(params))[1]
    return {
        "params": params,
        "opt": opt_state,
        "step": jnp.asarray(seed, jnp.int32),
        "rng": jax.random.PRNGKey(seed),
    }


def _equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A run folder with two checkpoints: step 1 (state 1) and step 2 (state 2)."""
    root = tmp_path_factory.mktemp("saved")
    ck.save_checkpoint(root, 1, _state(1), {"history": [1.5]})
    ck.save_checkpoint(root, 2, _state(2), {"history": [1.5, 0.25]})
    return root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":  # 16 bytes in the middle, size unchanged
        mid = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[mid : mid + 16])
        path.write_bytes(data[:mid] + flipped + data[mid + 16 :])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * max(1, len(data) // 8))
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "garbage"])
def test_damage_to_any_file_never_loads_anything_but_what_was_saved(saved, tmp_path, how, capfd):
    like, want1, want2 = _state(0), _state(1), _state(2)
    newest = ck.step_dir(saved, 2)
    files = sorted(p.relative_to(newest) for p in newest.rglob("*") if p.is_file())
    assert len(files) >= 10, files
    outcomes: dict[str, list[str]] = {"same": [], "older": [], "error": []}
    for i, rel in enumerate(files):
        root = tmp_path / f"case{i}"
        shutil.copytree(saved, root)
        _damage(ck.step_dir(root, 2) / rel, how)
        # resuming restores the damaged checkpoint first: exactly what was saved (step 2),
        # or a one-line error that it reports (the notices below) before using step 1
        try:
            got, info, used = ck.restore_latest(root, like)
        except ck.CheckpointError as e:  # only if nothing is intact: not the case here
            pytest.fail(f"{how} {rel}: older checkpoint intact, but: {e}")
        if info["step"] == 2:
            assert _equal(got, want2) and info["meta"]["history"] == [1.5, 0.25], rel
            outcomes["same"].append(str(rel))
        else:
            assert info["step"] == 1 and used.name == "step_00000001", rel
            assert _equal(got, want1) and info["meta"]["history"] == [1.5], rel
            outcomes["older"].append(str(rel))
    # damage to the array data and metadata was caught (not only harmless files changed)
    assert any(r.startswith("state") for r in outcomes["older"]), outcomes
    assert "meta/metadata" in outcomes["older"], outcomes
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-2000:]
    notices = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("gatedrnn: skipped checkpoint step_00000002") for line in notices)
    assert all(len(line) < 500 for line in notices), notices
    assert len(notices) == len(outcomes["older"])


def test_flipped_array_bytes_are_caught_by_the_digest(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    data = sorted(
        (p for p in (ck.step_dir(root, 2) / "state").rglob("*") if "ocdbt.process" in str(p)),
        key=lambda p: p.stat().st_size if p.is_file() else 0,
    )[-1]
    _damage(data, "flip")
    with pytest.raises(ck.CorruptCheckpointError, match="does not match its digest") as err:
        ck.restore_checkpoint(ck.step_dir(root, 2), _state(0))
    assert "\n" not in str(err.value)


def _rewrite_meta(path: Path, edit) -> None:
    meta = path / "meta" / "metadata"
    info = json.loads(meta.read_text())
    edit(info)
    meta.write_text(json.dumps(info))


def test_edited_metadata_and_missing_digests_are_refused(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    newest = ck.step_dir(root, 2)
    _rewrite_meta(newest, lambda info: info["meta"]["history"].__setitem__(1, 0.5))
    with pytest.raises(ck.CorruptCheckpointError, match="metadata does not match its digest"):
        ck.load_meta(newest)
    _rewrite_meta(newest, lambda info: [info.pop("digest"), info.pop("digests")])
    with pytest.raises(ck.CorruptCheckpointError, match="no integrity digests"):
        ck.restore_checkpoint(newest, _state(0))


def test_empty_newer_step_folder_does_not_block_resuming(saved, tmp_path, capsys):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    ck.step_dir(root, 3).mkdir()
    state, history, _ = ck.start(_state(0), root, resume=True)
    assert _equal(state, _state(2)) and history == [1.5, 0.25]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "skipped checkpoint step_00000003" in err[0] and "the folder is empty" in err[0]
    assert "moved it to step_00000003.corrupt" in err[0] and "using step_00000002" in err[0]
    assert (root / "step_00000003.corrupt").is_dir() and not ck.step_dir(root, 3).exists()
    assert [s for s, _ in ck.list_checkpoints(root)] == [1, 2]


def test_nothing_intact_is_one_line(saved, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(saved, root)
    for _, path in ck.list_checkpoints(root):
        _damage(path / "meta" / "metadata", "truncate")
    with pytest.raises(ck.CheckpointError, match="no intact checkpoint") as err:
        ck.start(_state(0), root, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300 and "step_00000002" in msg, msg
    # nothing was moved aside: the run did not resume
    assert [s for s, _ in ck.list_checkpoints(root)] == [1, 2]
