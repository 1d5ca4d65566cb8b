"""Save and restore training state with orbax: one directory per step, written atomically.

A checkpoint is a directory ``<root>/step_<8 digits>`` holding two orbax items:

* ``state``: any pytree of arrays (params, optimizer state, RNN carry, ...);
* ``meta``: JSON: the step, the caller's metadata (config, vocabulary, ...) and the
  *signature* of the state (every leaf's path, shape and dtype).

Orbax writes into a temporary directory and renames it when complete, so a run killed
while saving leaves no ``step_*`` directory behind, only a temporary one that
:func:`latest_checkpoint` ignores. :func:`restore_checkpoint` compares the saved signature
and metadata with what the caller expects first and raises :class:`CheckpointError`
naming the mismatch, rather than an orbax or tensorstore traceback.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

_STEP_DIR = re.compile(r"^step_(\d{8})$")


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
        raise CheckpointError(f"checkpoint {path} was not written by gatedrnn.checkpoint")
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


__all__ = [
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_meta",
    "restore_checkpoint",
    "save_checkpoint",
    "step_dir",
    "tree_signature",
]
