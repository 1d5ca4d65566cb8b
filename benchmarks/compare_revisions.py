"""Training-step time of this checkout's ``gr.scan`` against another git revision's, in one process.

The other revision's ``gatedrnn/`` is extracted with ``git archive`` into a temporary
folder and imported under another package name, so both versions run side by side and are
timed round by round (every version once per round: a change of machine load hits both
alike). The training step is ``jax.value_and_grad`` of ``sum(ys**2)`` with respect to the
params and the inputs, float32, default ``gr.scan`` options; ``fused=False`` of this
checkout is timed too.

Run ``python -m benchmarks.compare_revisions --ref REV`` from the repo root (``--quick`` for
tiny shapes).
Writes ``OUT/compare_revisions.json`` and ``OUT/compare_revisions.md``: per cell and shape
the median time of each, and the ratio ``time(REV) / time(this)`` as a median with its
min and max over rounds (> 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import gatedrnn
from benchmarks.rnn_speed import interleaved_times

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(32, 128, 256, 256), (1, 1000, 128, 128)]
QUICK_SHAPES = [(2, 6, 3, 4)]
CELLS = ("vanilla", "lstm", "gru")


def import_revision(ref: str, into: Path, name: str = "gatedrnn_rev") -> Any:
    """Import ``gatedrnn/`` as it is at git revision ``ref`` as the package ``name``.

    Raises:
      ValueError: ``ref`` is not a revision of this repository.
    """
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "gatedrnn"], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise ValueError(f"cannot read gatedrnn/ at revision {ref!r}: {proc.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")
    (into / "gatedrnn").rename(into / name)
    for path in (into / name).rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bgatedrnn\b(?=[.\s])", name, text))
    # Not a path preamble: the other revision's copy is imported from the temporary folder,
    # which is on sys.path only for this import (the package's submodules are found through
    # its own __path__ afterwards).
    sys.path.insert(0, str(into))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(into))


def train_step(module: Any, kind: str, shape: tuple, **scan_kwargs: Any) -> Callable[[], Any]:
    """A jitted, blocking training step of ``module``'s ``kind`` cell at ``(B, T, I, H)``."""
    B, T, I, H = shape
    cell = getattr(module, kind)(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))

    def loss(p: Any, x: jax.Array) -> jax.Array:
        return jnp.sum(module.scan(cell, p, x, **scan_kwargs)[1] ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(params, xs))


def compare(rev: Any, shapes: list[tuple], rounds: int) -> list[dict[str, Any]]:
    """One row per cell and shape: median ms of each version, and ratios with their spread."""
    rows = []
    for shape in shapes:
        for kind in CELLS:
            fns = {
                "revision": train_step(rev, kind, shape),
                "this": train_step(gatedrnn, kind, shape),
                "this_autodiff": train_step(gatedrnn, kind, shape, fused=False),
            }
            for fn in fns.values():  # a second warm-up call: the first may still allocate
                fn()
            t = interleaved_times(fns, rounds)
            per_round = [a / b for a, b in zip(t["revision"], t["this"], strict=True)]
            med = {k: statistics.median(v) for k, v in t.items()}
            rows.append(
                {
                    "cell": kind,
                    "shape": list(shape),
                    "ms": {k: 1e3 * v for k, v in med.items()},
                    "revision_vs_this": med["revision"] / med["this"],
                    "revision_vs_this_min": min(per_round),
                    "revision_vs_this_max": max(per_round),
                    "autodiff_vs_this": med["this_autodiff"] / med["this"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    lines = [
        f"Training step, this checkout vs revision `{results['ref']}` "
        f"({results['rounds']} interleaved rounds, {results['device']}; ratio = time of the "
        "revision / time of this checkout, > 1: this checkout is faster)",
        "",
        "| cell | (B, T, I, H) | revision ms | this ms | ratio (min-max) | fused=False / this |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['cell']} | {tuple(r['shape'])} | {r['ms']['revision']:.1f} | "
            f"{r['ms']['this']:.1f} | {r['revision_vs_this']:.2f} "
            f"({r['revision_vs_this_min']:.2f}-{r['revision_vs_this_max']:.2f}) | "
            f"{r['autodiff_vs_this']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="git revision to compare against")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for the tests)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 11)")
    parser.add_argument("--out", default="benchmarks/results/revisions", help="output folder")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 11)
    with tempfile.TemporaryDirectory() as tmp:
        rev = import_revision(args.ref, Path(tmp))
        rows = compare(rev, QUICK_SHAPES if args.quick else SHAPES, rounds)
    device = jax.devices()[0]
    results = {
        "ref": args.ref,
        "rounds": rounds,
        "device": f"{device.platform}:{device.device_kind}",
        "quick": args.quick,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_revisions.json").write_text(json.dumps(results, indent=2))
    (out / "compare_revisions.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
