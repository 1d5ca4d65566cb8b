"""Checkpoints and resume for the training loop, with orbax: one directory per step.

A checkpoint is a directory ``<root>/step_<8 digits>`` holding two orbax items:

* ``state``: any pytree of arrays (the loop's whole
  :class:`~gatedrnn.training.loop.TrainState`: params, optimizer state, step, batch key,
  carry);
* ``meta``: JSON: the step, the caller's metadata (config, vocabulary, history, ...) and
  the *signature* of the state (every leaf's path, shape and dtype).

Orbax writes into a temporary directory and renames it when complete, so a run killed
while saving leaves no ``step_*`` directory behind, only a temporary one that
:func:`latest_checkpoint` ignores. :func:`restore_checkpoint` compares the saved signature
and metadata with what the caller expects first and raises :class:`CheckpointError`
naming the mismatch, rather than an orbax or tensorstore traceback.

Resuming a run (:func:`start`, :func:`save`): batches are a pure function of ``(key,
step)``, so the resumed run draws the same batches as an uninterrupted one and ends with
the same params and metrics. No silent fresh start, ever:

* ``resume=False`` and the folder already holds checkpoints: :class:`CheckpointError`;
* ``resume=True`` and no checkpoint: :class:`CheckpointError`;
* a truncated, unreadable or incompatible checkpoint (other cell, other sizes, other
  config): :class:`CheckpointError` naming the mismatch.

This is the only module that imports orbax. It also holds the atomic file writing the
library needs (:func:`atomic_path`, :func:`write_text`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

_STEP_DIR = re.compile(r"^step_(\d{8})$")
KEEP = 2  # checkpoints a run keeps on disk: the newest and the one before it


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit what the caller expects."""


def tree_signature(tree: PyTree) -> list[list[Any]]:
    """``[[path, shape, dtype], ...]`` for every leaf of ``tree``, in flattening order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(np.asarray(leaf).dtype)]
        if not hasattr(leaf, "dtype")
        else [jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype)]
        for path, leaf in leaves
    ]


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def step_dir(root: str | Path, step: int) -> Path:
    """The directory of the checkpoint at ``step`` under ``root``."""
    return Path(root).absolute() / f"step_{int(step):08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p.absolute()))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest finished checkpoint under ``root``, or None if there is none."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: str | Path,
    step: int,
    state: PyTree,
    meta: dict[str, Any] | None = None,
    *,
    keep: int | None = None,
) -> Path:
    """Write ``state`` and ``meta`` at ``<root>/step_<step>`` atomically.

    Args:
      root: directory of the run's checkpoints (created if needed).
      step: training step the state belongs to (>= 0).
      state: a pytree of arrays.
      meta: JSON-able metadata (config, vocabulary, ...) checked on restore.
      keep: if given, delete all but the newest ``keep`` checkpoints afterwards.

    Returns:
      The checkpoint's directory.
    """
    if int(step) < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be None or >= 1, got {keep}")
    path = step_dir(root, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"step": int(step), "meta": meta or {}, "signature": tree_signature(state)}
    with _checkpointer() as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(info)
            ),
            force=True,
        )
    if keep is not None:
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_meta(path: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint: ``{"step", "meta", "signature"}``.

    Raises:
      CheckpointError: no checkpoint at ``path``, or its metadata is unreadable.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with _checkpointer() as ckptr:
            out = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        info = out["meta"]
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: cannot read its metadata ({e})"
        ) from None
    if not isinstance(info, dict) or not {"step", "meta", "signature"} <= set(info):
        raise CheckpointError(f"checkpoint {path} was not written by gatedrnn.training.checkpoint")
    return info


def _compare_meta(path: Path, saved: dict[str, Any], expect: dict[str, Any]) -> None:
    bad = [
        f"{k}: checkpoint has {saved.get(k, '<missing>')!r}, expected {v!r}"
        for k, v in expect.items()
        if saved.get(k, "<missing>") != v
    ]
    if bad:
        raise CheckpointError(f"checkpoint {path} is incompatible: " + "; ".join(bad))


def _compare_signature(path: Path, saved: list, want: list) -> None:
    saved_d = {p: (tuple(s), d) for p, s, d in saved}
    want_d = {p: (tuple(s), d) for p, s, d in want}
    missing = [p for p in want_d if p not in saved_d]
    extra = [p for p in saved_d if p not in want_d]
    bad = [f"{p}: checkpoint has shape {saved_d[p][0]} {saved_d[p][1]}, expected "
           f"{want_d[p][0]} {want_d[p][1]}" for p in want_d if p in saved_d
           and saved_d[p] != want_d[p]]  # fmt: skip
    msgs = []
    if missing:
        msgs.append(f"missing leaves {missing[:5]}")
    if extra:
        msgs.append(f"unexpected leaves {extra[:5]}")
    msgs += bad[:5]
    if msgs:
        raise CheckpointError(
            f"checkpoint {path} does not fit the expected state: " + "; ".join(msgs)
        )


def restore_checkpoint(
    path: str | Path, like: PyTree, *, expect_meta: dict[str, Any] | None = None
) -> tuple[PyTree, dict[str, Any]]:
    """Read a checkpoint into the structure of ``like``.

    Args:
      path: a checkpoint directory (from :func:`save_checkpoint` or
        :func:`latest_checkpoint`).
      like: a pytree with the structure, shapes and dtypes to restore into (e.g. freshly
        initialised state); its values are not used.
      expect_meta: keys the saved metadata must have with these exact values (e.g. the
        model config); any difference is an error naming the key.

    Returns:
      ``(state, info)``: the restored pytree (uncommitted arrays on the default device,
      structured like ``like``) and ``{"step", "meta", "signature"}``.

    Raises:
      CheckpointError: missing, truncated or incompatible checkpoint.
    """
    path = Path(path).absolute()
    info = load_meta(path)
    if expect_meta:
        _compare_meta(path, info["meta"], expect_meta)
    _compare_signature(path, info["signature"], tree_signature(like))
    target = jax.tree_util.tree_map(
        lambda x: (
            jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
            if not hasattr(x, "dtype")
            else jax.ShapeDtypeStruct(x.shape, x.dtype)
        ),
        like,
    )
    try:
        with _checkpointer() as ckptr:
            out = ckptr.restore(
                path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: cannot read its arrays ({e})"
        ) from None
    # Fresh, uncommitted arrays on the default device: orbax returns device-committed
    # arrays, and jitted functions compiled for freshly initialised state would compile
    # again for those.
    leaves = [jnp.asarray(np.asarray(x)) for x in jax.tree_util.tree_leaves(out["state"])]
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return state, info


# ------------------------------------------------------------------------ atomic files


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix (``.curve.1234.tmp.png``) so that writers that
    look at the extension (matplotlib) still work. On an exception it is deleted and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# ------------------------------------------------------------------------------ resume


def jsonable(x: Any) -> Any:
    """``x`` as valid JSON can hold it: arrays to lists, tuples to lists, NaN/inf to the
    strings ``"nan"``, ``"inf"``, ``"-inf"`` (``json.dumps`` would write bare ``NaN``)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _config(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's config as it will read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(jsonable(dict(meta or {})), allow_nan=False))


def _trim_log(log_path: str | Path, step: int) -> None:
    """Drop the log lines a killed run wrote after the checkpoint it resumes from."""
    path = Path(log_path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by the kill
        if isinstance(row_step, (int, float)) and row_step <= step:
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))


def start(
    state: PyTree,
    checkpoint_dir: str | Path,
    *,
    resume: bool,
    meta: Mapping[str, Any] | None = None,
    members: int = 1,
    log_path: str | Path | None = None,
) -> tuple[PyTree, list[dict[str, Any]], list[int | None]]:
    """Begin a checkpointed run: fresh from ``state``, or from the latest checkpoint.

    Args:
      state: the fresh :class:`~gatedrnn.training.loop.TrainState`; also the template (structure,
        shapes, dtypes) a checkpoint must match.
      checkpoint_dir: the run's checkpoint folder.
      resume: continue from the newest checkpoint in ``checkpoint_dir``.
      meta: the run's config (cell, sizes, task, ...); a checkpoint with other values is
        refused, naming the key.
      members: ensemble size (1 for a single run).
      log_path: the run's JSON-lines log; lines after the checkpoint's step are dropped.

    Returns:
      ``(state, history, solved_at)`` to continue from.

    Raises:
      CheckpointError: see the module docstring.
    """
    root = Path(checkpoint_dir)
    latest = latest_checkpoint(root)
    if not resume:
        if latest is not None:
            raise CheckpointError(
                f"{root} already holds checkpoints (latest {latest.name}); resume to continue "
                "that run, or give an empty folder to start a new one"
            )
        return state, [], [None] * members
    if latest is None:
        raise CheckpointError(f"cannot resume: no checkpoint in {root.absolute()}")
    restored, info = restore_checkpoint(latest, state, expect_meta=_config(meta))
    history = list(info["meta"].get("history", []))
    solved_at = list(info["meta"].get("solved_at", [None] * members))
    if log_path is not None:
        _trim_log(log_path, int(info["step"]))
    return restored, history, solved_at


def save(
    checkpoint_dir: str | Path,
    step: int,
    state: PyTree,
    history: list[dict[str, Any]],
    solved_at: list[int | None],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the run's state at ``step`` atomically, keeping the newest :data:`KEEP`.

    Returns:
      the checkpoint's folder.
    """
    info = _config({**(meta or {}), "history": history, "solved_at": solved_at})
    return save_checkpoint(checkpoint_dir, step, state, info, keep=KEEP)


__all__ = [
    "KEEP",
    "CheckpointError",
    "atomic_path",
    "jsonable",
    "latest_checkpoint",
    "list_checkpoints",
    "load_meta",
    "restore_checkpoint",
    "save",
    "save_checkpoint",
    "start",
    "step_dir",
    "tree_signature",
    "write_text",
]
