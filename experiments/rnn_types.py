"""The four kinds of RNN task, each a small Flax model trained here and scored against chance.

* **one-to-many** (``times_table``): from one digit ``d``, write the last digits of
  ``d x 1, d x 2, ..., d x L``; the digit sets the initial state, and the model feeds its own
  previous output back in (greedy generation at test time).
* **many-to-one** (``sum_sign``): read ``T`` numbers in ``[-1, 1]`` (sequences of random
  length, via ``seq_lengths``) and say whether their sum is positive.
* **many-to-many, aligned** (``running_mod3``): read digits in ``{0, 1, 2}`` and tag each
  step with the running sum so far modulo 3.
* **many-to-many, encoder-decoder** (``reverse``): read ``L`` digits, then write them in
  reverse order (encoder state -> decoder initial state; greedy decoding at test time).

The models are Flax Linen modules built on :class:`gatedrnn.linen.RNN` (which creates the
cell's params with ``cell.init`` and runs them with ``gr.stack``/``gr.scan``); no cell math
is written here. Accuracy is measured on 2000 fresh examples; chance is the accuracy of always
answering the most frequent label (1/10 for a digit, 1/2 for the sign, 1/3 mod 3).
``rnn_types.png`` shows one held-out example per task: its input, and the model's output
beside the target.

    python -m experiments.rnn_types            # all four, full size (a few minutes)
    python -m experiments.rnn_types --quick    # small versions (the tests run these)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from experiments.cli import table
from gatedrnn import training
from gatedrnn.linen import RNN

RESULTS = Path(__file__).resolve().parent / "results"
DIGITS = 10
START = DIGITS  # the start token fed to decoders before their first output


class OneToMany(nn.Module):
    """A class sets the GRU's initial state; the GRU writes a sequence, reading its own
    previous token."""

    hidden: int = 64
    length: int = 6

    def setup(self) -> None:
        self.cls_embed = nn.Embed(DIGITS, self.hidden)
        self.tok_embed = nn.Embed(DIGITS + 1, 16)
        self.rnn = RNN("gru", self.hidden)
        self.out = nn.Dense(DIGITS)

    def __call__(self, cls: jax.Array, prev: jax.Array) -> jax.Array:
        """Teacher forcing: ``cls (B,)``, ``prev (B, L)`` = start, y_0..y_{L-2} -> logits."""
        _, hs = self.rnn(self.tok_embed(prev), (jnp.tanh(self.cls_embed(cls)),))
        return self.out(hs)

    def generate(self, cls: jax.Array) -> jax.Array:
        """Greedy generation: ``cls (B,) -> (B, L)`` tokens."""
        state = (jnp.tanh(self.cls_embed(cls)),)  # one GRU layer: a tuple of one state
        tok = jnp.full(cls.shape, START)
        out = []
        for _ in range(self.length):
            state, h = self.rnn(self.tok_embed(tok)[:, None], state)
            tok = jnp.argmax(self.out(h[:, 0]), -1)
            out.append(tok)
        return jnp.stack(out, 1)


class ManyToOne(nn.Module):
    """An LSTM reads the whole (variable-length) sequence; its final ``h`` is classified."""

    hidden: int = 32

    @nn.compact
    def __call__(self, xs: jax.Array, lengths: jax.Array) -> jax.Array:
        (state,), _ = RNN("lstm", self.hidden)(xs, seq_lengths=lengths)
        return nn.Dense(2)(state.h)


class Aligned(nn.Module):
    """A GRU reads tokens and a readout tags every step."""

    hidden: int = 32
    classes: int = 3
    embed: int = 8

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        _, hs = RNN("gru", self.hidden)(nn.Embed(self.classes, self.embed)(tokens))
        return nn.Dense(self.classes)(hs)


class EncoderDecoder(nn.Module):
    """A GRU encoder's final state starts a GRU decoder that writes the output sequence."""

    hidden: int = 128
    length: int = 5
    embed_size: int = 32

    def setup(self) -> None:
        self.embed = nn.Embed(DIGITS + 1, self.embed_size)
        self.encoder = RNN("gru", self.hidden)
        self.decoder = RNN("gru", self.hidden)
        self.out = nn.Dense(DIGITS)

    def __call__(self, src: jax.Array, prev: jax.Array) -> jax.Array:
        """Teacher forcing: ``src (B, L)``, ``prev (B, L)`` = start, y_0..y_{L-2} -> logits."""
        state, _ = self.encoder(self.embed(src))
        _, hs = self.decoder(self.embed(prev), state)
        return self.out(hs)

    def generate(self, src: jax.Array) -> jax.Array:
        """Greedy decoding: ``src (B, L) -> (B, L)`` tokens."""
        state, _ = self.encoder(self.embed(src))
        tok = jnp.full(src.shape[:1], START)
        out = []
        for _ in range(self.length):
            state, h = self.decoder(self.embed(tok)[:, None], state)
            tok = jnp.argmax(self.out(h[:, 0]), -1)
            out.append(tok)
        return jnp.stack(out, 1)


# ----------------------------------------------------------------------------- tasks


def _teacher(y: jax.Array) -> jax.Array:
    """Decoder inputs for targets ``y (B, L)``: the start token, then ``y`` shifted right."""
    return jnp.concatenate([jnp.full((y.shape[0], 1), START, y.dtype), y[:, :-1]], 1)


@dataclass
class Task:
    """A task: its kind, a batch maker, a model, and how to score it.

    ``batch(rng, n) -> (inputs tuple, targets)``; ``model.apply(v, *inputs)`` gives the
    training logits; ``predict(model, v, inputs) -> predicted targets``.
    """

    name: str
    kind: str
    description: str
    model: nn.Module
    batch: Callable[[jax.Array, int], tuple[tuple, jax.Array]]  # (key, n), jit-able
    predict: Callable[[nn.Module, Any, tuple], jax.Array]
    chance: float
    steps: int
    learning_rate: float
    target: float  # accuracy the run is expected to reach (the tests check it in --quick)


def make_tasks(quick: bool) -> list[Task]:
    """The four tasks, small in ``quick`` form."""
    L_gen = 5 if quick else 8
    T_sum = 12 if quick else 30
    T_tag = 10 if quick else 20
    L_rev = 4 if quick else 6

    def times_table(key, n):
        d = jax.random.randint(key, (n,), 0, DIGITS)
        y = (d[:, None] * jnp.arange(1, L_gen + 1)[None]) % DIGITS
        return (d, _teacher(y)), y

    def sum_sign(key, n):
        kx, kl = jax.random.split(key)
        x = jax.random.uniform(kx, (n, T_sum, 1), jnp.float32, -1.0, 1.0)
        lengths = jax.random.randint(kl, (n,), 2, T_sum + 1)
        valid = jnp.arange(T_sum)[None] < lengths[:, None]
        x = jnp.where(valid[..., None], x, 0.0)
        return (x, lengths), (x.sum((1, 2)) > 0).astype(jnp.int32)

    def running_mod3(key, n):
        x = jax.random.randint(key, (n, T_tag), 0, 3)
        return (x,), jnp.cumsum(x, 1) % 3

    def reverse(key, n):
        x = jax.random.randint(key, (n, L_rev), 0, DIGITS)
        y = x[:, ::-1]
        return (x, _teacher(y)), y

    return [
        Task(
            "times_table",
            "one-to-many",
            f"digit d -> last digits of d*1 .. d*{L_gen} (greedy generation)",
            OneToMany(hidden=32 if quick else 64, length=L_gen),
            times_table,
            lambda m, v, inp: m.apply(v, inp[0], method=m.generate),
            0.1,
            60 if quick else 600,
            1e-2,
            0.95,
        ),
        Task(
            "sum_sign",
            "many-to-one",
            f"{T_sum} numbers in [-1, 1] (random length 2..{T_sum}) -> is the sum > 0",
            ManyToOne(hidden=16 if quick else 32),
            sum_sign,
            lambda m, v, inp: jnp.argmax(m.apply(v, *inp), -1),
            0.5,
            120 if quick else 1500,
            1e-2,
            0.9,
        ),
        Task(
            "running_mod3",
            "many-to-many (aligned)",
            f"{T_tag} digits in {{0,1,2}} -> tag each step with the running sum mod 3",
            Aligned(hidden=32 if quick else 64, embed=16 if quick else 8),
            running_mod3,
            lambda m, v, inp: jnp.argmax(m.apply(v, *inp), -1),
            1 / 3,
            150 if quick else 1500,
            1e-2,
            0.9,
        ),
        Task(
            "reverse",
            "many-to-many (encoder-decoder)",
            f"{L_rev} digits -> the same digits reversed (greedy decoding)",
            EncoderDecoder(
                hidden=32 if quick else 128, length=L_rev, embed_size=16 if quick else 32
            ),
            reverse,
            lambda m, v, inp: m.apply(v, inp[0], method=m.generate),
            0.1,
            250 if quick else 2500,
            5e-3,
            0.8 if quick else 0.95,
        ),
    ]


def run_task(task: Task, seed: int, batch_size: int = 64) -> dict[str, Any]:
    """Train ``task``'s model with clipped Adam on fresh batches (the one training loop);
    return accuracy vs chance on 2000 held-out examples."""
    key = jax.random.PRNGKey(seed)
    # init reads only the inputs' shapes and dtypes: zeros of them give the params a batch
    # gives, without running (and compiling, one program per operation) the batch maker
    shapes = jax.eval_shape(lambda k: task.batch(k, batch_size)[0], key)
    variables = task.model.init(
        jax.random.fold_in(key, 1), *(np.zeros(s.shape, s.dtype) for s in shapes)
    )
    opt = training.make_optimizer(task.learning_rate, clip_norm=1.0)

    def loss_fn(v: Any, batch: tuple) -> tuple[jax.Array, dict]:
        inputs, y = batch
        logits = task.model.apply(v, *inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), {}

    def batch_fn(rng: jax.Array, step: jax.Array) -> tuple:
        return task.batch(jax.random.fold_in(rng, step), batch_size)

    # zeros and an integer key: the one program gives the eager operations' exact values
    state = jax.jit(lambda v: training.init_state(v, opt, seed + 1))(variables)
    res = training.train(
        loss_fn,
        state,
        opt,
        batch_fn,
        num_steps=task.steps,
        eval_every=task.steps,
        progress=False,
    )
    variables = res.state.params
    inputs, y = task.batch(jax.random.PRNGKey(10_000 + seed), 2000)
    pred = np.asarray(jax.jit(lambda v, inp: task.predict(task.model, v, inp))(variables, inputs))
    correct = pred == np.asarray(y)
    out = {
        "task": task.name,
        "kind": task.kind,
        "description": task.description,
        "accuracy": float(correct.mean()),
        "chance": task.chance,
        "target": task.target,
        "steps": task.steps,
        "train_time_s": res.history[-1]["time"],
        "final_loss": float(np.mean(res.per_step["loss"][-20:])),
    }
    # -ln(chance): the loss of guessing uniformly, where a model that learned nothing sits
    out["diverged"] = training.diverged_finitely(
        out["final_loss"], -float(np.log(task.chance)), float(res.per_step["loss"][0])
    )
    if correct.ndim == 2:  # sequence outputs: also whole-sequence accuracy
        out["sequence_accuracy"] = float(correct.all(1).mean())
    out["example"] = example(task, inputs, pred, np.asarray(y))
    return out


def example(task: Task, inputs: tuple, pred: np.ndarray, y: np.ndarray, i: int = 0) -> dict:
    """Held-out example ``i``: its input, the model's output and the target, as lists.

    ``input`` is the digit (one-to-many), the ``length`` valid numbers (many-to-one) or the
    token sequence (the others); ``output`` and ``target`` are a label or a sequence.
    """
    x = np.asarray(inputs[0][i])
    if task.kind == "many-to-one":
        x = x[: int(inputs[1][i]), 0]
    return {"input": x.tolist(), "output": pred[i].tolist(), "target": y[i].tolist()}


def plot_examples(rows: list[dict[str, Any]]) -> Any:
    """One panel per task: the example's input, and the model's output beside the target."""
    plt = cli.pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 2.3 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        ex = r["example"]
        x, out, tgt = ex["input"], np.atleast_1d(ex["output"]), np.atleast_1d(ex["target"])
        kind = r["kind"]
        if kind == "one-to-many":  # one digit in, a sequence out
            t_in, t_out = np.array([0]), np.arange(1, len(out) + 1)
            ax.bar(t_in, [x], color="0.75", label="input")
        elif kind == "many-to-one":  # a sequence in, one label out after it
            t_in, t_out = np.arange(len(x)), np.array([len(x) + 1])
            ax.bar(t_in, x, color="0.75", label="input")
            ax.plot(t_in, np.cumsum(x), color="0.4", lw=1, label="running sum")
        elif kind.endswith("(aligned)"):  # one label per input step
            t_in = t_out = np.arange(len(x))
            ax.bar(t_in, x, color="0.75", label="input")
        else:  # encoder-decoder: the whole input, then the whole output
            t_in, t_out = np.arange(len(x)), np.arange(len(x), len(x) + len(out))
            ax.bar(t_in, x, color="0.75", label="input")
        ax.plot(t_out, tgt, "o", ms=10, mfc="none", mec="tab:green", mew=1.5, label="target")
        ax.plot(t_out, out, "x", ms=8, color="tab:red", mew=1.5, label="model output")
        if kind != "one-to-many" and not kind.endswith("(aligned)"):
            ax.axvline(t_out[0] - 0.5, color="k", lw=0.6, ls=":")
        right = int((np.atleast_1d(out) == np.atleast_1d(tgt)).sum())
        ax.set_title(
            f"{kind}: {r['task']} (this example {right}/{len(tgt)} right; "
            f"accuracy {r['accuracy']:.3f}, chance {r['chance']:.3f})",
            fontsize=9,
        )
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.0) - 0.6, hi + 0.6)  # markers at 0 and at the top stay whole
        ax.set_xlabel("step" if kind != "many-to-one" else "step (output 1: the sum is > 0)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--quick``, ``--seed``, ``--out``, ``--tasks``."""
    p = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small versions (seconds each)")
    p.add_argument("--seed", type=cli.seed, default=0, help="random seed (default 0)")
    p.add_argument(
        "--out", type=cli.output_dir, default=RESULTS, help=f"output directory (default {RESULTS})"
    )
    names = [t.name for t in make_tasks(quick=True)]
    p.add_argument("--tasks", nargs="+", default=None, choices=names, help="only these tasks")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every task of ``--tasks`` (:func:`run_task`); the rows and their table."""
    tasks = [t for t in make_tasks(args.quick) if args.tasks is None or t.name in args.tasks]
    rows = []
    for task in tasks:
        r = run_task(task, args.seed)
        rows.append(r)
        print(
            f"{r['kind']:32s} {r['task']:13s} accuracy {r['accuracy']:.3f} "
            f"(chance {r['chance']:.3f}), {r['steps']} steps, {r['train_time_s']:.1f}s",
            flush=True,
        )
    md = table(
        [
            [r["kind"], f"{r['task']}: {r['description']}", f"{r['accuracy']:.3f}",
             f"{r['chance']:.3f}", _fmt(r.get("sequence_accuracy")), r["steps"]]
            for r in rows
        ],
        ["kind", "task", "accuracy", "chance", "whole-sequence accuracy", "steps"],
    )  # fmt: skip
    result = {"quick": args.quick, "seed": args.seed, "results": rows, "table_md": md}
    result["diverged_runs"] = [r["task"] for r in rows if r["diverged"]]
    return result


def summarize(result: dict[str, Any]) -> str:
    """The table, after a warning line per diverged task."""
    warnings = [
        f"warning: {name} diverged (final loss far above -ln(chance) and the first loss)\n"
        for name in result["diverged_runs"]
    ]
    return "".join(warnings) + result["table_md"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the tasks; write ``rnn_types.json`` (with a markdown table) and ``rnn_types.png``
    (one held-out example per task: input, output, target); ``rnn_types_quick.*`` with
    ``--quick``."""
    args = parse_args(argv)
    result = run(args)
    print(summarize(result))
    name = "rnn_types_quick" if args.quick else "rnn_types"
    cli.write_results(Path(args.out), name, result, plot_examples(result["results"]))
    return result


def cli_main(argv: list[str] | None = None) -> int:
    """``main`` for the command line: exit status 0 (errors are reported by ``cli.run``)."""
    main(argv)
    return 0


if __name__ == "__main__":
    cli.run(cli_main)
