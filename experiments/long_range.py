"""Which cell learns which distance: adding, copy and delayed recall over T, per cell.

For each task, each length T and each cell (default tanh RNN, LSTM, GRU) train a cell plus a linear
readout with clipped Adam for a fixed update budget, several seeds at once (``jax.vmap``),
stopping early once every seed passes the task's success test on a held-out set. Reports,
per configuration and seed, the final held-out loss as a fraction of the task's trivial
baseline, whether it was solved and after how many updates.

``--tasks adding_hs97`` is the adding problem with Hochreiter & Schmidhuber's (1997)
success test instead of the MSE one: every held-out sequence within absolute error 0.04.

Cells: any registered cell (``gatedrnn.cells.CELLS``, default options, e.g. ``lru``,
``rglru``) or a chrono variant of ``experiments/distance.py`` (``chrono_gru``,
``chrono_lstm``: gate biases drawn with ``t_max``, by default each run's T, see
``--chrono-t-max``).

``--name NAME`` writes ``long_range_<task>_<NAME>.*`` instead of ``long_range_<task>.*``,
so that one task's lengths or settings can be split over commands without one replacing
another's results. ``--checkpoint-dir DIR`` checkpoints every run (at each evaluation) in
``DIR/<task>[_<NAME>]_T<T>_<cell>``; with ``--resume`` a run whose folder holds a
checkpoint continues from it (a finished run returns at once with its saved history), so
an interrupted long command loses at most one evaluation interval per configuration.

Outputs (in ``--out``; ``<task>`` below reads ``<task>_<NAME>`` with ``--name``), per
task, written once when the task's grid is done: ``long_range_<task>.json`` (config,
per-run results and learning curves, ``"complete": true``), ``long_range_<task>.md``
(the table), ``long_range_<task>.png`` (learning curves). After every configuration the
results so far go to ``long_range_<task>.partial.json`` (``"complete": false``; removed
when the task is done), so an interrupted rerun leaves the previous complete results in
place. ``long_range_<task>_log.jsonl`` gets one line per evaluation of every run,
appended (a rerun never deletes earlier runs' lines; ``"run"`` tells runs apart). Tasks
are independent, so ``--tasks`` can split the default run over processes.

    python -m experiments.long_range            # the default grid (< 30 min on 2 cores)
    python -m experiments.long_range --quick    # a smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments import cli
from experiments.cli import parser, pyplot
from experiments.distance import LABELS, VARIANTS, cell_color, make_cell
from gatedrnn import training
from gatedrnn.training import checkpoint, tasks

SUCCESS = {
    "adding": "held-out MSE < 0.01 (baseline 1/6)",
    "adding_hs97": "every held-out sequence within absolute error 0.04 "
    "(Hochreiter & Schmidhuber 1997's criterion; baseline MSE 1/6)",
    "copy": "accuracy on the 10 recalled symbols >= 0.95 (baseline CE 10 ln 8/(T+20))",
    "recall": "query accuracy >= 0.95 (baseline CE ln 8)",
}
TASK_FACTORIES = {
    "adding": tasks.adding,
    "adding_hs97": lambda T: tasks.adding(T, tolerance=0.04, solved_within=1.0),
    "copy": tasks.copy_memory,
    "recall": tasks.delayed_recall,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["adding", "copy", "recall"],
        choices=sorted(TASK_FACTORIES),
        help="adding_hs97: the adding problem solved by Hochreiter & Schmidhuber's criterion",
    )
    p.add_argument(
        "--lengths", nargs="+", type=cli.positive_int, default=[50, 100, 200], help="values of T"
    )
    cli.add_cells_option(p, default=["vanilla", "lstm", "gru"], extra=list(VARIANTS))
    p.add_argument(
        "--chrono-t-max",
        type=cli.positive_int,
        default=None,
        help="t_max of the chrono cells (default: each run's T)",
    )
    p.add_argument("--seeds", type=cli.positive_int, default=2, help="seeds per configuration")
    p.add_argument("--steps", type=cli.positive_int, default=2000, help="update budget per run")
    p.add_argument("--hidden", type=cli.positive_int, default=32, help="hidden units")
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument(
        "--learning-rate", "--lr", type=cli.positive_float, default=2e-3, help="Adam learning rate"
    )
    p.add_argument(
        "--clip-norm",
        "--clip",
        type=cli.positive_float,
        default=1.0,
        help="global-norm gradient clip",
    )
    p.add_argument("--eval-every", type=cli.positive_int, default=100)
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=512)
    p.add_argument(
        "--eval-batches",
        type=cli.positive_int,
        default=1,
        help="held-out batches of --eval-batch-size sequences (evaluated one at a time)",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning-rate schedule (cosine: decay to 0 over --steps)",
    )
    cli.add_name_option(
        p, None, "results go to long_range_<task>_<NAME>.* (default long_range_<task>.*)"
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="checkpoint each run in DIR/<task>[_<NAME>]_T<T>_<cell> at every evaluation",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --checkpoint-dir: continue each run from its checkpoint, if it has one",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument(
        "--replot", action="store_true", help="redraw the PNGs from --out's JSON (no training)"
    )
    args = p.parse_args(argv)
    p.refuse(args.resume and args.checkpoint_dir is None, "--resume needs --checkpoint-dir")
    return p.honour_quick(
        args,
        lengths=[10],
        seeds=1,
        steps=20,
        hidden=8,
        eval_every=20,
        eval_batch_size=32,
    )


def stem(args: argparse.Namespace, task_name: str) -> str:
    """The results' file stem of ``task_name``: ``long_range_<task>[_<name>]``."""
    return f"long_range_{task_name}" + (f"_{args.name}" if args.name else "")


def run_config(args: argparse.Namespace, task_name: str, T: int, cell_name: str, log: Path) -> dict:
    """Train all seeds of one (task, T, cell) and summarise them."""
    task = TASK_FACTORIES[task_name](T)
    seeds = list(range(args.seed, args.seed + args.seeds))
    folder, resume = None, False
    if args.checkpoint_dir is not None:
        folder = (
            args.checkpoint_dir / f"{stem(args, task_name)[len('long_range_') :]}_T{T}_{cell_name}"
        )
        resume = args.resume and checkpoint.latest_checkpoint(folder) is not None
    t0 = time.perf_counter()
    _, res = training.fit(
        task,
        make_cell(cell_name, args.hidden, args.chrono_t_max or T),
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        clip_norm=args.clip_norm,
        schedule=args.schedule,
        seed=seeds,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        num_eval_batches=args.eval_batches,
        log_path=log,
        progress=not args.no_progress,
        desc=f"{task_name} T={T} {cell_name}",
        log_extra={"run": cli.RUN_ID, "task": task_name, "T": T, "cell": cell_name},
        checkpoint_dir=folder,
        resume=resume,
    )
    seconds = time.perf_counter() - t0
    steps = [h["step"] for h in res.history]
    curves = np.asarray([h["eval_loss"] for h in res.history])  # (evals, seeds)
    losses = np.asarray(res.per_step["loss"])  # (updates this call, seeds)
    # each member's first update; a resumed run saw only its later updates in this call,
    # so it takes the first evaluation interval's mean training loss instead
    first = losses[0] if len(losses) and not resume else np.asarray(res.history[0]["train_loss"])
    runs = []
    for i, s in enumerate(seeds):
        final = float(curves[-1, i])
        solved_at = res.solved_step[i]
        runs.append(
            {
                "seed": s,
                "final_loss": final,
                "diverged": training.diverged_finitely(final, task.baseline, float(first[i])),
                "fraction_of_baseline": training.fraction_of_baseline(final, task),
                "best_fraction_of_baseline": float(curves[:, i].min()) / task.baseline,
                "solved": solved_at is not None,
                "updates_to_solve": solved_at,
                "curve": curves[:, i].tolist(),
            }
        )
        if "eval_within_tolerance" in res.history[-1]:
            within = np.asarray([h["eval_within_tolerance"] for h in res.history])
            runs[-1]["within_tolerance_curve"] = within[:, i].tolist()
    return {
        "task": task_name,
        "T": T,
        "cell": cell_name,
        "baseline": task.baseline,
        "steps": steps,
        "updates_run": int(steps[-1]) if steps else 0,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "train_seconds": float(res.history[-1]["time"]) if res.history else seconds,
        "resumed": resume,
        "runs": runs,
    }


def table(results: list[dict], budget: int) -> str:
    """Markdown table: one row per (task, T, cell)."""
    lines = [
        "| task | T | cell | final loss / baseline (per seed) | solved | updates to solve |",
        "|---|---:|---|---|---|---|",
    ]
    for r in results:
        fr = ", ".join(f"{x['fraction_of_baseline']:.3f}" for x in r["runs"])
        n_solved = sum(x["solved"] for x in r["runs"])
        ups = ", ".join(
            str(x["updates_to_solve"]) if x["solved"] else f">{budget}" for x in r["runs"]
        )
        lines.append(
            f"| {r['task']} | {r['T']} | {r['cell']} | {fr} | {n_solved}/{len(r['runs'])} | {ups} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], out: Path, budget: int, name: str | None = None) -> list[Path]:
    """One PNG per task (``long_range_<task>[_<name>].png``): a panel per T, eval loss /
    baseline against updates, per cell."""
    plt = pyplot()
    paths = []
    for task_name in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task_name]
        Ts = sorted({r["T"] for r in rows})
        fig, axes = plt.subplots(1, len(Ts), figsize=(3.6 * len(Ts), 3.2), squeeze=False)
        cells = list(dict.fromkeys(r["cell"] for r in rows))
        for ax, T in zip(axes[0], Ts):
            for r in (r for r in rows if r["T"] == T):
                for j, seed_run in enumerate(r["runs"]):
                    ax.plot(
                        r["steps"],
                        np.asarray(seed_run["curve"]) / r["baseline"],
                        color=cell_color(r["cell"], cells.index(r["cell"])),
                        alpha=0.85,
                        lw=1.2,
                        marker=".",
                        ms=4,
                        label=cli.label(r["cell"], LABELS) if j == 0 else None,
                    )
            ax.axhline(1.0, color="gray", ls="--", lw=0.8)
            ax.set_yscale("log")
            vals = [
                v / r["baseline"]
                for r in rows
                if r["T"] == T
                for x in r["runs"]
                for v in x["curve"]
            ]
            if vals:  # a fixed span around 1, so noise at the baseline does not fill the panel
                ax.set_ylim(min(0.1, 0.5 * min(vals)), max(1.5, 1.1 * max(vals)))
            ax.set_xlim(0, budget)
            ax.set_title(f"{task_name}, T={T}")
            ax.set_xlabel("updates")
        axes[0][0].set_ylabel("held-out loss / baseline")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out / (f"long_range_{task_name}" + (f"_{name}" if name else "") + ".png")
        with cli.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_task(
    args: argparse.Namespace, task_name: str, results: list[dict], t0: float, *, complete: bool
) -> None:
    """Write one task's results: after every configuration (``complete=False``) only
    ``long_range_<task>.partial.json``; when the task is done, ``long_range_<task>.json``
    (once, atomically), ``.md`` and ``.png``, and the partial file goes."""
    config = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
    }
    summary = {
        "config": config,
        "task": task_name,
        "success_test": SUCCESS[task_name],
        "seconds": time.perf_counter() - t0,
        "results": results,
        "diverged_runs": diverged_runs(results),
    }
    path = args.out / f"{stem(args, task_name)}.json"
    if not complete:
        cli.write_partial_json(path, summary, indent=1)
        return
    cli.write_text(args.out / f"{stem(args, task_name)}.md", table(results, args.steps) + "\n")
    plot(results, args.out, args.steps, args.name)
    cli.write_final_json(path, summary, indent=1)


def diverged_runs(results: list[dict]) -> list[dict]:
    """The runs that ended far above their baseline and first loss (finite divergences)."""
    return [
        {"task": r["task"], "T": r["T"], "cell": r["cell"], "seed": x["seed"]}
        for r in results
        for x in r["runs"]
        if x["diverged"]
    ]


def replot(args: argparse.Namespace) -> dict[str, list[dict]]:
    """``--replot``: redraw the figures of ``--tasks`` from the JSON in ``--out``; return
    the results read."""
    paths = [args.out / f"{stem(args, task_name)}.json" for task_name in args.tasks]
    if not any(path.exists() for path in paths):
        raise cli.UsageError(
            f"--replot: no results to redraw in {args.out} (expected "
            f"{', '.join(p.name for p in paths)}); run without --replot first"
        )
    everything: dict[str, list[dict]] = {}
    for task_name, path in zip(args.tasks, paths):
        if not path.exists():
            print(f"warning: --replot: no {path.name} in {args.out}; {task_name} skipped")
            continue
        saved = json.loads(path.read_text())
        everything[task_name] = saved["results"]
        plot(saved["results"], args.out, saved["config"]["steps"], args.name)
    return everything


def progress_line(r: dict) -> str:
    """One configuration's result in one line: loss / baseline, seeds solved and after how
    many updates, seconds."""
    fr = " ".join(f"{x['fraction_of_baseline']:.3f}" for x in r["runs"])
    return (
        f"{r['task']:7s} T={r['T']:<4d} {r['cell']:8s} loss/baseline {fr}  solved "
        f"{sum(x['solved'] for x in r['runs'])}/{len(r['runs'])}  "
        f"after {[x['updates_to_solve'] for x in r['runs']]}  ({r['seconds']:.0f}s)"
    )


def run_task(args: argparse.Namespace, task_name: str) -> list[dict]:
    """Every (T, cell) of one task in order; the results so far are written after each
    (``complete: false``), all of them at the end; return the rows."""
    log = args.out / f"{stem(args, task_name)}_log.jsonl"
    t0 = time.perf_counter()
    results: list[dict] = []
    for T in args.lengths:
        for cell_name in args.cells:
            results.append(run_config(args, task_name, T, cell_name, log))
            write_task(args, task_name, results, t0, complete=False)
            print(progress_line(results[-1]), flush=True)
    write_task(args, task_name, results, t0, complete=True)
    print(f"{task_name}: {time.perf_counter() - t0:.0f}s")
    return results


def summarize(results: list[dict], budget: int) -> str:
    """The table of one task and a warning line per diverged run."""
    warn = [
        f"warning: diverged (ended far above baseline and first loss): {d}"
        for d in diverged_runs(results)
    ]
    return "\n".join([table(results, budget), *warn])


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Parse; train every task (or redraw with ``--replot``), print each task's table;
    return the results per task."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        return replot(args)
    everything = {}
    for task_name in args.tasks:
        everything[task_name] = run_task(args, task_name)
        print(summarize(everything[task_name], args.steps))
    return everything


if __name__ == "__main__":
    cli.run(main)
