"""Write the results into README.md and docs/*.md: every number the docs show comes from here.

The docs hold generated blocks between markers::

    <!-- results: NAME -->
    ...markdown rendered from the results files...
    <!-- /results -->

Each NAME is one small renderer below that reads the JSON (or Markdown) the experiment or
benchmark script wrote into ``experiments/results/`` or ``benchmarks/results/`` and returns
Markdown. The prose around the blocks carries no measured numbers.

    python -m experiments.report           # rewrite the blocks from the current results
    python -m experiments.report --check   # exit 1 if a block is stale or a linked file missing

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import cli
from experiments.distance import LABELS as CELL_LABELS

ROOT = Path(__file__).resolve().parents[1]

EXP = "experiments/results"
BENCH = "benchmarks/results"

BLOCK = re.compile(r"(<!-- results: ([\w-]+) -->\n)(.*?)(<!-- /results -->)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)")

Renderer = Callable[[], str]
RENDERERS: dict[str, tuple[tuple[str, ...], Renderer]] = {}


def block(name: str, *files: str) -> Callable[[Renderer], Renderer]:
    """Register ``fn`` as the renderer of block ``name``, reading ``files`` (repo-relative)."""

    def register(fn: Renderer) -> Renderer:
        RENDERERS[name] = (files, fn)
        return fn

    return register


# --------------------------------------------------------------------------- helpers


def load(rel: str) -> Any:
    return json.loads((ROOT / rel).read_text())


def include(rel: str) -> str:
    return (ROOT / rel).read_text().strip()


def md_table(header: list[str], rows: list[list[Any]], right: str = "") -> str:
    """A Markdown table; ``right`` lists the indices (as digits) of right-aligned columns."""
    rule = ["---:" if str(i) in right else "---" for i in range(len(header))]
    lines = [header, rule, *[[str(c) for c in r] for r in rows]]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def f(x: float | None, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def config_line(rel: str, key: str = "config", skip: tuple[str, ...] = ()) -> str:
    """The run's settings as recorded in its JSON (paths and switches left out)."""
    cfg = load(rel)[key]
    drop = {"out", "quick", "replot", "no_progress", *skip}
    items = [f"{k}={v}" for k, v in cfg.items() if k not in drop and not isinstance(v, dict)]
    return f"Settings (`{rel}`): " + ", ".join(f"`{i}`" for i in items) + "."


def shape(s: dict) -> str:
    return f"({s['batch']}, {s['time']}, {s['input']}, {s['hidden']})"


# --------------------------------------------------------------------------- gradient decay


@block("gradient_decay", f"{EXP}/gradient_decay.json")
def gradient_decay() -> str:
    d = load(f"{EXP}/gradient_decay.json")
    cfg = d["config"]
    rows = []
    for name, c in d["cells"].items():
        dist = [x for x in c["vanish_distance_per_seed"] if x is not None]
        far = len(dist) < len(c["vanish_distance_per_seed"])
        span = f"{min(dist)}-{max(dist)}" if dist else f"> {cfg['T']}"
        gate = c.get("mean_forget_gate", c.get("mean_update_gate"))
        rows.append(
            [
                name,
                f"{c['decay_factor_mean']:.4f} ± {c['decay_factor_std']:.4f}",
                span + (f" (some > {cfg['T']})" if far and dist else ""),
                f"{c['jacobian_decay_factor_mean']:.4f}",
                f(gate),
            ]
        )
    header = [
        "cell",
        "decay factor / step",
        f"steps back to {cfg['ratio']:g} (range over seeds)",
        f"Jacobian decay (T={cfg['T_jac']})",
        "mean forget/update gate",
    ]
    return md_table(header, rows)


@block("gradient_decay_config", f"{EXP}/gradient_decay.json")
def gradient_decay_config() -> str:
    return config_line(f"{EXP}/gradient_decay.json")


# --------------------------------------------------------------------------- weight scale


@block("weight_scale", f"{EXP}/weight_scale.json")
def weight_scale() -> str:
    d = load(f"{EXP}/weight_scale.json")
    rows = []
    for act in ("linear", "tanh"):
        for r in d[act]:
            rows.append(
                [
                    act,
                    f"{r['s']:g}",
                    f"{r['decay_factor']:.4f}",
                    f(r.get("max_rel_error_vs_s_power_k"), ".1e"),
                    f(r["state_nonfinite_from_step"], "d"),
                    "yes" if r["loss_finite"] else "NO",
                    "yes" if r["param_grad_finite"] else "NO",
                    f(r["grad_nonfinite_from_distance"], "d"),
                    f(r["grad_zero_from_distance"], "d"),
                ]
            )
    header = [
        "activation",
        "s",
        "fitted factor",
        "max rel. error vs s^k",
        "state Inf/NaN from step",
        "loss finite",
        "param grad finite",
        "dL/dh_t Inf/NaN from distance",
        "grad underflows to 0 from distance",
    ]
    return md_table(header, rows)


@block("weight_scale_clipping", f"{EXP}/weight_scale.json")
def weight_scale_clipping() -> str:
    d = load(f"{EXP}/weight_scale.json")
    cfg = d["config"]
    rows = []
    for name, r in d["training"].items():
        final = r["final_loss"]
        rows.append(
            [
                f"{name} SGD",
                "-" if r["clip_norm"] is None else f"global norm {r['clip_norm']:g}",
                f"{r['initial_loss']:.3f}",
                final if isinstance(final, str) else f"{final:.3g}",
                f(r["first_nonfinite_step"], "d"),
                f"{r['max_grad_norm']:.3g}",
            ]
        )
    header = [
        "run",
        "clipping",
        "initial loss",
        "final loss (last 10%)",
        "NaN/Inf at step",
        "max finite grad norm",
    ]
    task = (
        f"Lag-{cfg['lag']} recall, T={cfg['train_T']}, tanh RNN with s={cfg['train_scale']:g}, "
        f"H={cfg['train_hidden']}, SGD learning rate {cfg['learning_rate']:g}, "
        f"{cfg['train_steps']} steps:"
    )
    return task + "\n\n" + md_table(header, rows)


@block("weight_scale_config", f"{EXP}/weight_scale.json")
def weight_scale_config() -> str:
    return config_line(f"{EXP}/weight_scale.json")


# --------------------------------------------------------------------------- forget bias


@block("forget_bias", f"{EXP}/forget_bias.json")
def forget_bias() -> str:
    d = load(f"{EXP}/forget_bias.json")
    T = d["config"]["T"]
    rows = []
    for b in d["biases"].values():
        dist = b["vanish_distance_per_seed"]
        found = [x for x in dist if x is not None]
        rows.append(
            [
                f"{b['forget_bias']:g}",
                f"{b['sigmoid_bias']:.4f}",
                f"{b['mean_forget_gate']:.4f}",
                f"{b['decay_factor_mean']:.4f} ± {b['decay_factor_std']:.4f}",
                f"{b['decay_factor_c_mean']:.4f}",
                f"{min(found)}-{max(found)}" if found else f"> {T} (all {len(dist)} seeds)",
            ]
        )
    header = [
        "forget bias",
        "sigmoid(b_f)",
        "mean forget gate",
        "decay factor / step",
        "decay factor of c alone",
        f"steps back to {d['config']['ratio']:g}",
    ]
    return md_table(header, rows)


@block("forget_bias_config", f"{EXP}/forget_bias.json")
def forget_bias_config() -> str:
    return config_line(f"{EXP}/forget_bias.json")


# --------------------------------------------------------------------------- after training


@block("after_training", f"{EXP}/after_training.json")
def after_training() -> str:
    d = load(f"{EXP}/after_training.json")
    T = d["config"]["T_measure"]

    def dist(x: int | None) -> str:
        return f"> {T}" if x is None else str(x)

    rows = []
    for name, c in d["cells"].items():
        b, a = c["before"], c["after"]
        gate = "mean_forget_gate" if "mean_forget_gate" in b else "mean_update_gate"
        high = "forget_saturated_high" if gate == "mean_forget_gate" else "update_saturated_high"
        rows.append(
            [
                name,
                f"{c['eval_accuracy']:.3f}",
                f(c["solved_step"], "d"),
                f"{b['decay_factor']:.4f} -> {a['decay_factor']:.4f}",
                f"{dist(b['vanish_distance'])} -> {dist(a['vanish_distance'])}",
                f"{b[gate]:.3f} -> {a[gate]:.3f}" if gate in b else "-",
                f"{b[high]:.3f} -> {a[high]:.3f}" if high in b else "-",
                f"{b['saturated']:.3f} -> {a['saturated']:.3f}",
            ]
        )
    header = [
        f"cell (H={d['config']['hidden']})",
        f"eval accuracy (T={d['config']['T_train']})",
        "solved at step",
        "decay factor before -> after",
        f"steps back to {d['config']['ratio']:g}",
        "mean forget/update gate",
        "fraction of gates > 0.95",
        "saturated fraction",
    ]
    return md_table(header, rows)


@block("after_training_config", f"{EXP}/after_training.json")
def after_training_config() -> str:
    return config_line(f"{EXP}/after_training.json")


# --------------------------------------------------------------------------- long range


def _long_range(task: str) -> str:
    d = load(f"{EXP}/long_range_{task}.json")
    budget = d["config"]["steps"]
    rows = []
    for r in d["results"]:
        runs = r["runs"]
        rows.append(
            [
                r["task"],
                r["T"],
                r["cell"],
                ", ".join(f"{x['fraction_of_baseline']:.3f}" for x in runs),
                f"{sum(x['solved'] for x in runs)}/{len(runs)}",
                ", ".join(f(x["updates_to_solve"], "d", f">{budget}") for x in runs),
            ]
        )
    header = [
        "task",
        "T",
        "cell",
        "final loss / baseline (per seed)",
        "solved",
        "updates to solve",
    ]
    return f"Success test: {d['success_test']}.\n\n" + md_table(header, rows, right="1")


for _task in ("adding", "recall", "copy"):
    block(f"long_range_{_task}", f"{EXP}/long_range_{_task}.json")(
        lambda task=_task: _long_range(task)
    )


@block(
    "long_range_summary",
    *(f"{EXP}/long_range_{t}.json" for t in ("adding", "recall", "copy")),
)
def long_range_summary() -> str:
    rows, cells = [], []
    for task in ("adding", "recall", "copy"):
        d = load(f"{EXP}/long_range_{task}.json")
        by_cell: dict[str, list[str]] = {}
        for r in d["results"]:
            runs = r["runs"]
            cells = [*dict.fromkeys([*cells, r["cell"]])]
            solved = sum(x["solved"] for x in runs)
            by_cell.setdefault(r["cell"], []).append(f"{solved}/{len(runs)}")
        lengths = ", ".join(str(T) for T in dict.fromkeys(r["T"] for r in d["results"]))
        rows.append([f"{task} (T = {lengths})", *(", ".join(by_cell[c]) for c in cells)])
    return "Seeds solved within the budget, per length:\n\n" + md_table(["task", *cells], rows)


def distance_table(d: dict) -> str:
    """The distance study's table (one row per cell) from a ``distance.json``."""
    cfg = d["config"]
    header = ["cell", f"decay distance at init (to {cfg['ratio']:g})", "decay factor / step"]
    header += [f"d={x}" for x in cfg["distances"]] + ["longest learned"]
    rows = []
    for c in d["cells"].values():
        dist = ("> " if c["decay_censored"] else "") + f"{c['decay_distance']:g}"
        solved = [f(r["solved_fraction"], ".2f") if r["run"] else "(skipped)" for r in c["runs"]]
        longest = c["longest_solved"] or "none"
        rows.append([c["description"], dist, f(c["decay_factor"], ".4f"), *solved, longest])
    return md_table(header, rows)


def correlation_line(corr: dict, what: str) -> str:
    return (
        f"Spearman rank correlation between decay distance and longest distance learned "
        f"over {corr['n_cells']} {what}: {f(corr['spearman'], '.2f')}; Pearson of their "
        f"log10: {f(corr['pearson_log10'], '.2f')}."
    )


@block("distance", f"{EXP}/distance.json")
def distance() -> str:
    d = load(f"{EXP}/distance.json")
    return distance_table(d) + "\n\n" + correlation_line(d["correlation"], "cells")


@block("distance_config", f"{EXP}/distance.json")
def distance_config() -> str:
    return config_line(f"{EXP}/distance.json", skip=("cells", "all_distances"))


def median_updates(updates: list[int | None]) -> float:
    """The median over seeds of the updates to solve, an unsolved seed counted as never
    (inf): inf when half or more of the seeds did not solve."""
    return _median([math.inf if u is None else u for u in updates])


def seed_updates(updates: list[int | None], budget: int) -> str:
    """Updates to solve over seeds: the median (unsolved seeds count as never), how many
    seeds solved and the range over those that did."""
    done = sorted(u for u in updates if u is not None)
    if not done:
        return f"not within {budget} (0/{len(updates)} seeds)"
    med = median_updates(updates)
    med_text = f"{med:,.0f}" if math.isfinite(med) else f"> {budget:,}"
    span = f"{done[0]:,}-{done[-1]:,}" if len(done) > 1 else f"{done[0]:,}"
    return f"{med_text} ({len(done)}/{len(updates)} seeds solved: {span})"


def commands_block(d: dict) -> str:
    """The commands that wrote a results file, as a bash block: its own command, or for a
    study split into commands (``--merge``), each part's command and then the merge."""
    lines = [*d.get("commands", []), d.get("command", "(command not recorded)")]
    return "```bash\n" + "\n".join(lines) + "\n```\n\n"


DISTANCE_FILES = (
    f"{EXP}/distance.json",  # every cell, 500 updates per distance
    f"{EXP}/distance_long.json",  # two cells, larger budgets, d = 1000 and 3000
    f"{EXP}/distance_10k.json",  # the chrono GRU at d = 10,000 (3 commands merged)
    f"{EXP}/distance_new_cells.json",  # LRU, RG-LRU, sLSTM, mLSTM: 1000 updates per distance
)
"""The distance runs, each with its own budget; the reach table takes the longest
distance learned by each cell in any of them."""


@block("distance_reach", *DISTANCE_FILES)
def distance_reach() -> str:
    """Per cell, the longest distance learned in each distance run and over all of them."""
    runs = {Path(rel).stem: load(rel) for rel in DISTANCE_FILES}
    main = runs[Path(DISTANCE_FILES[0]).stem]
    header = ["cell", "decay distance at init (main sweep)"]
    header += [f"longest learned: `{n}.json`" for n in runs] + ["longest learned, any run"]
    rows = []
    for name, c in main["cells"].items():
        per_run = [
            d["cells"][name]["longest_solved"] if name in d["cells"] else None
            for d in runs.values()
        ]
        best = max((x for x in per_run if x is not None), default=0)
        dist = ("> " if c["decay_censored"] else "") + f"{c['decay_distance']:g}"
        cells = ["-" if x is None else (f"{x:,}" if x else "none") for x in per_run]
        rows.append([c["description"], dist, *cells, f"{best:,}" if best else "none"])
    return md_table(header, rows, right="".join(str(i) for i in range(1, len(header))))


def distance_long_table(d: dict) -> str:
    """A named distance run (``distance.py --name``) as one row per cell and distance: the
    budget, the seeds solved, the updates to solve (median, range), the final accuracy per
    seed and the seconds; the command that made it above."""
    cfg = d["config"]
    header = ["cell", "d", "budget (updates)", "updates to solve", "final accuracy", "seconds"]
    rows = []
    for c in d["cells"].values():
        for r in c["runs"]:
            steps = r.get("budget", cfg.get("steps_for", {}).get(str(r["distance"]), cfg["steps"]))
            if not r["run"]:
                rows.append([c["description"], r["distance"], steps, "skipped", "-", "-"])
                continue
            acc = ", ".join(f"{s['final_accuracy']:.2f}" for s in r["seeds"])
            ups = seed_updates([s["updates_to_solve"] for s in r["seeds"]], steps)
            rows.append([c["description"], r["distance"], steps, ups, acc, f"{r['seconds']:.0f}"])
    return (
        commands_block(d)
        + md_table(header, rows, right="125")
        + f"\n\nBatch {cfg['batch_size']}, learning rate {cfg['learning_rate']:g}, "
        f"H={cfg['hidden']}, {cfg['seeds']} seeds, chrono t_max={cfg['chrono_t_max']}, "
        f"held-out evaluation every {cfg['eval_every']} updates on {cfg['eval_batch_size']} "
        f"sequences; whole run {d['seconds']:.0f} s."
    )


@block("distance_long", f"{EXP}/distance_long.json")
def distance_long() -> str:
    return distance_long_table(load(f"{EXP}/distance_long.json"))


@block("distance_10k", f"{EXP}/distance_10k.json")
def distance_10k() -> str:
    return distance_long_table(load(f"{EXP}/distance_10k.json"))


@block("distance_new_cells", f"{EXP}/distance_new_cells.json")
def distance_new_cells() -> str:
    return distance_long_table(load(f"{EXP}/distance_new_cells.json"))


@block("copy_task", f"{EXP}/copy_task.json")
def copy_task() -> str:
    d = load(f"{EXP}/copy_task.json")
    budget = d["config"]["steps"]
    rows = []
    for c in d["cells"].values():
        for r in c["runs"]:
            if not r["run"]:
                rows.append(
                    [c["description"], r["T"], "skipped (failed a shorter T)", "-", "-", "-"]
                )
                continue
            seeds = r["seeds"]
            rows.append(
                [
                    c["description"],
                    r["T"],
                    seed_updates([s["updates_to_solve"] for s in seeds], budget),
                    ", ".join(f"{s['final_accuracy']:.3f}" for s in seeds),
                    ", ".join(f"{s['fraction_of_baseline']:.3f}" for s in seeds),
                    f"{r['seconds']:.0f}",
                ]
            )
    header = [
        "cell",
        "T",
        "updates to solve",
        "recalled-symbol accuracy at the end",
        "held-out loss / baseline",
        "seconds",
    ]
    return (
        f"Success test: {d['success_test']}.\n\n"
        + md_table(header, rows, right="15")
        + f"\n\nWall time of the whole run: {d['seconds']:.0f} s."
    )


@block("copy_task_commands", f"{EXP}/copy_task.json")
def copy_task_commands() -> str:
    return commands_block(load(f"{EXP}/copy_task.json")).strip()


@block("copy_task_config", f"{EXP}/copy_task.json")
def copy_task_config() -> str:
    return config_line(f"{EXP}/copy_task.json", skip=("all_lengths",))


@block("long_range_config", f"{EXP}/long_range_adding.json")
def long_range_config() -> str:
    return config_line(f"{EXP}/long_range_adding.json", skip=("tasks",))


@block(
    "long_range_seconds",
    *(f"{EXP}/long_range_{t}.json" for t in ("adding", "recall", "copy")),
)
def long_range_seconds() -> str:
    secs = {t: load(f"{EXP}/long_range_{t}.json")["seconds"] for t in ("adding", "recall", "copy")}
    parts = ", ".join(f"{t} {s:.0f} s" for t, s in secs.items())
    return f"Wall time of the recorded runs: {parts} (total {sum(secs.values()):.0f} s)."


# --------------------------------------------------------------------------- literature

# Numbers the papers report (typed from the papers, not measured here).
HS97_ADDING_SEQUENCES = {100: 74_000, 500: 209_000, 1000: 853_000}  # their LSTM, Table 7


HS97_TARGET_FACTOR = 10  # issue 24: ten times fewer training sequences than their Table 7
HS97_FILES = (
    f"{EXP}/long_range_adding_hs97.json",  # the first runs: GRU and LSTM, batch 32
    *(f"{EXP}/long_range_adding_hs97_T{T}.json" for T in (100, 500, 1000, 10000)),
    f"{EXP}/long_range_adding_hs97_T10000_rglru.json",  # one seed
)
"""The adding runs by Hochreiter & Schmidhuber's criterion, one file per command."""


def _sequences(r: dict, batch: int) -> list[float]:
    """Per seed: training sequences to solve (updates x batch), ``inf`` if not solved."""
    return [x["updates_to_solve"] * batch if x["solved"] else math.inf for x in r["runs"]]


def _median(v: list[float]) -> float:
    """The median, ``inf`` when at least half the values are ``inf`` (not solved)."""
    return float(sorted(v)[(len(v) - 1) // 2] + sorted(v)[len(v) // 2]) / 2


def _long_range_command(rel: str, cfg: dict) -> str:
    """The command line that wrote ``rel``, rebuilt from the config it recorded."""
    opts = [f"--tasks {' '.join(cfg['tasks'])}"]
    opts += [f"--name {cfg['name']}"] if cfg.get("name") else []
    opts += [f"--lengths {' '.join(map(str, cfg['lengths']))}"]
    opts += [f"--cells {' '.join(cfg['cells'])}", f"--seeds {cfg['seeds']}"]
    opts += [f"--steps {cfg['steps']}", f"--batch-size {cfg['batch_size']}"]
    opts += [f"--lr {cfg['learning_rate']:g}", f"--eval-every {cfg['eval_every']}"]
    defaults = {"hidden": 32, "clip_norm": 1.0, "eval_batch_size": 512, "eval_batches": 1,
                "schedule": "constant", "chrono_t_max": None, "seed": 0}  # fmt: skip
    for k, default in defaults.items():
        if cfg.get(k, default) != default:
            opts.append(f"--{k.replace('_', '-')} {cfg[k]}")
    if cfg.get("checkpoint_dir"):
        opts.append(f"--checkpoint-dir {cfg['checkpoint_dir']}")
    if cfg.get("resume"):
        opts.append("--resume")
    return "python -m experiments.long_range " + " ".join(opts) + f"  # -> {Path(rel).name}"


def _hs97_rows() -> list[dict]:
    """Every (file, T, cell) of the adding runs by HS97's criterion, with its settings."""
    rows = []
    for rel in HS97_FILES:
        d = load(rel)
        cfg = d["config"]
        for r in d["results"]:
            batch = r.get("batch_size", cfg["batch_size"])
            seqs = _sequences(r, batch)
            ups = [x["updates_to_solve"] if x["solved"] else math.inf for x in r["runs"]]
            rows.append({"file": rel, "cfg": cfg, "r": r, "batch": batch, "seqs": seqs,
                         "median": _median(seqs), "median_updates": _median(ups)})  # fmt: skip
    return rows


def _seqs_text(x: float, budget: int) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else f"> {budget:,}"


@block("literature_adding", *HS97_FILES)
def literature_adding() -> str:
    rows = _hs97_rows()
    cmds = [_long_range_command(rel, load(rel)["config"]) for rel in HS97_FILES]
    best: dict[int, dict] = {}
    for row in rows:
        T = row["r"]["T"]
        if T not in best or row["median"] < best[T]["median"]:
            best[T] = row
    summary = []
    for T in sorted({*HS97_ADDING_SEQUENCES, *best}):
        theirs = HS97_ADDING_SEQUENCES.get(T)
        b = best.get(T)
        if b is None:
            summary.append([T, f(theirs, ",d", "not reported"), "not run", "-", "-"])
            continue
        budget = b["cfg"]["steps"] * b["batch"]
        ours = (
            f"{_seqs_text(b['median'], budget)} ({cli.label(b['r']['cell'], CELL_LABELS)}, "
            f"batch {b['batch']}, lr {b['cfg']['learning_rate']:g}, "
            f"{len(b['seqs'])} seeds: {', '.join(_seqs_text(x, budget) for x in b['seqs'])})"
        )
        if theirs is None:
            ratio, target = "-", "-"
        elif math.isfinite(b["median"]):
            goal = theirs / HS97_TARGET_FACTOR
            ratio = f"{theirs / b['median']:.1f}x fewer"
            target = (
                f"met (<= {goal:,.0f})"
                if b["median"] <= goal
                else f"missed by {b['median'] / goal - 1:.0%} (goal {goal:,.0f})"
            )
        else:
            ratio, target = "-", f"missed (goal {theirs / HS97_TARGET_FACTOR:,.0f})"
        summary.append([T, f(theirs, ",d", "not reported"), ours, ratio, target])
    head = [
        "T",
        "Hochreiter & Schmidhuber 1997, LSTM: training sequences",
        "ours, best median over seeds: training sequences (cell, settings, per seed)",
        "1997 / ours",
        "ten times fewer than 1997 (issue 24)",
    ]
    detail = []
    for row in rows:
        r, cfg, batch = row["r"], row["cfg"], row["batch"]
        budget = cfg["steps"] * batch
        within = [x.get("within_tolerance_curve", [math.nan])[-1] for x in r["runs"]]
        per_seed = ", ".join(
            _seqs_text(x, budget) if math.isfinite(x) else f"> {budget:,} ({w:.1%} within 0.04)"
            for x, w in zip(row["seqs"], within)
        )
        detail.append(
            [
                Path(row["file"]).name,
                r["T"],
                cli.label(r["cell"], CELL_LABELS),
                batch,
                f"{cfg['learning_rate']:g}",
                f"{cfg['eval_every']} ({cfg['eval_every'] * batch:,}); "
                f"{cfg['eval_batch_size'] * cfg.get('eval_batches', 1):,}",
                per_seed,
                _seqs_text(row["median"], budget),
                _seqs_text(row["median_updates"], cfg["steps"]),
                f"{r['updates_run']:,}",
                # a resumed run: the training time of all its parts, from its history
                f"{r['train_seconds'] if r.get('resumed') else r['seconds']:.0f}",
            ]
        )
    dhead = [
        "file",
        "T",
        "cell",
        "batch",
        "lr",
        "evaluated every: updates (sequences); held-out sequences",
        "training sequences to solve, per seed",
        "median sequences",
        "median updates",
        "updates run (all seeds at once)",
        "wall s (all seeds at once)",
    ]
    return (
        "```bash\n"
        + "\n".join(cmds)
        + "\n```\n\n"
        + md_table(head, summary, right="01")
        + "\n\nEvery configuration:\n\n"
        + md_table(dhead, detail, right="134789")
        + "\n\nAll runs: H=32 (cell plus a linear readout), Adam, global-norm clip 1, constant "
        "learning rate, the seeds of a configuration trained at once (`jax.vmap`) until all "
        "are solved or the budget is spent; chrono cells with t_max = T. A seed's count is "
        "taken at the first evaluation that passes (the same held-out set at every "
        f"evaluation); success test: {load(HS97_FILES[0])['success_test']}. Wall times: "
        "the whole configuration (all its seeds, compilation and evaluations included), "
        "the process pinned to one core of a 2-core machine (`taskset -c 1`) whose other "
        "core ran other work (tests, short benchmarks) part of the time, so take them as "
        f"indicative; except {Path(HS97_FILES[0]).name}'s, timed in an earlier session "
        "on 2 cores."
    )


def _copy_runs() -> tuple[dict, dict[tuple[str, int], dict]]:
    d = load(f"{EXP}/copy_task.json")
    return d, {(n, r["T"]): r for n, c in d["cells"].items() for r in c["runs"]}


@block("literature_copy", f"{EXP}/copy_task.json")
def literature_copy() -> str:
    d, runs = _copy_runs()
    cfg = d["config"]
    rows = []
    for T in cfg["lengths"]:
        base = 10 * math.log(8) / (T + 20)
        ran = [(n, runs[(n, T)]) for n in d["cells"] if runs.get((n, T), {}).get("run")]
        medians = {n: median_updates([s["updates_to_solve"] for s in r["seeds"]]) for n, r in ran}
        best = min(medians, key=medians.get, default=None)
        if best is None or not math.isfinite(medians[best]):
            rows.append([T, f"{base:.4f}", "none (median over seeds)", "-", "-", "-"])
            continue
        seeds = runs[(best, T)]["seeds"]
        med = medians[best]
        losses = [f"{x['final_loss']:.4f} ({x['fraction_of_baseline']:.3f})" for x in seeds]
        rows.append(
            [
                T,
                f"{base:.4f}",
                d["cells"][best]["description"],
                f"{seed_updates([s['updates_to_solve'] for s in seeds], cfg['steps'])}; "
                f"{med * cfg['batch_size']:,.0f} sequences",
                ", ".join(losses),
                ", ".join(f"{s['final_accuracy']:.3f}" for s in seeds),
            ]
        )
    header = [
        "T",
        "baseline 10 ln 8 / (T+20) (nats/step)",
        "fastest cell to solve (median updates over seeds)",
        "updates to solve (median, seeds solved: range); sequences at the median",
        "held-out loss (/ baseline) per seed",
        "recalled-symbol accuracy per seed",
    ]
    return md_table(header, rows, right="01")


@block("literature_chrono", f"{EXP}/distance.json", f"{EXP}/copy_task.json")
def literature_chrono() -> str:
    dist = load(f"{EXP}/distance.json")
    copy, runs = _copy_runs()
    pairs = [("lstm", "chrono_lstm"), ("gru", "chrono_gru")]
    budget = copy["config"]["steps"]
    rows = []
    for std, chrono in pairs:
        for name in (std, chrono):
            c = dist["cells"].get(name)
            longest = "-" if c is None else (c["longest_solved"] or "none")
            per_T = []
            for T in copy["config"]["lengths"]:
                r = runs.get((name, T))
                if r is None:
                    per_T.append("-")
                elif not r["run"]:
                    per_T.append("skipped")
                else:
                    per_T.append(
                        ", ".join(
                            f(
                                s["updates_to_solve"],
                                ",d",
                                f"not within {budget:,} (accuracy {s['final_accuracy']:.2f})",
                            )
                            for s in r["seeds"]
                        )
                    )
            desc = (c or copy["cells"].get(name, {})).get("description", name)
            rows.append([desc, longest, *per_T])
    dcfg, ccfg = dist["config"], copy["config"]
    header = [
        "cell",
        f"delayed recall: longest distance learned (H={dcfg['hidden']}, "
        f"{dcfg['steps']} updates, chrono t_max {dcfg['chrono_t_max']})",
        *(
            f"copy T={T}: updates to solve (H={ccfg['hidden']}, chrono t_max "
            f"{ccfg['chrono_t_max'] or T})"
            for T in ccfg["lengths"]
        ),
    ]
    return md_table(header, rows)


@block("literature_clipping", f"{EXP}/weight_scale.json")
def literature_clipping() -> str:
    d = load(f"{EXP}/weight_scale.json")
    tanh = d["tanh"]
    below = [r["s"] for r in tanh if r["s"] > 1 and r["decay_factor"] < 1]
    above = [r["s"] for r in tanh if r["decay_factor"] > 1]
    plain, clipped = d["training"]["plain"], d["training"]["clipped"]
    cfg = d["config"]
    rows = [
        [
            "when the gradient vanishes or explodes",
            "with tanh' at most 1: a largest singular value of W_h below 1 is sufficient for the "
            "gradient to vanish; above 1 is necessary for it to explode, not sufficient",
            f"linear RNN, W_h = s Q: the factor per step is s; tanh RNN: it stays below 1 up "
            f"to s = {max(below, default=1):g} and exceeds 1 from s = "
            f"{f(min(above, default=None), 'g')} (T={cfg['T']}, H={cfg['hidden']})",
        ],
        [
            "gradient clipping by norm",
            "rescaling the gradient when its norm exceeds a threshold avoids the jumps an "
            "exploding gradient causes, with plain SGD",
            f"tanh RNN with s={cfg['train_scale']:g}, SGD lr {cfg['learning_rate']:g}: unclipped "
            f"loss Inf/NaN at step {f(plain['first_nonfinite_step'], 'd', 'never')}, max gradient "
            f"norm {plain['max_grad_norm']:.2g}; clipped to global norm {cfg['clip_norm']:g}: "
            f"loss {clipped['initial_loss']:.3f} -> {clipped['final_loss']:.3f}, "
            f"NaN/Inf {f(clipped['first_nonfinite_step'], 'd', 'never')}",
        ],
    ]
    return md_table(["claim", "Pascanu et al. 2013", "ours (weight_scale.json)"], rows)


# --------------------------------------------------------------------------- truncation


@block("truncation", f"{EXP}/truncation.json")
def truncation() -> str:
    d = load(f"{EXP}/truncation.json")
    cols: list[tuple[str, int | None]] = [("full", None)]
    for k in d["config"]["windows"]:
        cols += [("scan", k), ("stateful", k)]
    by = {(r["d"], r["form"], r["k"]): r for r in d["results"]}

    def cell(r: dict) -> str:
        acc = ", ".join(f"{a:.2f}" for a in r["accuracy"])
        return f"{acc} ({'yes' if all(r['solved']) else 'no'})"

    rows = [[dd, *(cell(by[(dd, form, k)]) for form, k in cols)] for dd in d["config"]["delays"]]
    header = ["d", *(form if k is None else f"{form} k={k}" for form, k in cols)]
    return md_table(header, rows, right="0")


@block("truncation_updates", f"{EXP}/truncation.json")
def truncation_updates() -> str:
    d = load(f"{EXP}/truncation.json")
    budget = d["config"]["steps"]
    cols: list[tuple[str, int | None]] = [("full", None)]
    for k in d["config"]["windows"]:
        cols += [("scan", k), ("stateful", k)]
    by = {(r["d"], r["form"], r["k"]): r for r in d["results"]}
    rows = [
        [
            dd,
            *(
                ", ".join(f(u, "d", f">{budget}") for u in by[(dd, form, k)]["updates_to_solve"])
                for form, k in cols
            ),
        ]
        for dd in d["config"]["delays"]
    ]
    header = ["d", *(form if k is None else f"{form} k={k}" for form, k in cols)]
    return "Updates to solve, per seed:\n\n" + md_table(header, rows, right="0")


@block("truncation_config", f"{EXP}/truncation.json")
def truncation_config() -> str:
    return config_line(f"{EXP}/truncation.json")


# --------------------------------------------------------------------------- char LM


@block("char_lm_default", f"{EXP}/char_lm/train.json")
def char_lm_default() -> str:
    d = load(f"{EXP}/char_lm/train.json")
    m, t = d["model"], d["train"]
    model = f"{m['cell'].upper()} {m['num_layers']} x {m['hidden_size']}"
    model += f", embedding {m['embed_size']}"
    rows = [
        [
            model,
            f"{d['num_params']:,}",
            f"{d['steps_done']} of {t['steps']}",
            f"{t['batch_size']} x {t['seq_len']}",
            f"{d['train_time_s']:.0f}",
            f"**{d['val_bpc']:.3f}**",
            f"{d['unigram_bpc']:.3f}",
        ]
    ]
    header = [
        "model",
        "params",
        "steps",
        "batch (rows x chars)",
        "train time (s)",
        "validation bits/char",
        "unigram baseline bits/char",
    ]
    corpus = (
        f"Corpus `{d['corpus']}`: {d['corpus_chars']:,} characters (SHA-256 "
        f"`{d['corpus_sha256'][:12]}...`, Python {d['python']}, jax {d['jax']})."
    )
    return md_table(header, rows, right="123456") + "\n\n" + corpus


@block("char_lm_compare", f"{EXP}/char_lm_compare.json")
def char_lm_compare() -> str:
    d = load(f"{EXP}/char_lm_compare.json")
    t = d["train"]
    rows = [
        [
            r["cell"],
            r["hidden_size"],
            f"{r['num_params']:,}",
            f"{r['val_bpc']:.3f}",
            f"{r['unigram_bpc']:.3f}",
            f"{r['train_time_s']:.0f}",
        ]
        for r in d["results"]
    ]
    header = [
        "cell",
        "hidden",
        "params",
        "validation bits/char",
        "unigram baseline bits/char",
        "train time (s)",
    ]
    setup = (
        f"{d['layers']} layer, budget {d['budget']:,} params, {t['steps']} steps of "
        f"{t['batch_size']} x {t['seq_len']} characters, seed {t['seed']}."
    )
    return setup + "\n\n" + md_table(header, rows, right="12345")


@block("char_lm_layer_params", f"{EXP}/char_lm_compare.json")
def char_lm_layer_params() -> str:
    d = load(f"{EXP}/char_lm_compare.json")
    (key,) = [k for k in d if k.startswith("layer_params_")]
    size = key.removeprefix("layer_params_").replace("_", ", ").replace("I", "I = ")
    size = size.replace("H", "H = ")
    rows = [[c, f"{v['counted']:,}", f"{v['formula']:,}"] for c, v in d[key].items()]
    return md_table(["cell", f"counted ({size})", "closed form"], rows, right="12")


@block("char_lm_sample", f"{EXP}/char_lm/sample.txt")
def char_lm_sample() -> str:
    return "```text\n" + include(f"{EXP}/char_lm/sample.txt") + "\n```"


# --------------------------------------------------------------------------- RNN task kinds


@block("rnn_types", f"{EXP}/rnn_types.json")
def rnn_types() -> str:
    d = load(f"{EXP}/rnn_types.json")
    rows = [
        [
            r["kind"],
            f"`{r['task']}`: {r['description']}",
            f"{r['accuracy']:.3f}",
            f"{r['chance']:.3f}",
            f(r.get("sequence_accuracy")),
            r["steps"],
        ]
        for r in d["results"]
    ]
    header = ["kind", "task", "accuracy", "chance", "whole-sequence accuracy", "steps"]
    return md_table(header, rows, right="2345")


# --------------------------------------------------------------------------- Flax model


@block("flax_model", f"{EXP}/flax_model.json")
def flax_model() -> str:
    d = load(f"{EXP}/flax_model.json")
    c = d["config"]
    by_len = d["accuracy_by_length"].values()
    rows = [
        [
            c["task"],
            f"LSTM {c['hidden']}" if c["layers"] == 1 else f"LSTM {c['layers']} x {c['hidden']}",
            f"{c['steps']} x {c['batch_size']}",
            d["test_size"],
            f"{d['test_accuracy']:.3f}",
            f"{min(by_len):.3f}",
            f"{d['chance_accuracy']:.3f}",
            f"{d['majority_class_accuracy']:.3f}",
        ]
    ]
    header = [
        "task",
        "model",
        "steps x batch",
        "held-out sequences",
        "test accuracy",
        f"worst length (1..{c['max_len']})",
        "chance",
        "majority class",
    ]
    return md_table(header, rows, right="34567")


# --------------------------------------------------------------------------- performance


@block("perf_speed", f"{BENCH}/speed/rnn_speed.md")
def perf_speed() -> str:
    return include(f"{BENCH}/speed/rnn_speed.md")


@block("perf_pretranspose", f"{BENCH}/pretranspose/compare_revisions.md")
def perf_pretranspose() -> str:
    return include(f"{BENCH}/pretranspose/compare_revisions.md")


@block("perf_revisions", f"{BENCH}/revisions/compare_revisions.md")
def perf_revisions() -> str:
    return include(f"{BENCH}/revisions/compare_revisions.md")


@block("perf_other", f"{BENCH}/other/rnn_speed.md")
def perf_other() -> str:
    return include(f"{BENCH}/other/rnn_speed.md")


def _ratio(phase: dict, key: str) -> str:
    """A speed ratio with its spread (min-max over ``--repeat`` runs, else over rounds);
    ``-`` for a cell timed without that reference (no PyTorch or Flax counterpart)."""
    if key not in phase:
        return "-"
    lo, hi = phase.get(f"{key}_repeats", phase.get(f"{key}_rounds", [phase[key]] * 2))
    return f"{phase[key]:.2f} ({lo:.2f}-{hi:.2f})"


def _spread_note(d: dict) -> str:
    runs = d.get("repeat", 1)
    over = f"min-max over {runs} runs in fresh processes" if runs > 1 else "min-max over rounds"
    return (
        f"median ({over}); {d['cpu']}, {d['threads']} threads, {d['rounds']} interleaved "
        "rounds per run"
    )


@block("perf_summary", f"{BENCH}/speed/rnn_speed.json")
def perf_summary() -> str:
    d = load(f"{BENCH}/speed/rnn_speed.json")
    cells = list(dict.fromkeys(r["cell"] for r in d["speed"]))

    def per_shape(cell: str, phase: str, other: str) -> str:
        rows = [r for r in d["speed"] if r["cell"] == cell]
        return "; ".join(_ratio(r[phase], f"vs_{other}") for r in rows)

    rows = [[c, *(per_shape(c, "train", o) for o in ("torch", "flax"))] for c in cells]
    shapes = ", ".join(dict.fromkeys(shape(r["shape"]) for r in d["speed"]))
    note = (
        "Training step, time of the other / time of gatedrnn (> 1: gatedrnn faster), per "
        f"shape (B, T, I, H) = {shapes}: " + _spread_note(d) + "."
    )
    return note + "\n\n" + md_table(["cell", "vs PyTorch", "vs Flax"], rows)


# The speed targets of the performance issue: (label, phase, key, bar per cell).
SPEED_TARGETS = (
    ("training step vs PyTorch (LSTM >= 1.0x, others >= 1.25x)", "train", "vs_torch"),
    ("forward vs PyTorch (LSTM >= 1.0x, others >= 1.25x)", "forward", "vs_torch"),
    ("training step >= 1.5x Flax", "train", "vs_flax"),
    ("forward >= 1.5x Flax", "forward", "vs_flax"),
)


TORCH_BARS = {"lstm": 1.0}
"""The bar vs PyTorch per cell where it is not the default 1.25 (oneDNN's fused LSTM)."""


def _bar(key: str, cell: str) -> float:
    if key == "vs_flax":
        return 1.5
    return TORCH_BARS.get(cell, 1.25)


def _verdict(value: float, bar: float, fmt: str) -> str:
    if value >= bar:
        return f"{format(value, fmt)} met"
    return f"{format(value, fmt)} **missed** (needs {bar / value:.2f}x)"


@block("perf_targets", f"{BENCH}/speed/rnn_speed.json")
def perf_targets() -> str:
    d = load(f"{BENCH}/speed/rnn_speed.json")
    cells = list(dict.fromkeys(r["cell"] for r in d["speed"]))
    rows = []
    for label, phase, key in SPEED_TARGETS:
        row = [label]
        for c in cells:
            vals = [r[phase][key] for r in d["speed"] if r["cell"] == c and key in r[phase]]
            row.append(", ".join(_verdict(v, _bar(key, c), ".2f") for v in vals) or "-")
        rows.append(row)
    sizes = sorted(
        dict.fromkeys(
            (r["shape"]["batch"] * r["shape"]["hidden"], shape(r["shape"])) for r in d["speed"]
        )
    )
    larger = [name for _, name in sizes[-2:]]
    row = [f"train >= 65% of matmul GFLOP/s at {' and '.join(larger)}"]
    for c in cells:
        vals = [
            r["train"]["fraction_of_matmul"]
            for r in d["speed"]
            if r["cell"] == c and shape(r["shape"]) in larger
        ]
        row.append(", ".join(_verdict(100 * v, 65, ".0f") for v in vals))
    rows.append(row)
    shapes = ", ".join(dict.fromkeys(shape(r["shape"]) for r in d["speed"]))
    return f"Per shape, in the order {shapes}:\n\n" + md_table(["target", *cells], rows)


@block("perf_other_targets", f"{BENCH}/other/rnn_speed.json")
def perf_other_targets() -> str:
    d = load(f"{BENCH}/other/rnn_speed.json")
    rm, mn, gen, comp = d["remat"], d["min"], d["generate"], d["compile"]

    def remat(name: str) -> list[str]:
        v = rm[name]
        ok = v["temp_vs_none"] <= 1 / 8 and v["time_vs_none"] <= 1.2
        return [
            f"1/{1 / v['temp_vs_none']:.1f} of the temp memory at {v['time_vs_none']:.2f}x "
            f"the time",
            "met" if ok else "**not met**",
        ]

    rows = [
        ["remat `sqrt` <= 1/8 temp memory at <= 1.2x time, batch-major", *remat("sqrt")],
        [
            "remat `sqrt` <= 1/8 temp memory at <= 1.2x time, time-major",
            *remat("sqrt_time_major"),
        ],
        [
            f"minGRU >= 10x the GRU at T={mn['shape']['time']}",
            f"{mn['min_gru_speedup_vs_gru']:.1f}x (minLSTM {mn['min_lstm_speedup_vs_gru']:.1f}x)",
            "met" if mn["min_gru_speedup_vs_gru"] >= 10 else "**not met**",
        ],
        [
            "generation >= 5x a PyTorch loop",
            f"{gen['speedup_vs_torch']:.1f}x",
            "met" if gen["speedup_vs_torch"] >= 5 else "**not met**",
        ],
        [
            "compile time independent of T (ratio <= 1.5)",
            ", ".join(f"{k}: {v:.2f} s" for k, v in comp.items() if k != "ratio")
            + f" (ratio {comp['ratio']:.2f})",
            "met" if comp["ratio"] <= 1.5 else "**not met**",
        ],
    ]
    return md_table(["target", "measured", ""], rows)


# What each loop variant of `rnn_speed.py --sections levers` is (names from the JSON).
LEVERS = {
    "hoisted": "`gr.scan`: input projection for all steps as one product, outside the loop",
    "bias_in_project": "the same, with the LSTM bias added in `project` instead of in the loop",
    "in_loop": "a `jax.lax.scan` over `cell.step`, projecting each step (as Flax does), autodiff",
    "autodiff": "`gr.scan` with `fused=False` (the loop's own autodiff backward)",
    "unroll4": "`gr.scan(..., unroll=4)`",
    "dot_wT_in_loop": "the backward loop's products by the transposed weight alone",
    "dot_pretransposed": "the same with the weight transposed once before the loop",
    "gru": "GRU via `gr.scan` (one array per gate block, `GRUInput`)",
    "gru_one_array": "GRU with its projection as one `(T, B, 3H)` array sliced per step",
}


@block("perf_levers", f"{BENCH}/levers/rnn_speed.json")
def perf_levers() -> str:
    d = load(f"{BENCH}/levers/rnn_speed.json")
    names = list(dict.fromkeys(k for row in d["levers"] for k in row["seconds"]))
    shapes = [tuple(row["shape"]) for row in d["levers"]]
    rows = []
    for n in names:
        base = next((b for b in sorted(LEVERS, key=len, reverse=True) if n.startswith(b)), n)
        ms = [row["seconds"].get(n) for row in d["levers"]]
        times = [f(1e3 * s if s else None, ".1f") for s in ms]
        rows.append([f"`{n}`", LEVERS.get(base, ""), *times])
    header = ["variant (LSTM unless named)", "what", *(f"{s} ms" for s in shapes)]
    right = "".join(str(2 + i) for i in range(len(shapes)))
    note = f"{d['cpu']}, {d['threads']} threads, medians of {d['rounds']} rounds."
    return note + "\n\n" + md_table(header, rows, right=right)


def _form_ratio(row: dict, phase: str) -> str:
    """Time step by step / time parallel at one T of a crossover sweep (> 1: parallel
    faster); ``skipped`` where the library refused the parallel form's memory, and which
    form ran out of memory where one did."""
    if "seconds" not in row:
        return "skipped"
    sec = row["seconds"]
    if f"sequential_{phase}" not in sec or f"parallel_{phase}" not in sec:
        return f"{' and '.join(row.get('out_of_memory', []))} form out of memory"
    return f"{sec[f'sequential_{phase}'] / sec[f'parallel_{phase}']:.2f}"


@block("perf_crossover", f"{BENCH}/crossover/rnn_speed.json")
def perf_crossover() -> str:
    """Per cell with a parallel form: time step by step / time parallel over T, and the
    length from which the parallel form wins (minGRU first)."""
    d = load(f"{BENCH}/crossover/rnn_speed.json")
    c = d["crossover"]
    sh = c["shape"]
    out = [
        f"{d['cpu']}, {d['threads']} threads, medians of {d['rounds']} interleaved rounds; "
        f"B={sh['batch']}, I={sh['input']}, H={sh['hidden']}; time step by step / time "
        "parallel (> 1: parallel faster)."
    ]
    for cc in [c, *c.get("by_cell", [])]:
        rows = [[r["T"], *(_form_ratio(r, ph) for ph in ("train", "forward"))] for r in cc["rows"]]
        out += [
            f"**{cc['cell']}**: crossover {cc['crossover_train']} (training "
            f"step), {cc['crossover_forward']} (forward); "
            f"`gr.parallel_crossover({cc['cell']!r})` here: "
            f"{cc['library_picks_parallel_from']}.",
            md_table(["T", "training step", "forward"], rows, right="012"),
        ]
    return "\n\n".join(out)


@block("perf_tuning", f"{BENCH}/tuning/rnn_speed.json")
def perf_tuning() -> str:
    """The unroll sweep, one loop per core and bfloat16."""
    d = load(f"{BENCH}/tuning/rnn_speed.json")
    out = [f"{d['cpu']}, {d['threads']} threads, medians of {d['rounds']} interleaved rounds."]
    if d.get("unroll"):
        us = [k.split("_")[0] for k in d["unroll"][0]["speedup_vs_1"] if k.endswith("_train")]
        rows = [
            [
                r["cell"],
                str(tuple(r["shape"])),
                *(
                    f"{sp[f'{u}_train']:.2f} / {sp[f'{u}_forward']:.2f}"
                    for sp in [r["speedup_vs_1"]]
                    for u in us[1:]
                ),
            ]
            for r in d["unroll"]
        ]
        header = ["cell", "(B, T, I, H)", *(f"unroll={u}" for u in us[1:])]
        out += [
            "**unroll**: speed-up over `unroll=1`, training step / forward (> 1: faster).",
            md_table(header, rows),
        ]
    if d.get("shard"):
        rows = [
            [r["cell"], str(tuple(r["shape"])), r["devices"], f"{r['speedup']:.2f}"]
            for r in d["shard"]
        ]
        out += [
            "**One loop per core**: the training step with the batch split over host devices "
            "(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, a data mesh) against one "
            "device, same process (> 1: split faster).",
            md_table(["cell", "(B, T, I, H)", "devices", "speed-up"], rows, right="23"),
        ]
    if d.get("bf16"):
        b = d["bf16"]
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in b["bf16_speedup"].items())
        out.append(
            f"**bfloat16** against float32 (speed-up, > 1: bfloat16 faster), a {b['matmul_n']}^2 "
            f"matmul and the training step at {tuple(b['shape'])}: {sp}."
        )
    return "\n\n".join(out)


# --------------------------------------------------------------------------- parity


PARITY = f"{BENCH}/parity"
PARITY_FILES = tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / PARITY).glob("*.json")))


def _parity_shape(d: dict) -> tuple[int, ...]:
    """``(B, T, H)`` as a parity JSON records it (a list, or a dict with B, T, H)."""
    s = d["shape"]
    return tuple(s[k] for k in ("B", "T", "H")) if isinstance(s, dict) else tuple(s)


def _reference(d: dict) -> tuple[str, str]:
    """``(package, version)`` of the reference a parity JSON compared against: the package is
    the first word of ``reference``; the version from ``reference_version``, ``versions``
    or ``"<package> <version>"`` in the reference string."""
    ref = d["reference"]
    package = re.split(r"[\s.(]", ref, maxsplit=1)[0]
    version = d.get("reference_version") or d.get("versions", {}).get(package)
    if version is None:
        m = re.search(rf"\b{re.escape(package)} (\d[\w.+]*)", ref)
        version = m.group(1) if m else "?"
    return package, version


def _seconds(x: Any) -> float:
    return float(x["median"]) if isinstance(x, dict) else float(x)


def _speed_rows(d: dict) -> list[tuple[tuple[int, ...], dict[str, float]]]:
    """``[(shape, {phase: reference seconds / ours seconds})]`` from a parity JSON's
    ``"speed"`` entry (absent: ``[]``). Each parity script writes its own layout; every one
    records median seconds per implementation and phase (``forward``, ``train``), keyed
    ``ours_*`` / ``gatedrnn`` for ours and by the reference's name otherwise. The ratio
    takes the faster of our forms (step, parallel; with the cell's default options) and of
    the reference's paths."""
    speed = d.get("speed")
    if not speed:
        return []
    rows = speed["rows"] if isinstance(speed, dict) else speed
    out = []
    for r in rows:
        shape = tuple(r["shape"]) if "shape" in r else tuple(r[k] for k in ("B", "T", "H"))
        ratios = {}
        for phase in ("forward", "train"):
            if phase in r:
                times = r[phase].get("seconds", r[phase])
            else:  # one flat mapping with the phase as suffix
                end = f"_{phase}"
                flat = r["seconds"]
                times = {k[: -len(end)]: v for k, v in flat.items() if k.endswith(end)}
            times = {
                k: _seconds(v)
                for k, v in times.items()
                if "over" not in k
                and "speedup" not in k
                and isinstance(v, (int, float, dict))
                and not k.startswith("ours_chunk_")  # a sweep of options, not the defaults
            }
            ours = [v for k, v in times.items() if k.startswith(("ours", "gatedrnn"))]
            ref = [v for k, v in times.items() if not k.startswith(("ours", "gatedrnn"))]
            if ours and ref:
                ratios[phase] = min(ref) / min(ours)
        out.append((shape, ratios))
    return out


@block("cells_parity", *PARITY_FILES)
def cells_parity() -> str:
    """Largest absolute difference to the reference implementation per cell and dtype."""
    rows = []
    for rel in PARITY_FILES:
        d = load(rel)
        package, version = _reference(d)
        rows.append(
            [
                f"`{d['cell']}`",
                f"`{package}` {version}",
                str(_parity_shape(d)),
                f"{d['max_abs_diff_float32']:.1e}",
                f"{d['max_abs_diff_float64']:.1e}",
            ]
        )
    note = (
        "Largest absolute difference of outputs and final states between `gr.scan` (every "
        "form the cell has) and the reference, same params and inputs, shape (B, T, H); "
        f"written by `benchmarks/parity_<cell>.py` into `{PARITY}/<cell>.json`."
    )
    header = ["cell", "reference", "(B, T, H)", "float32", "float64"]
    return note + "\n\n" + md_table(header, rows, right="34")


@block("cells_speed", *PARITY_FILES)
def cells_speed() -> str:
    """Time of the reference / time of ours per new cell, shape and phase."""
    rows = []
    for rel in PARITY_FILES:
        d = load(rel)
        package, _ = _reference(d)
        measured = _speed_rows(d)
        if not measured:
            rows.append([f"`{d['cell']}`", f"`{package}`", "not measured yet", "-", "-"])
        for shape, ratio in measured:
            rows.append(
                [
                    f"`{d['cell']}`",
                    f"`{package}`",
                    str(shape),
                    f(ratio.get("forward"), ".2f"),
                    f(ratio.get("train"), ".2f"),
                ]
            )
    note = (
        "Time of the reference / time of gatedrnn (> 1: gatedrnn faster), float32, medians "
        "of interleaved rounds in one process; the faster of our forms (step, parallel) and "
        "of the reference's paths. Written by `benchmarks/parity_<cell>.py --speed`."
    )
    header = ["cell", "reference", "(B, T, H)", "forward", "training step"]
    return note + "\n\n" + md_table(header, rows, right="34")


@block("mlstm_chunks", f"{PARITY}/mlstm.json")
def mlstm_chunks() -> str:
    """The mLSTM's parallel form per ``chunk_size`` (``parity_mlstm.py --chunk-sizes``)."""
    speed = load(f"{PARITY}/mlstm.json")["speed"]
    default = speed["default_chunk_size"]
    sizes = sorted(
        {
            k.split("_")[2]
            for r in speed["rows"]
            for k in r["seconds"]
            if k.startswith("ours_chunk_")
        },
        key=lambda c: (c == "None", int(c) if c != "None" else 0),
    )
    header = ["(B, T, H)", "phase", *(f"chunk {c}" for c in sizes), f"chunk {default} (default)"]
    rows = []
    for r in speed["rows"]:
        sec = r["seconds"]
        for phase in ("forward", "train"):
            rows.append(
                [
                    str(tuple(r["shape"])),
                    "training step" if phase == "train" else phase,
                    *(f"{sec[f'ours_chunk_{c}_{phase}']:.3f}" for c in sizes),
                    f"{sec[f'ours_parallel_{phase}']:.3f}",
                ]
            )
    return (
        "Seconds (medians of the same interleaved rounds) of our mLSTM's parallel form per "
        "`chunk_size` (`None`: one quadratic form over the whole sequence), written by "
        "`benchmarks/parity_mlstm.py --speed --chunk-sizes ...`.\n\n"
        + md_table(header, rows, right="".join(str(i) for i in range(2, len(header))))
    )


# --------------------------------------------------------------------------- driver


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render(text: str) -> str:
    """``text`` with every generated block rewritten from the current results."""

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in RENDERERS:
            raise KeyError(f"unknown results block {name!r}; known: {sorted(RENDERERS)}")
        return m.group(1) + RENDERERS[name][1]().strip() + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def missing_links(path: Path) -> list[str]:
    """Relative links and images in ``path`` whose target does not exist."""
    out = []
    for target in LINK.findall(path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (path.parent / target).exists():
            out.append(target)
    return out


def missing_inputs() -> list[str]:
    """Results files a block reads that are not there."""
    files = {f for files, _ in RENDERERS.values() for f in files}
    return sorted(f for f in files if not (ROOT / f).exists())


def check(root: Path = ROOT) -> list[str]:
    """Problems: stale blocks, missing results files and linked files (empty when all good)."""
    problems = [f"missing results file: {f}" for f in missing_inputs()]
    if problems:
        return problems
    for path in doc_files(root):
        rel = path.relative_to(root)
        text = path.read_text()
        if render(text) != text:
            problems.append(f"{rel}: generated blocks are stale (run python -m experiments.report)")
        problems += [f"{rel}: links to a missing file: {t}" for t in missing_links(path)]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if anything is stale")
    args = p.parse_args(argv)
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    missing = missing_inputs()
    if missing:
        print("missing results files: " + ", ".join(missing), file=sys.stderr)
        return 1
    for path in doc_files():
        text = path.read_text()
        new = render(text)
        if new != text:
            cli.write_text(path, new)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
