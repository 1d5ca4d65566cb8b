"""Checkpoint and resume a :func:`gatedrnn.train.train` run, so that a killed run goes on
exactly where its last checkpoint left it.

A run's checkpoint (:mod:`gatedrnn.checkpoint`, orbax, written atomically) holds the
whole :class:`~gatedrnn.train.TrainState` (params, optimizer state, step, batch key,
carry) and, as JSON metadata, the caller's config plus the history and solved steps so
far. Batches are a pure function of ``(key, step)``, so the resumed run draws the same
batches as an uninterrupted one and ends with the same params and metrics.

Rules (no silent fresh start, ever):

* ``resume=False`` and the folder already holds checkpoints: :class:`CheckpointError`
  (continue with ``resume=True`` or pick another folder).
* ``resume=True`` and no checkpoint: :class:`CheckpointError`.
* a truncated, unreadable or incompatible checkpoint (other cell, other sizes, other
  config): :class:`CheckpointError` naming the mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gatedrnn.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from gatedrnn.cli import write_text

PyTree = Any
KEEP = 2  # checkpoints kept on disk: the newest and the one before it


def _config(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's config as it will read back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(meta or {})))


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
      state: the fresh :class:`~gatedrnn.train.TrainState`; also the template (structure,
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
    info = {**_config(meta), "history": history, "solved_at": solved_at}
    return save_checkpoint(checkpoint_dir, step, state, info, keep=KEEP)


__all__ = ["KEEP", "CheckpointError", "save", "start"]
