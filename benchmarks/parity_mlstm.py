"""Our mLSTM against the xlstm package's pure-PyTorch mLSTM backends: parity, and speed.

Parity (always): at (B, T, H) = (4, 256, 32) (input size 32, 4 heads of 8), float32 and
float64, the same q, k, v and gate pre-activations (computed in numpy from our params)
go into xlstm's ``parallel_stabilized_simple`` and, step by step, into
``recurrent_step_stabilized_simple``; their outputs are multiplied by our output gate.
Both of our forms (``gr.scan`` step form and parallel form) are compared with both:

* with xlstm's recurrent step from the zero state (``m = 0``): outputs and final state;
* with xlstm's parallel form, whose stabilizer has no initial-state term: ours from
  ``C = n = 0, m = -inf`` (the same numbers; from ``m = 0`` the two differ through ``eps``,
  as xlstm's own two forms do: ``reference_forms_max_abs_diff``).

``max_abs_diff_<dtype>`` is the largest absolute output difference over those four
comparisons; ``details`` has each, and ``max_abs_output`` the scale of the outputs.

Speed (``--speed`` only; run it on a quiet machine): forward pass and training step
(gradients with respect to params and inputs, loss = sum of outputs) at (16, 1024, 256)
and (1, 4096, 256), 4 heads, float32, for ``gr.scan`` under ``jax.jit`` (step form and
parallel form) and xlstm's PyTorch backends with the same projections (the parallel form,
and the recurrent step in a Python loop), interleaved round by round, medians.

Run ``python -m benchmarks.parity_mlstm`` (``--speed`` to time as well). Writes ``--out``
(default ``benchmarks/results/parity/mlstm.json``) atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gatedrnn as gr
from gatedrnn.cells.mlstm import MLSTMParams, mlstm
from gatedrnn.training.io import write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "parity" / "mlstm.json"
PARITY_SHAPE = (4, 256, 32)  # (B, T, H); input size H
NUM_HEADS = 4  # xlstm's default for the mLSTM layer
SPEED_SHAPES = [(16, 1024, 256), (1, 4096, 256)]
REFERENCE = (
    "xlstm (PyTorch) xlstm.blocks.mlstm.backends: parallel_stabilized_simple and "
    "recurrent_step_stabilized_simple"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``--out``, ``--speed``, ``--rounds``, ``--chunk-sizes``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON to write")
    parser.add_argument("--speed", action="store_true", help="also time forward and training step")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (--speed)")
    parser.add_argument(
        "--chunk-sizes",
        nargs="*",
        default=[],
        metavar="N",
        help="--speed: also time our parallel form with these chunk sizes ('none': one "
        "quadratic form over the whole sequence) beside the default",
    )
    args = parser.parse_args(argv)
    args.chunk_sizes = [None if c.lower() == "none" else int(c) for c in args.chunk_sizes]
    return args


def make_params(H: int, I: int, num_heads: int, dtype: Any, seed: int = 0) -> MLSTMParams:
    """Our init, with the gate weights ``w_i, w_f`` drawn ``N(0, 1/I)`` (the init sets them
    to zero, as xlstm does) so that the gates move with the input."""
    cell = mlstm(H, num_heads)
    p = cell.init(jax.random.PRNGKey(seed), I, dtype)
    k_i, k_f = jax.random.split(jax.random.PRNGKey(seed + 1))
    scale = 1.0 / math.sqrt(I)
    return p._replace(
        w_i=scale * jax.random.normal(k_i, p.w_i.shape, dtype),
        w_f=scale * jax.random.normal(k_f, p.w_f.shape, dtype),
    )


# ------------------------------------------------------------------------------ parity


def reference_outputs(
    p: MLSTMParams, xs: np.ndarray, num_heads: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """xlstm's two backends on our projections of ``xs (B, T, I)``, output gate applied.

    Returns:
      ``(y_parallel, y_recurrent, (c, n, m))``: outputs ``(B, T, H)`` and the recurrent
      step's final state, flattened like ours (``(B, NH*d*d)``, ``(B, NH*d)``, ``(B, NH)``).
    """
    import torch
    from xlstm.blocks.mlstm.backends import (
        parallel_stabilized_simple,
        recurrent_step_stabilized_simple,
    )

    P = {f: np.asarray(getattr(p, f)) for f in p._fields}
    B, T, _ = xs.shape
    H = P["w_q"].shape[1]
    d = H // num_heads

    def heads(a: np.ndarray) -> torch.Tensor:  # (B, T, NH*X) -> (B, NH, T, X)
        return torch.from_numpy(np.ascontiguousarray(a.reshape(B, T, num_heads, -1).swapaxes(1, 2)))

    def merge(h: torch.Tensor) -> np.ndarray:  # (B, NH, T, d) -> (B, T, H)
        return h.numpy().swapaxes(1, 2).reshape(B, T, H)

    q, k, v = (heads(xs @ P[w]) for w in ("w_q", "w_k", "w_v"))
    ig, fg = heads(xs @ P["w_i"] + P["b_i"]), heads(xs @ P["w_f"] + P["b_f"])
    o = 1.0 / (1.0 + np.exp(-(xs @ P["w_o"] + P["b_o"])))
    with torch.no_grad():
        y_par = o * merge(parallel_stabilized_simple(q, k, v, ig, fg))
        c = torch.zeros((B, num_heads, d, d), dtype=q.dtype)
        n = torch.zeros((B, num_heads, d, 1), dtype=q.dtype)
        m = torch.zeros((B, num_heads, 1, 1), dtype=q.dtype)
        hs = []
        for t in range(T):
            s = slice(t, t + 1)
            h, (c, n, m) = recurrent_step_stabilized_simple(
                c, n, m, q[:, :, s].clone(), k[:, :, s].clone(), v[:, :, s].clone(),
                ig[:, :, s], fg[:, :, s],
            )  # fmt: skip
            hs.append(h)
        y_rec = o * merge(torch.cat(hs, dim=2))
    final = tuple(a.numpy().reshape(B, -1) for a in (c, n, m))
    return y_par, y_rec, final


def parity(dtype: str, shape: tuple[int, int, int] = PARITY_SHAPE) -> dict[str, float]:
    """Largest absolute differences between our forms and xlstm's at ``shape`` in ``dtype``."""
    B, T, H = shape
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        cell = mlstm(H, NUM_HEADS)
        p = make_params(H, H, NUM_HEADS, dt)
        xs = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (B, T, H), dt))
        y_par, y_rec, final = reference_outputs(p, xs, NUM_HEADS)
        zero = cell.initial_state(p, (B,))
        no_init = zero._replace(m=jnp.full_like(zero.m, -jnp.inf))
        run = jax.jit(gr.scan, static_argnums=0, static_argnames="parallel")
        out: dict[str, float] = {}
        for form, parallel in (("step", False), ("parallel", True)):
            state, ys = run(cell, p, jnp.asarray(xs), zero, parallel=parallel)
            out[f"{form}_vs_recurrent"] = float(np.max(np.abs(np.asarray(ys) - y_rec)))
            out[f"{form}_final_state_vs_recurrent"] = max(
                float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(state, final)
            )
            _, ys = run(cell, p, jnp.asarray(xs), no_init, parallel=parallel)
            out[f"{form}_vs_parallel"] = float(np.max(np.abs(np.asarray(ys) - y_par)))
        out["reference_forms_max_abs_diff"] = float(np.max(np.abs(y_par - y_rec)))
        out["max_abs_output"] = float(np.max(np.abs(y_rec)))
    return out


# ------------------------------------------------------------------------------- speed


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


def ours_fns(
    B: int, T: int, H: int, parallel: bool, **options: Any
) -> dict[str, Callable[[], Any]]:
    """Jitted forward and training step of ``gr.scan`` (loss = sum of outputs); ``options``
    go to the cell (``chunk_size``)."""
    cell = mlstm(H, NUM_HEADS, **options)
    p = make_params(H, H, NUM_HEADS, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, H))

    def loss(p: MLSTMParams, xs: jax.Array) -> jax.Array:
        return jnp.sum(gr.scan(cell, p, xs, parallel=parallel)[1])

    fwd = jax.jit(lambda p, xs: gr.scan(cell, p, xs, parallel=parallel)[1])
    train = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {"forward": lambda: _block(fwd(p, xs)), "train": lambda: _block(train(p, xs))}


def xlstm_fns(B: int, T: int, H: int, parallel: bool) -> dict[str, Callable[[], Any]]:
    """xlstm's backends with the same projections in PyTorch: forward (no grad) and
    training step (``backward`` of the sum of outputs to weights and inputs). The
    recurrent step squeezes its q, k, v in place, so each step gets copies of its slices
    (as a caller of xlstm must)."""
    import torch
    from xlstm.blocks.mlstm.backends import (
        parallel_stabilized_simple,
        recurrent_step_stabilized_simple,
    )

    p = make_params(H, H, NUM_HEADS, jnp.float32)
    w = torch.from_numpy(
        np.concatenate(
            [np.asarray(getattr(p, f)) for f in ("w_q", "w_k", "w_v", "w_o", "w_i", "w_f")], 1
        )
    ).requires_grad_()
    b = torch.from_numpy(
        np.concatenate(
            [np.zeros(3 * H, np.float32)]
            + [np.asarray(getattr(p, f)) for f in ("b_o", "b_i", "b_f")]
        )
    ).requires_grad_()
    xs = torch.from_numpy(
        np.array(jax.random.normal(jax.random.PRNGKey(2), (B, T, H)))  # a writable copy
    ).requires_grad_()
    NH, d = NUM_HEADS, H // NUM_HEADS

    def heads(a: torch.Tensor) -> torch.Tensor:  # (B, T, NH*X) -> (B, NH, T, X)
        return a.reshape(B, T, NH, -1).transpose(1, 2)

    def model() -> torch.Tensor:
        z = xs @ w + b
        q, k, v, o, ig, fg = torch.split(z, [H, H, H, H, NH, NH], dim=-1)
        q, k, v, ig, fg = (heads(a) for a in (q, k, v, ig, fg))
        if parallel:
            h = parallel_stabilized_simple(q, k, v, ig, fg)
        else:
            c = torch.zeros((B, NH, d, d))
            n, m = torch.zeros((B, NH, d, 1)), torch.zeros((B, NH, 1, 1))
            hs = []
            for t in range(T):
                s = slice(t, t + 1)
                h_t, (c, n, m) = recurrent_step_stabilized_simple(
                    c, n, m, q[:, :, s].clone(), k[:, :, s].clone(), v[:, :, s].clone(),
                    ig[:, :, s], fg[:, :, s],
                )  # fmt: skip
                hs.append(h_t)
            h = torch.cat(hs, dim=2)
        return torch.sigmoid(o) * h.transpose(1, 2).reshape(B, T, H)

    def forward() -> None:
        with torch.no_grad():
            model()

    def train() -> None:
        w.grad = b.grad = xs.grad = None
        model().sum().backward()

    return {"forward": forward, "train": train}


def speed(
    rounds: int,
    shapes: Sequence[tuple[int, int, int]] = SPEED_SHAPES,
    chunk_sizes: Sequence[int | None] = (),
) -> list[dict]:
    """Median seconds of forward and training step, ours (step, parallel) vs xlstm's
    (recurrent loop, parallel), per shape; ratios ``xlstm / ours`` (above 1: ours faster).
    ``chunk_sizes``: our parallel form also with these ``chunk_size`` (``ours_chunk_N``)."""
    from benchmarks.rnn_speed import interleaved_times

    rows = []
    for B, T, H in shapes:
        fns = {}
        for form, parallel in (("step", False), ("parallel", True)):
            for name, fn in ours_fns(B, T, H, parallel).items():
                fns[f"ours_{form}_{name}"] = fn
        for c in chunk_sizes:
            for name, fn in ours_fns(B, T, H, True, chunk_size=c).items():
                fns[f"ours_chunk_{c}_{name}"] = fn
        for form, parallel in (("recurrent", False), ("parallel", True)):
            for name, fn in xlstm_fns(B, T, H, parallel).items():
                fns[f"xlstm_{form}_{name}"] = fn
        times = {k: statistics.median(v) for k, v in interleaved_times(fns, rounds).items()}
        row: dict[str, Any] = {"shape": [B, T, H], "num_heads": NUM_HEADS, "seconds": times}
        row["xlstm_over_ours"] = {
            f"{ours}_vs_{ref}_{phase}": times[f"xlstm_{ref}_{phase}"]
            / times[f"ours_{ours}_{phase}"]
            for ours, ref in (
                ("step", "recurrent"),
                ("parallel", "parallel"),
                ("parallel", "recurrent"),
            )
            for phase in ("forward", "train")
        }
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Parity (and speed with ``--speed``) as plain data."""
    import torch
    import xlstm

    results: dict[str, Any] = {
        "cell": "mlstm",
        "reference": REFERENCE,
        "reference_version": xlstm.__version__,
        "torch_version": torch.__version__,
        "shape": list(PARITY_SHAPE),
        "input_size": PARITY_SHAPE[2],
        "num_heads": NUM_HEADS,
        "params": "gatedrnn init with w_i, w_f ~ N(0, 1/I); inputs N(0, 1)",
        "details": {},
    }
    for dtype in ("float32", "float64"):
        d = parity(dtype)
        results["details"][dtype] = d
        results[f"max_abs_diff_{dtype}"] = max(
            d[f"{form}_vs_{ref}"]
            for form in ("step", "parallel")
            for ref in ("recurrent", "parallel")
        )
    if args.speed:
        results["speed"] = {
            "device": f"{jax.default_backend()} ({platform.processor() or platform.machine()})",
            "torch_threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "default_chunk_size": mlstm(8).options["chunk_size"],
            "rows": speed(args.rounds, chunk_sizes=args.chunk_sizes),
        }
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, run, write ``--out`` atomically, print a summary."""
    args = parse_args(argv)
    results = run(args)
    write_text(args.out, json.dumps(results, indent=2) + "\n")
    for dtype in ("float32", "float64"):
        print(f"mlstm vs xlstm, {dtype}: max abs diff {results[f'max_abs_diff_{dtype}']:.3g}")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
