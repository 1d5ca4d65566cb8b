"""Character-level language model: train, sample, and compare vanilla RNN / LSTM / GRU.

Subcommands:

* ``train``: train on the default corpus (the Python standard library's own source,
  :data:`gatedrnn.training.text.STDLIB_MODULES`) or ``--text FILE``; writes checkpoints, a
  learning curve, samples and ``train.json`` to ``--out``. ``--resume`` continues the run in
  ``--out`` exactly where its last checkpoint left it.
* ``sample``: generate text from a checkpoint (priming text, temperature, top-k, seed).
* ``compare``: vanilla / LSTM / GRU at about equal parameter counts, same data and steps;
  a table, a learning-curve PNG and JSON in ``--out``.

Examples::

    python -m experiments.char_lm train                 # the default run (< 15 min, 2 cores)
    python -m experiments.char_lm sample --prime "def " --temperature 0.7
    python -m experiments.char_lm compare
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from experiments.cli import pyplot, table
from gatedrnn import training
from gatedrnn.cells import CELLS
from gatedrnn.training import char_lm as clm
from gatedrnn.training import checkpoint
from gatedrnn.training.text import (
    Vocab,
    bits_per_char,
    chunk_rows,
    load_text,
    num_chunks,
    split_train_val,
    unigram_bpc,
)

# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train a char LM (stateful truncated BPTT on :func:`gatedrnn.training.train`).

    Attributes:
      steps: optimizer steps in all.
      batch_size: ``B`` rows read in parallel.
      seq_len: ``T`` characters per chunk (the truncated-BPTT window).
      learning_rate: peak Adam learning rate (linear warm-up, then cosine decay to 0).
      warmup: warm-up steps.
      clip_norm: global gradient-norm clip.
      val_fraction: trailing share of the text held out for validation.
      eval_every: steps between validation measurements (and learning-curve points).
      eval_chars: validation characters used for those (the final one uses all).
      checkpoint_every: steps between checkpoints (the last step is always saved).
      seed: seeds init and dropout.
    """

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 100
    learning_rate: float = 3e-3
    warmup: int = 100
    clip_norm: float = 1.0
    val_fraction: float = 0.05
    eval_every: int = 200
    eval_chars: int = 20000
    checkpoint_every: int = 500
    seed: int = 0


@dataclasses.dataclass
class Data:
    """A corpus prepared for training: vocabulary, encoded splits, unigram baseline."""

    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    unigram_bpc: float


def prepare_data(text: str, val_fraction: float = 0.05) -> Data:
    """Split ``text``, build the vocabulary on the train part, encode both parts."""
    train_text, val_text = split_train_val(text, val_fraction)
    vocab = Vocab.from_text(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    return Data(vocab, train_ids, val_ids, unigram_bpc(train_ids, val_ids, len(vocab)))


class TextChunk(NamedTuple):
    """One training step's data: ``x, y (B, T)`` ids and next ids, whether it starts a
    pass over the text (the carried state is reset), and the step's dropout key."""

    x: jax.Array
    y: jax.Array
    first: jax.Array
    key: jax.Array


@functools.lru_cache(maxsize=16)
def text_batches(n_chunks: int, seq_len: int) -> Callable[..., TextChunk]:
    """``batch_fn(rng, step, rows)``: chunk ``step mod n_chunks`` of the rows ``(B, L)``.

    Cached, so runs with the same shapes share the loop's compiled block.
    """

    def batch_fn(rng: jax.Array, step: jax.Array, rows: jax.Array) -> TextChunk:
        i = step % n_chunks
        x = jax.lax.dynamic_slice_in_dim(rows, i * seq_len, seq_len, axis=1)
        y = jax.lax.dynamic_slice_in_dim(rows, i * seq_len + 1, seq_len, axis=1)
        key = jax.random.fold_in(jax.random.wrap_key_data(rng), step + 1)
        return TextChunk(x, y, i == 0, key)

    return batch_fn


@functools.lru_cache(maxsize=16)
def chunk_loss(config: clm.CharLMConfig) -> Callable:
    """The stateful loss ``loss(params, chunk, carry) -> (nats, ({"bpc"}, carry'))``; the
    loop stops the carry's gradient, so each step backpropagates within its chunk."""

    def loss_fn(params: clm.CharLMParams, chunk: TextChunk, carry: Any) -> Any:
        zeros = clm.initial_carry(params, config, chunk.x.shape[0])
        carry = jax.tree_util.tree_map(lambda z, c: jnp.where(chunk.first, z, c), zeros, carry)
        key = chunk.key if config.dropout > 0 else None
        carry, logits = clm.apply(params, config, chunk.x, carry, key)
        bpc = bits_per_char(logits, chunk.y)
        return bpc * math.log(2.0), ({"bpc": bpc}, carry)

    return loss_fn


@functools.lru_cache(maxsize=16)
def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam with linear warm-up and cosine decay over ``steps``."""
    return training.make_optimizer(
        cfg.learning_rate,
        clip_norm=cfg.clip_norm,
        schedule="warmup_cosine",
        num_steps=cfg.steps,
        warmup_steps=cfg.warmup,
    )


def initial_state(model_cfg: clm.CharLMConfig, cfg: TrainConfig) -> training.TrainState:
    """Step 0 of a run: params from ``fold_in(PRNGKey(seed), 0)``, zero carry."""
    key = jax.random.PRNGKey(training.check_seed(cfg.seed))
    params = clm.init(jax.random.fold_in(key, 0), model_cfg)
    carry = clm.initial_carry(params, model_cfg, cfg.batch_size)
    return training.init_state(params, make_optimizer(cfg), key, carry)


def check_corpus_length(n_chars: int, cfg: TrainConfig) -> None:
    """Refuse a text too short for the run, naming the option to change (``--text``,
    ``--batch``, ``--seq-len``), not an internal batch size.

    The validation part (the last ``val_fraction`` of the text, its first ``eval_chars``
    for the curve) must fill :data:`gatedrnn.training.char_lm.EVAL_ROWS` rows of 2
    characters; the training part ``--batch`` rows of ``--seq-len + 1``.

    Raises:
      ValueError: naming the option and the length needed.
    """
    need_val = 2 * clm.EVAL_ROWS
    n_val = round(n_chars * cfg.val_fraction)  # as split_train_val splits
    n_train = n_chars - n_val
    if n_val < need_val:
        raise ValueError(
            f"the text (--text, {n_chars:,} characters) is too short: its validation part "
            f"(the last {cfg.val_fraction:g} of it, {n_val} characters) needs at least "
            f"{need_val} characters to evaluate; give a text of at least "
            f"{math.ceil(need_val / cfg.val_fraction):,} characters"
        )
    if cfg.eval_chars < need_val:
        raise ValueError(f"eval_chars must be >= {need_val}, got {cfg.eval_chars}")
    need_train = cfg.batch_size * (cfg.seq_len + 1)
    if n_train < need_train:
        raise ValueError(
            f"the text (--text, {n_chars:,} characters, {n_train:,} of them for "
            f"training) is too short for --batch {cfg.batch_size} rows of --seq-len "
            f"{cfg.seq_len} + 1 characters ({need_train:,} training characters); give a "
            "longer text or a smaller --batch or --seq-len"
        )


def train(
    text: str,
    model_cfg: clm.CharLMConfig | dict[str, Any],
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    time_limit: float | None = None,
    corpus_sha256: str = "",
    progress: bool = False,
    mesh: Any = None,
) -> dict[str, Any]:
    """Train a char LM on ``text`` with the one loop (stateful truncated BPTT).

    Step ``s`` reads chunk ``s mod n`` of the ``B`` train rows; the carried state is reset at
    the start of each pass; dropout keys are ``fold_in(seed, s + 1)``. Checkpoints (config,
    vocabulary and corpus hash in their metadata) resume exactly. ``stop_at`` stops early as
    if interrupted; ``time_limit`` (seconds of this call) too.

    Returns:
      ``{"params", "state", "config", "vocab", "history": [{"step", "train_bpc",
      "val_bpc", "time"}], "val_bpc", "unigram_bpc", "train_time", "steps_done",
      "num_params"}``.
    """
    check_corpus_length(len(text), cfg)
    data = prepare_data(text, cfg.val_fraction)
    if isinstance(model_cfg, dict):
        model_cfg = clm.CharLMConfig(vocab_size=len(data.vocab), **model_cfg)
    if model_cfg.vocab_size != len(data.vocab):
        raise ValueError(f"vocab_size={model_cfg.vocab_size} but the text has {len(data.vocab)}")
    rows = chunk_rows(data.train_ids, cfg.batch_size)
    n_chunks = num_chunks(data.train_ids, cfg.batch_size, cfg.seq_len)
    res = training.train(
        chunk_loss(model_cfg),
        initial_state(model_cfg, cfg),
        make_optimizer(cfg),
        text_batches(n_chunks, cfg.seq_len),
        num_steps=cfg.steps if stop_at is None else min(stop_at, cfg.steps),
        stateful=True,
        batch_data=jnp.asarray(rows, jnp.int32),
        evaluate=lambda p: {
            "bpc": clm.evaluate(p, model_cfg, data.val_ids, max_chars=cfg.eval_chars)
        },
        eval_every=cfg.eval_every,
        progress=progress,
        mesh=mesh,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_meta={
            "model": dataclasses.asdict(model_cfg),
            "train": dataclasses.asdict(cfg),
            "vocab": data.vocab.to_json(),
            "corpus_sha256": corpus_sha256,
        },
        checkpoint_every=cfg.checkpoint_every,
        time_limit=time_limit,
    )
    history = [
        {"step": h["step"], "train_bpc": h["train_bpc"],
         "val_bpc": h["eval_bpc"], "time": h["time"]}
        for h in res.history
    ]  # fmt: skip
    params = res.state.params
    return {
        "params": params,
        "state": res.state,
        "config": model_cfg,
        "vocab": data.vocab,
        "history": history,
        "val_bpc": clm.evaluate(params, model_cfg, data.val_ids),
        "unigram_bpc": data.unigram_bpc,
        "train_time": history[-1]["time"] if history else 0.0,
        "steps_done": int(res.state.step),
        "num_params": clm.num_params(params),
    }


def load_model(path: str | Path) -> tuple[clm.CharLMParams, clm.CharLMConfig, Vocab, dict]:
    """Params, config and vocabulary from a checkpoint directory (or the newest checkpoint
    in a run's checkpoint folder)."""
    path = Path(path)

    def parse(info: dict) -> tuple[clm.CharLMConfig, TrainConfig, Vocab]:
        meta = info["meta"]
        try:
            return (
                clm.CharLMConfig(**meta["model"]),
                TrainConfig(**meta["train"]),
                Vocab.from_json(meta["vocab"]),
            )
        except (KeyError, TypeError) as e:
            raise checkpoint.CheckpointError(f"{path} is not a char LM checkpoint: {e}") from None

    def template(info: dict) -> Any:
        config, cfg, _ = parse(info)
        return initial_state(config, cfg)

    if path.name.startswith("step_"):
        state, info = checkpoint.restore_checkpoint(path, template(checkpoint.load_meta(path)))
    elif not checkpoint.list_checkpoints(path):
        raise checkpoint.CheckpointError(f"no checkpoint found in {path}")
    else:  # the newest intact one; corrupt newer ones are reported and skipped
        state, info, _ = checkpoint.restore_latest(path, template)
    config, _, vocab = parse(info)
    return state.params, config, vocab, info


RESULTS = Path(__file__).resolve().parent / "results"

# The default run: a 2-layer LSTM; sized so it finishes in under 15 minutes on 2 shared
# cores (--max-minutes stops it early, with a checkpoint, if the machine is slower).
DEFAULT_MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embed_size": 64}
DEFAULT_TRAIN = {
    "steps": 600,
    "batch_size": 32,
    "seq_len": 64,
    "learning_rate": 3e-3,
    "warmup": 50,
    "eval_every": 100,
}
QUICK_MODEL = {"cell": "lstm", "hidden_size": 64, "num_layers": 1, "embed_size": 16}
QUICK_TRAIN = {
    "steps": 60,
    "batch_size": 8,
    "seq_len": 32,
    "learning_rate": 1e-2,
    "warmup": 5,
    "eval_every": 20,
    "checkpoint_every": 20,
    "eval_chars": 4000,
}
QUICK_CHARS = 60_000
# command-line option (argparse dest) -> CharLMConfig / TrainConfig field
OPTION_FIELDS = {
    "cell": "cell",
    "hidden": "hidden_size",
    "layers": "num_layers",
    "embed": "embed_size",
    "dropout": "dropout",
    "steps": "steps",
    "batch": "batch_size",
    "seq_len": "seq_len",
    "learning_rate": "learning_rate",
    "clip_norm": "clip_norm",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
}  # --quick trains on the first 60k characters only


def _corpus(args: argparse.Namespace) -> tuple[str, str, str]:
    corpus = load_text(args.text)
    text = corpus.text[:QUICK_CHARS] if args.quick else corpus.text
    return text, corpus.name, corpus.sha256


def _diverged(res: dict) -> bool:
    """A finite divergence: validation bits/char far above both the unigram baseline and
    log2(V), where an untrained model starts."""
    start = float(np.log2(len(res["vocab"])))
    return training.diverged_finitely(res["val_bpc"], res["unigram_bpc"], start)


def _plot(curves: dict[str, list[dict]], baseline: float, path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, hist in curves.items():
        steps = [h["step"] for h in hist]
        ax.plot(steps, [h["val_bpc"] for h in hist], "-o", ms=3, label=f"{name} (validation)")
        ax.plot(steps, [h["train_bpc"] for h in hist], ":", color=ax.lines[-1].get_color())
    ax.axhline(baseline, color="gray", ls="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character (dotted: train)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with cli.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _samples(
    params: Any, config: clm.CharLMConfig, vocab: Any, primes: list[str], length: int, seed: int
) -> str:
    parts = []
    for temp in (0.0, 0.5, 0.8):
        for i, prime in enumerate(primes):
            ids = clm.sample(
                params, config, vocab.encode(prime), length, temperature=temp, seed=seed + i
            )[0]
            parts.append(f"--- temperature {temp}, prime {prime!r} ---\n{prime}{vocab.decode(ids)}")
    return "\n\n".join(parts) + "\n"


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """The ``train`` subcommand."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, name, sha = _corpus(args)
    given = {field: getattr(args, opt) for opt, field in OPTION_FIELDS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    model = dict(QUICK_MODEL if args.quick else DEFAULT_MODEL)
    options = dict(QUICK_TRAIN if args.quick else DEFAULT_TRAIN)
    model_fields = {f.name for f in dataclasses.fields(clm.CharLMConfig)}
    model.update({k: v for k, v in given.items() if k in model_fields})
    options.update({k: v for k, v in given.items() if k not in model_fields})
    train_cfg = TrainConfig(seed=args.seed, **options)
    print(f"corpus {name}: {len(text):,} characters, sha256 {sha[:12]}", flush=True)
    res = train(
        text,
        model,
        train_cfg,
        checkpoint_dir=out / "checkpoints",
        resume=args.resume,
        time_limit=None if args.max_minutes is None else 60 * args.max_minutes,
        corpus_sha256=sha,
        progress=not args.no_progress,
    )
    for h in res["history"]:
        print(f"step {h['step']}: train {h['train_bpc']:.3f} bpc, val {h['val_bpc']:.3f} bpc")
    samples = _samples(
        res["params"], res["config"], res["vocab"], ["def ", "class "], args.sample_len, args.seed
    )
    cli.write_text(out / "samples.txt", samples)
    summary = {
        "corpus": name,
        "corpus_chars": len(text),
        "corpus_sha256": sha,
        "model": dataclasses.asdict(res["config"]),
        "train": dataclasses.asdict(train_cfg),
        "num_params": res["num_params"],
        "steps_done": res["steps_done"],
        "train_time_s": res["train_time"],
        "val_bpc": res["val_bpc"],
        "unigram_bpc": res["unigram_bpc"],
        "diverged": _diverged(res),
        "history": res["history"],
        "python": sys.version.split()[0],
        "jax": jax.__version__,
    }
    cli.write_json(out / "train.json", summary, indent=1)
    if res["history"]:
        _plot(
            {res["config"].cell: res["history"]},
            res["unigram_bpc"],
            out / "curve.png",
            f"char LM on {Path(name).name}",
        )
    print(
        f"validation {res['val_bpc']:.3f} bits/char vs unigram baseline "
        f"{res['unigram_bpc']:.3f}; {res['steps_done']} steps in {res['train_time']:.0f}s"
    )
    if summary["diverged"]:
        print("warning: the run diverged (validation bpc far above the unigram baseline)")
    print(
        f"wrote {out / 'train.json'}, {out / 'samples.txt'}, checkpoints in {out / 'checkpoints'}"
    )
    print(samples.split("\n\n")[2 if len(samples.split("\n\n")) > 2 else 0])
    return summary


def cmd_sample(args: argparse.Namespace) -> str:
    """The ``sample`` subcommand."""
    params, config, vocab, info = load_model(args.checkpoint_dir)
    prime = args.prime.replace("\\n", "\n").replace("\\t", "\t")
    try:
        prime_ids = vocab.encode(prime, strict=True)
    except ValueError as e:
        raise cli.UsageError(f"--prime {args.prime!r}: {e}") from None
    ids = clm.sample(
        params,
        config,
        prime_ids,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        num_samples=args.num,
    )
    text = "\n\n".join(prime + vocab.decode(row) for row in ids) + "\n"
    if args.out:
        cli.write_text(args.out, text)
        print(f"wrote {args.out} (checkpoint step {info['step']})")
    else:
        sys.stdout.write(text)
    return text


def hidden_for_budget(cell: str, budget: int, base: dict[str, Any], vocab_size: int) -> int:
    """The hidden size whose model (embedding, RNN, readout) has closest to ``budget``
    parameters, counted from the real params shapes."""
    best, best_gap = 1, math.inf
    lo, hi = 1, 4096
    while lo <= hi:  # parameter count is increasing in H: bisect, then check neighbours
        mid = (lo + hi) // 2
        n = clm.param_count(
            clm.CharLMConfig(vocab_size, **{**base, "cell": cell, "hidden_size": mid})
        )
        if n < budget:
            lo = mid + 1
        else:
            hi = mid - 1
    for h in (lo - 1, lo, lo + 1):
        if h >= 1:
            cfg = clm.CharLMConfig(vocab_size, **{**base, "cell": cell, "hidden_size": h})
            gap = abs(clm.param_count(cfg) - budget)
            if gap < best_gap:
                best, best_gap = h, gap
    return best


def layer_param_counts(input_size: int, hidden_size: int) -> dict[str, dict[str, int]]:
    """Parameters of one layer of each cell for ``I, H``: counted from ``cell.init`` and from
    the closed forms ``vanilla IH + H^2 + H``, ``LSTM 4(IH + H^2 + H)``,
    ``GRU 3(IH + H^2 + 2H)`` (GRU keeps input and recurrent biases apart)."""
    I, H = input_size, hidden_size
    formula = {
        "vanilla": I * H + H * H + H,
        "lstm": 4 * (I * H + H * H + H),
        "gru": 3 * (I * H + H * H + 2 * H),
    }
    out = {}
    for name in formula:
        make = CELLS[name]
        shapes = jax.eval_shape(lambda k, make=make: make(H).init(k, I), jax.random.PRNGKey(0))
        out[name] = {"counted": clm.num_params(shapes), "formula": formula[name]}
    return out


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    """The ``compare`` subcommand."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, name, sha = _corpus(args)
    data = prepare_data(text)
    V = len(data.vocab)
    base = {"num_layers": args.layers, "embed_size": 16 if args.quick else 64}
    budget = args.budget or (20_000 if args.quick else 200_000)
    options = dict(QUICK_TRAIN) if args.quick else {
        "steps": 300, "batch_size": 32, "seq_len": 100, "learning_rate": 3e-3, "warmup": 30,
        "eval_every": 50, "eval_chars": 20000, "checkpoint_every": 10**9,
    }  # fmt: skip
    if args.steps is not None:
        options["steps"] = args.steps
    train_cfg = TrainConfig(seed=args.seed, **options)
    rows, curves = [], {}
    for cell in args.cells:
        H = hidden_for_budget(cell, budget, base, V)
        model = {**base, "cell": cell, "hidden_size": H}
        print(f"{cell}: hidden {H}, {clm.param_count(clm.CharLMConfig(V, **model)):,} params")
        t = time.perf_counter()
        res = train(text, model, train_cfg, progress=not args.no_progress, corpus_sha256=sha)
        wall = time.perf_counter() - t
        curves[cell] = res["history"]
        rows.append(
            {
                "cell": cell,
                "hidden_size": H,
                "num_params": res["num_params"],
                "val_bpc": res["val_bpc"],
                "unigram_bpc": res["unigram_bpc"],
                "diverged": _diverged(res),
                "train_time_s": res["train_time"],
                "wall_time_s": wall,
                "history": res["history"],
            }
        )
        print(f"  validation {res['val_bpc']:.3f} bpc (unigram {res['unigram_bpc']:.3f}), "
              f"{res['train_time']:.0f}s")  # fmt: skip
    md = table(
        [
            [r["cell"], r["hidden_size"], f"{r['num_params']:,}", f"{r['val_bpc']:.3f}",
             f"{r['unigram_bpc']:.3f}", f"{r['train_time_s']:.0f}"]
            for r in rows
        ],
        ["cell", "hidden", "params", "validation bpc", "unigram bpc", "train time (s)"],
    )  # fmt: skip
    counts = layer_param_counts(256, 256)
    result = {
        "corpus": name,
        "corpus_chars": len(text),
        "corpus_sha256": sha,
        "budget": budget,
        "layers": args.layers,
        "train": dataclasses.asdict(train_cfg),
        "results": rows,
        "layer_params_I256_H256": counts,
        "table_md": md,
        "python": sys.version.split()[0],
        "jax": jax.__version__,
    }
    cli.write_json(out / "char_lm_compare.json", result, indent=1)
    cli.write_text(out / "char_lm_compare.md", md + "\n")
    _plot(
        {f"{r['cell']} (H={r['hidden_size']})": r["history"] for r in rows},
        rows[0]["unigram_bpc"],
        out / "char_lm_compare.png",
        f"vanilla / LSTM / GRU at ~{budget:,} params",
    )
    print(result["table_md"])
    print(f"wrote {out / 'char_lm_compare.json'}, .md, .png")
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = cli.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q: argparse.ArgumentParser, out: Path) -> None:
        q.add_argument("--quick", action="store_true", help="tiny model, 60k characters, seconds")
        q.add_argument("--seed", type=cli.seed, default=0, help="random seed (default 0)")
        q.add_argument(
            "--out", type=cli.output_dir, default=out, help=f"output directory (default {out})"
        )
        q.add_argument(
            "--text",
            type=cli.text_file,
            default=None,
            help="UTF-8 text file (default: stdlib source)",
        )
        q.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train a char LM, write checkpoints, samples, curve")
    common(t, RESULTS / "char_lm")
    t.add_argument("--cell", choices=sorted(CELLS), default=None, help="default lstm")
    t.add_argument(
        "--hidden", type=cli.positive_int, default=None, help="hidden size (default 256)"
    )
    t.add_argument("--layers", type=cli.positive_int, default=None, help="1-3 layers (default 2)")
    t.add_argument(
        "--embed", type=cli.positive_int, default=None, help="embedding size (default 64)"
    )
    t.add_argument("--dropout", type=cli.fraction, default=None, help="between layers (default 0)")
    t.add_argument(
        "--steps", type=cli.positive_int, default=None, help="optimizer steps (default 600)"
    )
    t.add_argument(
        "--batch", type=cli.positive_int, default=None, help="rows per batch (default 32)"
    )
    t.add_argument(
        "--seq-len", type=cli.positive_int, default=None, help="BPTT chunk length (default 64)"
    )
    t.add_argument(
        "--learning-rate",
        "--lr",
        type=cli.positive_float,
        default=None,
        help="peak learning rate (default 3e-3)",
    )
    t.add_argument(
        "--clip-norm", type=cli.positive_float, default=None, help="global-norm clip (default 1)"
    )
    t.add_argument(
        "--eval-every", type=cli.positive_int, default=None, help="steps between evaluations"
    )
    t.add_argument(
        "--checkpoint-every", type=cli.positive_int, default=None, help="steps between checkpoints"
    )
    t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    t.add_argument(
        "--max-minutes",
        type=cli.positive_float,
        default=11.0,
        help="stop (with a checkpoint) after this much training time (default 11)",
    )
    t.add_argument("--sample-len", type=cli.positive_int, default=300, help="characters per sample")

    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("--checkpoint-dir", "--ckpt", default=str(RESULTS / "char_lm" / "checkpoints"),
                   help="checkpoint dir or run's checkpoints dir")  # fmt: skip
    s.add_argument("--prime", default="def ", help="priming text (\\n and \\t are newline and tab)")
    s.add_argument("--length", type=cli.positive_int, default=500, help="characters to generate")
    s.add_argument("--temperature", type=cli.nonneg_float, default=0.8, help="0 = greedy")
    s.add_argument(
        "--top-k", type=cli.nonneg_int, default=0, help="sample among the k likeliest (0 = all)"
    )
    s.add_argument("--num", type=cli.positive_int, default=1, help="number of samples")
    s.add_argument("--seed", type=cli.seed, default=0, help="random seed")
    s.add_argument("--out", default=None, help="write to this file (default stdout)")
    s.add_argument("--quick", action="store_true", help="(accepted for uniformity; no effect)")

    c = sub.add_parser("compare", help="vanilla / LSTM / GRU at equal parameter counts")
    common(c, RESULTS)
    c.add_argument("--cells", nargs="+", default=["vanilla", "lstm", "gru"], choices=sorted(CELLS))
    c.add_argument(
        "--budget", type=cli.positive_int, default=None, help="params per model (default 200k)"
    )
    c.add_argument(
        "--layers", type=cli.positive_int, default=1, help="layers per model (default 1)"
    )
    c.add_argument(
        "--steps", type=cli.positive_int, default=None, help="steps per model (default 300)"
    )
    return p


def main(argv: list[str] | None = None) -> Any:
    """Parse ``argv`` and run the subcommand."""
    args = build_parser().parse_args(argv)
    return {"train": cmd_train, "sample": cmd_sample, "compare": cmd_compare}[args.cmd](args)


def cli_main(argv: list[str] | None = None) -> int:
    """``main`` for the command line: exit status 0 (errors are reported by ``cli.run``)."""
    main(argv)
    return 0


if __name__ == "__main__":
    cli.run(cli_main)
