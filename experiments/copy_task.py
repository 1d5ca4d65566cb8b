"""Copy memory solved: which cell and initialization learn to copy over 100 and 200 blanks.

The copy task of Arjovsky et al. (2016) (``training.tasks.copy_memory``): 10 symbols from 8
categories, ``T`` blanks (the last one a delimiter), then reproduce the 10 symbols in order.
A memoryless model scores cross-entropy ``10 ln 8 / (T + 20)`` (the baseline). A run solves
a length when its accuracy on the 10 recalled symbols reaches 0.95 on a held-out set.

``experiments/long_range.py`` trains H=32 cells with batch 32 and learning rate 2e-3 for
2000 updates and none of them gets past the baseline on copy. This study changes what
probing showed to matter, under a budget that fits in about 10 minutes on 2 CPU cores:

* wider cells (H=128: 10 symbols of 3 bits held for ``T`` steps);
* a higher learning rate (Adam 1e-2, global-norm clip 1);
* smaller batches (16: on CPU an update costs about its batch, and more, noisier updates
  beat fewer, cleaner ones per second here);
* chrono initialization (Tallec & Ollivier 2018, ``t_max = T``) beside the standard one.

Cells (the names and factories of ``experiments/distance.py``): ``chrono_gru``,
``chrono_lstm``, ``gru`` (update bias 0), ``lstm`` (forget bias 1); ``vanilla`` and
``min_gru`` on request. Each (cell, T) trains with ``training.fit`` for at most ``--steps``
updates and stops once every seed is solved. A cell that solves no seed at one length is
not run at longer ones (counted unsolved, marked skipped).

Outputs in ``--out``: ``copy_task.json`` (config, per cell and T: per seed updates to solve,
final recalled-symbol accuracy and loss / baseline, the accuracy curve, seconds; the
whole run's seconds) and ``copy_task.png`` (recalled-symbol accuracy against updates, a panel
per T).

``--name`` writes ``<name>.{json,png}`` instead; a study split into commands (per cell,
length or seed) is joined with ``--merge A.json B.json ...`` (no training; the other
settings must agree; each part's command is kept in ``commands``).

    python -m experiments.copy_task            # the default study (for a quiet machine)
    python -m experiments.copy_task --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments import cli
from experiments.distance import (
    LABELS,
    VARIANTS,
    cell_color,
    make_cell,
    progress_line,
    train_seeds,
)

DEFAULT_CELLS = ["chrono_gru", "chrono_lstm", "gru", "lstm"]
SOLVED = "accuracy on the 10 recalled symbols >= 0.95 on the held-out set within the budget"
METRIC = "recall_accuracy"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__.split("\n\n")[0])
    cli.add_cells_option(p, default=DEFAULT_CELLS, extra=list(VARIANTS))
    p.add_argument(
        "--lengths", nargs="+", type=cli.positive_int, default=[100, 200], help="values of T"
    )
    p.add_argument("--seeds", type=cli.positive_int, default=1, help="seeds per configuration")
    p.add_argument("--steps", type=cli.positive_int, default=5000, help="update budget per run")
    cli.add_name_option(p, "copy_task", "results go to <NAME>.json and <NAME>.png in --out")
    p.add_argument("--hidden", type=cli.positive_int, default=128, help="hidden units")
    p.add_argument("--batch-size", type=cli.positive_int, default=16)
    p.add_argument(
        "--learning-rate", "--lr", type=cli.positive_float, default=1e-2, help="Adam learning rate"
    )
    p.add_argument("--clip-norm", type=cli.positive_float, default=1.0, help="global-norm clip")
    p.add_argument("--eval-every", type=cli.positive_int, default=250)
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=256)
    p.add_argument(
        "--chrono-t-max",
        type=cli.positive_int,
        default=None,
        help="t_max of the chrono cells (default: each run's T)",
    )
    p.add_argument(
        "--all-lengths",
        action="store_true",
        help="run every length, also past a cell's first length with no seed solved",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    cli.add_merge_option(p)
    a = p.honour_quick(
        p.parse_args(argv),
        cells=["chrono_gru", "lstm"],
        lengths=[5],
        steps=20,
        hidden=8,
        eval_every=10,
        eval_batch_size=32,
    )
    a.lengths = sorted(set(a.lengths))
    return a


def run_length(name: str, args: argparse.Namespace, T: int) -> dict:
    """Train every seed of ``name`` on copy with ``T`` blanks; the summary of
    :func:`experiments.distance.train_seeds` plus ``T``, ``baseline`` and loss / baseline."""
    from gatedrnn.training import tasks

    task = tasks.copy_memory(T)
    cell = make_cell(name, args.hidden, args.chrono_t_max or T)
    r = train_seeds(task, cell, args, f"{name} T={T}", metric=METRIC)
    for s in r["seeds"]:
        s["fraction_of_baseline"] = s["final_loss"] / task.baseline
    return {"T": T, "baseline": task.baseline, "options": dict(cell.options), **r}


def table(results: dict, args: argparse.Namespace) -> str:
    """Markdown table: per cell and T, updates to solve per seed and the final accuracy."""
    rows = []
    for name, c in results["cells"].items():
        for r in c["runs"]:
            if not r["run"]:
                rows.append([cli.label(name, LABELS), r["T"], "skipped", "-", "-", "-"])
                continue
            ups = ", ".join(
                str(s["updates_to_solve"]) if s["solved"] else f">{args.steps}" for s in r["seeds"]
            )
            acc = ", ".join(f"{s['final_accuracy']:.3f}" for s in r["seeds"])
            frac = ", ".join(f"{s['fraction_of_baseline']:.3f}" for s in r["seeds"])
            rows.append([cli.label(name, LABELS), r["T"], ups, acc, frac, f"{r['seconds']:.0f}"])
    header = ["cell", "T", "updates to solve", "recalled-symbol accuracy", "loss / baseline", "s"]
    return cli.table(rows, header)


def plot(results: dict, args: argparse.Namespace):
    """Held-out recalled-symbol accuracy against updates, one panel per T."""
    plt = cli.pyplot()
    Ts = args.lengths
    fig, axes = plt.subplots(1, len(Ts), figsize=(5 * len(Ts), 3.8), squeeze=False)
    for ax, T in zip(axes[0], Ts):
        for k, (name, c) in enumerate(results["cells"].items()):
            for r in c["runs"]:
                if r["T"] != T or not r["run"]:
                    continue
                for j in range(len(r["seeds"])):
                    ax.plot(
                        r["steps"],
                        [a[j] for a in r["accuracy_curve"]],
                        color=cell_color(name, k),
                        marker=".",
                        ms=4,
                        lw=1.2,
                        label=cli.label(name, LABELS) if j == 0 else None,
                    )
        ax.axhline(0.95, color="0.4", ls="--", lw=0.8)
        ax.axhline(1 / 8, color="0.6", ls=":", lw=0.8)
        ax.set(
            xlim=(0, args.steps),
            ylim=(0, 1.02),
            xlabel="updates",
            title=f"copy, T={T} (dashed: solved, dotted: chance)",
        )
        if ax.get_legend_handles_labels()[1]:  # no legend on a panel where nothing ran
            ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("held-out recalled-symbol accuracy")
    fig.suptitle(
        f"H={args.hidden}, batch {args.batch_size}, Adam lr {args.learning_rate:g}, "
        f"clip {args.clip_norm:g}, {args.seeds} seed(s)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def run(args: argparse.Namespace) -> dict:
    """Every cell of ``--cells`` at the lengths of ``--lengths`` in increasing order,
    stopping a cell after the first length no seed solves (unless ``--all-lengths``)."""
    t_start = time.perf_counter()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict = {"config": config, "success_test": SOLVED, "cells": {}}
    for name in args.cells:

        def train(T: int, name: str = name) -> dict:
            r = run_length(name, args, T)
            print(f"{name:12s} T={T:<4d} {progress_line(r)}", flush=True)
            return r

        def skipped(T: int) -> dict:
            return {"T": T, "run": False, "solved_fraction": 0.0}

        runs = cli.until_unsolved(args.lengths, train, skipped, run_all=args.all_lengths)
        results["cells"][name] = {"description": cli.label(name, LABELS), "runs": runs}
    results["seconds"] = time.perf_counter() - t_start
    return results


def main(argv: list[str] | None = None) -> dict:
    """Parse, train, print the table, write ``copy_task.{json,png}``; return the results."""
    args = parse_args(argv)
    if args.merge:
        results, args, _ = cli.merge_files(args, "T")
    else:
        results = run(args)
    results["command"] = cli.command_line("experiments.copy_task", argv)
    results["table"] = table(results, args)
    print(f"{results['table']}\n{results['seconds']:.0f} s")
    cli.write_results(args.out, args.name, results, plot(results, args))
    return results


if __name__ == "__main__":
    cli.run(main)
