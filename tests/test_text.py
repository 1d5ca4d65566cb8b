"""Tests for gatedrnn.training.text: vocabulary, corpora, chunk batching, bits per character."""

from __future__ import annotations

import math
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from gatedrnn.training import text as T


def test_vocab_round_trip_and_unknown_characters():
    v = T.Vocab.from_text("hello world\n")
    assert len(v) == len(set("hello world\n")) + 1
    s = "low hold\nhell"
    ids = v.encode(s)
    assert ids.dtype == np.int32 and ids.shape == (len(s),)
    assert (ids > 0).all()
    assert v.decode(ids) == s
    # unknown characters (also above the lookup table's range) map to id 0 and back to unk
    ids = v.encode("héllo☃")
    assert ids[1] == T.UNK_ID and ids[-1] == T.UNK_ID
    assert v.decode(ids) == f"h{T.UNK_CHAR}llo{T.UNK_CHAR}"
    assert v.decode(np.array([0, len(v) + 5])) == T.UNK_CHAR * 2
    assert T.Vocab.from_json(v.to_json()) == v
    assert v.encode("").shape == (0,)


def test_vocab_min_count_and_errors():
    v = T.Vocab.from_text("aaab", min_count=2)
    assert v.chars == "a"
    assert v.encode("ab").tolist() == [1, 0]
    with pytest.raises(ValueError, match="distinct"):
        T.Vocab("aa")
    with pytest.raises(TypeError, match="str"):
        v.encode(b"ab")
    with pytest.raises(ValueError, match="1-d integer"):
        v.decode(np.zeros((2, 2), np.int32))


def test_chunk_batches_continue_each_row_across_batches():
    ids = np.arange(1000)
    B, L = 4, 7
    batches = list(T.chunk_batches(ids, B, L))
    assert len(batches) == T.num_chunks(ids, B, L) == (1000 // B - 1) // L
    row_len = 1000 // B
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (B, L)
        chex.assert_trees_all_equal(y, x + 1)  # targets are the next characters
        for b in range(B):
            chex.assert_trees_all_equal(x[b], ids[b * row_len + i * L : b * row_len + (i + 1) * L])
        if i:
            # row b of batch i starts right where row b of batch i-1 stopped
            chex.assert_trees_all_equal(x[:, 0], batches[i - 1][0][:, -1] + 1)
    # concatenating a row over all batches gives one contiguous stretch of text
    row0 = np.concatenate([x[0] for x, _ in batches])
    chex.assert_trees_all_equal(row0, np.arange(len(row0)))


def test_chunking_errors_are_clear():
    with pytest.raises(ValueError, match="too short"):
        T.chunk_rows(np.arange(3), 2)
    with pytest.raises(ValueError, match="too short for one chunk"):
        T.num_chunks(np.arange(20), 2, 10)
    with pytest.raises(ValueError, match="1-d"):
        T.chunk_rows(np.zeros((2, 3)), 1)


def test_split_train_val_is_contiguous():
    tr, va = T.split_train_val(np.arange(100), 0.1)
    chex.assert_trees_all_equal(np.concatenate([tr, va]), np.arange(100))
    assert len(va) == 10
    s_tr, s_va = T.split_train_val("abcdefghij" * 10, 0.2)
    assert s_tr + s_va == "abcdefghij" * 10 and len(s_va) == 20
    with pytest.raises(ValueError, match="val_fraction"):
        T.split_train_val(np.arange(100), 1.5)


def test_bits_per_char_on_a_known_distribution():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    logits = jnp.log(jnp.asarray(p, jnp.float32))[None].repeat(4, 0) + 3.0  # shift-invariant
    targets = jnp.array([0, 1, 2, 3])
    want = -(np.log2(0.5) + np.log2(0.25) + 2 * np.log2(0.125)) / 4  # 2.25 bits
    assert float(T.bits_per_char(logits, targets)) == pytest.approx(want, rel=1e-6)
    # a mask counts only the chosen positions
    mask = jnp.array([1, 1, 0, 0])
    assert float(T.bits_per_char(logits, targets, mask)) == pytest.approx(1.5, rel=1e-6)
    # uniform over V costs log2 V
    assert float(T.bits_per_char(jnp.zeros((3, 5, 10)), jnp.zeros((3, 5), jnp.int32))) == (
        pytest.approx(math.log2(10), rel=1e-6)
    )
    with pytest.raises(ValueError, match="disagree"):
        T.bits_per_char(jnp.zeros((3, 10)), jnp.zeros((4,), jnp.int32))


def test_unigram_bpc_is_the_entropy_of_the_frequencies():
    ids = np.array([1, 1, 2, 3])  # p = 1/2, 1/4, 1/4 -> H = 1.5 bits
    assert T.unigram_bpc(ids, ids, vocab_size=4, alpha=0.0) == pytest.approx(1.5)
    # smoothing gives an unseen character a finite cost
    assert np.isfinite(T.unigram_bpc(ids, np.array([0]), vocab_size=4, alpha=1.0))


def test_stdlib_corpus_is_a_fixed_sorted_selection(tmp_path: Path):
    assert list(T.STDLIB_MODULES) == sorted(T.STDLIB_MODULES)
    a, b = T.stdlib_corpus(), T.stdlib_corpus()
    assert a.sha256 == b.sha256 and len(a.text) > 500_000
    assert len(a.files) == len(T.STDLIB_MODULES)
    assert "def " in a.text and "class " in a.text
    # modules missing from this Python are skipped; packages are read from __init__.py
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("x = 1\n")
    (tmp_path / "mod.py").write_text("y = 2\n")
    c = T.stdlib_corpus(("mod", "nothere", "pkg"), stdlib=tmp_path)
    assert c.text == "y = 2\n\n\nx = 1\n" and len(c.files) == 2
    with pytest.raises(FileNotFoundError, match="none of the"):
        T.stdlib_corpus(("nothere",), stdlib=tmp_path)


def test_load_text(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_text("héllo wörld", encoding="utf-8")
    c = T.load_text(f)
    assert c.text == "héllo wörld" and c.name == str(f)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="UTF-8"):
        T.load_text(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        T.load_text(tmp_path / "missing.txt")
    assert T.load_text(None).name == "stdlib"


def test_strict_encode_names_the_characters_outside_the_vocabulary():
    """Issue 22: a sampling prime with unknown characters quietly became unknown ids;
    ``encode(strict=True)`` refuses them, naming each."""
    v = T.Vocab.from_text("hello world\n")
    assert (v.encode("hello", strict=True) == v.encode("hello")).all()
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary.*'é', '☃'"):
        v.encode("héllo☃", strict=True)
