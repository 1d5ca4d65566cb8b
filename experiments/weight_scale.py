"""Vanishing or exploding by the recurrent weight's scale, and gradient clipping.

Part 1: a vanilla RNN with W_h = s * Q (Q orthogonal) for a sweep of s, with linear and
tanh activations, in float32 as people train. For each s it measures ||dL/dh_t|| for every
t (gatedrnn.diagnostics.state_gradient_norms), fits the per-step factor, checks the linear
case against the exact law s^(T-t), and records where the forward state, the loss or the
gradient first becomes Inf/NaN.

Part 2: a vanilla tanh RNN with s = 2 (exploding gradients) trained by SGD on a lag-k
recall task (gatedrnn.training.train, stop-and-report on a non-finite loss), once plainly
and once with optax.clip_by_global_norm: the plain run blows up to NaN (the run stops there
and records the step), the clipped one stays finite and converges.

Writes experiments/results/weight_scale.{json,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments import cli
from experiments.cli import parser, pyplot, table, timed, write_results


def sweep_one(cell, params0, xs, s: float, loss_and_grad) -> dict:
    """Gradient norms and finiteness for W_h = s * Q."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gatedrnn import diagnostics as dg

    params = params0._replace(w_h=jnp.asarray(s, params0.w_h.dtype) * params0.w_h)
    T = xs.shape[1]
    norms = np.asarray(dg.state_gradient_norms(cell, params, xs, loss_fn), np.float64)
    finite = np.isfinite(norms) & (norms > 0)
    rel = norms / norms[-1]
    dist = np.arange(T, -1, -1)
    out = {
        "s": s,
        "grad_norm": norms,
        "decay_factor": dg.decay_factor(norms),
        "grad_nonfinite_from_distance": (
            int(dist[~np.isfinite(norms)].min()) if (~np.isfinite(norms)).any() else None
        ),
        "grad_zero_from_distance": int(dist[norms == 0].min()) if (norms == 0).any() else None,
    }
    # Below ~1e-30 the gradient's entries (norm / sqrt(batch * H)) reach float32's
    # subnormals (< 1.2e-38) and lose precision: those distances are not compared.
    ok = finite & (norms > 1e-30) & (dist > 0)
    if cell.options["activation"] == "linear" and ok.any():
        law = float(s) ** dist.astype(np.float64)
        out["max_rel_error_vs_s_power_k"] = float(np.max(np.abs(rel[ok] / law[ok] - 1)))
    # the finiteness checks on the host (exact; no program to compile per shape)
    states = np.asarray(dg.state_trajectory(cell, params, xs))
    bad = ~np.all(np.isfinite(states), axis=tuple(range(1, states.ndim)))
    out["state_nonfinite_from_step"] = int(np.argmax(bad)) if bool(bad.any()) else None
    loss, g = jax.device_get(loss_and_grad(params, xs))
    out["loss"] = float(loss)
    out["loss_finite"] = bool(np.isfinite(loss))
    out["param_grad_finite"] = bool(
        all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(g))
    )
    return out


def loss_fn(final, ys):
    """L = sum of the final state's units / sqrt(H): a fixed linear readout, so that
    dL/dh_T does not depend on the state and the backward pass shows W_h alone."""
    import jax.numpy as jnp

    return jnp.sum(final) / jnp.sqrt(final.shape[-1])


def train(args, clip: float | None) -> dict:
    """SGD (optionally with global-norm clipping) on the lag-k recall task, on the one
    training loop; a non-finite loss stops the run and is recorded (stop-and-report)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import gatedrnn as gr
    from gatedrnn import training

    cell = gr.vanilla(args.train_hidden)
    k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed + 1000))
    rnn = cell.init(k1, 1)
    params = {
        "rnn": rnn._replace(w_h=args.train_scale * rnn.w_h),
        "w": jax.random.normal(k2, (args.train_hidden,)) / args.train_hidden**0.5,
        "b": jnp.zeros(()),
    }
    T, lag = args.train_T, args.lag

    def batch_fn(rng, step):
        x = jax.random.normal(jax.random.fold_in(rng, step), (args.train_batch, T, 1))
        return x, x[:, T - 1 - lag, 0]

    def loss(p, batch):
        x, y = batch
        final, _ = gr.scan(cell, p["rnn"], x)
        return jnp.mean(jnp.square(final @ p["w"] + p["b"] - y)), {}

    opt = training.make_optimizer(args.learning_rate, clip_norm=clip, optimizer="sgd")
    res = training.train(
        loss,
        training.init_state(params, opt, args.seed),
        opt,
        batch_fn,
        num_steps=args.train_steps,
        eval_every=args.train_steps,
        progress=False,
        on_nonfinite="stop",
    )
    losses = np.asarray(res.per_step["loss"], np.float64)
    gnorms = np.asarray(res.per_step["grad_norm"], np.float64)
    finite = losses[np.isfinite(losses)]
    tail = finite[-max(1, args.train_steps // 10) :]
    final = float(np.mean(tail)) if tail.size else float("nan")
    return {
        "clip_norm": clip,
        "loss": losses,
        "grad_norm": gnorms,
        "first_nonfinite_step": res.diverged_step,
        "initial_loss": float(losses[0]),
        "final_loss": final,
        # a finite divergence counts too: the loss ends far above where it started
        "diverged": res.diverged_step is not None or not final < 1e3 * float(losses[0]),
        "max_grad_norm": float(np.max(gnorms[np.isfinite(gnorms)]))
        if np.isfinite(gnorms).any()
        else float("nan"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: the sweep's scales and sizes, the training run's settings;
    ``--quick`` shrinks them.

    Raises:
      cli.UsageError: an option is invalid, or ``--lag`` >= ``--train-T``.
    """
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--scales",
        type=cli.positive_float,
        nargs="+",
        default=[0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0],
        help="values of s in W_h = s * orthogonal",
    )
    p.add_argument("--hidden", type=cli.positive_int, default=64)
    p.add_argument("--T", type=cli.positive_int, default=300, help="sequence length of the sweep")
    p.add_argument("--batch", type=cli.positive_int, default=16)
    p.add_argument("--train-hidden", type=cli.positive_int, default=32)
    p.add_argument(
        "--train-scale", type=cli.positive_float, default=2.0, help="s of the trained RNN"
    )
    p.add_argument("--train-T", type=cli.positive_int, default=40)
    p.add_argument(
        "--lag", type=cli.positive_int, default=5, help="recall the input this many steps back"
    )
    p.add_argument("--train-batch", type=cli.positive_int, default=32)
    p.add_argument("--train-steps", type=cli.positive_int, default=400)
    p.add_argument(
        "--learning-rate", "--lr", type=cli.positive_float, default=0.3, help="SGD learning rate"
    )
    p.add_argument(
        "--clip-norm",
        "--clip",
        type=cli.positive_float,
        default=1.0,
        help="global-norm clipping threshold",
    )
    args = p.honour_quick(
        p.parse_args(argv),
        scales=[0.9, 1.0, 1.5],
        hidden=16,
        T=80,
        batch=4,
        train_hidden=16,
        train_steps=40,
    )
    p.refuse(
        args.lag >= args.train_T,
        f"--lag {args.lag} must be < --train-T {args.train_T} (the input it recalls)",
    )
    return args


def run(args: argparse.Namespace) -> dict:
    """The scale sweep (linear and tanh) and the two training runs (plain, clipped).

    Returns:
      ``{"config", "linear", "tanh"}`` (one :func:`sweep_one` dict per scale),
      ``"{act}_seconds"``, ``"{act}_first_nonfinite_scale"`` (None: all finite) and
      ``"training": {"plain", "clipped"}`` (:func:`train`).
    """
    import jax
    import jax.numpy as jnp

    import gatedrnn as gr

    kp, kx = jax.random.split(jax.random.PRNGKey(args.seed))
    xs = jax.random.normal(kx, (args.batch, args.T, args.hidden), jnp.float32)
    results: dict = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    }
    for act in ("linear", "tanh"):
        cell = gr.vanilla(args.hidden, activation=act)
        params0 = cell.init(kp, args.hidden)
        loss_and_grad = jax.jit(
            jax.value_and_grad(lambda p, xs, cell=cell: loss_fn(*gr.scan(cell, p, xs)))
        )
        results[act], results[f"{act}_seconds"] = timed(
            lambda cell=cell, params0=params0, loss_and_grad=loss_and_grad: [
                sweep_one(cell, params0, xs, s, loss_and_grad) for s in args.scales
            ]
        )
    for act in ("linear", "tanh"):
        bad = [r["s"] for r in results[act] if not (r["loss_finite"] and r["param_grad_finite"])]
        results[f"{act}_first_nonfinite_scale"] = min(bad) if bad else None
    plain, _ = timed(train, args, None)
    clipped, _ = timed(train, args, args.clip_norm)
    results["training"] = {"plain": plain, "clipped": clipped}
    return results


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def sweep_table(results: dict) -> str:
    """The sweep's table: one row per activation and scale."""
    import numpy as np

    rows = [
        [
            act,
            f"{r['s']:g}",
            f"{r['decay_factor']:.4f}" if np.isfinite(r["decay_factor"]) else "-",
            f"{r['max_rel_error_vs_s_power_k']:.1e}" if "max_rel_error_vs_s_power_k" in r else "-",
            _dash(r["state_nonfinite_from_step"]),
            "yes" if r["loss_finite"] else "NO",
            "yes" if r["param_grad_finite"] else "NO",
            _dash(r["grad_nonfinite_from_distance"]),
            _dash(r["grad_zero_from_distance"]),
        ]
        for act in ("linear", "tanh")
        for r in results[act]
    ]
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
    return table(rows, header)


def training_table(results: dict) -> str:
    """The training runs' table: plain and clipped SGD."""
    runs = results["training"]
    rows = [
        [
            name,
            "-" if r["clip_norm"] is None else f"global norm {r['clip_norm']:g}",
            f"{r['initial_loss']:.3f}",
            f"{r['final_loss']:.3f}",
            _dash(r["first_nonfinite_step"]),
            f"{r['max_grad_norm']:.3g}",
        ]
        for name, r in (("plain SGD", runs["plain"]), ("clipped SGD", runs["clipped"]))
    ]
    header = [
        "run",
        "clipping",
        "initial loss",
        "final loss (last 10%)",
        "NaN/Inf at step",
        "max finite grad norm",
    ]
    return table(rows, header)


def summarize(results: dict) -> str:
    """The printed summary: :func:`sweep_table` and :func:`training_table`, each with a
    heading."""
    cfg = results["config"]
    return (
        f"\nW_h = s * orthogonal, H={cfg['hidden']}, T={cfg['T']}, float32\n\n"
        f"{sweep_table(results)}\n"
        f"\nTraining a tanh RNN with W_h = {cfg['train_scale']:g} * orthogonal on "
        f"lag-{cfg['lag']} recall (T={cfg['train_T']}), SGD lr={cfg['learning_rate']:g}\n\n"
        f"{training_table(results)}"
    )


def plot(results: dict) -> Any:
    """Four panels: relative gradient norm vs distance per scale (linear, with s^k dotted;
    tanh), the fitted per-step factor vs s, and the training losses (plain, clipped)."""
    import numpy as np

    cfg = results["config"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    cmap = plt.get_cmap("coolwarm")
    lo, hi = np.log(min(cfg["scales"])), np.log(max(cfg["scales"]))
    dist = np.arange(cfg["T"], -1, -1)
    for ax, act in zip(axes[:2], ("linear", "tanh")):
        for r in results[act]:
            color = cmap((np.log(r["s"]) - lo) / max(hi - lo, 1e-9))
            norms = np.asarray(r["grad_norm"])
            rel = norms / norms[-1]
            ax.semilogy(
                dist,
                np.where(np.isfinite(rel) & (rel > 0), rel, np.nan),
                color=color,
                label=f"s={r['s']:g}",
            )
            if act == "linear":
                law = r["s"] ** dist.astype(float)
                law[(law > 3e38) | (law < 1e-38)] = np.nan
                ax.semilogy(dist, law, color="k", lw=0.6, ls=":")
        ax.set(
            xlabel="distance T - t",
            ylabel="||dL/dh_t|| / ||dL/dh_T||",
            title=f"{act}: gradient vs distance" + (" (dotted: s^k)" if act == "linear" else ""),
        )
        ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    s_arr = np.array(cfg["scales"])
    for act, marker in (("linear", "o"), ("tanh", "s")):
        ax.loglog(s_arr, [r["decay_factor"] for r in results[act]], marker=marker, label=act)
    ax.loglog(s_arr, s_arr, "k:", lw=0.8, label="s")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set(
        xlabel="s (W_h = s * orthogonal)",
        ylabel="fitted per-step factor",
        title="per-step factor vs s",
    )
    ax.legend(fontsize=8)
    ax = axes[3]
    plain, clipped = results["training"]["plain"], results["training"]["clipped"]
    for name, r, color in (("plain SGD", plain, "C3"), ("clipped SGD", clipped, "C0")):
        ax.plot(np.asarray(r["loss"], float), color=color, label=name)
        if r["first_nonfinite_step"] is not None:
            ax.axvline(
                r["first_nonfinite_step"],
                color=color,
                ls="--",
                lw=0.8,
                label=f"{name}: loss NaN/Inf at step {r['first_nonfinite_step']}",
            )
    ax.set_ylim(0, 2.5 * plain["initial_loss"])
    ax.set(
        xlabel="SGD step",
        ylabel="training loss (MSE)",
        title=f"tanh RNN, s={cfg['train_scale']:g}, SGD lr={cfg['learning_rate']:g}, "
        f"lag-{cfg['lag']} recall",
    )
    ax.legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> dict:
    """Parse, sweep and train, print both tables, write ``weight_scale.{json,png}``;
    return the results."""
    args = parse_args(argv)
    results = run(args)
    results["table"] = sweep_table(results)
    results["training_table"] = training_table(results)
    print(summarize(results))
    write_results(args.out, "weight_scale", results, plot(results))
    return results


if __name__ == "__main__":
    cli.run(main)
