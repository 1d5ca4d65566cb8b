"""Truncated BPTT in practice: a window k learns a dependency at distance d only if d < k.

Task: echo (``gatedrnn.training.tasks.echo``): at every step output the symbol seen exactly ``d``
steps earlier, so every scored output depends on one input at distance ``d`` and nothing
else. A GRU plus a linear readout is trained with clipped Adam under a fixed update budget,
several seeds at once, in three ways:

* ``full``: full BPTT over the whole sequence (the reference: is the distance learnable?);
* ``scan``: ``gr.scan(..., truncate=k)`` over the whole sequence: the gradient through the
  state is stopped before every step index that is a positive multiple of ``k``, so the
  output at step t reaches back only to the start of its k-chunk;
* ``stateful``: the sequence is a stream cut into consecutive chunks of k steps, one update
  per chunk; the state is carried from one chunk to the next (forward pass unchanged) and
  the gradient stops at the chunk boundary (``gatedrnn.training.stream_batches``).

With a window k, the output at step t gets gradient from inputs at steps
``k * floor(t / k) .. t``, so the input ``d`` steps back is reachable from some output iff
``d <= k - 1``. Prediction: accuracy ~1 when ``d < k`` (and full BPTT learns it), chance
(loss = baseline ln V) when ``d >= k``. Evaluation is always on whole held-out sequences.

Outputs (in ``--out``): ``truncation.json``, ``truncation.md`` (table), ``truncation.png``.

    python -m experiments.truncation            # default grid
    python -m experiments.truncation --quick    # smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments import cli
from experiments.cli import parser, pyplot
from gatedrnn import training
from gatedrnn.cells import CELLS, make_cell
from gatedrnn.training import tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--delays", nargs="+", type=cli.positive_int, default=[2, 6, 10], help="distances d"
    )
    p.add_argument(
        "--windows", nargs="+", type=cli.positive_int, default=[4, 8], help="TBPTT windows k"
    )
    p.add_argument("--seq-len", type=cli.positive_int, default=40, help="T (a multiple of every k)")
    p.add_argument("--cell", default="gru", choices=sorted(CELLS))
    p.add_argument("--vocab", type=cli.positive_int, default=2, help="echo alphabet size")
    p.add_argument("--seeds", type=cli.positive_int, default=2)
    p.add_argument("--steps", type=cli.positive_int, default=1500, help="update budget per run")
    p.add_argument("--hidden", type=cli.positive_int, default=32)
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument("--learning-rate", "--lr", type=cli.positive_float, default=3e-3)
    p.add_argument("--eval-every", type=cli.positive_int, default=100)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replot", action="store_true", help="redraw the PNG from --out's JSON")
    a = p.honour_quick(
        p.parse_args(argv),
        delays=[1, 3],
        windows=[2],
        seq_len=8,
        seeds=1,
        steps=20,
        hidden=8,
        eval_every=20,
    )
    for k in a.windows:
        p.refuse(
            a.seq_len % k != 0,
            f"--seq-len {a.seq_len} must be a multiple of every window, not of {k}",
        )
    p.refuse(
        max(a.delays) >= a.seq_len,
        f"every delay must be < --seq-len {a.seq_len}, got {max(a.delays)}",
    )
    return a


def run_config(args: argparse.Namespace, d: int, form: str, k: int | None) -> dict:
    task = tasks.echo(args.seq_len, d, vocab=args.vocab)
    seeds = list(range(args.seed, args.seed + args.seeds))
    t0 = time.perf_counter()
    _, res = training.fit(
        task,
        make_cell(args.cell, args.hidden),
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=seeds,
        eval_every=args.eval_every,
        eval_batch_size=256,
        truncate=k if form == "scan" else None,
        chunk=k if form == "stateful" else None,
        progress=not args.no_progress,
        desc=f"d={d} {form} k={k}",
    )
    curves_acc = np.asarray([h["eval_accuracy"] for h in res.history])
    curves_loss = np.asarray([h["eval_loss"] for h in res.history])
    first = np.asarray(res.per_step["loss"])[0]  # (seeds,)
    return {
        "d": d,
        "form": form,
        "k": k,
        "within_window": k is None or d < k,
        "baseline": task.baseline,
        "steps": [h["step"] for h in res.history],
        "accuracy": curves_acc[-1].tolist(),
        "fraction_of_baseline": (curves_loss[-1] / task.baseline).tolist(),
        "solved": [s is not None for s in res.solved_step],
        "updates_to_solve": res.solved_step,
        "diverged": [
            training.diverged_finitely(loss, task.baseline, float(f))
            for loss, f in zip(curves_loss[-1], first)
        ],
        "accuracy_curve": curves_acc.T.tolist(),
        "seconds": time.perf_counter() - t0,
    }


def table(results: list[dict], args: argparse.Namespace) -> str:
    cols = [("full", None)] + [(f, k) for k in args.windows for f in ("scan", "stateful")]
    head = "| d | " + " | ".join(f"{f}" + ("" if k is None else f" k={k}") for f, k in cols) + " |"
    lines = [head, "|---:|" + "---|" * len(cols)]
    for d in args.delays:
        cells = []
        for f, k in cols:
            r = next(r for r in results if r["d"] == d and r["form"] == f and r["k"] == k)
            acc = ", ".join(f"{a:.2f}" for a in r["accuracy"])
            mark = "yes" if all(r["solved"]) else ("partly" if any(r["solved"]) else "no")
            cells.append(f"{acc} ({mark})")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], args: argparse.Namespace, path: Path) -> None:
    plt = pyplot()
    styles = {"full": ("k", "-"), "scan": (None, "-"), "stateful": (None, "--")}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    fig, axes = plt.subplots(1, len(args.delays), figsize=(3.8 * len(args.delays), 3.2))
    axes = np.atleast_1d(axes)
    for ax, d in zip(axes, args.delays):
        for r in (r for r in results if r["d"] == d):
            color, ls = styles[r["form"]]
            if color is None:
                color = palette[args.windows.index(r["k"]) % len(palette)]
            label = r["form"] + ("" if r["k"] is None else f" k={r['k']}")
            for j, curve in enumerate(r["accuracy_curve"]):
                ax.plot(
                    r["steps"],
                    curve,
                    color=color,
                    ls=ls,
                    lw=1.2,
                    marker=".",
                    ms=4,
                    label=label if j == 0 else None,
                )
        ax.axhline(1.0 / args.vocab, color="gray", lw=0.8, ls=":")
        ax.set_title(f"echo, d={d}")
        ax.set_xlabel("updates")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, args.steps)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with cli.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    """Every delay of ``--delays`` under full BPTT and each window ``k`` of ``--windows``
    in both truncated forms (:func:`run_config`); the results and the diverged runs."""
    t0 = time.perf_counter()
    results = []
    for d in args.delays:
        forms = [("full", None)] + [(f, k) for k in args.windows for f in ("scan", "stateful")]
        for form, k in forms:
            r = run_config(args, d, form, k)
            results.append(r)
            print(
                f"d={d:<3d} {form:8s} k={k!s:4s} accuracy {r['accuracy']} solved {r['solved']} "
                f"after {r['updates_to_solve']} ({r['seconds']:.0f}s)",
                flush=True,
            )
    config = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
    }
    diverged = [
        {"d": r["d"], "form": r["form"], "k": r["k"], "seed": args.seed + i}
        for r in results
        for i, bad in enumerate(r["diverged"])
        if bad
    ]
    return {
        "config": config,
        "total_seconds": time.perf_counter() - t0,
        "results": results,
        "diverged_runs": diverged,
    }


def summarize(summary: dict) -> str:
    """The table, a warning line per diverged run and the total time, as printed."""
    lines = [summary["table"]]
    lines += [
        f"warning: diverged (ended far above baseline and first loss): {d}"
        for d in summary["diverged_runs"]
    ]
    return "\n".join([*lines, f"total {summary['total_seconds']:.0f}s"])


def replot(args: argparse.Namespace) -> dict:
    """Redraw ``truncation.png`` from ``truncation.json`` in ``--out`` (no training)."""
    saved = json.loads((args.out / "truncation.json").read_text())
    for k, v in saved["config"].items():
        if k not in ("replot", "no_progress"):
            setattr(args, k, v)
    plot(saved["results"], args, args.out / "truncation.png")
    return saved


def main(argv: list[str] | None = None) -> dict:
    """Parse, train, print the table, write ``truncation.{json,md,png}``; return the
    results (``--replot``: only redraw the figure)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        return replot(args)
    summary = run(args)
    summary["table"] = table(summary["results"], args)
    cli.write_json(args.out / "truncation.json", summary, indent=1)
    cli.write_text(args.out / "truncation.md", summary["table"] + "\n")
    plot(summary["results"], args, args.out / "truncation.png")
    print(summarize(summary))
    return summary


if __name__ == "__main__":
    cli.run(main)
