"""Text data for character-level language models.

* :class:`Vocab`: a character vocabulary with an unknown-character id (``0``);
* :func:`stdlib_corpus` / :func:`load_text`: the default corpus (a fixed, sorted selection
  of the Python standard library's own source files, read at run time, nothing
  downloaded) or any UTF-8 file;
* :func:`split_train_val` and :func:`chunk_batches`: contiguous splits and batches of
  consecutive chunks for stateful truncated BPTT (row ``b`` of batch ``i + 1`` continues
  row ``b`` of batch ``i``);
* :func:`bits_per_char` and :func:`unigram_bpc`: the score and the baseline to beat.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The default corpus: these standard-library modules, in this (sorted) order. A module
# ``a.b`` is read from ``<stdlib>/a/b.py`` or, if that does not exist (the module became a
# package in a later Python), ``<stdlib>/a/b/__init__.py``. All exist in CPython 3.10-3.12;
# about 1.7 MB of Python source on 3.11. The text differs a little between Python
# versions, so every run records the corpus's SHA-256 (see :class:`Corpus`).
STDLIB_MODULES: tuple[str, ...] = (
    "argparse",
    "ast",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "heapq",
    "inspect",
    "ipaddress",
    "json.decoder",
    "json.encoder",
    "logging",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pprint",
    "queue",
    "random",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "textwrap",
    "threading",
    "tokenize",
    "typing",
    "uuid",
    "warnings",
    "zipfile",
)

UNK_ID = 0
UNK_CHAR = "\ufffd"  # what an unknown id decodes to: U+FFFD REPLACEMENT CHARACTER


# ----------------------------------------------------------------------------- vocabulary


class Vocab:
    """A character vocabulary: id 0 is the unknown character, ids 1.. the known ones.

    Attributes:
      chars: the known characters, sorted by code point; ``chars[i]`` has id ``i + 1``.
      unk: the character an unknown id decodes to (default U+FFFD).
    """

    def __init__(self, chars: Sequence[str] | str, unk: str = UNK_CHAR) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("Vocab chars must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("Vocab chars must be distinct")
        if unk in chars:
            raise ValueError(f"the unknown character {unk!r} cannot also be a known character")
        self.chars: str = "".join(sorted(chars))
        self.unk = unk
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        # A fast path for encode: a lookup table over code points.
        top = max((ord(c) for c in self.chars), default=0) + 1
        self._table = np.zeros(top, np.int32)
        for c, i in self._index.items():
            self._table[ord(c)] = i

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> Vocab:
        """The characters of ``text`` that occur at least ``min_count`` times."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(text)
        return cls([c for c, n in counts.items() if n >= min_count])

    def __len__(self) -> int:
        """Vocabulary size ``V`` including the unknown id."""
        return len(self.chars) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.chars, self.unk) == (other.chars, other.unk)

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, text: str, *, strict: bool = False) -> np.ndarray:
        """``str -> (len(text),) int32`` ids; characters not in the vocabulary give ``0``.

        Args:
          text: the characters to encode.
          strict: refuse characters outside the vocabulary (a ``ValueError`` naming them)
            instead of giving them the unknown id (e.g. for a sampling prime, where an
            unknown id would quietly change what the model reads).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if strict:
            unknown = sorted(set(text) - set(self.chars))
            if unknown:
                shown = ", ".join(repr(c) for c in unknown[:20])
                more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
                raise ValueError(
                    f"{len(unknown)} character(s) not in the vocabulary of {len(self)} ids: "
                    f"{shown}{more}; use only characters the model was trained on"
                )
        if not text:
            return np.zeros((0,), np.int32)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(
            np.int64
        )
        inside = codes < self._table.shape[0]
        return np.where(inside, self._table[np.where(inside, codes, 0)], UNK_ID).astype(np.int32)

    def decode(self, ids: Any) -> str:
        """``(n,) ids -> str``; id 0 (and any id out of range) gives :attr:`unk`."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode expects a 1-d integer array, got {ids.dtype} {ids.shape}")
        table = self.unk + self.chars
        return "".join(table[i] if 0 < i < len(table) else self.unk for i in ids.tolist())

    def to_json(self) -> dict[str, str]:
        """A JSON-able description (for checkpoints)."""
        return {"chars": self.chars, "unk": self.unk}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> Vocab:
        """Inverse of :meth:`to_json`."""
        return cls(d["chars"], d.get("unk", UNK_CHAR))


# ----------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Corpus:
    """A text and where it came from.

    Attributes:
      text: the whole text.
      name: ``"stdlib"`` or the file path.
      files: the files read, in order.
      sha256: hex digest of the UTF-8 text, recorded with every result.
    """

    text: str
    name: str
    files: tuple[str, ...]
    sha256: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stdlib_module_path(module: str, stdlib: str | Path | None = None) -> Path | None:
    """Where the source of standard-library module ``a.b`` lives, or None if absent."""
    root = Path(sysconfig.get_paths()["stdlib"] if stdlib is None else stdlib)
    base = root.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def stdlib_corpus(
    modules: Sequence[str] = STDLIB_MODULES, stdlib: str | Path | None = None
) -> Corpus:
    """The default corpus: the source of ``modules`` from this Python's standard library.

    Files are read as UTF-8 in the given order and joined with a blank line; modules this
    Python does not have are skipped (the :class:`Corpus` lists the files actually read).

    Raises:
      FileNotFoundError: none of the modules was found.
    """
    paths = [p for m in modules if (p := stdlib_module_path(m, stdlib)) is not None]
    if not paths:
        raise FileNotFoundError(
            f"none of the {len(modules)} standard-library modules was found under "
            f"{stdlib or sysconfig.get_paths()['stdlib']}"
        )
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in paths)
    return Corpus(
        text=text, name="stdlib", files=tuple(str(p) for p in paths), sha256=_digest(text)
    )


def load_text(path: str | Path | None = None) -> Corpus:
    """Read a UTF-8 text file, or the default :func:`stdlib_corpus` if ``path`` is None.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not UTF-8 or has fewer than 2 characters.
    """
    if path is None:
        return stdlib_corpus()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not valid UTF-8 text: {e}") from None
    if len(text) < 2:
        raise ValueError(f"{p} has {len(text)} characters; a language model needs at least 2")
    return Corpus(text=text, name=str(p), files=(str(p),), sha256=_digest(text))


def split_train_val(ids: Any, val_fraction: float = 0.05) -> tuple[Any, Any]:
    """Split a 1-d id stream (or a str) into a leading train and a trailing validation part.

    Args:
      ids: ``(N,)`` ids, or a str (split by characters, so the vocabulary can be built
        from the train part only).
      val_fraction: share of the stream for validation, in ``(0, 1)``.

    Returns:
      ``(train (N - n_val,), val (n_val,))`` with ``n_val = round(N * val_fraction)``,
      contiguous so the validation text is unseen text, not shuffled lines.
    """
    if not isinstance(ids, str):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-d, got shape {ids.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = round(len(ids) * val_fraction)
    if n_val < 2 or len(ids) - n_val < 2:
        raise ValueError(
            f"a stream of {len(ids)} ids is too short to split with val_fraction={val_fraction}"
        )
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


# ----------------------------------------------------------------------------- batching


def chunk_rows(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Lay a stream out as ``batch_size`` contiguous rows: ``(B, N // B)``.

    Row ``b`` holds ``ids[b * L : (b + 1) * L]`` with ``L = N // B`` (the tail is dropped).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-d, got shape {ids.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    L = len(ids) // batch_size
    if L < 2:
        raise ValueError(
            f"a stream of {len(ids)} ids is too short for batch_size={batch_size} "
            "(each row needs at least 2 ids)"
        )
    return ids[: batch_size * L].reshape(batch_size, L)


def num_chunks(ids: np.ndarray, batch_size: int, seq_len: int) -> int:
    """How many batches :func:`chunk_batches` yields per pass over ``ids``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = (len(ids) // batch_size - 1) // seq_len
    if n < 1:
        raise ValueError(
            f"a stream of {len(ids)} ids gives rows of {len(ids) // batch_size} ids with "
            f"batch_size={batch_size}: too short for one chunk of seq_len={seq_len} + 1"
        )
    return n


def get_chunk(rows: np.ndarray, i: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``i`` of consecutive chunks: ``(inputs (B, T), targets (B, T))``.

    ``inputs = rows[:, i*T : (i+1)*T]`` and ``targets`` the same shifted by one, so the
    inputs of batch ``i + 1`` start right after those of batch ``i`` in every row.
    """
    s = i * seq_len
    if s + seq_len + 1 > rows.shape[1]:
        raise IndexError(f"chunk {i} of seq_len={seq_len} runs past rows of {rows.shape[1]}")
    return rows[:, s : s + seq_len], rows[:, s + 1 : s + seq_len + 1]


def chunk_batches(
    ids: np.ndarray, batch_size: int, seq_len: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(inputs, targets)``, each ``(B, T)``, in order over one pass of ``ids``.

    Row ``b`` of batch ``i + 1`` continues row ``b`` of batch ``i``, so an RNN's final
    state on one batch is the right initial state for the next (stateful truncated BPTT).
    """
    rows = chunk_rows(ids, batch_size)
    for i in range(num_chunks(ids, batch_size, seq_len)):
        yield get_chunk(rows, i, seq_len)


# ----------------------------------------------------------------------------- scores


def bits_per_char(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy in bits: ``-mean log2 softmax(logits)[target]``.

    Args:
      logits: ``(..., V)`` unnormalised log-probabilities.
      targets: ``(...)`` int ids in ``[0, V)``.
      mask: optional ``(...)`` weights (1 = count, 0 = ignore).

    Returns:
      A scalar: bits per character.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits (..., V) and targets (...) disagree: {logits.shape} vs {targets.shape}"
        )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if mask is None:
        return jnp.mean(nll) / math.log(2.0)
    mask = mask.astype(nll.dtype)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0) / math.log(2.0)


def unigram_bpc(
    train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int, alpha: float = 1.0
) -> float:
    """Bits per character of ``eval_ids`` under the character frequencies of ``train_ids``.

    ``p(c) = (count(c) + alpha) / (N + alpha V)`` (add-alpha smoothing so an unseen character
    costs a finite amount); ``bpc = -mean_t log2 p(eval_t)``. With ``alpha = 0`` and
    ``eval = train`` it is the entropy of the character frequencies.
    """
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64)
    if counts.shape[0] != vocab_size:
        raise ValueError(f"train ids exceed vocab_size={vocab_size}")
    p = (counts + alpha) / (counts.sum() + alpha * vocab_size)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log2(p[np.asarray(eval_ids)])))


__all__ = [
    "STDLIB_MODULES",
    "UNK_CHAR",
    "UNK_ID",
    "Corpus",
    "Vocab",
    "bits_per_char",
    "chunk_batches",
    "chunk_rows",
    "get_chunk",
    "load_text",
    "num_chunks",
    "split_train_val",
    "stdlib_corpus",
    "stdlib_module_path",
    "unigram_bpc",
]
