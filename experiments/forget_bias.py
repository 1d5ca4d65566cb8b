"""Forget-gate bias: how the LSTM's gradient decay at init depends on the forget bias b_f.

The LSTM cell path gives dc_T/dc_t = prod diag(f) when the recurrent weight is ignored, so
the gradient should shrink by about the forget gate's value per step, which at init is
near sigmoid(b_f). For b_f in 0, 1, 2, 3 (and several seeds) this script measures the
fitted per-step decay factor of ||dL/ds_t|| (whole state and c alone), the distance at
which it falls below 1e-6, and the mean forget gate, against sigmoid(b_f).

Writes experiments/results/forget_bias.{json,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: forget biases, sizes, seeds; ``--quick`` shrinks them."""
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--biases", type=cli.finite_float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    p.add_argument("--hidden", type=cli.positive_int, default=64)
    p.add_argument("--input-size", type=cli.positive_int, default=16)
    p.add_argument("--T", type=cli.positive_int, default=500)
    p.add_argument("--seeds", type=cli.positive_int, default=5)
    p.add_argument("--batch", type=cli.positive_int, default=16)
    p.add_argument("--ratio", type=cli.positive_float, default=1e-6)
    return p.honour_quick(p.parse_args(argv), hidden=16, T=60, seeds=2, batch=4, biases=[0.0, 3.0])


@cli.in_float64
def measure(cell, args: argparse.Namespace) -> list[dict]:
    """Every seed of one LSTM: the relative gradient norm ``(T + 1,)``, the decay factor of
    the whole state and of ``c`` alone, the vanishing distance, the mean forget gate."""
    import jax
    import jax.numpy as jnp

    from gatedrnn import diagnostics as dg

    out = []
    for s in range(args.seeds):
        kp, kx = jax.random.split(jax.random.PRNGKey(args.seed + s))
        params = cell.init(kp, args.input_size, dtype=jnp.float64)
        xs = jax.random.normal(kx, (args.batch, args.T, args.input_size), jnp.float64)
        decay = dg.decay_profile(cell, params, xs, ratio=args.ratio, floor=1e-300)
        c = decay["norms"].c
        stats = dg.gate_statistics(cell, params, xs)
        out.append(
            {
                "relative": decay["relative"],
                "factor": decay["decay_factor"],
                "factor_c": dg.decay_factor(c[:-1], floor=1e-300),
                "distance": decay["vanish_distance"],
                "mean_f": float(jnp.mean(stats["forget"])),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict:
    """Measure the LSTM at init for every forget bias.

    Returns:
      ``{"config": the options, "biases": {str(b_f): summary}}``; a summary holds the
      seeds' decay factors (mean, std; ``c`` alone), the mean forget gate, sigmoid(b_f),
      the vanishing distances and the relative gradient norm ``(T + 1,)`` (geometric mean).
    """
    import numpy as np

    import gatedrnn as gr

    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "biases": {},
    }
    for b in args.biases:
        runs, secs = timed(measure, gr.lstm(args.hidden, forget_bias=b), args)
        factors = np.array([r["factor"] for r in runs])
        results["biases"][str(b)] = {
            "forget_bias": b,
            "sigmoid_bias": float(1 / (1 + np.exp(-b))),
            "decay_factor_mean": float(factors.mean()),
            "decay_factor_std": float(factors.std()),
            "decay_factor_c_mean": float(np.mean([r["factor_c"] for r in runs])),
            "mean_forget_gate": float(np.mean([r["mean_f"] for r in runs])),
            "vanish_distance_per_seed": [r["distance"] for r in runs],
            "relative_grad_norm_geomean": geomean([r["relative"] for r in runs]),
            "seconds": secs,
        }
    return results


def bias_table(results: dict) -> str:
    """The table of :func:`run`'s results: one row per forget bias."""
    import numpy as np

    T = results["config"]["T"]
    rows = []
    for s in results["biases"].values():
        dists = s["vanish_distance_per_seed"]
        found = [d for d in dists if d is not None]
        rows.append(
            [
                f"{s['forget_bias']:g}",
                f"{s['sigmoid_bias']:.4f}",
                f"{s['mean_forget_gate']:.4f}",
                f"{s['decay_factor_mean']:.4f} ± {s['decay_factor_std']:.4f}",
                f"{s['decay_factor_c_mean']:.4f}",
                f"{np.mean(found):.0f}"
                + (f" ({len(dists) - len(found)} seeds > {T})" if len(found) < len(dists) else "")
                if found
                else f"> {T} (all {len(dists)} seeds)",
            ]
        )
    header = [
        "forget bias",
        "sigmoid(b_f)",
        "mean forget gate",
        "decay factor / step",
        "decay factor of c alone",
        f"distance to {results['config']['ratio']:g}",
    ]
    return table(rows, header)


def summarize(results: dict) -> str:
    """The printed summary: a heading with the run's sizes, then :func:`bias_table`."""
    cfg = results["config"]
    return (
        f"\nLSTM gradient decay at init by forget bias: H={cfg['hidden']}, T={cfg['T']}, "
        f"{cfg['seeds']} seeds x {cfg['batch']} sequences, float64\n\n{bias_table(results)}"
    )


def plot(results: dict) -> Any:
    """Left: relative gradient norm vs distance per bias, with sigmoid(b_f)^k dotted.
    Right: fitted decay factors and the mean forget gate vs the bias, with sigmoid(b_f)."""
    import numpy as np

    cfg = results["config"]
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    dist = np.arange(cfg["T"], -1, -1)
    for i, (b, s) in enumerate(results["biases"].items()):
        ax.semilogy(dist, s["relative_grad_norm_geomean"], color=f"C{i}", label=f"b_f = {b}")
        ax.semilogy(dist, s["sigmoid_bias"] ** dist.astype(float), color=f"C{i}", ls=":", lw=0.8)
    ax.axhline(cfg["ratio"], color="k", lw=0.8, ls="--")
    ax.set(
        xlabel="distance T - t",
        ylabel="||dL/ds_t|| / ||dL/ds_T||",
        title="LSTM at init (dotted: sigmoid(b_f)^k)",
    )
    ax.set_ylim(
        bottom=max(
            1e-300,
            min(float(np.min(s["relative_grad_norm_geomean"])) for s in results["biases"].values())
            / 10,
        )
    )
    ax.legend(fontsize=8)
    bs = np.array(cfg["biases"])
    grid = np.linspace(min(bs) - 0.2, max(bs) + 0.2, 100)
    bx.plot(grid, 1 / (1 + np.exp(-grid)), "k:", label="sigmoid(b_f)")
    summ = list(results["biases"].values())
    bx.errorbar(
        bs,
        [s["decay_factor_mean"] for s in summ],
        yerr=[s["decay_factor_std"] for s in summ],
        fmt="o-",
        label="fitted decay factor (whole state)",
    )
    bx.plot(bs, [s["decay_factor_c_mean"] for s in summ], "s--", label="fitted decay factor (c)")
    bx.plot(bs, [s["mean_forget_gate"] for s in summ], "^", label="mean forget gate")
    bx.set(xlabel="forget bias b_f", ylabel="per-step factor", title="decay factor vs forget bias")
    bx.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> dict:
    """Parse, measure, print the table, write ``forget_bias.{json,png}``; return the
    results."""
    args = parse_args(argv)
    results = run(args)
    results["table"] = bias_table(results)
    print(summarize(results))
    write_results(args.out, "forget_bias", results, plot(results))
    return results


if __name__ == "__main__":
    cli.run(main)
