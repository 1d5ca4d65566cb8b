"""Speed and memory of gatedrnn side by side with PyTorch and Flax, in one process.

Sections (``--sections``, all by default):

* ``speed``: forward pass and training step (forward + backward with respect to params
  and inputs) of vanilla RNN, LSTM and GRU, float32, for gatedrnn (``gr.scan``),
  PyTorch ``nn.RNN/LSTM/GRU`` and Flax ``nn.RNN`` over ``SimpleCell``,
  ``OptimizedLSTMCell``, ``GRUCell``; also ``gr.scan(fused=False)`` (``jax.lax.scan``'s
  own autodiff, where the default is the cuDNN-style fused backward). Timings are
  interleaved round by round (every implementation once per round), so a change of
  machine load hits all of them alike; medians are reported, with ratios per pair,
  achieved GFLOP/s and its fraction of a large matmul's GFLOP/s timed in the same rounds.
  ``--cells`` picks the cells (any registered cell; default vanilla, LSTM, GRU) of this
  section and of ``unroll``, ``shard`` and ``bf16`` (``crossover`` times minGRU and,
  of ``--cells``, the cells with a parallel form); a cell without a PyTorch or Flax
  counterpart (:data:`TORCH_MODULES`, :data:`FLAX_CELLS`) is timed on its own.
* ``compile``: compile time of an LSTM training step at T=100 vs T=10000.
* ``remat``: XLA's compiled memory analysis and time of the LSTM training step at
  T=8192, batch 16, hidden 256, for ``remat=False / True / "sqrt"`` (and time-major input).
* ``min``: training step of minGRU / minLSTM (parallel form) vs the sequential GRU at
  T=4096.
* ``generate``: 1000 characters sampled from a 2-layer 512-unit LSTM, one sequence: a
  jitted ``lax.scan`` over ``gr.stack`` vs a PyTorch per-step loop.

Run ``python -m benchmarks.rnn_speed`` (``--quick`` for tiny shapes). Writes
``OUT/rnn_speed.json`` and ``OUT/rnn_speed.md``; ``python -m experiments.report`` renders
them into docs/performance.md and the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import gatedrnn as gr
from gatedrnn.cells import CELLS, make_cell

SHAPES = [(32, 128, 256, 256), (64, 256, 512, 512), (1, 1000, 128, 128)]
QUICK_SHAPES = [(2, 8, 4, 8), (1, 12, 4, 8)]
DEFAULT_CELLS = ("vanilla", "lstm", "gru")
TORCH_MODULES = {"vanilla": "RNN", "lstm": "LSTM", "gru": "GRU"}
"""The PyTorch module each cell is timed against (cells without one: gatedrnn alone)."""
FLAX_CELLS = {"vanilla": "SimpleCell", "lstm": "OptimizedLSTMCell", "gru": "GRUCell"}
"""The Flax cell each cell is timed against under ``nn.RNN``."""
MATMUL_N, QUICK_MATMUL_N = 2048, 128


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


def torch_device() -> str:
    """``"cuda"`` where PyTorch sees a GPU, else ``"cpu"``: PyTorch runs where JAX can."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sync() -> None:
    """Wait for PyTorch's queued GPU work (a no-op on the CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def spread(values: list[float]) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values``."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, round by round, after one warm-up call each.

    Each round calls every function once, so a change of machine load during the run hits
    all of them alike. Functions must block until their result is ready.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function (:func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, rounds).items()}


def rnn_flops(kind: str, B: int, T: int, I: int, H: int) -> float:
    """Matrix-product FLOPs of one forward pass: ``2 B T`` times the size of the cell's
    weight matrices (its params leaves of rank >= 2), ``2 B T (I + H) G H`` for a cell with
    ``w_x (I, G H)`` and ``w_h (H, G H)``."""
    cell = make_cell(kind, H)
    shapes = jax.eval_shape(lambda k: cell.init(k, I), jax.random.PRNGKey(0))
    weights = sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes) if a.ndim >= 2)
    return 2.0 * B * T * weights


# ------------------------------------------------------------------------------ builders


def gatedrnn_fns(kind: str, B: int, T: int, I: int, H: int, seed: int, **scan_kwargs: Any):
    """Jitted forward and training step of ``gr.scan`` (loss = sum of outputs)."""
    cell = make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(seed), I)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, I))

    def loss(params, xs):
        return jnp.sum(gr.scan(cell, params, xs, **scan_kwargs)[1])

    fwd = jax.jit(lambda p, x: gr.scan(cell, p, x, **scan_kwargs)[1])
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return (lambda: _block(fwd(params, xs))), (lambda: _block(step(params, xs)))


def flax_fns(kind: str, B: int, T: int, I: int, H: int, seed: int):
    """Jitted forward and training step of Flax ``nn.RNN`` over its own cell."""
    import flax.linen as nn

    cell = getattr(nn, FLAX_CELLS[kind])
    model = nn.RNN(cell(features=H))
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, I))
    variables = model.init(jax.random.PRNGKey(seed), xs)

    def loss(v, x):
        return jnp.sum(model.apply(v, x))

    fwd = jax.jit(model.apply)
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return (lambda: _block(fwd(variables, xs))), (lambda: _block(step(variables, xs)))


def torch_fns(kind: str, B: int, T: int, I: int, H: int, seed: int):
    """PyTorch ``nn.RNN/LSTM/GRU`` forward (no grad) and training step (sum of outputs)."""
    import torch

    torch.manual_seed(seed)
    device = torch_device()
    module = getattr(torch.nn, TORCH_MODULES[kind])
    model = module(I, H, batch_first=True).to(device)
    xs = torch.randn(B, T, I, device=device, requires_grad=True)

    def fwd() -> None:
        with torch.no_grad():
            model(xs)
        _torch_sync()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        xs.grad = None
        ys, _ = model(xs)
        ys.sum().backward()
        _torch_sync()

    return fwd, step


def matmul_fns(n: int, seed: int):
    """One ``(n, n) @ (n, n)`` float32 product in JAX and in PyTorch."""
    import torch

    a = jax.random.normal(jax.random.PRNGKey(seed), (n, n))
    mm = jax.jit(jnp.dot)
    ta, tb = torch.randn(n, n, device=torch_device()), torch.randn(n, n, device=torch_device())

    def torch_mm() -> None:
        ta @ tb
        _torch_sync()

    return (lambda: _block(mm(a, a))), torch_mm


def cudnn_lstm_fns(B: int, T: int, I: int, H: int, seed: int):
    """``jax.experimental.rnn.lstm`` (cuDNN's LSTM, GPU only): forward and training step."""
    from jax.experimental import rnn

    w = rnn.init_lstm_weight(jax.random.PRNGKey(seed), I, H, 1, False)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, I))
    zeros = jnp.zeros((1, B, H))
    lengths = jnp.full((B,), T, jnp.int32)

    def run(w: jax.Array, x: jax.Array) -> jax.Array:
        return rnn.lstm(x, zeros, zeros, w, lengths, I, H, 1, 0.0, False)[0]

    fwd = jax.jit(run)
    step = jax.jit(jax.grad(lambda w, x: jnp.sum(run(w, x)), argnums=(0, 1)))
    return (lambda: _block(fwd(w, xs))), (lambda: _block(step(w, xs)))


# ------------------------------------------------------------------------------ sections


CUDNN = {"lstm": cudnn_lstm_fns}
"""Cells with a cuDNN reference timed too on a GPU."""


def selected_shapes(args: argparse.Namespace) -> list[tuple[int, int, int, int]]:
    """The ``(B, T, I, H)`` shapes of a run: all (quick or full), or those ``--shapes`` names."""
    shapes = QUICK_SHAPES if args.quick else SHAPES
    return [shapes[int(i)] for i in args.shapes.split(",")] if args.shapes else shapes


def quick_cells(args: argparse.Namespace) -> list[str]:
    """The cells of a section that ``--quick`` runs for one cell only: ``--cells`` if
    given, else the LSTM with ``--quick`` and the default cells without."""
    if args.quick and args.cells_given is None:
        return ["lstm"]
    return list(args.cells)


def speed_row(kind: str, shape: tuple, times: dict[str, list[float]], n: int) -> dict:
    """One row of the speed table from the rounds' times: per implementation min / median /
    max seconds; per pair the ratio of medians and its range over the rounds (each round
    timed every implementation once, so a round's ratio saw one machine load)."""
    B, T, I, H = shape
    med = {k: statistics.median(v) for k, v in times.items()}
    mm_gflops = 2.0 * n**3 / med["matmul_jax"] / 1e9
    fl = rnn_flops(kind, B, T, I, H)
    row: dict[str, Any] = {
        "cell": kind,
        "shape": {"batch": B, "time": T, "input": I, "hidden": H},
        "seconds": med,
        "seconds_spread": {k: spread(v) for k, v in times.items()},
        "matmul_gflops_jax": mm_gflops,
        "matmul_gflops_torch": 2.0 * n**3 / med["matmul_torch"] / 1e9,
    }

    def ratio(other: str, ours: str) -> tuple[float, list[float]]:
        per_round = [o / g for o, g in zip(times[other], times[ours], strict=True)]
        return med[other] / med[ours], [min(per_round), max(per_round)]

    for phase, mult in (("forward", 1.0), ("train", 3.0)):
        g = mult * fl / med[f"gatedrnn_{phase}"] / 1e9
        row[phase] = {"gflops": g, "fraction_of_matmul": g / mm_gflops}
        for other in ("torch", "flax", "cudnn"):
            if f"{other}_{phase}" in med:
                r, rng = ratio(f"{other}_{phase}", f"gatedrnn_{phase}")
                row[phase][f"vs_{other}"], row[phase][f"vs_{other}_rounds"] = r, rng
    row["train"]["fused_vs_autodiff"] = med["gatedrnn_autodiff_train"] / med["gatedrnn_train"]
    return row


def bench_speed(args: argparse.Namespace) -> list[dict]:
    shapes = selected_shapes(args)
    n = QUICK_MATMUL_N if args.quick else MATMUL_N
    jax_mm, torch_mm = matmul_fns(n, args.seed)
    on_gpu = jax.default_backend() == "gpu"
    rows = []
    for B, T, I, H in shapes:
        for kind in args.cells:
            fns: dict[str, Callable[[], Any]] = {"matmul_jax": jax_mm, "matmul_torch": torch_mm}
            builders = [
                ("gatedrnn", gatedrnn_fns, {}),
                ("gatedrnn_autodiff", gatedrnn_fns, {"fused": False}),
            ]
            if kind in TORCH_MODULES:
                builders.append(("torch", torch_fns, {}))
            if kind in FLAX_CELLS:
                builders.append(("flax", flax_fns, {}))
            for name, builder, kwargs in builders:
                fwd, step = builder(kind, B, T, I, H, args.seed, **kwargs)
                if name != "gatedrnn_autodiff":
                    fns[f"{name}_forward"] = fwd
                fns[f"{name}_train"] = step
            if on_gpu and kind in CUDNN:
                try:
                    fwd, step = CUDNN[kind](B, T, I, H, args.seed)
                    fwd(), step()
                    fns["cudnn_forward"], fns["cudnn_train"] = fwd, step
                except Exception as e:  # an API change must not cost the other rows
                    print(f"cuDNN LSTM (jax.experimental.rnn) failed: {e!r}", flush=True)
            row = speed_row(kind, (B, T, I, H), interleaved_times(fns, args.rounds), n)
            row["unroll"] = gr.default_unroll(T, kind)
            rows.append(row)
            if args.save is not None:
                args.save("speed", rows)
            f, t = row["forward"], row["train"]
            vs = " ".join(
                f"{phase} x{d[f'vs_{o}']:.2f} {o}"
                for phase, d in (("fwd", f), ("train", t))
                for o in ("torch", "flax")
                if f"vs_{o}" in d
            )
            print(
                f"{kind:8s} {(B, T, I, H)!s:22s} {vs}, fused x{t['fused_vs_autodiff']:.2f} | "
                f"{t['gflops']:.1f} GFLOP/s = {100 * t['fraction_of_matmul']:.0f}% of matmul "
                f"{row['matmul_gflops_jax']:.0f}",
                flush=True,
            )
    return rows


def _lstm_step(B: int, T: int, I: int, H: int, seed: int, **scan_kwargs: Any):
    cell = gr.lstm(H)
    params = cell.init(jax.random.PRNGKey(seed), I)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, I))
    if scan_kwargs.get("time_major"):
        xs = jnp.swapaxes(xs, 0, 1)

    def loss(params, xs):
        return jnp.sum(gr.scan(cell, params, xs, **scan_kwargs)[1])

    return jax.jit(jax.grad(loss, argnums=(0, 1))), params, xs


def bench_compile(args: argparse.Namespace) -> dict:
    lengths = (10, 100) if args.quick else (100, 10000)
    out = {}
    B, I, H = (2, 4, 8) if args.quick else (8, 64, 64)
    for T in lengths:
        step, params, xs = _lstm_step(B, T, I, H, args.seed)
        t0 = time.perf_counter()
        step.lower(params, xs).compile()
        out[f"T={T}"] = time.perf_counter() - t0
    out["ratio"] = out[f"T={lengths[1]}"] / out[f"T={lengths[0]}"]
    print(f"compile seconds {out}", flush=True)
    return out


REMAT_VARIANTS = {
    # name: (remat, time_major, the variant it is compared with)
    "none": (False, False, "none"),
    "per_step": (True, False, "none"),
    "sqrt": ("sqrt", False, "none"),
    "none_time_major": (False, True, "none_time_major"),
    "sqrt_time_major": ("sqrt", True, "none_time_major"),
}


def bench_remat(args: argparse.Namespace) -> dict:
    """Memory (XLA's compiled memory analysis) and time of the LSTM training step per
    ``remat`` option, batch-major input and (``*_time_major``) time-major input."""
    B, T, I, H = (2, 64, 8, 16) if args.quick else (16, 8192, 256, 256)
    out: dict[str, Any] = {"shape": {"batch": B, "time": T, "input": I, "hidden": H}}
    fns = {}
    for name, (remat, time_major, _) in REMAT_VARIANTS.items():
        step, params, xs = _lstm_step(B, T, I, H, args.seed, remat=remat, time_major=time_major)
        mem = step.lower(params, xs).compile().memory_analysis()
        total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        out[name] = {"temp_bytes": int(mem.temp_size_in_bytes), "total_bytes": int(total)}
        fns[name] = lambda step=step, params=params, xs=xs: _block(step(params, xs))
    for name, (_, _, ref) in REMAT_VARIANTS.items():
        out[name]["memory_vs_none"] = out[name]["total_bytes"] / out[ref]["total_bytes"]
        out[name]["temp_vs_none"] = out[name]["temp_bytes"] / out[ref]["temp_bytes"]
    if args.memory_only:
        print(f"remat {out}", flush=True)
        return out
    med = interleaved_medians(fns, max(2, args.rounds // 2))
    for name, (_, _, ref) in REMAT_VARIANTS.items():
        out[name]["seconds"] = med[name]
        out[name]["time_vs_none"] = med[name] / med[ref]
    print(f"remat {out}", flush=True)
    return out


def bench_min(args: argparse.Namespace) -> dict:
    B, T, I, H = (2, 64, 8, 16) if args.quick else (16, 4096, 256, 256)
    xs = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (B, T, I))
    fns = {}
    for name, make, kwargs in (
        ("gru", gr.gru, {}),
        ("min_gru", gr.min_gru, {}),
        ("min_lstm", gr.min_lstm, {}),
        # minGRU in its parallel form (gr.scan picks a form by the measured crossover).
        ("min_gru_parallel", gr.min_gru, {"parallel": True}),
    ):
        cell = make(H)
        params = cell.init(jax.random.PRNGKey(args.seed), I)

        def loss(params, xs, cell=cell, kwargs=kwargs):
            return jnp.sum(gr.scan(cell, params, xs, **kwargs)[1])

        step = jax.jit(jax.grad(loss, argnums=(0, 1)))
        fns[name] = lambda step=step, params=params: _block(step(params, xs))
    med = interleaved_medians(fns, args.rounds)
    out = {
        "shape": {"batch": B, "time": T, "input": I, "hidden": H},
        "seconds": med,
        "min_gru_speedup_vs_gru": med["gru"] / med["min_gru"],
        "min_lstm_speedup_vs_gru": med["gru"] / med["min_lstm"],
    }
    print(f"min cells {out}", flush=True)
    return out


UNROLLS = (1, 2, 4, 8)


def bench_unroll(args: argparse.Namespace) -> list[dict]:
    """Forward and training step per ``unroll`` of ``gr.scan``, every cell and shape: what
    ``gr.default_unroll`` is chosen from."""
    shapes = selected_shapes(args)
    rows = []
    for B, T, I, H in shapes:
        for kind in args.cells:
            fns = {}
            for u in UNROLLS[:2] if args.quick else UNROLLS:
                fwd, step = gatedrnn_fns(kind, B, T, I, H, args.seed, unroll=u)
                fns[f"{u}_forward"], fns[f"{u}_train"] = fwd, step
            times = interleaved_times(fns, args.rounds)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "cell": kind,
                "shape": [B, T, I, H],
                "seconds": med,
                "default": gr.default_unroll(T, kind),
                "speedup_vs_1": {k: med[f"1_{k.split('_')[1]}"] / v for k, v in med.items()},
            }
            rows.append(row)
            if args.save is not None:
                args.save("unroll", rows)
            print(f"unroll {kind} {(B, T, I, H)} {row['speedup_vs_1']}", flush=True)
    return rows


CROSSOVER_T = (16, 64, 256, 1024, 4096, 16384)


def _crossover_of(args: argparse.Namespace, name: str) -> dict:
    """One cell's training step and forward pass, parallel form against the same cell step
    by step, over T: where the parallel form starts to win. A length the library's memory
    checks refuse for the parallel form (at trace time) is recorded as skipped; a form the
    backend runs out of memory for is timed without it and named in ``out_of_memory``."""
    B, I, H = (2, 8, 16) if args.quick else (16, 128, 128)
    lengths = (8, 32) if args.quick else CROSSOVER_T
    cell = make_cell(name, H)
    params = cell.init(jax.random.PRNGKey(args.seed), I)
    rows: list[dict[str, Any]] = []
    for T in lengths:
        xs = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (B, T, I))
        fns = {}
        for form, parallel in (("parallel", True), ("sequential", False)):
            f = partial(gr.scan, cell, parallel=parallel)
            fwd = jax.jit(lambda p, x, f=f: f(p, x)[1])
            step = jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(f(p, x)[1]), argnums=(0, 1)))
            fns[f"{form}_forward"] = lambda fwd=fwd, p=params, x=xs: _block(fwd(p, x))
            fns[f"{form}_train"] = lambda step=step, p=params, x=xs: _block(step(p, x))
        try:  # the library's memory checks run at trace time, before anything is allocated
            jax.eval_shape(jax.grad(lambda p, x: jnp.sum(gr.scan(cell, p, x, parallel=True)[1])),
                           params, xs)  # fmt: skip
        except ValueError as e:
            rows.append({"T": T, "skipped": str(e).split("\n")[0]})
            print(f"crossover {name} T={T} skipped: {rows[-1]['skipped']}", flush=True)
            continue
        row: dict[str, Any] = {"T": T, "seconds": {}}
        try:
            row["seconds"] = interleaved_medians(fns, args.rounds)
        except jax.errors.JaxRuntimeError as e:  # e.g. the step form's saved states
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            for form in ("parallel", "sequential"):  # each form on its own
                try:
                    part = {k: f for k, f in fns.items() if k.startswith(form)}
                    row["seconds"].update(interleaved_medians(part, args.rounds))
                except jax.errors.JaxRuntimeError as e:
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    row.setdefault("out_of_memory", []).append(form)
        rows.append(row)
        print(f"crossover {name} T={T} {row}", flush=True)

    def crossover(phase: str) -> int | None:
        """The smallest measured T from which on the parallel form is faster at every T
        (a form that did not fit in memory loses to one that did; a length skipped for
        the parallel form counts as a win of the step-by-step loop)."""
        inf = float("inf")
        wins = [
            r.get("seconds", {}).get(f"sequential_{phase}", inf)
            > r.get("seconds", {}).get(f"parallel_{phase}", inf)
            for r in rows
        ]
        for i in range(len(rows)):
            if all(wins[i:]):
                return rows[i]["T"]
        return None

    return {
        "cell": name,
        "shape": {"batch": B, "input": I, "hidden": H},
        "rows": rows,
        "crossover_train": crossover("train"),
        "crossover_forward": crossover("forward"),
        "library_picks_parallel_from": gr.parallel_crossover(name),
    }


def bench_crossover(args: argparse.Namespace) -> dict:
    """Where each cell's parallel form starts to beat its step-by-step loop: minGRU always
    (its parallel form is ``jax.lax.associative_scan``), plus, under ``"by_cell"``, every
    other cell with a parallel form named by ``--cells`` (LRU, RG-LRU: associative scans;
    mLSTM: quadratic in T). ``gr.parallel_crossover(cell)`` reads the table these
    measurements fill in ``gatedrnn/scan.py`` (``_PARALLEL_FROM``, per backend and cell)."""
    out = _crossover_of(args, "min_gru")
    others = [
        n
        for n in (args.cells_given or [])
        if n != "min_gru" and make_cell(n, 4).parallel is not None
    ]
    if others:
        out["by_cell"] = [_crossover_of(args, n) for n in others]
    return out


SELF = [sys.executable, "-m", "benchmarks.rnn_speed"]  # this script in a fresh process


def _child_env() -> dict[str, str]:
    """This process's environment, with the repo root first on ``PYTHONPATH`` so that
    :data:`SELF` finds the ``benchmarks`` package from any working directory."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def bench_shard(args: argparse.Namespace) -> list[dict]:
    """One loop per core: the training step with the batch split over host CPU devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, a fresh process) against the
    same step on one device, in that process."""
    if jax.default_backend() != "cpu":
        print("shard: CPU only (one loop per core)", flush=True)
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flag = f"--xla_force_host_platform_device_count={cores}"
    env = {**_child_env(), "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
    cmd = [*SELF, "--sections", "shard_worker", "--rounds", str(args.rounds)]
    cmd += ["--out", str(Path(args.out) / "shard_worker"), "--seed", str(args.seed)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--shapes", args.shapes] if args.shapes else []
    subprocess.run(cmd, env=env, check=True)
    results = json.loads((Path(args.out) / "shard_worker" / "rnn_speed.json").read_text())
    return results["shard_worker"]


def bench_shard_worker(args: argparse.Namespace) -> list[dict]:
    """The worker of :func:`bench_shard`, run in a process with several host devices."""
    from gatedrnn.training import mesh as meshes

    devices = jax.devices()
    shapes = selected_shapes(args)
    mesh = meshes.data_mesh()
    rows = []
    for B, T, I, H in shapes:
        if B % len(devices):
            continue
        for kind in quick_cells(args):
            cell = make_cell(kind, H)
            params = cell.init(jax.random.PRNGKey(args.seed), I)
            xs = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (B, T, I))
            grad = jax.grad(lambda p, x, c=cell: jnp.sum(gr.scan(c, p, x)[1]), argnums=(0, 1))
            one, split = jax.jit(grad), jax.jit(grad)
            p_r, x_s = meshes.replicate(params, mesh), meshes.shard_batch(xs, mesh)
            med = interleaved_medians(
                {
                    "one_device": lambda p=params, x=xs, f=one: _block(f(p, x)),
                    "sharded": lambda p=p_r, x=x_s, f=split: _block(f(p, x)),
                },
                args.rounds,
            )
            row = {
                "cell": kind,
                "shape": [B, T, I, H],
                "devices": len(devices),
                "seconds": med,
                "speedup": med["one_device"] / med["sharded"],
            }
            rows.append(row)
            print(f"shard {kind} {(B, T, I, H)} x{row['speedup']:.2f}", flush=True)
    return rows


def bench_bf16(args: argparse.Namespace) -> dict:
    """bfloat16 against float32 on this backend: a large matmul and each cell's training
    step (params, inputs and state in the dtype; the loss summed in float32)."""
    B, T, I, H = (2, 8, 4, 8) if args.quick else SHAPES[0]
    n = QUICK_MATMUL_N if args.quick else MATMUL_N
    fns = {}
    mm = jax.jit(jnp.dot)
    for dt in (jnp.float32, jnp.bfloat16):
        a = jnp.ones((n, n), dt)
        fns[f"matmul_{dt.__name__}"] = lambda a=a: _block(mm(a, a))
        for kind in quick_cells(args):
            cell = make_cell(kind, H)
            params = cell.init(jax.random.PRNGKey(args.seed), I, dtype=dt)
            xs = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (B, T, I), dt)

            def loss(p, x, cell=cell):
                return jnp.sum(gr.scan(cell, p, x)[1].astype(jnp.float32))

            step = jax.jit(jax.grad(loss, argnums=(0, 1)))
            fns[f"{kind}_{dt.__name__}"] = lambda s=step, p=params, x=xs: _block(s(p, x))
    med = interleaved_medians(fns, args.rounds)
    names = [k for k in ("matmul", *args.cells) if f"{k}_float32" in med]
    out = {
        "shape": [B, T, I, H],
        "matmul_n": n,
        "seconds": med,
        "bf16_speedup": {k: med[f"{k}_float32"] / med[f"{k}_bfloat16"] for k in names},
    }
    print(f"bf16 {out['bf16_speedup']}", flush=True)
    return out


def _transposed_dot_fns(B: int, T: int, H: int, seed: int) -> dict[str, Callable[[], Any]]:
    """The backward loop's product ``da @ w_h^T`` alone, ``T`` steps of ``(B, 4H) @ (4H, H)``:
    ``dot_wT_in_loop`` transposes ``w_h (H, 4H)`` inside the loop (what autodiff gives),
    ``dot_pretransposed`` uses a copy transposed once before the loop."""
    w = jax.random.normal(jax.random.PRNGKey(seed), (H, 4 * H)) / H
    da = jax.random.normal(jax.random.PRNGKey(seed + 1), (T, B, 4 * H))

    def loop(w: jax.Array, da: jax.Array, pre: bool) -> jax.Array:
        wt = jnp.asarray(w.T) if pre else None

        def body(c: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
            out = d @ (wt if pre else w.T) + c
            return jnp.tanh(out), out

        return jax.lax.scan(body, jnp.zeros((B, H)), da)[1]

    fns = {}
    for name, pre in (("dot_wT_in_loop", False), ("dot_pretransposed", True)):
        f = jax.jit(partial(loop, pre=pre))
        fns[name] = lambda f=f: _block(f(w, da))
    return fns


def _gru_input_fns(B: int, T: int, I: int, H: int, seed: int) -> dict[str, Callable[[], Any]]:
    """The GRU as it is (``project`` gives one array per gate block, ``GRUInput``) and
    ``gru_one_array``: the same math with the projection as one ``(T, B, 3H)`` array whose
    rows the loop slices into blocks; forward and training step of each."""
    cell = gr.gru(H)
    params = cell.init(jax.random.PRNGKey(seed), I)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (B, T, I))

    def pointwise(h: jax.Array, xp: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        blocks = gr.cells.GRUInput(xp[..., :H], xp[..., H : 2 * H], xp[..., 2 * H :])
        return cell.pointwise(h, blocks, a)

    one_array = cell._replace(
        project=lambda p, x: x @ p.w_x + p.b_x,
        recur=gr.Split(cell.hidden, pointwise),
    )
    fns = {}
    for name, c in (("gru", cell), ("gru_one_array", one_array)):
        fwd = jax.jit(lambda p, x, c=c: gr.scan(c, p, x)[1])
        step = jax.jit(jax.grad(lambda p, x, c=c: jnp.sum(gr.scan(c, p, x)[1]), argnums=(0, 1)))
        fns[f"{name}_forward"] = lambda fwd=fwd: _block(fwd(params, xs))
        fns[f"{name}_train"] = lambda step=step: _block(step(params, xs))
    return fns


def bench_levers(args: argparse.Namespace) -> list[dict]:
    """LSTM forward and training step under each loop variant, interleaved per shape.

    All with ``unroll=1`` unless named. ``hoisted``: ``gr.scan`` (input projection for all
    steps before the loop);
    ``in_loop``: ``jax.lax.scan`` over ``cell.step`` (projection inside the loop, as Flax);
    ``autodiff``: ``gr.scan(fused=False)`` (the default is the fused backward);
    ``unroll4``: ``gr.scan(unroll=4)``;
    ``bias_in_project``: the same LSTM with its bias added in ``project`` (one more pass over
    the ``(T, B, 4H)`` projection) instead of in ``hidden`` inside the loop; and the
    backward loop's product alone (:func:`_transposed_dot_fns`); the GRU's projection as
    three arrays or as one (:func:`_gru_input_fns`).
    """
    shapes = [(2, 8, 4, 8)] if args.quick else [(32, 128, 256, 256), (1, 1000, 128, 128)]
    rows = []
    for B, T, I, H in shapes:
        cell = gr.lstm(H)
        params = cell.init(jax.random.PRNGKey(args.seed), I)
        xs = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (B, T, I))

        def in_loop(p, x, cell=cell):
            state0 = cell.initial_state(p, x.shape[:1])
            step = lambda s, x_t: cell.step(p, s, x_t)  # noqa: E731
            return jax.lax.scan(step, state0, jnp.moveaxis(x, 1, 0))[1]

        hidden = lambda p, s: s.h @ p.w_h  # noqa: E731
        bias_in_project = cell._replace(
            project=lambda p, x: x @ p.w_x + p.b,
            recur=gr.Split(hidden, cell.pointwise),
        )
        variants = {
            "hoisted": lambda p, x, cell=cell: gr.scan(cell, p, x, unroll=1)[1],
            "bias_in_project": lambda p, x, c=bias_in_project: gr.scan(c, p, x, unroll=1)[1],
            "in_loop": in_loop,
            "autodiff": lambda p, x, cell=cell: gr.scan(cell, p, x, fused=False, unroll=1)[1],
            "unroll4": lambda p, x, cell=cell: gr.scan(cell, p, x, unroll=4)[1],
        }
        fns = {}
        for name, f in variants.items():
            fwd = jax.jit(f)
            step = jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(f(p, x)), argnums=(0, 1)))
            if name != "autodiff":
                fns[f"{name}_forward"] = lambda fwd=fwd, p=params, x=xs: _block(fwd(p, x))
            fns[f"{name}_train"] = lambda step=step, p=params, x=xs: _block(step(p, x))
        fns.update(_transposed_dot_fns(B, T, H, args.seed))
        fns.update(_gru_input_fns(B, T, I, H, args.seed))
        med = interleaved_medians(fns, args.rounds)
        rows.append({"cell": "lstm", "shape": [B, T, I, H], "seconds": med})
        print(f"levers {(B, T, I, H)} {med}", flush=True)
    return rows


def bench_generate(args: argparse.Namespace) -> dict:
    import torch

    V, E, H, L, N = (16, 8, 16, 2, 50) if args.quick else (128, 128, 512, 2, 1000)
    stack = gr.stack(gr.lstm(H), L)
    k_emb, k_rnn, k_out = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    emb = 0.1 * jax.random.normal(k_emb, (V, E))
    params = stack.init(k_rnn, E)
    w_out = 0.1 * jax.random.normal(k_out, (H, V))

    @jax.jit
    def sample(params, emb, w_out, key):
        def one(carry, key):
            state, char = carry
            # gr.stack over a length-1 sequence: the same code path as training.
            state, ys = stack.apply(params, emb[char][None, :], state)
            char = jax.random.categorical(key, ys[-1] @ w_out)
            return (state, char), char

        state0 = stack.initial_state(params)
        _, chars = jax.lax.scan(one, (state0, jnp.int32(0)), jax.random.split(key, N))
        return chars

    torch.manual_seed(args.seed)
    t_emb, t_rnn, t_out = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)

    def torch_sample() -> list[int]:
        chars, char, state = [], torch.zeros(1, 1, dtype=torch.long), None
        with torch.no_grad():
            for _ in range(N):
                y, state = t_rnn(t_emb(char), state)
                probs = torch.softmax(t_out(y[-1]), dim=-1)
                char = torch.multinomial(probs, 1).view(1, 1)
                chars.append(int(char))
        return chars

    key = jax.random.PRNGKey(args.seed)
    med = interleaved_medians(
        {
            "gatedrnn": lambda: _block(sample(params, emb, w_out, key)),
            "torch": torch_sample,
        },
        max(2, args.rounds // 2),
    )
    out = {
        "layers": L,
        "hidden": H,
        "chars": N,
        "seconds": med,
        "chars_per_second": {k: N / v for k, v in med.items()},
        "speedup_vs_torch": med["torch"] / med["gatedrnn"],
    }
    print(f"generation {out}", flush=True)
    return out


# ------------------------------------------------------------------------------ report


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ratio_text(phase: dict, key: str) -> str:
    """``"1.12x (1.05-1.20)"``: the ratio with its range over repeats (``--repeat``) or,
    for one run, over its rounds; ``-`` where the pair was not timed."""
    if key not in phase:
        return "-"
    lo, hi = phase.get(f"{key}_repeats", phase.get(f"{key}_rounds", [phase[key]] * 2))
    return f"{phase[key]:.2f}x ({lo:.2f}-{hi:.2f})"


def speed_table(rows: list[dict], repeat: int) -> list[str]:
    """The speed table's lines: ratios (other's time / ours) with their spread."""
    if not rows:
        return []
    pairs = [("forward", "torch"), ("forward", "flax"), ("train", "torch"), ("train", "flax")]
    if any("vs_cudnn" in r["train"] for r in rows):
        pairs += [("forward", "cudnn"), ("train", "cudnn")]
    over = f"min-max over {repeat} runs" if repeat > 1 else "min-max over the rounds"
    head = " | ".join(f"{ph} vs {other}" for ph, other in pairs)
    lines = [
        "",
        f"Ratios: time of the other / time of gatedrnn (> 1: gatedrnn faster), median ({over}).",
        "",
        f"| cell | (B, T, I, H) | {head} | train GFLOP/s | % of matmul | fused bwd vs autodiff |",
        "|---|---|" + "---|" * len(pairs) + "---|---|---|",
    ]
    for r in rows:
        s, t = r["shape"], r["train"]
        ratios = " | ".join(ratio_text(r[ph], f"vs_{other}") for ph, other in pairs)
        lines.append(
            f"| {r['cell']} | ({s['batch']}, {s['time']}, {s['input']}, {s['hidden']}) "
            f"| {ratios} | {t['gflops']:.1f} | {100 * t['fraction_of_matmul']:.0f}% "
            f"| {t['fused_vs_autodiff']:.2f}x |"
        )
    return lines


def _train_ratio_text(row: dict) -> str:
    """A crossover row's training-step ratio, step by step / parallel, or what was
    skipped for memory."""
    sec = row.get("seconds", {})
    if "sequential_train" in sec and "parallel_train" in sec:
        return f"{sec['sequential_train'] / sec['parallel_train']:.2f}x"
    if row.get("out_of_memory"):
        return f"{' and '.join(row['out_of_memory'])} form out of memory"
    return "skipped (memory)"


def markdown(results: dict) -> str:
    """The README's tables from the JSON results."""
    cpu = f" ({results['cpu']}, {results['cores']} cores)" if "cpu" in results else ""
    lines = [
        f"Device: {results['device']}{cpu}; {results['threads']} threads for XLA and "
        f"PyTorch ({results.get('torch_device', 'cpu')}); medians of {results['rounds']} "
        "interleaved rounds.",
    ]
    lines += speed_table(results.get("speed", []), results.get("repeat", 1))
    if "speed" in results:
        mm = [r["matmul_gflops_jax"] for r in results["speed"]]
        mt = [r["matmul_gflops_torch"] for r in results["speed"]]
        lines += [
            "",
            f"Large matmul ({results['matmul_n']}^2, float32): JAX median over shapes "
            f"{statistics.median(mm):.0f} GFLOP/s, PyTorch {statistics.median(mt):.0f} GFLOP/s.",
        ]
    for row in results.get("unroll", []):
        sp = row["speedup_vs_1"]
        cells = ", ".join(
            f"{u}: {sp[f'{u}_train']:.2f}x / {sp[f'{u}_forward']:.2f}x"
            for u in UNROLLS
            if f"{u}_train" in sp
        )
        lines += [
            "",
            f"unroll, {row['cell']} {tuple(row['shape'])}, speed-up over unroll=1 "
            f"(train / forward): {cells}; default {row['default']}.",
        ]
    if "crossover" in results:
        first = results["crossover"]
        for c in (first, *first.get("by_cell", [])):
            per_t = ", ".join(f"T={r['T']}: {_train_ratio_text(r)}" for r in c["rows"])
            lines += [
                "",
                f"{c.get('cell', 'min_gru')} parallel form vs step by step, training step "
                f"(B={c['shape']['batch']}, H={c['shape']['hidden']}; > 1: parallel faster): "
                f"{per_t}. Crossover: {c['crossover_train']} (train), "
                f"{c['crossover_forward']} (forward); gr.scan uses the parallel form from "
                f"T={c['library_picks_parallel_from']}.",
            ]
    if "bf16" in results:
        b = results["bf16"]
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in b["bf16_speedup"].items())
        lines += [
            "",
            f"bfloat16 vs float32 (speed-up, > 1: bfloat16 faster), matmul {b['matmul_n']}^2 and "
            f"training step at {tuple(b['shape'])}: {sp}.",
        ]
    for row in results.get("shard", []):
        lines += [
            "",
            f"Batch split over {row['devices']} host devices, {row['cell']} "
            f"{tuple(row['shape'])} training step: {row['speedup']:.2f}x one device.",
        ]
    if "compile" in results:
        c = results["compile"]
        times = ", ".join(f"{k}: {v:.1f} s" for k, v in c.items() if k != "ratio")
        lines += ["", f"Compile time of an LSTM training step: {times} (ratio {c['ratio']:.2f})."]
    if "remat" in results:
        m = results["remat"]
        lines += [
            "",
            "| remat (LSTM, B={batch}, T={time}, I={input}, H={hidden}) ".format(**m["shape"])
            + "| total memory | temp memory | total vs none | temp vs none | time vs none |",
            "|---|---|---|---|---|---|",
        ]
        for name in REMAT_VARIANTS:
            if name not in m:
                continue
            v = m[name]
            temp_ratio = f"{v['temp_vs_none']:.3f}" if "temp_vs_none" in v else "-"
            lines.append(
                f"| {name} | {v['total_bytes'] / 2**20:.0f} MiB | {v['temp_bytes'] / 2**20:.0f}"
                f" MiB | {v['memory_vs_none']:.3f} | {temp_ratio} | "
                + (f"{v['time_vs_none']:.2f}x |" if "time_vs_none" in v else "not timed |")
            )
    if "min" in results:
        m = results["min"]
        lines += [
            "",
            f"Training step at T={m['shape']['time']} (B={m['shape']['batch']}, "
            f"H={m['shape']['hidden']}): GRU {m['seconds']['gru']:.3f} s, minGRU "
            f"{m['seconds']['min_gru']:.4f} s ({m['min_gru_speedup_vs_gru']:.1f}x), minLSTM "
            f"{m['seconds']['min_lstm']:.4f} s ({m['min_lstm_speedup_vs_gru']:.1f}x)"
            + (
                f"; minGRU parallel form {m['seconds']['min_gru_parallel']:.4f} s."
                if "min_gru_parallel" in m["seconds"]
                else "."
            ),
        ]
    for row in results.get("levers", []):
        sec = row["seconds"]
        cells = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in sec.items())
        lines += ["", f"Loop variants (LSTM unless named), {tuple(row['shape'])}: {cells}."]
    if "generate" in results:
        g = results["generate"]
        cps = g["chars_per_second"]
        lines += [
            "",
            f"Generation ({g['chars']} chars, {g['layers']}-layer {g['hidden']}-unit LSTM): "
            f"gatedrnn {cps['gatedrnn']:.0f} chars/s, PyTorch loop {cps['torch']:.0f} chars/s "
            f"({g['speedup_vs_torch']:.1f}x).",
        ]
    return "\n".join(lines) + "\n"


README_PARTS = (
    ("speed", "Speed, 2 threads for XLA and PyTorch"),
    ("speed_1core", "Speed, one core each (`taskset -c 0`)"),
    ("levers", "Loop variants (levers)"),
    ("other", "minGRU/minLSTM, compile time, generation, remat"),
)


REPEATED = ("vs_torch", "vs_flax", "vs_cudnn", "gflops", "fraction_of_matmul")


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def combine_runs(runs: list[dict]) -> dict:
    """One result from several runs of the same command: the first run's, with every speed
    ratio replaced by its median over the runs and its min-max (``*_repeats``)."""
    out = json.loads(json.dumps(runs[0]))
    out["repeat"] = len(runs)
    for i, row in enumerate(out.get("speed", [])):
        for phase in ("forward", "train"):
            for key in REPEATED:
                values = [r["speed"][i][phase][key] for r in runs if key in r["speed"][i][phase]]
                if len(values) == len(runs):
                    row[phase][key] = statistics.median(values)
                    row[phase][f"{key}_repeats"] = [min(values), max(values)]
    return out


def repeat_runs(args: argparse.Namespace, argv: list[str]) -> dict:
    """``--repeat N``: the same command N times in fresh processes, then combined."""
    out = Path(args.out)
    base = _without(_without(argv, "--repeat"), "--out")
    runs = []
    for i in range(args.repeat):
        run_out = out / f"run{i}"
        subprocess.run([*SELF, *base, "--out", str(run_out)], env=_child_env(), check=True)
        runs.append(json.loads((run_out / "rnn_speed.json").read_text()))
    results = combine_runs(runs)
    (out / "rnn_speed.json").write_text(json.dumps(results, indent=2))
    (out / "rnn_speed.md").write_text(markdown(results))
    print(markdown(results))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for the tests)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7)")
    parser.add_argument(
        "--sections",
        default="speed,compile,remat,min,generate",
        help="comma-separated subset of speed,compile,remat,min,generate,levers,unroll,"
        "crossover,shard,bf16",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        default=None,
        choices=sorted(CELLS),
        metavar="CELL",
        help="cells of the speed, unroll, shard and bf16 sections (and of crossover, beside "
        "minGRU, those with a parallel form), any of: "
        f"{' '.join(sorted(CELLS))} (default: {' '.join(DEFAULT_CELLS)})",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="remat section: memory analysis, no timing"
    )
    parser.add_argument(
        "--shapes", default="", help="comma-separated indices into the shape list (default all)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        help="PyTorch threads (default: the cores this process may use, as XLA does; "
        "run under `taskset -c 0` for one core each)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole comparison N times, each in a fresh process, and report each "
        "ratio's median and min-max over the N runs",
    )
    args = parser.parse_args(argv)
    args.cells_given, args.cells = args.cells, args.cells or list(DEFAULT_CELLS)
    if args.repeat > 1:
        return repeat_runs(args, sys.argv[1:] if argv is None else list(argv))
    args.save = None
    args.rounds = args.rounds or (3 if args.quick else 7)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = jax.devices()[0]
    results: dict[str, Any] = {
        "device": f"{device.platform}:{device.device_kind}",
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch_device": torch_device(),
        "rounds": args.rounds,
        "matmul_n": QUICK_MATMUL_N if args.quick else MATMUL_N,
        "quick": args.quick,
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(f"device {results['device']}, torch threads {results['threads']}", flush=True)
    sections = {
        "speed": bench_speed,
        "compile": bench_compile,
        "remat": bench_remat,
        "min": bench_min,
        "generate": bench_generate,
        "levers": bench_levers,
        "unroll": bench_unroll,
        "crossover": bench_crossover,
        "shard": bench_shard,
        "shard_worker": bench_shard_worker,
        "bf16": bench_bf16,
    }
    names = args.sections.split(",")
    for name in names:
        if name not in sections:
            parser.error(f"unknown section {name!r}; expected some of {sorted(sections)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(name: str, value: Any) -> None:
        # Written after every section (and speed row): a long run keeps its finished parts.
        results[name] = value
        results["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        (out / "rnn_speed.json").write_text(json.dumps(results, indent=2))
        (out / "rnn_speed.md").write_text(markdown(results))

    args.save = save
    for name in names:
        save(name, sections[name](args))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
