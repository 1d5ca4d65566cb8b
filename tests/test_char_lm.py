"""Tests for gatedrnn.training.char_lm (the model, its sampler) and experiments/char_lm.py
(its trainer on the one loop): exact resume, stateful chunks, sampling (seeded, greedy at
temperature 0), divergence, and the --quick command line."""

from __future__ import annotations

import json
from functools import cache, partial
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import char_lm as SCRIPT
from gatedrnn import training
from gatedrnn.training import char_lm as clm
from gatedrnn.training.checkpoint import CheckpointError

TEXT = ("def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 20)[:600]
MODEL = {"cell": "gru", "hidden_size": 12, "num_layers": 2, "embed_size": 6, "dropout": 0.2}
# eval_every 6, checkpoint_every 2, stopped at 7: every block of every run below is 2
# updates long or 1 (two compiled blocks in all), with a stop between checkpoints (7) and
# a time-limit stop on a step that is not an evaluation step (8)
TRAIN = SCRIPT.TrainConfig(
    steps=10, batch_size=4, seq_len=16, learning_rate=1e-2, warmup=2, eval_every=6,
    checkpoint_every=2, eval_chars=400, val_fraction=0.1,
)  # fmt: skip


def _leaves_equal(a, b) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        chex.assert_trees_all_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A full run, and in one checkpoint folder the same run stopped at step 7, stopped
    again by the time limit, then resumed to the end: made once for the resume tests
    below (one set of compiles), with XLA's optimizations off like ``fast_compile``."""
    ck = tmp_path_factory.mktemp("char_lm_checkpoints")
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        # 540 train chars in 4 rows of 135: 8 chunks per pass, so the run wraps around once.
        full = SCRIPT.train(TEXT, MODEL, TRAIN)
        part = SCRIPT.train(TEXT, MODEL, TRAIN, checkpoint_dir=ck, stop_at=7)
        # a second interruption, by the time limit: it stops after one block (to the
        # next checkpoint step, 8), with a checkpoint
        timed = SCRIPT.train(TEXT, MODEL, TRAIN, checkpoint_dir=ck, resume=True, time_limit=0.0)
        resumed = SCRIPT.train(TEXT, MODEL, TRAIN, checkpoint_dir=ck, resume=True)
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    return ck, full, part, timed, resumed


def test_interrupted_and_resumed_run_ends_with_the_same_params(interrupted_run):
    _, full, part, timed, resumed = interrupted_run
    assert part["steps_done"] == 7
    with pytest.raises(AssertionError):
        _leaves_equal(part["params"], full["params"])
    assert timed["steps_done"] == 8
    assert resumed["steps_done"] == TRAIN.steps
    _leaves_equal(resumed["state"], full["state"])  # params, Adam state and carried state
    assert resumed["val_bpc"] == full["val_bpc"]
    # 6: an evaluation; 7: where the first call stopped; 8: the time-limit stop
    assert [h["step"] for h in resumed["history"]] == [6, 7, 8, 10]


def test_resume_refuses_a_different_config(interrupted_run, tmp_path: Path):
    """On the checkpoints of the interrupted run (the refusals come before training)."""
    ck = interrupted_run[0]
    # one layer fewer: a different model whose params have shapes the run already had
    # (the eager init, before the refusal, compiles nothing new)
    with pytest.raises(CheckpointError, match="model"):
        SCRIPT.train(TEXT, {**MODEL, "num_layers": 1}, TRAIN, checkpoint_dir=ck, resume=True)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        SCRIPT.train(TEXT, MODEL, TRAIN, checkpoint_dir=ck)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        SCRIPT.train(TEXT, MODEL, TRAIN, checkpoint_dir=tmp_path / "empty", resume=True)


@cache
def _tiny(cell: str = "lstm", layers: int = 2):
    """A tiny config and its params, made once per cell (shared by the tests below).

    The init runs eagerly: more (small, shared) programs than a jitted init, but less CPU
    (a jitted init with its orthogonal draws compiled in 1.3 to 2.6 s per config)."""
    cfg = clm.CharLMConfig(vocab_size=11, cell=cell, hidden_size=8, num_layers=layers, embed_size=5)
    return cfg, clm.init(jax.random.PRNGKey(1), cfg)


APPLY = jax.jit(clm.apply, static_argnums=1)


@partial(jax.jit, static_argnums=1)
def _whole_and_chunked(params, cfg, key):
    """One long run over random ids and the same run in two chunks, the carry passed on
    (ids and zero carry made inside: one compile per cell)."""
    ids = jax.random.randint(key, (3, 20), 0, 11)
    c0 = clm.initial_carry(params, cfg, 3)
    _, whole = clm.apply(params, cfg, ids, c0)
    c1, a = clm.apply(params, cfg, ids[:, :10], c0)
    _, b = clm.apply(params, cfg, ids[:, 10:], c1)
    return whole, jnp.concatenate([a, b], 1)


@pytest.mark.parametrize("cell", ["vanilla", "lstm", "gru"])
def test_carrying_state_over_chunks_equals_one_long_run(cell: str):
    cfg, params = _tiny(cell)
    whole, chunked = _whole_and_chunked(params, cfg, jax.random.PRNGKey(2))
    chex.assert_trees_all_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_train_step_gradient_stops_at_the_chunk_boundary():
    from gatedrnn.training.text import bits_per_char

    cfg, params = _tiny()
    opt = SCRIPT.make_optimizer(SCRIPT.TrainConfig(steps=10))
    train_step = training.make_train_step(SCRIPT.chunk_loss(cfg), opt, stateful=True)

    @jax.jit  # the state, the step and its reference in one compiled program
    def run(params, key):
        x = jnp.ones((2, 6), jnp.int32)
        carry = clm.initial_carry(params, cfg, 2)
        state = training.init_state(params, opt, 0, carry)
        state2, metrics = train_step(state, SCRIPT.TextChunk(x, x, jnp.array(False), key))
        want_carry, logits = clm.apply(params, cfg, x, carry)
        return state2.carry, metrics["bpc"], want_carry, bits_per_char(logits, x)

    carry2, bpc, want_carry, want_bpc = run(params, jax.random.key(0))
    assert float(bpc) == pytest.approx(float(want_bpc), rel=1e-6)
    # The step and the apply are two computations: equal up to float rounding.
    chex.assert_trees_all_close(carry2, want_carry, rtol=1e-6, atol=1e-7)


def _greedy_oracle(params, cfg, prime, length):
    """Python loop: one apply per character, argmax over the known ids (in NumPy)."""
    carry = clm.initial_carry(params, cfg, 1)
    carry, logits = APPLY(params, cfg, np.asarray(prime, np.int32)[None], carry)
    out = []
    last = np.array(logits)[0, -1]
    for _ in range(length):
        last[0] = -np.inf
        nxt = int(np.argmax(last))
        out.append(nxt)
        carry, logits = APPLY(params, cfg, np.array([[nxt]], np.int32), carry)
        last = np.array(logits)[0, 0]
    return out


def test_temperature_zero_is_greedy_and_sampling_is_seeded():
    cfg, params = _tiny()
    prime = np.array([3, 4, 5])
    kw = {"num_samples": 3}  # one compiled generator serves every call but the top-k one
    greedy = clm.sample(params, cfg, prime, 15, temperature=0.0, seed=3, **kw)
    chex.assert_shape(greedy, (3, 15))
    assert greedy[0].tolist() == _greedy_oracle(params, cfg, prime, 15)
    assert (greedy == greedy[0]).all()
    # top_k = 1 is greedy at any temperature
    chex.assert_trees_all_equal(
        clm.sample(params, cfg, prime, 15, temperature=2.0, top_k=1, **kw), greedy
    )
    a = clm.sample(params, cfg, prime, 15, temperature=1.5, seed=7, **kw)
    b = clm.sample(params, cfg, prime, 15, temperature=1.5, seed=7, **kw)
    c = clm.sample(params, cfg, prime, 15, temperature=1.5, seed=8, **kw)
    chex.assert_trees_all_equal(a, b)
    assert (a != c).any() and (a[0] != a[1]).any()
    assert (a != 0).all()  # never the unknown id
    with pytest.raises(ValueError, match="temperature"):
        clm.sample(params, cfg, prime, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="prime_ids"):
        clm.sample(params, cfg, np.array([], np.int32), 5)
    with pytest.raises(ValueError, match=r"prime_ids must lie in \[0, vocab_size=11\)"):
        clm.sample(params, cfg, np.array([3, 11]), 5)
    with pytest.raises(ValueError, match=r"1,000 samples of 10,000,000,000 ids would take"):
        clm.sample(params, cfg, prime, 10**10, num_samples=1000)  # before XLA allocates
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        clm.sample(params, cfg, prime, 5, num_samples=0)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="cell must be one of"):
        clm.CharLMConfig(10, cell="rnn")
    with pytest.raises(ValueError, match="num_layers must be 1, 2 or 3"):
        clm.CharLMConfig(10, num_layers=4)


def test_param_counts_match_the_closed_forms():
    counts = SCRIPT.layer_param_counts(7, 5)
    for name, c in counts.items():
        assert c["counted"] == c["formula"], name
    assert counts["lstm"]["counted"] == 4 * (7 * 5 + 25 + 5)
    assert counts["gru"]["counted"] == 3 * (7 * 5 + 25 + 10)


def test_quick_train_then_sample_from_the_command_line(tmp_path: Path):
    mod = SCRIPT
    text = tmp_path / "t.txt"
    text.write_text("import os\n\ndef main():\n    print('hello world')\n" * 300, encoding="utf-8")
    out = tmp_path / "run"
    summary = mod.main(["train", "--quick", "--text", str(text), "--out", str(out),
                        "--no-progress", "--steps", "40", "--sample-len", "30"])  # fmt: skip
    assert summary["val_bpc"] < 0.6 * summary["unigram_bpc"]
    saved = json.loads((out / "train.json").read_text())
    assert saved["steps_done"] == 40 and len(saved["history"]) == 2
    assert (out / "samples.txt").read_text().count("--- temperature") == 6
    assert (out / "curve.png").stat().st_size > 0
    args = [
        "sample",
        "--checkpoint-dir",
        str(out / "checkpoints"),
        "--prime",
        "def ",
        "--length",
        "30",
    ]
    got = mod.main([*args, "--temperature", "0", "--out", str(tmp_path / "s.txt")])
    assert got.startswith("def ") and len(got) == 4 + 30 + 1


def test_a_prime_outside_the_vocabulary_is_an_error_naming_the_characters(monkeypatch):
    """Issue 22: ``sample --prime`` with characters the model never saw quietly became
    unknown ids; now one error naming them (no checkpoint needed: load_model is faked)."""
    from experiments import cli

    cfg, params = _tiny()
    vocab = SCRIPT.Vocab("abcdefghij")  # 10 characters + the unknown id = vocab_size 11
    monkeypatch.setattr(SCRIPT, "load_model", lambda path: (params, cfg, vocab, {"step": 1}))
    argv = ["sample", "--length", "3", "--temperature", "0"]
    assert SCRIPT.main([*argv, "--prime", "abc"]).startswith("abc")
    with pytest.raises(cli.UsageError, match=r"--prime 'aXbé'.*2 character.*'X', 'é'"):
        SCRIPT.main([*argv, "--prime", "aXbé"])


def test_seed_past_the_prngs_range_is_refused_by_both_subcommands():
    """Issue 22: ``train --seed 4294967296`` trained exactly as ``--seed 0``; past 2**63 an
    OverflowError traceback. The CLI's seed type is the library's one check."""
    from experiments import cli

    for cmd in ("train", "sample"):
        for bad in (str(2**32), str(2**64)):
            with pytest.raises(cli.UsageError, match=r"--seed.*\[0, 2\*\*32\)"):
                SCRIPT.build_parser().parse_args([cmd, "--seed", bad])
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        SCRIPT.initial_state(clm.CharLMConfig(5), SCRIPT.TrainConfig(seed=2**32))


@pytest.mark.parametrize(
    "n_chars, options, needles",
    [
        (400, [], ["--text", "400 characters", "validation part", "at least 640"]),
        (2000, ["--batch", "64"], ["--batch 64", "--seq-len 32", "smaller --batch"]),
    ],
)
def test_a_short_corpus_names_the_option_not_an_internal_batch_size(
    tmp_path: Path, n_chars, options, needles
):
    """Issue 22: a short --text blamed batch_size=16, an internal evaluation batch size."""
    from experiments import cli

    text = tmp_path / "t.txt"
    text.write_text(("abcdefghij" * 1000)[:n_chars], encoding="utf-8")
    argv = ["train", "--quick", "--text", str(text), "--out", str(tmp_path / "run"),
            "--no-progress", "--steps", "2", *options]  # fmt: skip
    with pytest.raises(ValueError) as info:
        try:
            SCRIPT.main(argv)
        finally:
            cli.release_outputs()
    assert "batch_size=16" not in str(info.value)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_a_diverging_run_exits_1_in_one_line_and_saves_nothing(tmp_path: Path, capsys):
    from experiments import cli

    text = tmp_path / "t.txt"
    text.write_text("import os\n\ndef main():\n    print('hello world')\n" * 300, encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", "--quick", "--text", str(text), "--out", str(out), "--no-progress",
            "--steps", "20", "--learning-rate", "1e38",
            "--batch", "2", "--seq-len", "8"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.run(SCRIPT.cli_main, argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0] and "at step " in lines[0], lines
    assert not (out / "train.json").exists() and not (out / "samples.txt").exists()
    assert not list((out / "checkpoints").glob("step_*"))
