"""Where the time of one gatedrnn training step (or forward pass) goes, op by op.

Traces the jitted step with ``jax.profiler.trace`` (XLA CPU's per-thunk trace events are
switched on with ``--xla_cpu_enable_xprof_traceme=true``, added to ``XLA_FLAGS`` here) and
prints the total time per XLA op per call, largest first, with how many times it ran per
call (a ``x128`` op runs once per time step). The op names are those of the optimized HLO,
which ``--hlo FILE`` writes, so that each name can be looked up (e.g. ``ynn_fusion.5`` is
the input projection if its operands are ``xs`` and ``w_x``).

Caveats: XLA may run independent ops side by side on its thread pool, so the times overlap
and do not add up to the step's wall time; ops that run asynchronously (Eigen dots) show
only their dispatch.

    python -m benchmarks.profile_step --cell lstm --shape 32,128,256,256
    python -m benchmarks.profile_step --cell gru --shape 32,128,256,256 --forward
"""

from __future__ import annotations

import os

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()

import argparse
import collections
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import gatedrnn as gr
from gatedrnn.cells import CELLS, make_cell


def op_times(trace_dir: Path, calls: int) -> list[tuple[str, float, float]]:
    """``(op name, ms per call, runs per call)`` from a perfetto trace, largest first."""
    files = sorted(trace_dir.glob("**/*perfetto_trace.json.gz"))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no perfetto trace under {trace_dir}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        # complete events of XLA ops; Python frames ("$...") and the runtime's own spans
        # (which contain the ops) are left out
        name = e.get("name", "")
        runtime = name.startswith(("$", "ThunkExecutor", "PjitFunction")) or "PjRt" in name
        if e.get("ph") == "X" and "dur" in e and not runtime:
            total[name] += e["dur"]
            count[name] += 1
    return [(name, us / calls / 1e3, count[name] / calls) for name, us in total.most_common()]


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    """Time and trace the step; print and return the per-op table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    parser.add_argument("--shape", default="32,128,256,256", help="B,T,I,H")
    parser.add_argument("--forward", action="store_true", help="the forward pass only")
    parser.add_argument("--calls", type=int, default=10, help="traced calls")
    parser.add_argument("--top", type=int, default=25, help="ops to print")
    parser.add_argument("--hlo", type=Path, help="write the optimized HLO here")
    args = parser.parse_args(argv)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    cell = make_cell(args.cell, H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))

    def forward(p: gr.cells.base.PyTree, x: jax.Array) -> jax.Array:
        return gr.scan(cell, p, x)[1]

    if args.forward:
        fn = jax.jit(forward)
    else:
        fn = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x)), argnums=(0, 1)))
    if args.hlo:
        args.hlo.write_text(fn.lower(params, xs).compile().as_text())
    jax.block_until_ready(fn(params, xs))
    times = []
    for _ in range(max(3, args.calls)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, xs))
        times.append(time.perf_counter() - t0)
    what = "forward" if args.forward else "training step"
    print(
        f"{args.cell} {what} (B, T, I, H) = {(B, T, I, H)}: median "
        f"{1e3 * statistics.median(times):.2f} ms untraced, on {jax.devices()[0]}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.calls):
                jax.block_until_ready(fn(params, xs))
        rows = op_times(Path(tmp), args.calls)
    print(f"{'ms/call':>9}  {'runs/call':>9}  op")
    for name, ms, runs in rows[: args.top]:
        print(f"{ms:9.2f}  {runs:9.0f}  {name[:100]}")
    return rows


if __name__ == "__main__":
    main()
