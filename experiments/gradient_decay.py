"""Gradient decay at initialization: how fast ||dL/ds_t|| vanishes in vanilla RNN, LSTM, GRU.

For each cell (same hidden size, default initialization: orthogonal recurrent weights,
LSTM forget bias 1) and several seeds, one backward pass gives the gradient of a loss on
the last output with respect to every state s_t of a long random sequence
(gatedrnn.diagnostics.state_gradient_norms). The script fits the per-step decay factor,
finds the distance at which the gradient falls below 1e-6 of its value at the last state,
measures the spectral norm of ds_T/ds_t by power iteration on a shorter horizon, prints a
table and writes experiments/results/gradient_decay.{json,png}.

    python -m experiments.gradient_decay            # the README's numbers (a few minutes)
    python -m experiments.gradient_decay --quick    # seconds
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments import cli
from experiments.cli import (
    geomean,
    parser,
    pyplot,
    table,
    timed,
    write_results,
)

LABELS = {
    "vanilla": "vanilla (tanh)",
    "lstm": "LSTM (forget bias 1)",
    "gru": "GRU",
    "lru": "LRU",
    "rglru": "RG-LRU",
    "slstm": "sLSTM",
    "mlstm": "mLSTM",
}
"""Display labels of the cells (default options); other cells show their registry name."""
DEFAULT_CELLS = ("vanilla", "lstm", "gru", "lru", "rglru", "slstm", "mlstm")
"""The cells of the default run: the classical three and the modern recurrences."""
COLORS = ["C3", "C0", "C2", "C1", "C4", "C5", "C6", "C7", "C8", "C9"]


def state_parts(norms) -> dict:
    """Per-field gradient norms ``{field: (T,)}`` of a state with several fields (the LSTM's
    ``h`` and ``c``, any cell's NamedTuple state), each field's leaves combined; ``{}`` for a
    state of one array."""
    fields = getattr(norms, "_fields", ())
    if len(fields) < 2:
        return {}
    from gatedrnn import diagnostics as dg

    return {f: dg.whole_state_norms(getattr(norms, f)) for f in fields}


@cli.in_float64
def measure(cell, args, seed: int) -> dict:
    """One seed of one cell: gradient norms, fits, Jacobian norms, gate statistics."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gatedrnn import diagnostics as dg

    kp, kx, kj = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(kp, args.input_size, dtype=jnp.float64)
    xs = jax.random.normal(kx, (args.batch, args.T, args.input_size), jnp.float64)
    decay = dg.decay_profile(cell, params, xs, ratio=args.ratio, floor=1e-300)
    out = {
        "grad_norm": decay["grad_norm"],
        "decay_factor": decay["decay_factor"],
        "vanish_distance": decay["vanish_distance"],
        "min_relative_norm": float(decay["relative"].min()),
    }
    out["state_parts"] = state_parts(decay["norms"])
    xs_host = np.asarray(xs)  # sliced on the host (exact; no slicing program per shape)
    stats = dg.gate_statistics(cell, params, xs_host[:, : args.T_jac])
    out["saturated"] = float(jnp.mean(stats["saturated"]))
    for gate in ("forget", "update"):
        if gate in stats:
            out[f"mean_{gate}_gate"] = float(jnp.mean(stats[gate]))
    jn = dg.jacobian_norms(
        cell, params, xs_host[: args.jac_batch, : args.T_jac], num_iters=args.iters, key=kj
    )
    out["jacobian_norm"] = geomean(jn, axis=1)
    out["jacobian_decay_factor"] = dg.decay_factor(out["jacobian_norm"], floor=1e-300)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: sizes, seeds, horizons, cells; ``--quick`` shrinks them.

    Raises:
      cli.UsageError: an option is invalid or contradicts another (``--T-jac`` > ``--T``,
        ``--jac-batch`` > ``--batch``).
    """
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--hidden", type=cli.positive_int, default=64, help="hidden size H of every cell"
    )
    p.add_argument("--input-size", type=cli.positive_int, default=16, help="input features")
    p.add_argument("--T", type=cli.positive_int, default=500, help="sequence length")
    p.add_argument("--seeds", type=cli.positive_int, default=5, help="number of seeds")
    p.add_argument("--batch", type=cli.positive_int, default=16, help="sequences per seed")
    p.add_argument(
        "--T-jac", type=cli.positive_int, default=100, help="horizon of the Jacobian norms"
    )
    p.add_argument(
        "--jac-batch", type=cli.positive_int, default=2, help="sequences for the Jacobian norms"
    )
    p.add_argument("--iters", type=cli.positive_int, default=30, help="power iterations")
    p.add_argument("--ratio", type=cli.positive_float, default=1e-6, help="the vanishing threshold")
    cli.add_cells_option(p, default=DEFAULT_CELLS)
    args = p.honour_quick(p.parse_args(argv), hidden=16, T=60, seeds=2, batch=4, T_jac=20, iters=10)
    if "T_jac" not in p.given:  # the default horizon shrinks with a short --T
        args.T_jac = min(args.T_jac, args.T)
    p.refuse(args.T_jac > args.T, f"--T-jac {args.T_jac} must be <= --T {args.T}")
    p.refuse(
        args.jac_batch > args.batch, f"--jac-batch {args.jac_batch} must be <= --batch {args.batch}"
    )
    return args


def summarize_cell(runs: list[dict], seconds: float) -> dict:
    """One cell's seeds combined: relative gradient-norm curves ``(T + 1,)`` (geometric
    mean, min, max), decay factors, vanishing distances, Jacobian norms, gate means."""
    import numpy as np

    curves = np.stack([r["grad_norm"] / r["grad_norm"][-1] for r in runs])
    factors = np.array([r["decay_factor"] for r in runs])
    summary = {
        "relative_grad_norm_geomean": geomean(curves),
        "relative_grad_norm_min": curves.min(0),
        "relative_grad_norm_max": curves.max(0),
        "decay_factor_mean": float(factors.mean()),
        "decay_factor_std": float(factors.std()),
        "decay_factor_per_seed": factors,
        "vanish_distance_per_seed": [r["vanish_distance"] for r in runs],
        "jacobian_norm_geomean": geomean(np.stack([r["jacobian_norm"] for r in runs])),
        "jacobian_decay_factor_mean": float(np.mean([r["jacobian_decay_factor"] for r in runs])),
        "saturated_fraction": float(np.mean([r["saturated"] for r in runs])),
        "seconds": seconds,
        "relative_grad_norm_0_mean": float(curves[:, 0].mean()),
    }
    for key in ("mean_forget_gate", "mean_update_gate"):
        if key in runs[0]:
            summary[key] = float(np.mean([r[key] for r in runs]))
    for part in runs[0]["state_parts"]:  # states with several fields (LSTM: h, c)
        c = (
            np.stack([r["state_parts"][part] for r in runs])
            / np.stack([r["grad_norm"][-1] for r in runs])[:, None]
        )
        summary[f"relative_grad_norm_{part}_geomean"] = geomean(c)
    return summary


def run(args: argparse.Namespace) -> dict:
    """Measure every cell over ``args.seeds`` seeds.

    Returns:
      ``{"config": the options, "cells": {label: summarize_cell(...)}}`` (arrays as numpy).
    """
    from gatedrnn.cells import make_cell

    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "cells": {}}
    results["config"]["out"] = str(args.out)
    cells = {cli.label(n, LABELS): make_cell(n, args.hidden) for n in args.cells}
    for label, cell in cells.items():
        runs, secs = timed(
            lambda cell=cell: [measure(cell, args, args.seed + s) for s in range(args.seeds)]
        )
        results["cells"][label] = summarize_cell(runs, secs)
    return results


def cell_table(results: dict) -> str:
    """The table of :func:`run`'s results: one row per cell."""
    import numpy as np

    cfg = results["config"]
    rows = []
    for label, s in results["cells"].items():
        dists = s["vanish_distance_per_seed"]
        never = sum(d is None for d in dists)
        found = [d for d in dists if d is not None]
        dist_txt = (
            f"{np.mean(found):.0f} (min {min(found)}, max {max(found)})" if found else ""
        ) + (f"{'; ' if found else ''}> {cfg['T']} in {never}/{len(dists)} seeds" if never else "")
        gate = s.get("mean_forget_gate", s.get("mean_update_gate"))
        first = s["relative_grad_norm_0_mean"]
        rows.append(
            [
                label,
                f"{s['decay_factor_mean']:.4f} ± {s['decay_factor_std']:.4f}",
                dist_txt,
                f"{first:.1e}" if s["relative_grad_norm_min"][0] > 0 else "0 (underflow)",
                f"{s['jacobian_decay_factor_mean']:.4f}",
                "-" if gate is None else f"{gate:.3f}",
                f"{s['seconds']:.1f}",
            ]
        )
    header = [
        "cell",
        "decay factor / step",
        f"distance to {cfg['ratio']:g}",
        f"norm ratio g_0 / g_{cfg['T']}",
        f"Jacobian decay (T={cfg['T_jac']})",
        "mean forget/update gate",
        "seconds",
    ]
    return table(rows, header)


def summarize(results: dict) -> str:
    """The printed summary: a heading with the run's sizes, then :func:`cell_table`."""
    cfg = results["config"]
    return (
        f"\nGradient decay at init: H={cfg['hidden']}, T={cfg['T']}, {cfg['seeds']} seeds x "
        f"{cfg['batch']} sequences, float64\n\n{cell_table(results)}"
    )


def plot(results: dict) -> Any:
    """Left: relative gradient norm vs distance per cell (band: min-max over seeds; the
    LSTM's c alone dotted). Right: spectral norm of the state Jacobian vs distance."""
    import numpy as np

    cfg = results["config"]
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    dist = np.arange(cfg["T"], -1, -1)
    for k, (label, s) in enumerate(results["cells"].items()):
        color = COLORS[k % len(COLORS)]
        ax.semilogy(dist, s["relative_grad_norm_geomean"], color=color, label=label)
        ax.fill_between(
            dist,
            np.maximum(s["relative_grad_norm_min"], 1e-300),
            np.maximum(s["relative_grad_norm_max"], 1e-300),
            color=color,
            alpha=0.2,
            lw=0,
        )
        if "relative_grad_norm_c_geomean" in s:  # dL/dc_T is 0: the loss reads h_T
            ax.semilogy(
                dist[:-1],
                s["relative_grad_norm_c_geomean"][:-1],
                color=color,
                ls=":",
                lw=1,
                label=f"{label}: c only",
            )
        bx.semilogy(
            np.arange(cfg["T_jac"], -1, -1), s["jacobian_norm_geomean"], color=color, label=label
        )
    ax.axhline(cfg["ratio"], color="k", lw=0.8, ls="--", label=f"{cfg['ratio']:g}")
    ax.set(
        xlabel="distance T - t (steps back from the loss)",
        ylabel="||dL/ds_t|| / ||dL/ds_T||",
        title=f"Gradient norm at init (H={cfg['hidden']}, {cfg['seeds']} seeds; band: min-max)",
    )
    lowest = min(float(np.min(s["relative_grad_norm_geomean"])) for s in results["cells"].values())
    ax.set_ylim(max(1e-300, lowest / 10), 10)
    ax.legend(fontsize=8)
    bx.set(
        xlabel="distance T - t",
        ylabel="||ds_T/ds_t||_2 (power iteration)",
        title="Spectral norm of the state Jacobian",
    )
    bx.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> dict:
    """Parse, measure, print the table, write ``gradient_decay.{json,png}``; return the
    results."""
    args = parse_args(argv)
    results = run(args)
    results["table"] = cell_table(results)
    print(summarize(results))
    write_results(args.out, "gradient_decay", results, plot(results))
    return results


if __name__ == "__main__":
    cli.run(main)
