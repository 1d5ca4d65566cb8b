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
* ``compile``: compile time of an LSTM training step at T=100 vs T=10000.
* ``remat``: XLA's compiled memory analysis and time of the LSTM training step at
  T=8192, batch 16, hidden 256, for ``remat=False / True / "sqrt"`` (and time-major input).
* ``min``: training step of minGRU / minLSTM (parallel form) vs the sequential GRU at
  T=4096.
* ``generate``: 1000 characters sampled from a 2-layer 512-unit LSTM, one sequence: a
  jitted ``lax.scan`` over ``gr.stack`` vs a PyTorch per-step loop.

Run ``python benchmarks/rnn_speed.py`` (``--quick`` for tiny shapes). Writes
``OUT/rnn_speed.json`` and ``OUT/rnn_speed.md``; ``python experiments/report.py`` renders
them into docs/performance.md and the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

import gatedrnn as gr

SHAPES = [(32, 128, 256, 256), (64, 256, 512, 512), (1, 1000, 128, 128)]
QUICK_SHAPES = [(2, 8, 4, 8), (1, 12, 4, 8)]
GATES = {"vanilla": 1, "lstm": 4, "gru": 3}
MATMUL_N, QUICK_MATMUL_N = 2048, 128


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


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
    """Matrix-product FLOPs of one forward pass: ``2 B T (I + H) G H`` (G gate blocks)."""
    return 2.0 * B * T * (I + H) * GATES[kind] * H


# ------------------------------------------------------------------------------ builders


def gatedrnn_fns(kind: str, B: int, T: int, I: int, H: int, seed: int, **scan_kwargs: Any):
    """Jitted forward and training step of ``gr.scan`` (loss = sum of outputs)."""
    cell = {"vanilla": gr.vanilla, "lstm": gr.lstm, "gru": gr.gru}[kind](H)
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

    cell = {"vanilla": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[kind]
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
    module = {"vanilla": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    model = module(I, H, batch_first=True)
    xs = torch.randn(B, T, I, requires_grad=True)

    def fwd() -> None:
        with torch.no_grad():
            model(xs)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        xs.grad = None
        ys, _ = model(xs)
        ys.sum().backward()

    return fwd, step


def matmul_fns(n: int, seed: int):
    """One ``(n, n) @ (n, n)`` float32 product in JAX and in PyTorch."""
    import torch

    a = jax.random.normal(jax.random.PRNGKey(seed), (n, n))
    mm = jax.jit(jnp.dot)
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    return (lambda: _block(mm(a, a))), (lambda: ta @ tb)


# ------------------------------------------------------------------------------ sections


def bench_speed(args: argparse.Namespace) -> list[dict]:
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [shapes[int(i)] for i in args.shapes.split(",")]
    n = QUICK_MATMUL_N if args.quick else MATMUL_N
    jax_mm, torch_mm = matmul_fns(n, args.seed)
    rows = []
    for B, T, I, H in shapes:
        for kind in ("vanilla", "lstm", "gru"):
            fns: dict[str, Callable[[], Any]] = {"matmul_jax": jax_mm, "matmul_torch": torch_mm}
            for name, builder, kwargs in (
                ("gatedrnn", gatedrnn_fns, {}),
                ("gatedrnn_autodiff", gatedrnn_fns, {"fused": False}),
                ("torch", torch_fns, {}),
                ("flax", flax_fns, {}),
            ):
                fwd, step = builder(kind, B, T, I, H, args.seed, **kwargs)
                if name != "gatedrnn_autodiff":
                    fns[f"{name}_forward"] = fwd
                fns[f"{name}_train"] = step
            med = interleaved_medians(fns, args.rounds)
            mm_gflops = 2.0 * n**3 / med["matmul_jax"] / 1e9
            fl = rnn_flops(kind, B, T, I, H)
            row: dict[str, Any] = {
                "cell": kind,
                "shape": {"batch": B, "time": T, "input": I, "hidden": H},
                "seconds": med,
                "matmul_gflops_jax": mm_gflops,
                "matmul_gflops_torch": 2.0 * n**3 / med["matmul_torch"] / 1e9,
            }
            for phase, mult in (("forward", 1.0), ("train", 3.0)):
                g = mult * fl / med[f"gatedrnn_{phase}"] / 1e9
                row[phase] = {
                    "vs_torch": med[f"torch_{phase}"] / med[f"gatedrnn_{phase}"],
                    "vs_flax": med[f"flax_{phase}"] / med[f"gatedrnn_{phase}"],
                    "gflops": g,
                    "fraction_of_matmul": g / mm_gflops,
                }
            row["train"]["fused_vs_autodiff"] = (
                med["gatedrnn_autodiff_train"] / med["gatedrnn_train"]
            )
            rows.append(row)
            if args.save is not None:
                args.save("speed", rows)
            print(
                f"{kind:8s} {(B, T, I, H)!s:22s} fwd x{row['forward']['vs_torch']:.2f} torch "
                f"x{row['forward']['vs_flax']:.2f} flax | train x{row['train']['vs_torch']:.2f} "
                f"torch x{row['train']['vs_flax']:.2f} flax, fused x"
                f"{row['train']['fused_vs_autodiff']:.2f} | {row['train']['gflops']:.1f} GFLOP/s ="
                f" {100 * row['train']['fraction_of_matmul']:.0f}% of matmul {mm_gflops:.0f}",
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
    for T in lengths:
        step, params, xs = _lstm_step(8, T, 64, 64, args.seed)
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
    for name, make in (
        ("gru", gr.gru),
        ("min_gru", gr.min_gru),
        ("min_lstm", gr.min_lstm),
        # The same minGRU run step by step (no parallel form): what the parallel scan buys.
        ("min_gru_sequential", lambda h: gr.min_gru(h)._replace(parallel=None)),
    ):
        cell = make(H)
        params = cell.init(jax.random.PRNGKey(args.seed), I)

        def loss(params, xs, cell=cell):
            return jnp.sum(gr.scan(cell, params, xs)[1])

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

    ``hoisted``: ``gr.scan`` (input projection for all steps before the loop);
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
            "hoisted": lambda p, x, cell=cell: gr.scan(cell, p, x)[1],
            "bias_in_project": lambda p, x, c=bias_in_project: gr.scan(c, p, x)[1],
            "in_loop": in_loop,
            "autodiff": lambda p, x, cell=cell: gr.scan(cell, p, x, fused=False)[1],
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


def markdown(results: dict) -> str:
    """The README's tables from the JSON results."""
    cpu = f" ({results['cpu']}, {results['cores']} cores)" if "cpu" in results else ""
    lines = [
        f"Device: {results['device']}{cpu}; {results['threads']} threads for XLA and "
        f"PyTorch; medians of {results['rounds']} interleaved rounds.",
    ]
    if "speed" in results:
        lines += [
            "",
            "| cell | (B, T, I, H) | fwd vs torch | fwd vs flax | train vs torch | "
            "train vs flax | train GFLOP/s | % of matmul | fused bwd vs autodiff |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in results.get("speed", []):
        s = r["shape"]
        f, t = r["forward"], r["train"]
        lines.append(
            f"| {r['cell']} | ({s['batch']}, {s['time']}, {s['input']}, {s['hidden']}) "
            f"| {f['vs_torch']:.2f}x | {f['vs_flax']:.2f}x | {t['vs_torch']:.2f}x "
            f"| {t['vs_flax']:.2f}x | {t['gflops']:.1f} | {100 * t['fraction_of_matmul']:.0f}% "
            f"| {t['fused_vs_autodiff']:.2f}x |"
        )
    if "speed" in results:
        mm = [r["matmul_gflops_jax"] for r in results["speed"]]
        mt = [r["matmul_gflops_torch"] for r in results["speed"]]
        lines += [
            "",
            f"Large matmul ({results['matmul_n']}^2, float32): JAX median over shapes "
            f"{statistics.median(mm):.0f} GFLOP/s, PyTorch {statistics.median(mt):.0f} GFLOP/s.",
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
                f"; minGRU step by step {m['seconds']['min_gru_sequential']:.4f} s."
                if "min_gru_sequential" in m["seconds"]
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for the tests)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7)")
    parser.add_argument(
        "--sections",
        default="speed,compile,remat,min,generate",
        help="comma-separated subset of speed,compile,remat,min,generate,levers",
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
    args = parser.parse_args(argv)
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
