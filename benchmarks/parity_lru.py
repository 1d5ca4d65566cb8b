"""Our LRU (``gatedrnn.cells.make_cell("lru", H)``) against memax's LRU, with the same weights.

The reference is memax's equinox ``LRU`` (``memax/equinox/semigroups/lru.py``, after the
paper's own minimal-LRU code): the same exponential parametrization (``nu_log``,
``theta_log``, ``gamma_log``), ``B (N, H)`` and ``C (H, N)`` as real and imaginary parts (ours
are their transposes) and an elementwise ``D (H,)``; it needs ``I = N = H`` (its type hints
say so). memax runs one sequence with ``jax.lax.associative_scan``; it is vmapped over the
batch here, with our initial state as its carry.

* parity (always): the largest absolute difference of the outputs and the final state,
  ours (step form and parallel form) against memax, in float32 and float64, at
  ``(B, T, H) = (4, 256, 32)``, a random initial state and inputs drawn in float32 (memax
  casts its input to ``complex64``, which is then exact in float64 too). Written to
  ``--out`` (default ``benchmarks/results/parity/lru.json``), atomically.
* speed (``--speed`` only; run it on a quiet machine): forward, and forward + gradient
  (with respect to the params and the inputs), of ours (step form, parallel form) and of
  memax side by side in one process at ``(16, 1024, 256)`` and ``(1, 4096, 256)``,
  float32, interleaved round by round, medians; added to the same JSON as ``"speed"``.

Run ``python -m benchmarks.parity_lru [--speed] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gatedrnn as gr
from gatedrnn.cells import make_cell
from gatedrnn.cells.lru import LRUParams, LRUState

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "parity" / "lru.json"
PARITY_SHAPE = (4, 256, 32)
SPEED_SHAPES = [(16, 1024, 256), (1, 4096, 256)]
REFERENCE = "memax.equinox.semigroups.lru.LRU (memax {version})"


def memax_apply(hidden_size: int) -> Callable[[LRUParams, jax.Array, LRUState], tuple]:
    """memax's LRU as a pure function of our params: ``(params, xs (B, T, H), h0) ->
    (LRUState h_T, ys (B, T, H))``.

    A memax ``LRU`` module of the same size is built once; each call puts our params into
    it (``B = b^T``, ``C = c^T``, ``D = d``), so ``jax.grad`` with respect to ``params``
    goes through memax's own code.
    """
    import equinox as eqx
    from memax.equinox.semigroups.lru import LRU

    H = hidden_size
    # Shapes only (every array is replaced below): no random draws, nothing to compile.
    template = eqx.filter_eval_shape(LRU, recurrent_size=H, hidden_size=H, key=jax.random.key(0))

    def fields(m: Any) -> tuple:
        return (m.nu_log, m.theta_log, m.gamma_log, m.B_re, m.B_im, m.C_re, m.C_im, m.D)

    def apply(params: LRUParams, xs: jax.Array, h0: LRUState) -> tuple[LRUState, jax.Array]:
        if params.d.shape != (H,) or params.b_re.shape != (H, H):
            raise ValueError(f"memax's LRU needs I = N = H = {H} and an elementwise D (H,)")
        p = params
        values = (p.nu_log, p.theta_log, p.gamma_log, p.b_re.T, p.b_im.T, p.c_re.T, p.c_im.T, p.d)
        model = eqx.tree_at(fields, template, values)
        T = xs.shape[1]

        def one(x: jax.Array, re: jax.Array, im: jax.Array) -> tuple:
            h = jax.lax.complex(re, im)
            carry = ((jnp.ones_like(h), h), jnp.zeros((), bool))
            hs, y = model(carry, (x, jnp.zeros((T,), bool)))
            h_T = hs[0][1][-1]
            return jnp.real(h_T), jnp.imag(h_T), y

        re, im, ys = jax.vmap(one)(xs, h0.re, h0.im)
        return LRUState(re=re, im=im), ys

    return apply


def _memax_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memax")
    except PackageNotFoundError:
        return "unknown"


def _inputs(shape: tuple[int, int, int], dtype: Any, seed: int = 0) -> tuple:
    """Params, inputs ``(B, T, H)`` and a random initial state, all of ``dtype``."""
    B, T, H = shape
    cell = make_cell("lru", H)
    params = cell.init(jax.random.PRNGKey(seed), H, dtype)
    rng = np.random.default_rng(seed)
    # Float32 values: memax casts its input to complex64, exactly so for these.
    xs = jnp.asarray(rng.standard_normal((B, T, H), np.float32), dtype)
    re, im = jnp.asarray(0.5 * rng.standard_normal((2, B, H), np.float32), dtype)
    return cell, params, xs, LRUState(re=re, im=im)


def max_abs_diff(shape: tuple[int, int, int], dtype: Any, seed: int = 0) -> dict[str, float]:
    """Largest ``|ours - memax|`` over outputs and final state, per form of ours.

    Returns:
      ``{"step": d, "parallel": d}``: our step form (``gr.scan``'s loop) and our parallel
      form (``parallel=True``) against memax.
    """
    cell, params, xs, h0 = _inputs(shape, dtype, seed)
    ref = jax.jit(memax_apply(shape[2]))
    want_h, want_ys = ref(params, xs, h0)
    out = {}
    for form, parallel in (("step", False), ("parallel", True)):
        run = jax.jit(partial(gr.scan, cell, parallel=parallel))
        h, ys = run(params, xs, h0)
        diffs = jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), (h, ys), (want_h, want_ys))
        )
        out[form] = float(max(diffs))
    return out


def parity(shape: tuple[int, int, int] = PARITY_SHAPE) -> dict[str, Any]:
    """The parity record: max abs difference in float32 and float64 (x64 turned on here)."""
    f32 = max_abs_diff(shape, jnp.float32)
    with jax.enable_x64(True):
        f64 = max_abs_diff(shape, jnp.float64)
    return {
        "cell": "lru",
        "reference": REFERENCE.format(version=_memax_version()),
        "max_abs_diff_float32": max(f32.values()),
        "max_abs_diff_float64": max(f64.values()),
        "by_form": {"float32": f32, "float64": f64},
        "shape": list(shape),
        "compared": "outputs ys (B, T, H) and final state (B, N), N = H",
    }


def speed(shapes: list[tuple[int, int, int]] = SPEED_SHAPES, rounds: int = 5) -> list[dict]:
    """Median seconds of forward and forward + grad, ours (step, parallel) vs memax, float32.

    Timings are interleaved round by round (each implementation once per round) after one
    warm-up call each, so a change of load hits all alike.

    Returns:
      One row per shape: ``{"shape", "backend", "forward": {...}, "train": {...}}`` with
      median seconds of ``ours_step``, ``ours_parallel`` and ``memax``, and
      ``memax_over_ours_best``, memax's time over our faster form's (> 1: ours is faster).
    """
    rows = []
    for shape in shapes:
        cell, params, xs, h0 = _inputs(shape, jnp.float32)
        impls: dict[str, Callable] = {
            "ours_step": partial(gr.scan, cell, parallel=False),
            "ours_parallel": partial(gr.scan, cell, parallel=True),
            "memax": memax_apply(shape[2]),
        }
        fns = {}
        for name, f in impls.items():

            def loss(p: LRUParams, x: jax.Array, h: LRUState, f: Callable = f) -> jax.Array:
                final, ys = f(p, x, h)
                return jnp.sum(ys**2) + jnp.sum(final.re**2)

            fns[(name, "forward")] = jax.jit(f)
            fns[(name, "train")] = jax.jit(jax.grad(loss, argnums=(0, 1)))
        times: dict[tuple, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(params, xs, h0))
        for _ in range(rounds):
            for key, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, xs, h0))
                times[key].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        row: dict[str, Any] = {"shape": list(shape), "backend": jax.default_backend()}
        for phase in ("forward", "train"):
            row[phase] = {name: med[(name, phase)] for name in impls}
            row[phase]["memax_over_ours_best"] = med[("memax", phase)] / min(
                med[("ours_step", phase)], med[("ours_parallel", phase)]
            )
        rows.append(row)
    return rows


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically: a temporary file, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Largest abs difference of gatedrnn's LRU vs memax's LRU (float32, "
        "float64), and with --speed their forward / training-step times side by side."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=list(PARITY_SHAPE),
        metavar=("B", "T", "H"),
        help="parity shape (default %(default)s)",
    )
    parser.add_argument(
        "--speed",
        action="store_true",
        help=f"also time forward and forward+grad at {SPEED_SHAPES} (slow; quiet machine)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds for --speed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    record = parity(tuple(args.shape))
    if args.speed:
        record["speed"] = speed(rounds=args.rounds)
    write_json(args.out, record)
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
