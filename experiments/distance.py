"""The distance curve: how far back each cell learns to reach, and whether gradient decay at
initialization predicts it.

Delayed recall ("I grew up in France ... I speak ___"): a key token at step 0, distractors,
and a query at the last step that asks for the key (``training.tasks.delayed_recall`` with
``key_window=1``, so the distance is exactly ``T - 1``). The distance is swept over a
log-spaced range for ten cells of the same hidden size:

* ``vanilla``: tanh RNN, orthogonal recurrent weights;
* ``gru``: GRU, update-gate bias 0 (``z = 0.5`` at init);
* ``lstm``: LSTM, forget bias 1 (Jozefowicz et al. 2015);
* ``chrono_lstm``, ``chrono_gru``: forget / update bias drawn as ``log U(1, t_max - 1)``
  (Tallec & Ollivier 2018), ``t_max`` the longest distance of the sweep;
* ``min_gru``: minGRU (Feng et al. 2024), gate from the input only.
* ``lru``, ``rglru``: the gated linear recurrences LRU (Orvieto et al. 2023) and RG-LRU
  (De et al. 2024), default (paper) initializations;
* ``slstm``, ``mlstm``: sLSTM and mLSTM of xLSTM (Beck et al. 2024), default options.

``--cells`` takes any registered cell (``gatedrnn.cells.CELLS``, default options) besides
these; the two chrono variants are this script's own (:data:`VARIANTS`).

Each (cell, distance) trains a cell plus a linear readout with clipped Adam
(``training.fit``) for one fixed update budget, all seeds at once (``jax.vmap``), stopping
early once every seed reaches query accuracy >= 0.95 on a held-out set. A seed *solves* a
distance if it passes that test within the budget. The longest distance a cell learned is
the longest distance of the sweep solved by at least half of its seeds. Unless
``--all-distances``, a cell that solves no seed at one distance is not run at longer ones
(counted as unsolved there, drawn hollow in the figure).

Beside it, each cell's gradient-decay distance at init, with the same cell and the same
initial params as each training seed: one backward pass gives ``||dL/ds_t||`` for a loss on
the last output over a delayed-recall sequence as long as the longest distance
(``gatedrnn.diagnostics.state_gradient_norms``), and ``vanishing_distance`` is the first
distance at which it falls below ``--ratio`` of its value at the last state (censored at the
sequence length when it never does); ``decay_factor`` is the fitted per-step factor. The
script states the Spearman rank correlation between the decay distance (median over seeds)
and the longest distance learned, and the Pearson correlation of their logarithms, whatever
they are (ten points: read them as a description, not a test).

Outputs in ``--out`` (``<name>``: ``distance`` unless ``--name``): ``<name>.json`` (config,
per cell: decay measurements, per distance the seeds' results, the longest distance learned;
the correlations; a Markdown table) and ``<name>.png`` (left: solved fraction against
distance per cell; right: decay distance at init against the longest distance learned).

The default sweep (10 cells x distances 10, 30, 100, 300, 1000 x 2 seeds at once, at most
500 updates each, H=32, batch 32) took about 5 minutes for the six classical cells on 2 idle
CPU cores; a configuration's cost grows with ``distance x updates run``, so most of the time
goes to the distance-1000 runs of the cells that get that far. ``distance.json`` records the
seconds of every configuration and of the whole run.

A long-distance run is kept beside the main one with ``--name``: ``--name distance_long``
writes ``distance_long.{json,png}`` instead of ``distance.{json,png}``. ``--steps-for D=STEPS``
gives distance ``D`` its own update budget (the others keep ``--steps``); every run records
its budget (``budget``), and the JSON records the command line (``argv``). While running,
the results so far are in ``<name>.partial.json`` (rewritten after each distance).

A run too long for one sitting is split into commands, one per seed (``--seed S --seeds 1``:
seed ``S`` of a joint run) or per cell, and ``--merge A.json B.json ... --name NAME`` joins
their results into ``NAME.{json,png}`` without training (settings other than the split must
agree; each part's command is kept in ``commands``).

    python -m experiments.distance            # the default sweep (for a quiet machine)
    python -m experiments.distance --quick    # a smoke run (seconds)
    python -m experiments.distance --name distance_long --cells chrono_gru rglru \\
        --distances 1000 3000 --seeds 3 --steps-for 1000=1500 3000=1500
    python -m experiments.distance --merge distance_10k_s0.json distance_10k_s1.json \\
        distance_10k_s2.json --name distance_10k
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from experiments import cli

DEFAULT_CELLS = [
    "vanilla", "gru", "lstm", "chrono_lstm", "chrono_gru", "min_gru",
    "lru", "rglru", "slstm", "mlstm",
]  # fmt: skip
LABELS: dict[str, str] = {
    "vanilla": "tanh RNN",
    "gru": "GRU (update bias 0)",
    "lstm": "LSTM (forget bias 1)",
    "chrono_lstm": "LSTM (chrono init)",
    "chrono_gru": "GRU (chrono init)",
    "min_gru": "minGRU",
    "lru": "LRU",
    "rglru": "RG-LRU",
    "slstm": "sLSTM",
    "mlstm": "mLSTM",
}
"""Display labels; any other registered cell shows its registry name."""
VARIANTS: dict[str, tuple[str, str]] = {
    "chrono_lstm": ("lstm", "forget_bias"),
    "chrono_gru": ("gru", "update_bias"),
}
"""The chrono variants: (registered cell, the gate-bias option set to ``"chrono"``)."""
COLORS = {
    "vanilla": "tab:red",
    "gru": "tab:green",
    "lstm": "tab:blue",
    "chrono_lstm": "tab:purple",
    "chrono_gru": "tab:olive",
    "min_gru": "tab:orange",
    "lru": "tab:brown",
    "rglru": "tab:pink",
    "slstm": "tab:cyan",
    "mlstm": "black",
}
OTHER_COLORS = ["tab:gray", "gold", "navy", "lime", "teal", "maroon"]


def cell_color(name: str, k: int) -> str:
    """The plot color of cell ``name``, the ``k``-th cell drawn."""
    return COLORS.get(name, OTHER_COLORS[k % len(OTHER_COLORS)])


SOLVED = "query accuracy >= 0.95 on the held-out set within the budget"


def make_cell(name: str, hidden: int, t_max: int):
    """The cell called ``name`` with ``hidden`` units: a registered cell (default options)
    or a chrono variant of :data:`VARIANTS` (gate bias drawn with ``t_max``)."""
    from gatedrnn.cells import make_cell as registered

    if name in VARIANTS:
        base, option = VARIANTS[name]
        return registered(base, hidden, **{option: "chrono", "t_max": t_max})
    return registered(name, hidden)


def distance_steps(text: str) -> tuple[int, int]:
    """``"D=STEPS"`` (two positive integers) -> ``(D, STEPS)``, for ``--steps-for``."""
    d, eq, steps = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"expected DISTANCE=STEPS (e.g. 3000=1500), got {text!r}")
    return cli.positive_int(d), cli.positive_int(steps)


def budget(args: argparse.Namespace, distance: int) -> int:
    """The update budget of ``distance``: its ``--steps-for`` value, else ``--steps``."""
    return args.steps_for.get(distance, args.steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__.split("\n\n")[0])
    cli.add_cells_option(p, default=DEFAULT_CELLS, extra=list(VARIANTS))
    p.add_argument(
        "--distances",
        nargs="+",
        type=cli.positive_int,
        default=None,
        help="distances (steps between key and query); default 10 30 100 300 1000",
    )
    p.add_argument("--seeds", type=cli.positive_int, default=None, help="seeds per configuration")
    p.add_argument(
        "--steps", type=cli.positive_int, default=None, help="update budget per run (default 500)"
    )
    p.add_argument(
        "--steps-for",
        nargs="+",
        type=distance_steps,
        default=[],
        metavar="D=STEPS",
        help="the update budget of distance D (e.g. 3000=1500); other distances keep --steps",
    )
    cli.add_name_option(p, "distance", "results go to <NAME>.json and <NAME>.png in --out")
    p.add_argument("--hidden", type=cli.positive_int, default=None, help="hidden units")
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument(
        "--learning-rate", "--lr", type=cli.positive_float, default=3e-3, help="Adam learning rate"
    )
    p.add_argument("--clip-norm", type=cli.positive_float, default=1.0, help="global-norm clip")
    p.add_argument("--eval-every", type=cli.positive_int, default=None)
    p.add_argument("--eval-batch-size", type=cli.positive_int, default=None)
    p.add_argument(
        "--chrono-t-max",
        type=cli.positive_int,
        default=None,
        help="t_max of the chrono cells (default: the longest distance)",
    )
    p.add_argument(
        "--ratio", type=cli.positive_float, default=1e-6, help="vanishing threshold at init"
    )
    p.add_argument(
        "--decay-batch", type=cli.positive_int, default=8, help="sequences per decay measurement"
    )
    p.add_argument(
        "--all-distances",
        action="store_true",
        help="run every distance, also past a cell's first distance with no seed solved",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    cli.add_merge_option(p)
    a = p.parse_args(argv)
    q = a.quick
    a.distances = sorted(set(a.distances or ([6] if q else [10, 30, 100, 300, 1000])))
    a.seeds = a.seeds or (1 if q else 2)
    a.steps = a.steps or (20 if q else 500)
    a.hidden = a.hidden or (8 if q else 32)
    a.eval_every = a.eval_every or (10 if q else 50)
    a.eval_batch_size = a.eval_batch_size or (32 if q else 256)
    a.chrono_t_max = a.chrono_t_max or max(2, max(a.distances))
    if not 0.0 < a.ratio < 1.0:
        raise cli.UsageError(f"--ratio must lie in (0, 1), got {a.ratio}")
    a.steps_for = dict(a.steps_for)
    extra = sorted(set(a.steps_for) - set(a.distances))
    if extra:
        raise cli.UsageError(f"--steps-for names distances not in --distances: {extra}")
    return a


# ------------------------------------------------------------------------- measurements


def decay_at_init(cell, args: argparse.Namespace, seed: int) -> dict:
    """Gradient decay at init of ``cell`` with the params training seed ``seed`` starts from.

    The loss reads the last output (:func:`gatedrnn.diagnostics.last_output_loss`) of a batch of
    delayed-recall sequences with the longest distance of the sweep.
    """
    import jax

    from gatedrnn import diagnostics as dg
    from gatedrnn import training
    from gatedrnn.training import tasks

    T = max(args.distances) + 1
    task = tasks.delayed_recall(T, key_window=1)
    params = training.task_model(cell, task).init(training.param_key(seed)).cell
    xs = task.sample(jax.random.PRNGKey(10_000 + seed), args.decay_batch).inputs
    decay = dg.decay_profile(cell, params, xs, ratio=args.ratio)
    return {
        "seed": seed,
        "vanish_distance": decay["vanish_distance"],
        "censored": decay["vanish_distance"] is None,  # never fell below the ratio
        "decay_factor": decay["decay_factor"],
        "relative_norm_at_longest": float(decay["relative"][0]),
    }


def train_seeds(
    task,
    cell,
    args: argparse.Namespace,
    desc: str,
    metric: str = "accuracy",
    steps: int | None = None,
) -> dict:
    """Train every seed of one (task, cell) within ``steps`` updates (default
    ``args.steps``; ``training.fit``, all seeds at once) and summarise per seed; ``metric``
    names the held-out accuracy that the task's success test reads (``"recall_accuracy"``
    for copy).

    Returns:
      ``run``, ``solved_fraction``, ``updates_run``, ``seconds``, ``seeds`` (per seed:
      ``solved``, ``updates_to_solve``, ``final_accuracy``, ``final_loss``), ``steps``
      (evaluation points) and ``accuracy_curve`` ``(evaluations, seeds)``.
    """
    from gatedrnn import training

    seeds = list(range(args.seed, args.seed + args.seeds))
    t0 = time.perf_counter()
    _, res = training.fit(
        task,
        cell,
        num_steps=steps or args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        clip_norm=args.clip_norm,
        seed=seeds,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        progress=not args.no_progress,
        desc=desc,
    )
    seconds = time.perf_counter() - t0
    last = res.history[-1]
    runs = [
        {
            "seed": s,
            "solved": res.solved_step[i] is not None,
            "updates_to_solve": res.solved_step[i],
            "final_accuracy": float(last[f"eval_{metric}"][i]),
            "final_loss": float(last["eval_loss"][i]),
        }
        for i, s in enumerate(seeds)
    ]
    return {
        "run": True,
        "solved_fraction": float(np.mean([r["solved"] for r in runs])),
        "updates_run": int(last["step"]),
        "seconds": seconds,
        "seeds": runs,
        "steps": [int(h["step"]) for h in res.history],
        "accuracy_curve": [[float(a) for a in h[f"eval_{metric}"]] for h in res.history],
    }


def train_distance(cell, args: argparse.Namespace, distance: int) -> dict:
    """Train every seed of one (cell, distance) within the budget; summarise per seed."""
    from gatedrnn.training import tasks

    task = tasks.delayed_recall(distance + 1, key_window=1)
    steps = budget(args, distance)
    r = train_seeds(task, cell, args, f"{cell.name} d={distance}", steps=steps)
    return {"distance": distance, "T": distance + 1, "budget": steps, **r}


def longest_solved(rows: list[dict]) -> int:
    """The longest distance solved by at least half of the seeds (0: none)."""
    return max((r["distance"] for r in rows if r["solved_fraction"] >= 0.5), default=0)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None  # undefined: fewer than 3 points or a constant
    return float(np.corrcoef(x, y)[0, 1])


def correlations(decay: list[float], learned: list[int]) -> dict:
    """Spearman (ranks, ties averaged) and Pearson of log10; a cell that solved nothing
    counts as distance 1 (below every distance of the sweep)."""
    x = np.asarray(decay, np.float64)
    y = np.maximum(np.asarray(learned, np.float64), 1.0)
    return {
        "spearman": _pearson(_ranks(x), _ranks(y)),
        "pearson_log10": _pearson(np.log10(x), np.log10(y)),
        "n_cells": len(x),
        "note": "decay distance at init (median over seeds, censored ones at the sequence "
        "length) vs the longest distance solved by >= half the seeds (none: 1)",
    }


# --------------------------------------------------------------------------- outputs


def table(results: dict, args: argparse.Namespace) -> str:
    """Markdown table: per cell, the decay at init and the solved fraction per distance."""
    header = ["cell", f"decay distance at init (to {args.ratio:g})", "decay factor / step"]
    header += [f"d={d} ({budget(args, d)} updates)" for d in args.distances]
    header += ["longest learned"]
    rows = []
    for name, c in results["cells"].items():
        dd = c["decay_distance"]
        by_d = {r["distance"]: r for r in c["runs"]}
        cells = [
            "-"
            if d not in by_d
            else (f"{by_d[d]['solved_fraction']:.2f}" if by_d[d]["run"] else "(0, skipped)")
            for d in args.distances
        ]
        rows.append(
            [
                cli.label(name, LABELS),
                f"> {dd:.0f}" if c["decay_censored"] else f"{dd:.0f}",
                f"{c['decay_factor']:.4f}",
                *cells,
                str(c["longest_solved"]) if c["longest_solved"] else "none",
            ]
        )
    return cli.table(rows, header)


def plot(results: dict, args: argparse.Namespace):
    """Left: solved fraction vs distance per cell; right: decay distance vs longest learned."""
    plt = cli.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = min(args.distances) / 2  # where "nothing learned" is drawn
    n = len(results["cells"])
    for k, (name, c) in enumerate(results["cells"].items()):
        color = cell_color(name, k)
        lift = 0.015 * (k - (n - 1) / 2)  # so that equal curves do not hide each other
        ds = [r["distance"] for r in c["runs"]]
        fr = [r["solved_fraction"] + lift for r in c["runs"]]
        ax.plot(ds, fr, color=color, lw=1.2, label=cli.label(name, LABELS))
        for r, y in zip(c["runs"], fr):
            ax.plot(r["distance"], y, "o", color=color, mfc=color if r["run"] else "none", ms=6)
        y = c["longest_solved"] or floor
        bx.plot(
            c["decay_distance"],
            y,
            ">" if c["decay_censored"] else "o",
            color=color,
            ms=9,
            label=cli.label(name, LABELS),
        )
        bx.annotate(name, (c["decay_distance"], y), fontsize=7, xytext=(6, 9 * k - 20),
                    textcoords="offset points", color=color)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(args.distances, [str(d) for d in args.distances])
    ax.minorticks_off()
    ax.set(
        xlabel="distance (steps between key and query)",
        ylabel=f"fraction of {args.seeds} seeds solved",
        title=f"Delayed recall, {budget_text(args)}, H={args.hidden} (hollow: not run)",
        ylim=(-0.05, 1.05),
    )
    ax.legend(fontsize=8)
    corr = results["correlation"]
    sp, pe = corr["spearman"], corr["pearson_log10"]
    fmt = lambda v: "undefined" if v is None else f"{v:+.2f}"  # noqa: E731
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.axhline(floor, color="0.6", lw=0.6, ls=":")
    bx.set(
        xlabel=f"gradient-decay distance at init (to {args.ratio:g}; '>' : not reached)",
        ylabel="longest distance learned (dotted: none)",
        title=f"Spearman {fmt(sp)}, Pearson (log-log) {fmt(pe)}",
    )
    fig.tight_layout()
    return fig


def budget_text(args: argparse.Namespace) -> str:
    """The update budget in words: one number, or one per distance."""
    budgets = [budget(args, d) for d in args.distances]
    if len(set(budgets)) == 1:
        return f"{budgets[0]} updates"
    return "updates " + ", ".join(f"{b} at d={d}" for d, b in zip(args.distances, budgets))


def progress_line(r: dict) -> str:
    """A training row of :func:`train_seeds` in one line: solved fraction, updates to
    solve and final accuracy per seed, seconds."""
    return (
        f"solved {r['solved_fraction']:.2f} after "
        f"{[s['updates_to_solve'] for s in r['seeds']]} "
        f"(accuracy {[round(s['final_accuracy'], 3) for s in r['seeds']]}, "
        f"{r['seconds']:.1f}s)"
    )


def run_cell(name: str, args: argparse.Namespace) -> dict:
    """One cell: its decay at init (per seed) and its training runs per distance, in
    increasing order, stopping after the first distance no seed solves (unless
    ``--all-distances``)."""
    cell = make_cell(name, args.hidden, args.chrono_t_max)
    seeds = range(args.seed, args.seed + args.seeds)
    decay = [decay_at_init(cell, args, s) for s in seeds]

    def train(distance: int) -> dict:
        r = train_distance(cell, args, distance)
        print(f"{name:12s} d={distance:<5d} {progress_line(r)}", flush=True)
        return r

    def skipped(distance: int) -> dict:
        return {
            "distance": distance,
            "T": distance + 1,
            "budget": budget(args, distance),
            "run": False,
            "solved_fraction": 0.0,
        }

    runs = cli.until_unsolved(args.distances, train, skipped, run_all=args.all_distances)
    cell_row = {"description": cli.label(name, LABELS), "options": dict(cell.options)}
    return {**cell_row, **cell_summary(decay, runs, max(args.distances) + 1)}


def cell_summary(decay: list[dict], runs: list[dict], T_decay: int) -> dict:
    """One cell's decay at init (per seed, measured over ``T_decay`` steps; the median
    distance, censored ones counted as ``T_decay``) and its runs per distance (the longest
    learned)."""
    dists = [T_decay if d["censored"] else d["vanish_distance"] for d in decay]
    return {
        "decay": decay,
        "decay_distance": float(np.median(dists)),
        "decay_censored": bool(np.median(dists) >= T_decay),
        "decay_factor": float(np.median([d["decay_factor"] for d in decay])),
        "runs": runs,
        "longest_solved": longest_solved(runs),
    }


def merge(args: argparse.Namespace) -> tuple[dict, argparse.Namespace]:
    """``--merge``: the named results files (one study split by cell or seed) as one run;
    each cell's decay measurements are joined by seed and its summary recomputed, and the
    correlation is recomputed over the cells."""
    results, merged, parts = cli.merge_files(args, "distance")
    longest = sorted({p["config"]["distances"][-1] for p in parts})
    if len(longest) > 1:
        raise cli.UsageError(
            f"--merge: decay at init was measured over different lengths {longest}; "
            "merge only runs with the same longest distance"
        )
    for name, c in results["cells"].items():
        decay = [d for p in parts for d in p["cells"].get(name, {}).get("decay", [])]
        decay.sort(key=lambda d: d["seed"])
        c.update(cell_summary(decay, c["runs"], longest[0] + 1))
    merged.steps_for = {int(d): s for d, s in merged.steps_for.items()}
    return with_correlation(results), merged


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Every cell of ``--cells`` (:func:`run_cell`) and the correlation of decay distance
    with the longest distance learned over them; after each cell, the results so far go
    to ``<out>/<name>.partial.json``. ``argv``: the command line, recorded as given."""
    t_start = time.perf_counter()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["steps_for"] = {str(d): s for d, s in args.steps_for.items()}  # JSON keys
    results: dict = {"config": config, "success_test": SOLVED, "cells": {}}
    if argv is not None:
        results["argv"] = list(argv)
    partial = args.out / f"{args.name}.json"
    for name in args.cells:
        results["cells"][name] = run_cell(name, args)
        args.out.mkdir(parents=True, exist_ok=True)
        cli.write_partial_json(partial, {**results, "seconds": time.perf_counter() - t_start})
    results["seconds"] = time.perf_counter() - t_start
    return with_correlation(results)


def with_correlation(results: dict) -> dict:
    """``results`` with the correlation of decay distance and longest distance learned
    over its cells (:func:`correlations`)."""
    cells = results["cells"].values()
    decay, learned = [c["decay_distance"] for c in cells], [c["longest_solved"] for c in cells]
    return {**results, "correlation": correlations(decay, learned)}


def summarize(results: dict) -> str:
    """The table and the correlations, as printed."""
    corr = results["correlation"]
    return (
        f"{results['table']}\nSpearman {corr['spearman']}, Pearson of log10 {corr['pearson_log10']}"
    )


def main(argv: list[str] | None = None) -> dict:
    """Parse, measure and train, print the table, write ``distance.{json,png}``; return
    the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    results, args = merge(args) if args.merge else (run(args, argv), args)
    results["command"] = cli.command_line("experiments.distance", argv)
    results["table"] = table(results, args)
    print(summarize(results))
    cli.write_results(args.out, args.name, results, plot(results, args))
    cli.partial_path(args.out / f"{args.name}.json").unlink(missing_ok=True)
    return results


if __name__ == "__main__":
    cli.run(main)
