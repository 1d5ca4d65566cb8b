"""A small Flax model on gatedrnn, trained with optax: a template to copy.

Embedding -> ``gatedrnn.linen.RNN`` (LSTM, the fast ``gr.scan`` path, with ``seq_lengths``)
-> Dense, trained many-to-one on variable-length sequences. Tasks:

* ``parity`` (default): bits of length 1..max_len; the label is the parity of the number of
  ones (XOR of all bits). Flipping any bit flips the label, so a linear read-out of the
  token counts is at chance; the LSTM must carry one bit of state across the sequence.
* ``sign``: tokens in {-2, -1, 1, 2}; the label is whether their sum is positive (a zero
  sum takes the sign of the last token).

Usage::

    python -m experiments.flax_model            # ~1-2 min on a laptop CPU
    python -m experiments.flax_model --quick    # a few seconds (used by the tests)

Writes a JSON with the test accuracy, chance level, accuracy by sequence length and the loss
curve to ``--out`` (default ``experiments/results/flax_model.json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gatedrnn.linen as grl
from experiments import cli
from gatedrnn import training

PAD = 0  # token 0 is padding; data tokens start at 1


class Classifier(nn.Module):
    """Embedding -> gatedrnn LSTM layer(s) -> Dense on the final state (many-to-one).

    Attributes:
      vocab_size: number of token ids (including the padding id 0).
      hidden_size: LSTM hidden size ``H``.
      num_layers: stacked LSTM layers.
      num_classes: output classes.
      embed_dim: embedding size.
    """

    vocab_size: int
    hidden_size: int = 32
    num_layers: int = 1
    num_classes: int = 2
    embed_dim: int = 16

    @nn.compact
    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        """``tokens (B, T)`` ints, ``lengths (B,)`` -> logits ``(B, num_classes)``."""
        x = nn.Embed(self.vocab_size, self.embed_dim)(tokens)
        states, _ = grl.RNN("lstm", self.hidden_size, num_layers=self.num_layers)(
            x, seq_lengths=lengths
        )
        # the last layer's hidden state after each sequence's last valid step
        return nn.Dense(self.num_classes)(states[-1].h)


def make_batch(key: jax.Array, task: str, batch: int, max_len: int) -> tuple[jax.Array, ...]:
    """A random batch: ``tokens (batch, max_len)``, ``lengths (batch,)``, ``labels (batch,)``.

    Lengths are uniform in ``[1, max_len]``; steps past a length hold the padding id 0.
    """
    k_len, k_tok = jax.random.split(key)
    lengths = jax.random.randint(k_len, (batch,), 1, max_len + 1)
    valid = jnp.arange(max_len)[None, :] < lengths[:, None]
    if task == "parity":
        bits = jax.random.bernoulli(k_tok, 0.5, (batch, max_len)).astype(jnp.int32)
        labels = jnp.sum(bits * valid, axis=1) % 2
        tokens = jnp.where(valid, bits + 1, PAD)  # ids 1, 2
    elif task == "sign":
        values = jnp.array([-2, -1, 1, 2])
        idx = jax.random.randint(k_tok, (batch, max_len), 0, 4)
        total = jnp.sum(values[idx] * valid, axis=1)
        last = values[jnp.take_along_axis(idx, lengths[:, None] - 1, axis=1)[:, 0]]
        labels = jnp.where(total == 0, last > 0, total > 0).astype(jnp.int32)
        tokens = jnp.where(valid, idx + 1, PAD)  # ids 1..4
    else:
        raise ValueError(f"unknown task {task!r}; expected 'parity' or 'sign'")
    return tokens, lengths, labels


VOCAB = {"parity": 3, "sign": 5}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (the one training loop, clipped Adam) and evaluate; returns the results."""
    key = jax.random.key(args.seed)
    k_init, k_test, k_train = jax.random.split(key, 3)
    model = Classifier(VOCAB[args.task], args.hidden, num_layers=args.layers)
    tokens, lengths, _ = make_batch(k_init, args.task, 2, args.max_len)
    params = jax.jit(model.init)(k_init, tokens, lengths)
    tx = training.make_optimizer(args.learning_rate, clip_norm=1.0)

    def loss_fn(params, batch):
        tokens, lengths, labels = batch
        logits = model.apply(params, tokens, lengths)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, {"acc": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def batch_fn(rng, step):
        return make_batch(jax.random.fold_in(rng, step), args.task, args.batch_size, args.max_len)

    res = training.train(
        loss_fn,
        training.init_state(params, tx, jax.random.key_data(k_train)),
        tx,
        batch_fn,
        num_steps=args.steps,
        eval_every=args.log_every,
        progress=False,
    )
    params = res.state.params
    curve = [
        {"step": h["step"], "loss": h["train_loss"], "train_acc": h["train_acc"]}
        for h in res.history
    ]
    for c in curve:
        print(f"step {c['step']:5d}  loss {c['loss']:.4f}  batch acc {c['train_acc']:.3f}")
    train_seconds = res.history[-1]["time"]
    test = make_batch(k_test, args.task, args.test_size, args.max_len)
    predict = jax.jit(lambda p, t, n: jnp.argmax(model.apply(p, t, n), -1))

    pred = np.asarray(predict(params, test[0], test[1]))
    lengths_np, labels_np = np.asarray(test[1]), np.asarray(test[2])
    correct = pred == labels_np
    majority = max(labels_np.mean(), 1 - labels_np.mean())
    by_length = {
        int(n): float(correct[lengths_np == n].mean())
        for n in np.unique(lengths_np)
        if (lengths_np == n).any()
    }
    results = {
        "script": "experiments/flax_model.py",
        "command": cli.command_line("experiments.flax_model", args.argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "argv")},
        "test_accuracy": float(correct.mean()),
        "chance_accuracy": 0.5,
        "majority_class_accuracy": float(majority),
        "test_size": int(args.test_size),
        "accuracy_by_length": by_length,
        "train_seconds": round(train_seconds, 2),
        "curve": curve,
        # ln 2: the loss of always answering one half; a finite divergence ends far above it
        "diverged": training.diverged_finitely(
            curve[-1]["loss"], float(np.log(2)), float(np.asarray(res.per_step["loss"])[0])
        ),
        "jax_version": jax.__version__,
    }
    if results["diverged"]:
        print("warning: the run diverged (final loss far above ln 2 and the first loss)")
    print(
        f"test accuracy {results['test_accuracy']:.4f} (chance 0.5, majority class "
        f"{majority:.4f}) on {args.test_size} sequences of length 1..{args.max_len}"
    )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` shrinks everything for a smoke test)."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=sorted(VOCAB), default="parity")
    p.add_argument("--quick", action="store_true", help="tiny run (seconds) for tests")
    p.add_argument("--seed", type=cli.seed, default=0)
    p.add_argument("--out", type=cli.output_file, default=cli.RESULTS / "flax_model.json")
    p.add_argument("--steps", type=cli.positive_int, default=2000)
    p.add_argument("--batch-size", type=cli.positive_int, default=64)
    p.add_argument("--hidden", type=cli.positive_int, default=32)
    p.add_argument("--layers", type=cli.positive_int, default=1)
    p.add_argument("--max-len", type=cli.positive_int, default=24)
    p.add_argument("--learning-rate", "--lr", type=cli.positive_float, default=3e-3)
    p.add_argument("--test-size", type=cli.positive_int, default=4000)
    p.add_argument("--log-every", type=cli.positive_int, default=250)
    args = p.honour_quick(
        p.parse_args(argv), steps=20, test_size=128, log_every=10, hidden=8, max_len=5
    )
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run and write the JSON; returns the results."""
    args = parse_args(argv)
    results = run(args)
    cli.write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    cli.run(main)
