"""After training: the gradient decay of vanilla RNN, LSTM and GRU before and after learning
a long-range task.

Each cell (plus a linear readout, gatedrnn.training.fit: clipped Adam) is trained on the
delayed-recall task of gatedrnn.training.tasks (a key token in the first tenth of the sequence,
distractors, a query at the end asking for the key). Before and after training, on longer
sequences of the same task, one backward pass gives ||dL/ds_t|| of the task loss for every
state (gatedrnn.diagnostics.state_gradient_norms); the script fits the per-step decay
factor and reads the mean forget/update gate (gatedrnn.diagnostics.gate_statistics).

Writes experiments/results/after_training.{json,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments import cli
from experiments.cli import (
    parser,
    pyplot,
    table,
    timed,
    write_results,
)


@cli.in_float64  # trained in float32 as usual; measured in float64
def measure(model, params, batch, loss_fn, ratio: float) -> dict:
    """Decay of the task loss's state gradients, and gate statistics, in float64."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gatedrnn import diagnostics as dg

    # on the host (exact, and no conversion program to compile per shape)
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    xs = np.asarray(batch.inputs, np.float64)

    decay = dg.decay_profile(
        model.cell, p64.cell, xs, loss_fn, loss_args=(p64.w_out, p64.b_out, batch),
        ratio=ratio, floor=1e-300,
    )  # fmt: skip
    stats = dg.gate_statistics(model.cell, p64.cell, xs)
    out = {
        "relative_grad_norm": decay["relative"],
        "decay_factor": decay["decay_factor"],
        "vanish_distance": decay["vanish_distance"],
        "saturated": float(jnp.mean(stats["saturated"])),
    }
    for gate in ("forget", "update"):
        if gate in stats:
            out[f"mean_{gate}_gate"] = float(jnp.mean(stats[gate]))
    for key in ("forget_saturated_high", "update_saturated_high"):
        if key in stats:  # units whose gate is within 0.05 of 1: they keep their memory
            out[key] = float(jnp.mean(stats[key]))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: sizes, sequence lengths, training settings; ``--quick`` shrinks
    them."""
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=cli.positive_int, default=32)
    p.add_argument(
        "--T-train", type=cli.positive_int, default=30, help="sequence length for training"
    )
    p.add_argument(
        "--T-measure", type=cli.positive_int, default=200, help="sequence length for measuring"
    )
    p.add_argument(
        "--steps", type=cli.positive_int, default=1500, help="training updates (early stop)"
    )
    p.add_argument("--batch", type=cli.positive_int, default=32)
    p.add_argument("--learning-rate", "--lr", type=cli.positive_float, default=3e-3)
    p.add_argument("--measure-batch", type=cli.positive_int, default=32)
    p.add_argument("--ratio", type=cli.positive_float, default=1e-6)
    return p.honour_quick(
        p.parse_args(argv), hidden=8, T_train=10, T_measure=30, steps=30, measure_batch=4
    )


def train_all(args: argparse.Namespace, task) -> dict:
    """Train each cell on ``task`` (printing a line per cell as it finishes).

    Returns:
      ``{label: (model, params before training, training result, seconds)}``.
    """
    import gatedrnn as gr
    from gatedrnn import training

    cells = {
        "vanilla (tanh)": gr.vanilla(args.hidden),
        "LSTM": gr.lstm(args.hidden),
        "GRU": gr.gru(args.hidden),
    }
    trained = {}
    for label, cell in cells.items():
        (model, res), secs = timed(
            training.fit,
            task,
            cell,
            num_steps=args.steps,
            batch_size=args.batch,
            learning_rate=args.learning_rate,
            seed=args.seed,
            eval_every=max(1, min(100, args.steps)),
            progress=False,
        )
        before = model.init(training.param_key(args.seed))  # the init fit started from
        trained[label] = (model, before, res, secs)
        last = res.history[-1]
        print(
            f"{label}: trained {last['step']} steps in {secs:.0f} s, eval accuracy "
            f"{last['eval_accuracy']:.3f} (solved at {res.solved_step})",
            flush=True,
        )
    return trained


def run(args: argparse.Namespace) -> dict:
    """Train every cell on delayed recall (``--T-train``), then measure the decay of its
    task loss's state gradients on longer sequences (``--T-measure``) before and after.

    Returns:
      ``{"config", "cells": {label: {"before", "after" (:func:`measure`), training
      summary, "history"}}, "diverged_runs": [labels]}``.
    """
    import jax
    import numpy as np

    from gatedrnn import training
    from gatedrnn.training import tasks

    task = tasks.delayed_recall(args.T_train)
    long_task = tasks.delayed_recall(args.T_measure)
    trained = train_all(args, task)
    batch = long_task.sample(jax.random.PRNGKey(args.seed + 99), args.measure_batch)

    def loss_fn(final, ys, w_out, b_out, batch):  # ys (T, B, H), time-major
        """The task's loss through the model's readout, as a function of the states."""
        return long_task.loss_fn(jax.numpy.swapaxes(ys, 0, 1) @ w_out + b_out, batch)[0]

    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cells": {},
    }
    for label, (model, before, res, secs) in trained.items():
        last = res.history[-1]
        results["cells"][label] = {
            "before": measure(model, before, batch, loss_fn, args.ratio),
            "after": measure(model, res.state.params, batch, loss_fn, args.ratio),
            "train_steps": int(last["step"]),
            "solved_step": res.solved_step,
            "eval_accuracy": float(last["eval_accuracy"]),
            "eval_loss": float(last["eval_loss"]),
            "baseline_loss": task.baseline,
            "diverged": training.diverged_finitely(
                last["eval_loss"], task.baseline, float(np.asarray(res.per_step["loss"])[0])
            ),
            "history": res.history,
            "train_seconds": secs,
        }
    results["diverged_runs"] = [k for k, c in results["cells"].items() if c["diverged"]]
    return results


def chance_accuracy(config: dict) -> float:
    """Accuracy of guessing on the training task (``1 / output_size``)."""
    from gatedrnn.training import tasks

    return 1 / tasks.delayed_recall(config["T_train"]).output_size


def cell_table(results: dict) -> str:
    """The table of :func:`run`'s results: one row per cell, before -> after training."""
    cfg = results["config"]

    def dist(m):
        return f"> {cfg['T_measure']}" if m["vanish_distance"] is None else m["vanish_distance"]

    rows = []
    for label, c in results["cells"].items():
        m0, m1 = c["before"], c["after"]
        gate_key = "mean_forget_gate" if "mean_forget_gate" in m0 else "mean_update_gate"
        high = "forget_saturated_high" if "mean_forget_gate" in m0 else "update_saturated_high"
        rows.append(
            [
                label,
                f"{c['eval_accuracy']:.3f}",
                "-" if c["solved_step"] is None else c["solved_step"],
                f"{m0['decay_factor']:.4f} -> {m1['decay_factor']:.4f}",
                f"{dist(m0)} -> {dist(m1)}",
                f"{m0[gate_key]:.3f} -> {m1[gate_key]:.3f}" if gate_key in m0 else "-",
                f"{m0[high]:.3f} -> {m1[high]:.3f}" if high in m0 else "-",
                f"{m0['saturated']:.3f} -> {m1['saturated']:.3f}",
            ]
        )
    header = [
        "cell",
        f"eval accuracy (T={cfg['T_train']})",
        "solved at step",
        "decay factor before -> after",
        f"distance to {cfg['ratio']:g}",
        "mean forget/update gate",
        "fraction of gates > 0.95",
        "saturated fraction",
    ]
    return table(rows, header)


def summarize(results: dict) -> str:
    """The printed summary: a heading, :func:`cell_table`, a warning per diverged run."""
    cfg = results["config"]
    lines = [
        f"\nDelayed recall, T={cfg['T_train']} for training, T={cfg['T_measure']} for "
        f"measuring, H={cfg['hidden']}; chance accuracy {chance_accuracy(cfg):.3f}\n",
        cell_table(results),
    ]
    for label in results["diverged_runs"]:
        lines.append(f"warning: {label} diverged (ended far above baseline and first loss)")
    return "\n".join(lines)


def plot(results: dict) -> Any:
    """Relative gradient norm vs distance per cell before and after training (two
    panels), and held-out accuracy during training."""
    import numpy as np

    cfg = results["config"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    dist_axis = np.arange(cfg["T_measure"], -1, -1)
    curves = [
        c[w]["relative_grad_norm"] for c in results["cells"].values() for w in ("before", "after")
    ]
    lowest = min(float(np.min(r)) for r in curves)
    highest = max(float(np.max(r)) for r in curves)
    for ax, when in zip(axes[:2], ("before", "after")):
        for (label, c), color in zip(results["cells"].items(), ["C3", "C0", "C2"]):
            ax.semilogy(
                dist_axis,
                c[when]["relative_grad_norm"],
                color=color,
                label=f"{label}: {c[when]['decay_factor']:.3f}/step",
            )
        ax.axhline(cfg["ratio"], color="k", lw=0.8, ls="--")
        ax.axvline(cfg["T_train"], color="grey", lw=0.8, ls=":")
        ax.set_ylim(max(1e-300, lowest / 10), max(10.0, highest * 10))
        ax.set(
            xlabel="distance T - t (dotted: training length)",
            ylabel="||dL/ds_t|| / ||dL/ds_T||",
            title=f"{when} training (delayed recall, T={cfg['T_measure']})",
        )
        ax.legend(fontsize=8)
    ax = axes[2]
    for (label, c), color in zip(results["cells"].items(), ["C3", "C0", "C2"]):
        steps = [h["step"] for h in c["history"]]
        ax.plot(steps, [h["eval_accuracy"] for h in c["history"]], "o-", color=color, label=label)
    ax.axhline(chance_accuracy(cfg), color="k", lw=0.8, ls="--", label="chance")
    ax.set(
        xlabel="training step",
        ylabel="held-out accuracy",
        title=f"training on delayed recall, T={cfg['T_train']}",
    )
    ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> dict:
    """Parse, train and measure, print the table, write ``after_training.{json,png}``;
    return the results."""
    args = parse_args(argv)
    results = run(args)
    results["table"] = cell_table(results)
    print(summarize(results))
    write_results(args.out, "after_training", results, plot(results))
    return results


if __name__ == "__main__":
    cli.run(main)
