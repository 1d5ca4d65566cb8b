"""Checkpoints and resume for the training loop, with orbax: one directory per step.

A checkpoint is a directory ``<root>/step_<8 digits>`` holding two orbax items:

* ``state``: any pytree of arrays (the loop's whole
  :class:`~gatedrnn.training.loop.TrainState`: params, optimizer state, step, batch key,
  carry);
* ``meta``: JSON: the step, the caller's metadata (config, vocabulary, history, ...), the
  *signature* of the state (every leaf's path, shape and dtype), the *digests* of the
  state (sha256 of every leaf's dtype, shape and bytes) and a digest of this JSON itself.

Orbax writes into a temporary directory and renames it when complete, so a run killed
while saving leaves no ``step_*`` directory behind, only a temporary one that
:func:`latest_checkpoint` ignores. :func:`restore_checkpoint` compares the saved signature
and metadata with what the caller expects first and raises :class:`CheckpointError`
naming the mismatch, rather than an orbax or tensorstore traceback; after reading the
arrays it recomputes their digests, so flipped bytes in a data file are caught rather
than loaded. A checkpoint that cannot prove its integrity (digest mismatch, missing,
truncated or garbage file, empty ``step_*`` folder, no digests at all) raises
:class:`CorruptCheckpointError`, one short line.

Resuming a run (:func:`start`, :func:`save`): batches are a pure function of ``(key,
step)``, so the resumed run draws the same batches as an uninterrupted one and ends with
the same params and metrics. No silent fresh start, ever:

* ``resume=False`` and the folder already holds checkpoints: :class:`CheckpointError`;
* ``resume=True`` and no checkpoint: :class:`CheckpointError`;
* the newest checkpoint is corrupt: it is moved aside (``step_<n>.corrupt``), one line
  on stderr says so and why, and the run resumes from the newest intact one; if none is
  intact, :class:`CheckpointError` (one line);
* an incompatible checkpoint (other cell, other sizes, other config):
  :class:`CheckpointError` naming the mismatch.

One writer per folder (:class:`FolderLock`): a run holds ``<folder>/.gatedrnn.lock``
(created with ``O_CREAT | O_EXCL``, holding the owner's pid and host) while it writes
there; :func:`~gatedrnn.training.train` takes its ``checkpoint_dir`` this way, the
experiment scripts their ``--out``. A second writer gets :class:`FolderInUseError`
naming the folder and the holder; a lock left by a dead process is taken over with a
one-line notice.

This is the only module that imports orbax. It also holds the atomic file writing the
library needs (:func:`atomic_path`, :func:`write_text`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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


class CorruptCheckpointError(CheckpointError):
    """A checkpoint cannot prove its integrity: a file is missing, truncated or damaged, or
    its arrays or metadata do not match the digests written when it was saved.

    Attributes:
      reason: the fault in a few words (the message without the checkpoint's path).
    """

    reason: str = ""


class FolderInUseError(CheckpointError):
    """Another live process holds the folder's lock (see :class:`FolderLock`)."""


def _notice(message: str) -> None:
    """One line on stderr: something was wrong and was handled (not silent, not an error)."""
    print(f"gatedrnn: {message}", file=sys.stderr, flush=True)


def _host_array(leaf: Any) -> np.ndarray:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def leaf_digest(leaf: Any) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(_host_array(leaf))
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
    info = {
        "step": int(step),
        "meta": meta or {},
        "signature": tree_signature(state),
        "digests": [leaf_digest(x) for x in jax.tree_util.tree_leaves(state)],
    }
    info["digest"] = _json_digest(info)
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


_FILE_IN_MESSAGE = re.compile(r"""(?:local file|File|named) "?([^"\s]+?)"?[\s.:]""")


def _short_reason(e: BaseException) -> str:
    """A few words for why orbax/tensorstore could not read a checkpoint (their own
    messages run to thousands of characters)."""
    text = str(e)
    low = text.lower()
    if (
        isinstance(e, FileNotFoundError)
        or "not_found" in low
        or "not found" in low
        or ("does not exist" in low)
    ):
        kind = "a file is missing"
    elif isinstance(e, (UnicodeError, json.JSONDecodeError)) or any(
        k in low for k in ("invalid json", "data_loss", "out_of_range", "decod", "corrupt")
    ):
        kind = "a file is damaged"
    else:
        kind = f"{type(e).__name__}: {' '.join(text.split())[:80]}"
    m = _FILE_IN_MESSAGE.search(text)
    return f"{kind} ({Path(m.group(1)).name})" if m and not m.group(1).endswith("/") else kind


_NOISE_LOCK = threading.Lock()
_noise_silenced = False


def _orbax_noise(unraisable: Any) -> bool:
    """Whether an unraisable exception is the echo of a failed orbax read: tensorstore's
    callbacks finding the event loop closed, or orbax's abandoned read coroutines."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _silence_orbax_noise() -> None:
    """Drop the tracebacks ("Event loop is closed", "Exception ignored in <coroutine ...>")
    that orbax and tensorstore print through ``sys.unraisablehook`` after a read of a
    damaged checkpoint failed (the failure itself is raised as one line); any other
    unraisable exception still reaches the previous hook. Installed once."""
    global _noise_silenced
    with _NOISE_LOCK:
        if _noise_silenced:
            return
        previous = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if not _orbax_noise(unraisable):
                previous(unraisable)

        sys.unraisablehook = hook
        _noise_silenced = True


def _corrupt(path: Path, why: str) -> CorruptCheckpointError:
    e = CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {why}")
    e.reason = why
    return e


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
    _silence_orbax_noise()
    try:
        with _checkpointer() as ckptr:
            out = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        info = out["meta"]
    except Exception as e:
        raise _corrupt(path, f"cannot read its metadata, {_short_reason(e)}") from None
    if not isinstance(info, dict) or not {"step", "meta", "signature"} <= set(info):
        raise _corrupt(path, "its metadata was not written by gatedrnn.training.checkpoint")
    if "digests" not in info or "digest" not in info:
        raise _corrupt(
            path, "it has no integrity digests (written by an older gatedrnn), so it cannot "
            "be verified"
        )  # fmt: skip
    if info["digest"] != _json_digest(info) or len(info["digests"]) != len(info["signature"]):
        raise _corrupt(path, "its metadata does not match its digest")
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
      CheckpointError: missing or incompatible checkpoint.
      CorruptCheckpointError: a file of it is missing, truncated or damaged, or its arrays
        or metadata differ from what was saved (checked against the saved digests).
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
    _silence_orbax_noise()
    try:
        with _checkpointer() as ckptr:
            out = ckptr.restore(
                path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
    except Exception as e:
        raise _corrupt(path, f"cannot read its arrays, {_short_reason(e)}") from None
    arrays = [_host_array(x) for x in jax.tree_util.tree_leaves(out["state"])]
    bad = [
        sig[0]
        for sig, want, a in zip(info["signature"], info["digests"], arrays)
        if leaf_digest(a) != want
    ]
    if len(arrays) != len(info["digests"]) or bad:
        raise _corrupt(path, f"array data does not match its digest ({', '.join(bad[:3])})")
    # Fresh, uncommitted arrays on the default device: orbax returns device-committed
    # arrays, and jitted functions compiled for freshly initialised state would compile
    # again for those.
    leaves = [jnp.asarray(a) for a in arrays]
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return state, info


# ------------------------------------------------------------------------ atomic files


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix (``.curve.1234.tmp.png``) so that writers that
    look at the extension (matplotlib) still work. On an exception it is deleted and
    ``path`` is left as it was. The file gets the mode a plainly created file would
    (``0o666`` less the umask), not the ``0o600`` of a temporary file.
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
        os.chmod(tmp, 0o666 & ~_umask())
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


# ------------------------------------------------------------------------ one writer

LOCK_NAME = ".gatedrnn.lock"
_HELD: dict[str, list[Any]] = {}  # lock file -> [pid, token, depth] held by this process
_HELD_LOCK = threading.Lock()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _pid_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` (started at clock tick ``started``, if known) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    stat = _proc_stat(pid)
    if stat is None:
        return True
    if stat[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    return started is None or stat[19] == started  # else the pid was reused


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None if it is gone, empty or half-written."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[None]:
    """Serialise stale-lock takeovers in ``folder`` (an advisory lock on the folder itself,
    released by the kernel if its holder dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: takeovers are not serialised
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class FolderLock:
    """Exclusive claim of a folder by one process: ``<folder>/.gatedrnn.lock``.

    The lock file is created atomically (``O_CREAT | O_EXCL``) and holds the owner's pid,
    host and start time. It is released when the ``with`` block ends, on :meth:`release`,
    or at interpreter exit. A lock whose process is gone (same host, pid not alive, or the
    pid now belongs to another process) is stale: it is taken over with a one-line notice.
    The same process may take a lock it holds again (nested; released by the outermost).

    Args:
      folder: the folder to claim (created if needed).
      name: the lock file's name in ``folder``.
      what: how messages name the thing claimed (e.g. ``"output file x.json"``).

    Raises (on acquiring):
      FolderInUseError: a live process holds the lock; names the folder and the holder.
    """

    def __init__(self, folder: str | Path, name: str = LOCK_NAME, what: str | None = None):
        self.folder = Path(folder).absolute()
        self.path = self.folder / name
        self.what = what or f"folder {self.folder}"

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> FolderLock:
        """Take the lock (see the class docstring); returns ``self``."""
        key = str(self.path)
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None and held[0] == os.getpid():
                held[2] += 1
                return self
        self.folder.mkdir(parents=True, exist_ok=True)
        token = os.urandom(8).hex()
        stat = _proc_stat(os.getpid())
        mine = {
            "pid": os.getpid(), "host": socket.gethostname(), "token": token,
            "started": stat[19] if stat else None,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:4],
        }  # fmt: skip
        for _ in range(50):
            if self._create(mine):
                with _HELD_LOCK:
                    _HELD[key] = [os.getpid(), token, 1]
                return self
            holder = _read_lock(self.path)
            if holder is None:
                if self._abandoned():
                    self._take_over(None)
                else:
                    time.sleep(0.02)  # being written by its creator, or just released
                continue
            if holder.get("host") == mine["host"] and not _pid_alive(
                holder["pid"], holder.get("started")
            ):
                self._take_over(holder)
                continue
            raise FolderInUseError(
                f"{self.what} is in use by another run (pid {holder['pid']} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it "
                f"to finish or choose another folder (if no such run exists, delete {self.path})"
            )
        raise FolderInUseError(
            f"{self.what} is in use by another run (its lock file {self.path} is empty or "
            "unreadable; if no such run exists, delete it)"
        )

    def _create(self, mine: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(mine) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _abandoned(self) -> bool:
        """An unreadable lock file older than a few seconds: its writer died mid-write."""
        try:
            return time.time() - self.path.stat().st_mtime > 5.0
        except OSError:
            return False

    def _take_over(self, stale: dict[str, Any] | None) -> None:
        """Remove a stale lock file, if it is still the same one, under :func:`_guard`."""
        with _guard(self.folder):
            if _read_lock(self.path) != stale:
                return  # someone else took it over (or released it) first
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        who = "an unknown process" if stale is None else f"pid {stale['pid']}"
        _notice(f"took over the stale lock of {self.what} ({who} is gone)")

    def release(self) -> None:
        """Give the lock up (if this process holds it; the outermost of nested takes)."""
        key = str(self.path)
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None or held[0] != os.getpid():
                return
            held[2] -= 1
            if held[2] > 0:
                return
            del _HELD[key]
        holder = _read_lock(self.path)
        if holder is not None and holder.get("token") == held[1]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@atexit.register
def _release_all() -> None:
    """Remove the lock files this process still holds (interpreter exit)."""
    for key, (pid, token, _) in list(_HELD.items()):
        if pid == os.getpid():
            holder = _read_lock(Path(key))
            if holder is not None and holder.get("token") == token:
                with contextlib.suppress(OSError):
                    Path(key).unlink()
    _HELD.clear()


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

    Every skipped checkpoint is reported in one line on stderr (which, and why).

    Args:
      root: a run's checkpoint folder.
      like, expect_meta: as for :func:`restore_checkpoint`; ``like`` may also be a function
        of a checkpoint's JSON part (:func:`load_meta`) that returns the template (when
        the template depends on the saved config).
      set_aside: rename skipped checkpoints to ``step_<n>.corrupt`` (a resuming run does,
        so that it overwrites nothing and never meets them again).

    Returns:
      ``(state, info, path)``: as :func:`restore_checkpoint`, and the checkpoint used.

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
        for bad, e in faults:
            moved = f", moved it to {_set_aside(bad).name}" if set_aside else ""
            why = e.reason
            _notice(f"skipped checkpoint {bad.name} in {root}: {why}{moved}; using {path.name}")
        return state, info, path
    why = faults[0][1].reason
    raise CheckpointError(
        f"cannot resume: no intact checkpoint in {root} ({len(found)} found; the newest, "
        f"{found[-1][1].name}: {why})"
    )


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
    restored, info, _ = restore_latest(root, state, expect_meta=_config(meta), set_aside=True)
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
    "LOCK_NAME",
    "CheckpointError",
    "CorruptCheckpointError",
    "FolderInUseError",
    "FolderLock",
    "atomic_path",
    "jsonable",
    "latest_checkpoint",
    "leaf_digest",
    "list_checkpoints",
    "load_meta",
    "restore_checkpoint",
    "restore_latest",
    "save",
    "save_checkpoint",
    "start",
    "step_dir",
    "tree_signature",
    "write_text",
]
