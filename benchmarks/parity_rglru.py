"""Our RG-LRU (``gatedrnn.cells.rglru``) against recurrentgemma's JAX ``RGLRU`` layer.

Parity (always): the largest absolute difference between ``gr.scan(rglru(H), ...)`` and
``recurrentgemma.jax.layers.RGLRU`` given the same params (ours converted with
:func:`reference_variables`; the input projection set to the identity, since the layer has
none), the same input and initial state, and no resets (``segment_pos = 1 .. T``), at
``(B, T, H) = (4, 256, 32)``, in float32 and float64, for our step form and parallel form,
outputs and final state.

recurrentgemma's layer accumulates its scan in float32 whatever the input dtype
(``scan.linear_scan(acc_float_dtype=float32)``, not exposed by the layer). The float64
reference therefore runs with that accumulation switched to float64
(:func:`patched_scan`); the difference with the layer as shipped is reported too
(``details.float64.as_shipped``).

Speed (``--speed`` only; run it on a quiet machine): forward pass and forward + gradient
with respect to the params, medians of ``--rounds`` interleaved repeats, of ours (step form
and parallel form) and recurrentgemma's layer (its default scan on this backend) at
``(B, T, H) = (16, 1024, 256)`` and ``(1, 4096, 256)``, float32. Ours includes the input
projection ``x w_in`` that the layer does not have.

Run ``python -m benchmarks.parity_rglru [--speed] [--out PATH]``; writes
``benchmarks/results/parity/rglru.json`` atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import gatedrnn as gr
from gatedrnn.cells.rglru import RGLRUParams, rglru

REFERENCE = "recurrentgemma.jax.layers.RGLRU"
PARITY_SHAPE = (4, 256, 32)
PARITY_HEADS = 4
SPEED_SHAPES = ((16, 1024, 256), (1, 4096, 256))
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "parity" / "rglru.json"


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def parity_problem(
    key: jax.Array, B: int, T: int, H: int, num_heads: int, dtype: Any
) -> tuple[RGLRUParams, jax.Array, jax.Array]:
    """``(params, xs (B, T, H), h0 (B, H))`` for a parity run, drawn in one compiled call.

    Params as ``rglru(H, num_heads).init`` draws them, then ``w_in = I`` and ``b_in = 0``
    (the layer has no input projection) and non-zero gate biases.
    """
    k_init, ka, kx, kxs, kh = jax.random.split(key, 5)
    params = rglru(H, num_heads).init(k_init, H, dtype)
    params = params._replace(
        w_in=jnp.eye(H, dtype=dtype),
        b_in=jnp.zeros((H,), dtype),
        b_a=0.5 * jax.random.normal(ka, (H,), dtype),
        b_x=0.5 * jax.random.normal(kx, (H,), dtype),
    )
    xs = jax.random.normal(kxs, (B, T, H), dtype)
    h0 = 0.5 * jax.random.normal(kh, (B, H), dtype)
    return params, xs, h0


def reference_variables(params: RGLRUParams) -> dict:
    """recurrentgemma ``RGLRU`` variables holding our params (the layer has no ``w_in``).

    ``a_param = -lam``; gate weights as they are ``(heads, H/heads, H/heads)``; biases
    reshaped to ``(heads, H/heads)``.
    """
    heads = params.w_a.shape[0]
    return {
        "params": {
            "a_param": -params.lam,
            "a_gate": {"w": params.w_a, "b": params.b_a.reshape(heads, -1)},
            "input_gate": {"w": params.w_x, "b": params.b_x.reshape(heads, -1)},
        }
    }


def reference_layer(H: int, num_heads: int, dtype: Any) -> Any:
    """recurrentgemma's ``RGLRU(width=H, num_heads=num_heads)`` with params of ``dtype``."""
    from recurrentgemma.jax.layers import RGLRU

    return RGLRU(width=H, num_heads=num_heads, param_dtype=dtype)


def reference_apply(
    layer: Any, variables: dict, xs: jax.Array, h0: jax.Array, segment_pos: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(final_state (B, H), ys (B, T, H))`` of the layer; no resets by default
    (``segment_pos = 1 .. T``, never 0)."""
    B, T, _ = xs.shape
    if segment_pos is None:
        segment_pos = jnp.broadcast_to(jnp.arange(1, T + 1), (B, T))
    ys, last_h = layer.apply(variables, xs, segment_pos, cache=h0)
    return last_h, ys


@contextlib.contextmanager
def patched_scan(**overrides: Any) -> Iterator[None]:
    """Inside the block, recurrentgemma's ``scan.linear_scan`` runs with ``overrides``.

    ``acc_float_dtype=jnp.float64``: accumulate in float64 (the layer always asks for
    float32); ``unroll=1``: compile in a second instead of unrolling 128 steps (the tests;
    the same arithmetic in the same order).
    """
    from recurrentgemma.jax import scan

    original = scan.linear_scan

    def linear_scan(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, **overrides})

    scan.linear_scan = linear_scan
    try:
        yield
    finally:
        scan.linear_scan = original


def _max_diff(a: Any, b: Any) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def parity(
    B: int,
    T: int,
    H: int,
    num_heads: int,
    dtype: Any,
    seed: int = 0,
    patch64: bool = True,
    unroll: int | None = None,
    forms: tuple[str, ...] = ("step", "parallel"),
) -> dict[str, Any]:
    """Largest absolute differences, ours vs the layer, for one shape and dtype.

    ``patch64``: in float64, the layer accumulates in float64 (:func:`patched_scan`);
    ``unroll``: the layer's scan unroll (None: as shipped, 128); ``forms``: ours to compare.

    Returns:
      ``{"step": {"ys", "final_state"}, "parallel": {...}, "max_abs_diff",
      "max_abs_output"}`` (floats); call under ``jax.enable_x64(True)`` for float64.
    """
    dtype = jnp.dtype(dtype)
    cell = rglru(H, num_heads)
    params, xs, h0 = parity_problem(jax.random.PRNGKey(seed), B, T, H, num_heads, dtype)

    layer = reference_layer(H, num_heads, dtype)
    variables = reference_variables(params)
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), xs, jnp.zeros((B, T), jnp.int32))
    want = jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes)
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), variables)
    if want != got:
        raise AssertionError(f"reference variables {got} do not match the layer's {want}")
    use64 = patch64 and dtype == jnp.float64
    # As shipped the layer wants its cache in float32 (its accumulation dtype).
    ref_h0 = h0 if use64 or dtype == jnp.float32 else h0.astype(jnp.float32)
    h0 = ref_h0.astype(dtype)
    overrides: dict[str, Any] = {"acc_float_dtype": jnp.float64} if use64 else {}
    if unroll is not None:
        overrides["unroll"] = unroll
    with patched_scan(**overrides):
        ref_h, ref_ys = jax.jit(functools.partial(reference_apply, layer))(variables, xs, ref_h0)

    out: dict[str, Any] = {}
    for form in forms:
        flag = {"step": False, "parallel": True}[form]
        h, ys = jax.jit(lambda p, x, s, flag=flag: gr.scan(cell, p, x, s, parallel=flag))(
            params, xs, h0
        )
        out[form] = {"ys": _max_diff(ys, ref_ys), "final_state": _max_diff(h, ref_h)}
    out["max_abs_diff"] = max(v for form in forms for v in out[form].values())
    out["max_abs_output"] = float(jnp.max(jnp.abs(ref_ys)))
    return out


def run_parity(
    shape: tuple[int, int, int] = PARITY_SHAPE, num_heads: int = PARITY_HEADS
) -> dict[str, Any]:
    """The parity part of the JSON: float32, and float64 (patched and as shipped)."""
    B, T, H = shape
    details: dict[str, Any] = {"float32": parity(B, T, H, num_heads, jnp.float32)}
    with jax.enable_x64(True):
        details["float64"] = parity(B, T, H, num_heads, jnp.float64)
        details["float64"]["as_shipped"] = parity(B, T, H, num_heads, jnp.float64, patch64=False)[
            "max_abs_diff"
        ]
    return {
        "cell": "rglru",
        "reference": REFERENCE,
        "max_abs_diff_float32": details["float32"]["max_abs_diff"],
        "max_abs_diff_float64": details["float64"]["max_abs_diff"],
        "shape": {"B": B, "T": T, "H": H},
        "num_heads": num_heads,
        "resets": "none (segment_pos = 1..T)",
        "compared": "outputs ys and final state of gr.scan (step and parallel forms)",
        "float64_note": (
            "recurrentgemma accumulates its scan in float32 (linear_scan acc_float_dtype); "
            "max_abs_diff_float64 is against the layer with the accumulation patched to "
            "float64, details.float64.as_shipped against the layer as shipped"
        ),
        "details": details,
        "versions": {
            "jax": jax.__version__,
            "recurrentgemma": _version("recurrentgemma"),
            "python": platform.python_version(),
        },
        "device": jax.devices()[0].device_kind,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def speed_fns(B: int, T: int, H: int, num_heads: int, seed: int = 0) -> dict[str, Any]:
    """Blocking zero-argument functions ``{"forward"|"train": {impl: fn}}`` for one shape."""
    cell = rglru(H, num_heads)
    params, xs, h0 = parity_problem(jax.random.PRNGKey(seed), B, T, H, num_heads, jnp.float32)
    h0 = jnp.zeros_like(h0)
    layer = reference_layer(H, num_heads, jnp.float32)
    variables = reference_variables(params)
    fns: dict[str, dict[str, Any]] = {"forward": {}, "train": {}}

    def ours(parallel: bool) -> tuple[Any, Any]:
        def forward(p: Any, x: jax.Array) -> jax.Array:
            return gr.scan(cell, p, x, h0, parallel=parallel)[1]

        return forward, params

    def theirs(v: Any, x: jax.Array) -> jax.Array:
        return reference_apply(layer, v, x, h0)[1]

    impls = {"ours_step": ours(False), "ours_parallel": ours(True)}
    impls["recurrentgemma"] = (theirs, variables)
    for name, (forward, p) in impls.items():
        fwd = jax.jit(forward)
        train = jax.jit(jax.value_and_grad(lambda p, x, f=forward: jnp.mean(f(p, x) ** 2)))
        fns["forward"][name] = functools.partial(
            lambda f, p: jax.block_until_ready(f(p, xs)), fwd, p
        )
        fns["train"][name] = functools.partial(
            lambda f, p: jax.block_until_ready(f(p, xs)), train, p
        )
    return fns


def run_speed(
    shapes: tuple[tuple[int, int, int], ...] = SPEED_SHAPES, rounds: int = 5, num_heads: int = 1
) -> list[dict[str, Any]]:
    """Median seconds per call and ``recurrentgemma / ours`` ratios (> 1: ours faster)."""
    from benchmarks.rnn_speed import interleaved_medians

    rows = []
    for B, T, H in shapes:
        row: dict[str, Any] = {"B": B, "T": T, "H": H, "num_heads": num_heads}
        for phase, fns in speed_fns(B, T, H, num_heads).items():
            med = interleaved_medians(fns, rounds)
            row[phase] = {
                "seconds": med,
                "speedup_step": med["recurrentgemma"] / med["ours_step"],
                "speedup_parallel": med["recurrentgemma"] / med["ours_parallel"],
            }
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON to write (atomically)")
    p.add_argument("--speed", action="store_true", help="also time ours vs recurrentgemma")
    p.add_argument("--rounds", type=int, default=5, help="timed repeats per implementation")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from gatedrnn.training.io import write_text

    args = parse_args(argv)
    results = run_parity()
    if args.speed:
        results["speed"] = run_speed(rounds=args.rounds)
        results["speed_note"] = (
            "medians of interleaved repeats, float32; train = value_and_grad of mean(ys**2) "
            "w.r.t. the params; ours includes the input projection x w_in"
        )
    write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in results if k.startswith("max_abs")}, indent=2))
    return results


if __name__ == "__main__":
    main()
