"""Training across real processes (JAX's multi-controller runtime on localhost, CPU
collectives over gloo): 2 processes share one checkpoint folder; one is SIGKILLed
half-way and stops the other with one line within seconds; both restart with resume=True
and end with the params of a one-process run; only process 0 logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

import gatedrnn as gr
from gatedrnn import training
from gatedrnn.training import checkpoint, tasks

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 2
FIT = dict(num_steps=STEPS, batch_size=4, eval_every=EVERY, eval_batch_size=4, seed=1)
FIT.update(early_stop=False, progress=False, learning_rate=1e-2)

# The command docs/scaling.md documents, for process i of N (here N = 2).
CHILD = textwrap.dedent(
    f"""
    import os, sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, i, ckpt, resume = sys.argv[1], int(sys.argv[2]), *sys.argv[3:5]
    hang_at = int(sys.argv[5])
    jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=2,
                               process_id=i, heartbeat_timeout_seconds=10)
    import numpy as np
    import gatedrnn as gr
    from gatedrnn import training
    from gatedrnn.training import checkpoint, tasks

    save = checkpoint.save
    def hooked_save(directory, step, *a, **k):  # so that the test can kill the run mid-way
        path = save(directory, step, *a, **k)
        open(os.path.join(directory, "..", f"saved-{{i}}-{{step}}"), "w").close()
        if (i, step) == (1, hang_at):
            time.sleep(600)
        return path
    checkpoint.save = hooked_save
    try:
        _, result = training.fit(tasks.adding(20), gr.lstm(8), mesh=training.data_mesh(),
                                 checkpoint_dir=ckpt, resume=resume == "resume",
                                 log_path=os.path.join(ckpt, "..", "log.jsonl"), **{FIT!r})
    except Exception as e:  # one line, and no wait for a dead peer in JAX's shutdown
        print(f"process {{i}}: error: {{e}}", file=sys.stderr, flush=True)
        os._exit(1)
    if i == 0:
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state.params)]
        np.savez(os.path.join(ckpt, "..", "params.npz"), *leaves)
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("multiprocess")
    script = base / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.update(
        # the test run's cache (tests/conftest.py) if there is one, else the module's own
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or str(base / "xla-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("GATEDRNN_DEBUG", None)
    # one device per process: no --xla_force_host_platform_device_count of the parent's
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    return {"script": script, "env": env, "base": base}


def _launch(child: dict, ckpt: Path, resume: bool, hang_at: int = -1) -> list[subprocess.Popen]:
    """Start the 2 processes; process 1 hangs after its save at step ``hang_at``, and each
    marks every save it is past with a file ``saved-PROCESS-STEP`` beside ``ckpt``."""
    port = _port()
    args = [str(ckpt), "resume" if resume else "fresh", str(hang_at)]
    return [
        subprocess.Popen(
            [sys.executable, str(child["script"]), str(port), str(i), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child["env"],
        )
        for i in range(2)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            err = p.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = p.communicate()[1]
        out.append((p.returncode, err))
    return out


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, _finish(procs)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_dead_process_stops_the_other_in_one_line_and_both_resume_to_one_process_params(
    child,
):
    """Process 1 is SIGKILLed half-way (it hangs after its checkpoint at STEPS // 2); process
    0 stops within seconds with the library's one line; both restarted with resume=True end
    with the params of a one-process run; the log comes from process 0 only."""
    run = child["base"] / "run"
    ckpt = run / "ckpt"
    procs = _launch(child, ckpt, resume=False, hang_at=STEPS // 2)
    # both processes past the save (its barriers): process 0 then meets the dead peer in a
    # collective (gloo sees the closed connection at once). A peer that dies while the
    # other waits in a barrier of the coordination service is found by JAX's heartbeats,
    # and JAX then ends that process itself (glog "F..."), racing the library's line.
    for i in range(2):
        _wait_for(run / f"saved-{i}-{STEPS // 2}", procs)
    killed = time.monotonic()
    os.kill(procs[1].pid, signal.SIGKILL)
    (code, err), (code_1, _) = _finish(procs, timeout=60)
    took = time.monotonic() - killed
    # the library's one line, and no traceback; JAX's C++ runtime may log its own records
    # (glog, "E1202 12:00:00.000 ...", some running to several lines) when its heartbeats,
    # not gloo, notice the dead peer first (on a loaded machine)
    ours = [x for x in err.splitlines() if x.startswith("process 0: error: ")]
    assert code == 1 and code_1 == -signal.SIGKILL and took < 30, (code, took, err[-2000:])
    assert len(ours) == 1 and "Traceback" not in err, err[-2000:]
    assert "lost the other processes" in ours[0], err[-2000:]
    assert ours[0].endswith("restart every process with resume=True"), err[-2000:]
    saved = [s for s, _ in checkpoint.list_checkpoints(ckpt)]
    assert saved and max(saved) < STEPS and not (run / "params.npz").exists()

    resumed = _finish(_launch(child, ckpt, resume=True))
    assert [code for code, _ in resumed] == [0, 0], resumed
    with np.load(run / "params.npz") as z:
        got = [z[f"arr_{i}"] for i in range(len(z.files))]

    _, one = training.fit(tasks.adding(20), gr.lstm(8), **FIT)  # one process, one device
    want = [np.asarray(x) for x in jax.tree_util.tree_leaves(one.state.params)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        chex.assert_trees_all_close(g, w, rtol=1e-5, atol=1e-6)
    # the log comes from process 0 only: each evaluation once, the killed run's tail dropped
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(EVERY, STEPS + 1, EVERY))
