"""One writer per run folder: two real processes racing for one --out (exactly one wins,
the other exits 2 naming the folder and the holder's pid); stale locks (no live flock
holder) are taken over; the training loop holds its checkpoint folder; written files
follow the umask."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import cli
from gatedrnn.training import checkpoint as ck
from gatedrnn.training import io as tio

ROOT = Path(__file__).resolve().parents[1]

# A run shaped like the experiments: imports, says "ready", waits for "go" (so that two
# of them claim --out at the same moment), writes, then holds the folder until "done".
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from experiments import cli

    def main(argv=None):
        sync = Path(argv[0])
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not (sync / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        p = cli.ArgumentParser()
        p.add_argument("--out", type=cli.output_dir, required=True)
        args = p.parse_args(argv[1:])
        cli.write_json(args.out / "result.json", {"pid": __import__("os").getpid()})
        print("holding", flush=True)
        while not (sync / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    if __name__ == "__main__":
        cli.run(lambda argv: main(sys.argv[1:]))
    """
)


def _launch(script: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop(cli.DEBUG_ENV, None)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_writers_into_one_folder_exactly_one_wins(tmp_path):
    script, sync, out = tmp_path / "writer.py", tmp_path / "sync", tmp_path / "out"
    script.write_text(WRITER)
    sync.mkdir()
    procs = [_launch(script, str(sync), "--out", str(out)) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        (sync / "go").touch()
        # the loser exits 2 at once; the winner holds the folder
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        losers = [p for p in procs if p.poll() is not None]
        assert len(losers) == 1, "both runs got the folder"
        loser, winner = losers[0], next(p for p in procs if p is not losers[0])
        assert winner.stdout.readline().strip() == "holding"
        err = loser.stderr.read().strip().splitlines()
        assert loser.returncode == 2 and len(err) == 1, err
        assert f"output folder {out} is in use by another run (pid {winner.pid} on" in err[0]
        assert json.loads((out / "result.json").read_text()) == {"pid": winner.pid}
        holder = json.loads((out / tio.LOCK_NAME).read_text())
        assert holder["pid"] == winner.pid and holder["host"] == socket.gethostname()
    finally:
        (sync / "done").touch()
        for p in procs:
            p.communicate(timeout=30)
    assert winner.returncode == 0
    assert not (out / tio.LOCK_NAME).exists()  # released on exit


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / tio.LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "since": "then", **holder}))
    return path


def _held(path: Path):
    """Hold ``path``'s flock from another open file (as another process's lock would)."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path, capsys):
    path = _write_lock(tmp_path, pid=_dead_pid(), token="old")
    with tio.FolderLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "took over the stale lock of folder" in err[0], err
    # a live pid that holds no lock (the pid was reused): the lock is stale too
    _write_lock(tmp_path, pid=os.getppid(), token="old")
    with tio.FolderLock(tmp_path):
        pass
    assert "took over the stale lock" in capsys.readouterr().err
    # a lock file left empty by a run killed while creating it
    path.write_text("")
    with tio.FolderLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_live_holders_are_refused_on_any_host(tmp_path):
    fd = _held(_write_lock(tmp_path, pid=os.getppid(), token="x"))
    try:
        with pytest.raises(tio.FolderInUseError, match=rf"pid {os.getppid()} on"):
            tio.FolderLock(tmp_path).acquire()
        # another host (shared storage): the holder's flock is what counts
        _write_lock(tmp_path, pid=_dead_pid(), host="elsewhere", token="x")
        with pytest.raises(tio.FolderInUseError, match="on elsewhere"):
            tio.FolderLock(tmp_path).acquire()
    finally:
        os.close(fd)
    assert (tmp_path / tio.LOCK_NAME).exists()  # refusing never removes someone's lock


def test_a_folder_that_cannot_be_one_is_a_one_line_value_error(tmp_path):
    """A dangling symbolic link (a checkpoint folder on a disk not mounted), a file, a
    path under a file: ValueError naming the path and why, never an OSError traceback."""
    (tmp_path / "ckpt").symlink_to(tmp_path / "gone")
    (tmp_path / "a-file").write_text("x")
    cases = [
        ("ckpt", "is a symbolic link to", "which does not exist"),
        ("a-file", "is a file, not a folder"),
        ("a-file/sub", "cannot be created"),
    ]
    for name, *needles in cases:
        with pytest.raises(ValueError) as err:
            tio.FolderLock(tmp_path / name, what=f"checkpoint folder {tmp_path / name}").acquire()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"checkpoint folder {tmp_path / name} "), msg
        assert all(n in msg for n in needles), msg
    assert not (tmp_path / "gone").exists()  # nothing created behind the link


def test_same_process_may_nest_and_release_keeps_foreign_locks(tmp_path):
    lock = tio.FolderLock(tmp_path)
    with lock, tio.FolderLock(tmp_path):
        assert (tmp_path / tio.LOCK_NAME).exists()
    assert not (tmp_path / tio.LOCK_NAME).exists()
    with tio.FolderLock(tmp_path):
        _write_lock(tmp_path, pid=os.getppid(), token="theirs")  # replaced under our feet
    assert json.loads((tmp_path / tio.LOCK_NAME).read_text())["token"] == "theirs"


def test_training_refuses_a_checkpoint_folder_another_run_holds(tmp_path):
    import gatedrnn as gr
    from gatedrnn import training
    from gatedrnn.training import tasks

    fd = _held(_write_lock(tmp_path / "ckpt", pid=os.getppid(), token="x"))
    try:
        with pytest.raises(tio.FolderInUseError, match="checkpoint folder .*ckpt is in use"):
            training.fit(
                tasks.adding(5), gr.gru(4), num_steps=2, batch_size=2,
                checkpoint_dir=tmp_path / "ckpt", progress=False,
            )  # fmt: skip
    finally:
        os.close(fd)
    assert ck.latest_checkpoint(tmp_path / "ckpt") is None


def test_cli_claims_output_folders_and_files(tmp_path):
    p = cli.ArgumentParser()
    p.add_argument("--out", type=cli.output_dir)
    p.add_argument("--json", type=cli.output_file)
    p.parse_args(["--out", str(tmp_path / "a"), "--json", str(tmp_path / "b" / "r.json")])
    try:
        assert (tmp_path / "a" / tio.LOCK_NAME).exists()
        assert (tmp_path / "b" / ".r.json.lock").exists()
    finally:
        cli.release_outputs()
    assert not (tmp_path / "a" / tio.LOCK_NAME).exists()
    assert not (tmp_path / "b" / ".r.json.lock").exists()


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        path = tio.write_text(tmp_path / "x.json", "{}")
        with cli.atomic_path(tmp_path / "y.txt") as tmp:
            tmp.write_text("y")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert (tmp_path / "y.txt").stat().st_mode & 0o777 == mode
