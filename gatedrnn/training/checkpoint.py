"""Checkpoints and resume for the training loop, on orbax's ``CheckpointManager``.

Orbax does the storage: one folder per step (``<root>/step_<8 digits>``) written under a
temporary name and renamed when complete (a run killed while saving leaves no ``step_*``
folder; the next save cleans up), the newest :data:`KEEP` kept, and in a run of several
processes (``jax.distributed``) the barriers and the one writer of shared files. A
checkpoint holds two items: ``state``, any pytree of arrays (the loop's whole
:class:`~gatedrnn.training.loop.TrainState`, saved from host copies), and ``meta``, JSON:
the step, the caller's metadata (config, history), the *signature* of the state (every
leaf's path, shape and dtype), the *digests* of the state (sha256 of every leaf's dtype,
shape and bytes) and a digest of this JSON itself.

What this module adds: :func:`restore_checkpoint` compares the saved signature and metadata
with what the caller expects (:class:`CheckpointError` naming the mismatch) and, after
reading the arrays, their digests, so damaged bytes are caught rather than loaded
(:class:`CorruptCheckpointError`, one line); every process of a run reads and verifies.

Resuming (:func:`start`, :func:`save`) ends with the same params and metrics as an
uninterrupted run (batches are a pure function of ``(key, step)``). No silent fresh start:
``resume=False`` into a folder with checkpoints, or ``resume=True`` with none, is a
:class:`CheckpointError`; a corrupt newest checkpoint is moved aside
(``step_<n>.corrupt``) with one line on stderr saying why, and the run resumes from the
newest intact one (none intact: :class:`CheckpointError`, one line); an incompatible one
(other cell, sizes, task, evaluation set, ...) is a :class:`CheckpointError` naming the
field. One writer per run: :func:`~gatedrnn.training.train` holds the folder's
:class:`~gatedrnn.training.io.FolderLock` in process 0 only.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gatedrnn.cells.base import to_jax_array
from gatedrnn.training.io import as_read_back, jsonable, notice, trim_log

PyTree = Any

KEEP = 2  # checkpoints a run keeps on disk: the newest and the one before it
_NAMES = ocp.step.standard_name_format(step_prefix="step", step_format_fixed_length=8)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit what the caller expects."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint cannot prove its integrity (a file missing, truncated or damaged, arrays
    or metadata that differ from their digests); ``reason``: the fault in a few words."""

    reason: str = ""


def _host_array(leaf: Any) -> np.ndarray:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    a = np.asarray(jax.device_get(leaf))
    return a if a.flags.c_contiguous else a.copy(order="C")


def leaf_digest(leaf: Any) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes (C order)."""
    a = _host_array(leaf)
    h = hashlib.sha256(f"{a.dtype}{list(a.shape)}".encode())
    h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _json_digest(info: Mapping[str, Any]) -> str:
    body = jsonable({k: v for k, v in info.items() if k != "digest"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def tree_signature(tree: PyTree) -> list[list[Any]]:
    """``[[path, shape, dtype], ...]`` for every leaf of ``tree``, in flattening order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(p), list(np.shape(x)), str(getattr(x, "dtype", np.asarray(x).dtype))]
        for p, x in leaves
    ]


def _manager(root: Path, keep: int | None = None, *, write: bool = False) -> Any:
    options = ocp.CheckpointManagerOptions(
        step_name_format=_NAMES, max_to_keep=keep, create=write, save_root_metadata=False,
        enable_async_checkpointing=False, cleanup_tmp_directories=write,
        lightweight_initialize=True,
    )  # fmt: skip
    return ocp.CheckpointManager(root, options=options)


def step_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint at ``step`` under ``root``."""
    return Path(root).absolute() / _NAMES.build_name(int(step))


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under ``root`` as ``(step, path)``, oldest first (orbax's
    listing: temporary folders of unfinished saves are not checkpoints)."""
    found = _NAMES.find_all(Path(root).absolute())
    return sorted((m.step, Path(m.path)) for m in found if Path(m.path).is_dir())


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest finished checkpoint under ``root``, or None if there is none."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: str | Path, step: int, state: PyTree, meta: dict[str, Any] | None = None,
    *, keep: int | None = None,
) -> Path:  # fmt: skip
    """Write ``state`` (a pytree of arrays) and ``meta`` (JSON-able config, history, ...,
    checked on restore) at ``<root>/step_<step>`` atomically and return that folder. Every
    process of a run calls it; orbax picks the writer and, with ``keep``, deletes all but
    the newest ``keep`` checkpoints."""
    if int(step) < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be None or >= 1, got {keep}")
    host = jax.tree_util.tree_map(_host_array, state)
    info = {
        "step": int(step),
        "meta": jsonable(meta or {}),
        "signature": tree_signature(state),
        "digests": [leaf_digest(x) for x in jax.tree_util.tree_leaves(host)],
    }
    info["digest"] = _json_digest(info)
    root = Path(root).absolute()
    try:
        with _manager(root, keep, write=True) as mngr:
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(info)
            )
            mngr.save(int(step), args=args, force=True)
    except KeyboardInterrupt:
        _silence_abandoned_save()
        raise
    return step_dir(root, step)


def _drop_orbax_records(record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname


def _silence_abandoned_save() -> None:
    """After Ctrl-C during a save: the save is abandoned (its temporary folder is never a
    checkpoint), but orbax's background threads go on and, once the interpreter shuts
    down, log their failure with a traceback after the script's one line
    "interrupted". Drop orbax's log records from here on (the process is ending)."""
    logger = logging.getLogger("absl")
    if _drop_orbax_records not in logger.filters:
        logger.addFilter(_drop_orbax_records)


_ECHO_QUIET_S, _ECHO_WAIT_S = 0.05, 1.0


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """While a checkpoint is read, drop the echoes of a failed read that orbax and
    tensorstore print through ``sys.unraisablehook`` (the failure is raised as one line);
    the previous hook gets the rest and comes back. If the read fails, the scope lasts
    until its abandoned coroutines are collected (a collection costs 0.1-1 s, so only
    then) and tensorstore's reads still in flight have echoed."""
    previous = sys.unraisablehook
    last_echo = [0.0]  # when the hook last dropped an echo

    def hook(u: Any) -> None:
        code = getattr(u.object, "cr_code", None)
        noise = isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"
        if noise or (code is not None and "orbax" in code.co_filename):
            last_echo[0] = time.monotonic()
        else:
            previous(u)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException:
        gc.collect()  # a failed read's abandoned coroutines echo now, into the hook
        # tensorstore reads still in flight when the read failed end on orbax's closed
        # event loop, each echoing from tensorstore's threads: wait until they are quiet
        # (_ECHO_QUIET_S without one, at most _ECHO_WAIT_S)
        last_echo[0] = time.monotonic()
        deadline = last_echo[0] + _ECHO_WAIT_S
        while time.monotonic() < deadline and time.monotonic() - last_echo[0] < _ECHO_QUIET_S:
            time.sleep(_ECHO_QUIET_S / 10)
        raise
    finally:
        sys.unraisablehook = previous


def _short_reason(e: BaseException) -> str:
    """A few words for why orbax/tensorstore could not read a checkpoint (their own
    messages run to thousands of characters)."""
    low = str(e).lower()
    if isinstance(e, FileNotFoundError) or any(k in low for k in ("not_found", "not found")):
        return "a file is missing"
    if isinstance(e, (UnicodeError, json.JSONDecodeError)) or any(
        k in low for k in ("json", "data_loss", "out_of_range", "decod", "corrupt", "invalid")
    ):
        return "a file is damaged"
    return f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"


def _corrupt(path: Path, why: str) -> CorruptCheckpointError:
    e = CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {why}")
    e.reason = why
    return e


def _read(path: Path, what: str, **items: Any) -> Any:
    """Read ``items`` (orbax restore args) of the checkpoint folder ``path``."""
    step = re.fullmatch(r"step_(\d+)", path.name)
    if step is None:
        raise CheckpointError(f"{path} is not a checkpoint folder (step_<8 digits>)")
    try:
        with _quiet_orbax(), _manager(path.parent) as mngr:
            return mngr.restore(int(step.group(1)), args=ocp.args.Composite(**items))
    except Exception as e:
        raise _corrupt(path, f"cannot read its {what}, {_short_reason(e)}") from None


def load_meta(path: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint: ``{"step", "meta", "signature", "digests", "digest"}``,
    checked against its own digest.

    Raises:
      CheckpointError: no checkpoint at ``path``.
      CorruptCheckpointError: its metadata is unreadable, damaged or has no digests.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    if not any(path.iterdir()):
        raise _corrupt(path, "the folder is empty")
    info = _read(path, "metadata", meta=ocp.args.JsonRestore())["meta"]
    if not isinstance(info, dict) or not {"step", "meta", "signature"} <= set(info):
        raise _corrupt(path, "its metadata was not written by gatedrnn.training.checkpoint")
    if "digests" not in info or "digest" not in info:
        raise _corrupt(path, "it has no integrity digests, so it cannot be verified")
    if info["digest"] != _json_digest(info) or len(info["digests"]) != len(info["signature"]):
        raise _corrupt(path, "its metadata does not match its digest")
    return info


def _compare_meta(path: Path, saved: dict[str, Any], expect: dict[str, Any]) -> None:
    missing = "<missing>"
    bad = [f"{k}: checkpoint has {saved.get(k, missing)!r}, expected {v!r}"
           for k, v in jsonable(expect).items() if saved.get(k, missing) != v]  # fmt: skip
    if bad:
        raise CheckpointError(f"checkpoint {path} is incompatible: " + "; ".join(bad))


def _compare_signature(path: Path, saved: list, want: list) -> None:
    saved_d = {p: (tuple(s), d) for p, s, d in saved}
    want_d = {p: (tuple(s), d) for p, s, d in want}
    msgs = []
    if missing := [p for p in want_d if p not in saved_d]:
        msgs.append(f"missing leaves {missing[:5]}")
    if extra := [p for p in saved_d if p not in want_d]:
        msgs.append(f"unexpected leaves {extra[:5]}")
    msgs += [f"{p}: checkpoint has shape {saved_d[p][0]} {saved_d[p][1]}, expected "
             f"{want_d[p][0]} {want_d[p][1]}" for p in want_d if p in saved_d
             and saved_d[p] != want_d[p]][:5]  # fmt: skip
    if msgs:
        raise CheckpointError(
            f"checkpoint {path} does not fit the expected state: " + "; ".join(msgs)
        )


def restore_checkpoint(
    path: str | Path, like: PyTree, *, expect_meta: dict[str, Any] | None = None
) -> tuple[PyTree, dict[str, Any]]:
    """Read the checkpoint folder ``path`` into the structure of ``like`` (a pytree whose
    structure, shapes and dtypes are used, not its values) and verify it against its
    digests. ``expect_meta``: keys the saved metadata must have with these values (compared
    as JSON holds them, so a tuple equals the list it was saved as).

    Returns:
      ``(state, info)``: the restored pytree (uncommitted arrays on the default device,
      structured like ``like``) and the JSON part (:func:`load_meta`).

    Raises:
      CheckpointError: missing or incompatible checkpoint.
      CorruptCheckpointError: a file of it is missing, truncated or damaged, or its arrays
        or metadata differ from what was saved (checked against the saved digests).
    """
    path = Path(path).absolute()
    info = load_meta(path)
    if expect_meta:
        _compare_meta(path, info["meta"], expect_meta)
    _compare_signature(path, info["signature"], tree_signature(like))
    # ShapeDtypeStructs without a sharding: orbax reads plain numpy arrays, on every process
    spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.asarray(x).dtype))  # noqa: E731
    target = jax.tree_util.tree_map(spec, like)
    out = _read(path, "arrays", state=ocp.args.StandardRestore(target))["state"]
    arrays = [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]
    bad = [sig[0] for sig, want, a in zip(info["signature"], info["digests"], arrays)
           if leaf_digest(a) != want]  # fmt: skip
    if len(arrays) != len(info["digests"]) or bad:
        raise _corrupt(path, f"array data does not match its digest ({', '.join(bad[:3])})")
    # fresh, uncommitted arrays: what jitted code compiled for fresh state expects
    leaves = [to_jax_array(a) for a in arrays]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves), info


def _set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the way (kept for inspection, never resumed)."""
    for i in range(1000):
        dst = path.with_name(f"{path.name}.corrupt" + (f"-{i}" if i else ""))
        if not dst.exists():
            path.rename(dst)
            return dst
    raise CheckpointError(f"cannot move the corrupt checkpoint {path} aside")


def restore_latest(
    root: str | Path,
    like: PyTree | Callable[[dict[str, Any]], PyTree],
    *,
    expect_meta: dict[str, Any] | None = None,
    set_aside: bool = False,
) -> tuple[PyTree, dict[str, Any], Path]:
    """Restore the newest intact checkpoint under ``root``, skipping corrupt newer ones.

    Every skipped checkpoint is reported in one line on stderr (which, and why), by
    process 0. ``like`` and ``expect_meta`` are as for :func:`restore_checkpoint`; ``like``
    may also be a function of a checkpoint's JSON part (:func:`load_meta`) that returns the
    template. ``set_aside``: process 0 renames skipped checkpoints to ``step_<n>.corrupt``
    once every process has read (a resuming run does, so it never meets them again).
    Returns ``(state, info, path)``: as :func:`restore_checkpoint`, and the checkpoint used.

    Raises:
      CheckpointError: no checkpoint, none intact (one line naming the newest's fault), or
        the newest intact one does not fit ``like`` / ``expect_meta``.
    """
    root = Path(root).absolute()
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"cannot resume: no checkpoint in {root}")
    faults: list[tuple[Path, CorruptCheckpointError]] = []
    for _, path in reversed(found):
        try:
            target = like(load_meta(path)) if callable(like) else like
            state, info = restore_checkpoint(path, target, expect_meta=expect_meta)
        except CorruptCheckpointError as e:
            faults.append((path, e))
            continue
        if faults and jax.process_count() > 1:
            multihost_utils.sync_global_devices("gatedrnn: restored")
        for bad, e in faults:
            if jax.process_index() == 0:
                moved = f", moved it to {_set_aside(bad).name}" if set_aside else ""
                notice(
                    f"skipped checkpoint {bad.name} in {root}: {e.reason}{moved}; using {path.name}"
                )
        return state, info, path
    raise CheckpointError(
        f"cannot resume: no intact checkpoint in {root} ({len(found)} found; the newest, "
        f"{found[-1][1].name}: {faults[0][1].reason})"
    )


def start(
    state: PyTree, checkpoint_dir: str | Path, *, resume: bool,
    meta: Mapping[str, Any] | None = None, members: int = 1,
    log_path: str | Path | None = None, log_tag: Mapping[str, Any] | None = None,
) -> tuple[PyTree, list[dict[str, Any]], list[int | None]]:  # fmt: skip
    """Begin a checkpointed run: fresh from ``state`` (the fresh
    :class:`~gatedrnn.training.loop.TrainState`, also the template a checkpoint must fit),
    or, with ``resume``, from the newest intact checkpoint in ``checkpoint_dir``.

    ``meta`` is the run's config (everything that changes the numbers): a checkpoint with
    other values is refused, naming the field. ``members``: ensemble size. ``log_path``,
    ``log_tag``: the run's JSON-lines log and the fields that mark its lines there; process
    0 drops this run's lines past the checkpoint (:func:`~gatedrnn.training.io.trim_log`).

    Returns ``(state, history, solved_at)`` to continue from; raises
    :class:`CheckpointError` (see the module docstring).
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
    restored, info, _ = restore_latest(root, state, expect_meta=as_read_back(meta), set_aside=True)
    history = list(info["meta"].get("history", []))
    solved_at = list(info["meta"].get("solved_at", [None] * members))
    if log_path is not None and jax.process_index() == 0:
        trim_log(log_path, int(info["step"]), log_tag)
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
    info = as_read_back({**(meta or {}), "history": history, "solved_at": solved_at})
    return save_checkpoint(checkpoint_dir, step, state, info, keep=KEEP)


__all__ = [  # noqa: RUF022 (grouped: errors, paths, save/restore, resume)
    "KEEP", "CheckpointError", "CorruptCheckpointError",
    "latest_checkpoint", "list_checkpoints", "step_dir",
    "leaf_digest", "load_meta", "restore_checkpoint", "restore_latest", "save_checkpoint",
    "tree_signature", "save", "start",
]  # fmt: skip
