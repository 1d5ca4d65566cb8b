"""Files the training side and the experiment scripts write: atomically, as valid JSON, by
one writer at a time.

* :func:`atomic_path`, :func:`write_text`: write under a temporary name in the same folder
  and rename into place only when complete, so an interrupted writer never leaves a
  truncated file that looks finished.
* :func:`jsonable`: a value as valid JSON can hold it (no bare ``NaN``).
* :func:`trim_log`: a JSON-lines log shared by runs, cut back to where a resumed run
  continues.
* :class:`FolderLock`: one writer per folder (a run's checkpoints, a script's ``--out``),
  an advisory ``flock`` on ``<folder>/.gatedrnn.lock`` that the kernel drops when its
  holder dies, so a lock left by a killed run is never mistaken for a live one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

LOCK_NAME = ".gatedrnn.lock"


class FolderInUseError(ValueError):
    """Another live process holds the folder's lock (see :class:`FolderLock`)."""


def notice(message: str) -> None:
    """One line on stderr: something was wrong and was handled (not silent, not an error)."""
    print(f"gatedrnn: {message}", file=sys.stderr, flush=True)


def jsonable(x: Any) -> Any:
    """``x`` as valid JSON can hold it: arrays and numpy scalars to lists and numbers, tuples
    to lists, NaN/inf to the strings ``"nan"``, ``"inf"``, ``"-inf"`` (``json.dumps`` would
    write bare ``NaN``)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix (``.curve.1a2b.tmp.png``) so that writers that look
    at the extension (matplotlib) still work. On an exception it is deleted and ``path`` is
    left as it was. The file is created with mode ``0o666`` less the umask (as a plainly
    created file), not the ``0o600`` of ``tempfile``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.stem}.{os.urandom(4).hex()}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
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


# ------------------------------------------------------------------------ one writer

_HELD: dict[str, list[Any]] = {}  # lock path -> [fd, token, depth] held by this process
_HELD_LOCK = threading.Lock()


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None if it is gone, empty or half-written."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


class FolderLock:
    """Exclusive claim of a folder by one process: ``<folder>/.gatedrnn.lock``.

    The claim is an exclusive ``flock`` on the lock file, which also records the holder's
    pid, host and start time for messages. The kernel drops the ``flock`` when its holder
    exits or is killed, so a lock file without a live holder is stale: it is taken over with
    a one-line notice (no pid guessing). The claim ends when the ``with`` block ends or on
    :meth:`release`. The same process may take a lock it holds again (nested; released by
    the outermost).

    Args:
      folder: the folder to claim (created if needed).
      name: the lock file's name in ``folder``.
      what: how messages name the thing claimed (e.g. ``"output file x.json"``).

    Raises (on acquiring):
      FolderInUseError: a live process holds the lock; names the folder and the holder.
      ValueError: the folder cannot be created (a dangling symbolic link, a file).
    """

    def __init__(self, folder: str | Path, name: str = LOCK_NAME, what: str | None = None):
        self.folder = Path(folder).absolute()
        self.path = self.folder / name
        self.what = what or f"folder {self.folder}"

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _make_folder(self) -> None:
        """Create the folder (and its parents); a path that cannot be one is a one-line
        ValueError (a dangling symbolic link, a file, no permission), not an OSError."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if self.folder.is_symlink() and not self.folder.exists():
                target = os.readlink(self.folder)
                why = f"is a symbolic link to {target}, which does not exist"
                why += " (create it or remove the link)"
            elif self.folder.exists() and not self.folder.is_dir():
                why = "is a file, not a folder"
            else:
                why = f"cannot be created: {e.strerror or e}"
            where = "" if str(self.folder) in self.what else f": {self.folder}"
            raise ValueError(f"{self.what}{where} {why}") from None

    def acquire(self) -> FolderLock:
        """Take the lock (see the class docstring); returns ``self``."""
        import fcntl

        key = str(self.path)
        with _HELD_LOCK:
            if key in _HELD:
                _HELD[key][2] += 1
                return self
        self._make_folder()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_holder(self.path)
                for _ in range(50):  # a holder that just took it writes its name next
                    if holder is not None:
                        break
                    time.sleep(0.02)
                    holder = _read_holder(self.path)
                holder = holder or {}
                raise FolderInUseError(
                    f"{self.what} is in use by another run (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it "
                    "to finish or choose another folder"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder released (and removed) it in between: try again
        stale = os.fstat(fd).st_size > 0
        if stale:
            old = _read_holder(self.path)
            who = f"pid {old['pid']}" if old else "an unknown process"
            notice(f"took over the stale lock of {self.what} ({who} is gone)")
        token = os.urandom(8).hex()
        mine = {
            "pid": os.getpid(), "host": socket.gethostname(), "token": token,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:4],
        }  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        os.fsync(fd)
        with _HELD_LOCK:
            _HELD[key] = [fd, token, 1]
        return self

    def release(self) -> None:
        """Give the lock up (if this process holds it; the outermost of nested takes)."""
        key = str(self.path)
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None:
                return
            held[2] -= 1
            if held[2] > 0:
                return
            del _HELD[key]
        fd, token, _ = held
        holder = _read_holder(self.path)
        if holder is not None and holder.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(fd)


def as_read_back(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A mapping as it will read back from JSON (tuples become lists, no bare NaN)."""
    return json.loads(json.dumps(jsonable(dict(meta or {})), allow_nan=False))


def _belongs(row: Any, tag: Mapping[str, Any]) -> bool:
    return isinstance(row, dict) and all(row.get(k, object()) == v for k, v in tag.items())


def trim_log(log_path: str | Path, step: int, tag: Mapping[str, Any] | None = None) -> None:
    """Drop the lines of the JSON-lines log ``log_path`` (several runs may share it) that
    this run wrote after the checkpoint at ``step`` it resumes from, and any line cut short
    by a kill. ``tag``: the run's constant fields (``log_extra`` of
    :func:`~gatedrnn.training.train`); only lines holding all of them belong to the run
    (None or empty: every line does)."""
    path, tag = Path(log_path), as_read_back(tag)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        s = row.get("step") if isinstance(row, dict) else None
        if not _belongs(row, tag) or (isinstance(s, (int, float)) and s <= step):
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))


__all__ = [
    "LOCK_NAME",
    "FolderInUseError",
    "FolderLock",
    "as_read_back",
    "atomic_path",
    "jsonable",
    "notice",
    "trim_log",
    "write_text",
]
