"""gatedrnn's sLSTM against the xlstm package's pure-PyTorch ("vanilla") sLSTM, same weights.

Parity (default): the largest absolute difference between ``gr.scan`` of
``make_cell("slstm", H, num_heads=4)`` and xlstm's ``sLSTMCell(backend="vanilla")`` fed
``x @ w_x``, over the outputs ``h (B, T, H)`` and the final state ``h, c, n, m``, at
``(B, T, H) = (4, 256, 32)`` in float32 and float64 (torch double, JAX x64). Writes
``{"cell", "reference", "max_abs_diff_float32", "max_abs_diff_float64", "shape", ...}``
to ``--out`` (default ``benchmarks/results/parity/slstm.json``) atomically.

Speed (``--speed``, slow; run it on a quiet machine): forward pass and training step
(forward + backward with respect to the weights and the inputs, loss = sum of outputs),
float32, ours (``gr.scan`` under ``jax.jit``) against xlstm's vanilla path side by side
in one process, medians of interleaved rounds, at ``(B, T, H) = (16, 1024, 256)`` and
``(1, 4096, 256)`` (input size ``H``, 4 heads). Added to the same JSON under ``"speed"``.

Weights move between the two by a reshape (see ``gatedrnn/cells/slstm.py``): xlstm's
external ``recurrent_kernel (heads, head_dim, 4, head_dim)`` is our ``r`` and its bias
``(heads, 4, head_dim)`` is our gate-major ``b (4H,)``; the gate order i, f, z, o is the
same. The package has the sigmoid forget gate only, so parity is for that one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gatedrnn as gr
from gatedrnn.cells import make_cell
from gatedrnn.cells.base import fan_in_normal
from gatedrnn.cells.slstm import SLSTMParams, SLSTMState

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "parity" / "slstm.json"
PARITY_SHAPE = (4, 256, 32)
SPEED_SHAPES = [(16, 1024, 256), (1, 4096, 256)]
NUM_HEADS = 4
REFERENCE = "xlstm sLSTMCell(backend='vanilla') (xlstm/blocks/slstm/src/vanilla/slstm.py)"


def random_problem(
    B: int, T: int, H: int, num_heads: int, dtype: Any, seed: int = 0, I: int | None = None
) -> tuple[Any, SLSTMParams, Any]:
    """A cell, params with every term non-zero (random ``r``, jittered bias) and ``xs``.

    Returns:
      ``(cell, params, xs (B, T, I))`` in ``dtype`` (``I = H`` unless given).
    """
    I = H if I is None else I
    cell = make_cell("slstm", H, num_heads=num_heads, recurrent_init=fan_in_normal)
    k_init, k_b, k_x = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k_init, I, dtype)
    params = params._replace(b=params.b + 0.5 * jax.random.normal(k_b, params.b.shape, dtype))
    xs = jax.random.normal(k_x, (B, T, I), dtype)
    return cell, params, xs


def xlstm_cell(params: SLSTMParams, num_heads: int) -> Any:
    """xlstm's vanilla ``sLSTMCell`` holding ``params``' recurrent kernel and bias.

    Its dtype is the params' (float32, or double for float64); it takes the projected
    input ``x @ w_x`` ``(B, T, 4H)`` (gate-major, as ours) and returns ``(h (B, T, H),
    state (4, B, H))`` with the state rows ``h, c, n, m``.
    """
    import torch
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    heads, dh, _ = params.r.shape
    config = sLSTMCellConfig(
        hidden_size=heads * dh, num_heads=heads, backend="vanilla", output_shape="BSH"
    )
    cell = sLSTMCell(config)
    tdtype = torch.float64 if params.r.dtype == jnp.float64 else torch.float32
    cell = cell.to(tdtype)
    r = torch.as_tensor(np.array(params.r)).reshape(heads, dh, 4, dh)
    b = torch.as_tensor(np.array(params.b)).reshape(4, heads, dh).permute(1, 0, 2)
    with torch.no_grad():
        cell._recurrent_kernel_.data = cell._recurrent_kernel_ext2int(r).contiguous()
        cell._bias_.data = cell._bias_ext2int(b).contiguous()
    return cell


def reference_run(
    params: SLSTMParams, xs: Any, num_heads: int, state0: SLSTMState | None = None
) -> tuple[SLSTMState, np.ndarray]:
    """xlstm's vanilla path on ``xs (B, T, I)``: ``(final SLSTMState, ys (B, T, H))`` numpy."""
    import torch

    cell = xlstm_cell(params, num_heads)
    wx = torch.as_tensor(np.array(xs)) @ torch.as_tensor(np.array(params.w_x))
    state = None if state0 is None else torch.as_tensor(np.stack([np.array(s) for s in state0]))
    with torch.no_grad():
        ys, final = cell(wx, state)
    return SLSTMState(*final.numpy()), ys.numpy()


def ours_run(
    cell: Any, params: SLSTMParams, xs: Any, state0: SLSTMState | None = None
) -> tuple[SLSTMState, np.ndarray]:
    """``gr.scan`` of our cell: ``(final SLSTMState, ys (B, T, H))`` as numpy."""
    final, ys = jax.jit(gr.scan, static_argnums=0)(cell, params, xs, state0)
    return SLSTMState(*(np.asarray(s) for s in final)), np.asarray(ys)


def max_abs_diff(a: tuple, b: tuple) -> float:
    """The largest absolute difference over all leaves of two ``(state, ys)`` results."""
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves)


def parity(B: int, T: int, H: int, num_heads: int = NUM_HEADS, seed: int = 0) -> dict[str, Any]:
    """Largest absolute differences, ours vs xlstm's vanilla path, float32 and float64."""
    import torch
    import xlstm

    out: dict[str, Any] = {
        "cell": "slstm",
        "reference": f"{REFERENCE}, xlstm {getattr(xlstm, '__version__', '?')}",
        "compared": "outputs h (B, T, H) and the final state h, c, n, m; zero initial state",
        "shape": [B, T, H],
        "num_heads": num_heads,
        "seed": seed,
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
    }
    for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        with jax.enable_x64(dtype == jnp.float64):
            cell, params, xs = random_problem(B, T, H, num_heads, dtype, seed)
            got = ours_run(cell, params, xs)
            want = reference_run(params, xs, num_heads)
            out[f"max_abs_diff_{name}"] = max_abs_diff(got, want)
            out[f"max_abs_diff_outputs_{name}"] = max_abs_diff(got[1], want[1])
    return out


# -------------------------------------------------------------------------------- speed


def _ours_fns(B: int, T: int, H: int, num_heads: int, seed: int) -> tuple:
    cell, params, xs = random_problem(B, T, H, num_heads, jnp.float32, seed)

    def loss(params: SLSTMParams, xs: Any) -> Any:
        return jnp.sum(gr.scan(cell, params, xs)[1])

    fwd = jax.jit(lambda p, x: gr.scan(cell, p, x)[1])
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return (
        lambda: jax.block_until_ready(fwd(params, xs)),
        lambda: jax.block_until_ready(step(params, xs)),
    )


def _xlstm_fns(B: int, T: int, H: int, num_heads: int, seed: int) -> tuple:
    import torch

    _, params, xs = random_problem(B, T, H, num_heads, jnp.float32, seed)
    module = xlstm_cell(params, num_heads)
    w_x = torch.as_tensor(np.array(params.w_x)).requires_grad_(True)
    x = torch.as_tensor(np.array(xs)).requires_grad_(True)

    def fwd() -> None:
        with torch.no_grad():
            module(x @ w_x)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        w_x.grad = x.grad = None
        ys, _ = module(x @ w_x)
        ys.sum().backward()

    return fwd, step


def speed(
    shapes: list[tuple[int, int, int]], num_heads: int = NUM_HEADS, rounds: int = 5, seed: int = 0
) -> list[dict[str, Any]]:
    """Median seconds of forward and training step, ours vs xlstm vanilla, per shape."""
    from benchmarks.rnn_speed import interleaved_times, spread

    rows = []
    for B, T, H in shapes:
        ours_fwd, ours_step = _ours_fns(B, T, H, num_heads, seed)
        ref_fwd, ref_step = _xlstm_fns(B, T, H, num_heads, seed)
        row: dict[str, Any] = {"shape": [B, T, H], "num_heads": num_heads}
        for phase, fns in (
            ("forward", {"gatedrnn": ours_fwd, "xlstm_vanilla": ref_fwd}),
            ("train", {"gatedrnn": ours_step, "xlstm_vanilla": ref_step}),
        ):
            times = {k: spread(v) for k, v in interleaved_times(fns, rounds).items()}
            ratio = times["xlstm_vanilla"]["median"] / times["gatedrnn"]["median"]
            row[phase] = {"seconds": times, "speedup_vs_xlstm": ratio}
            print(f"{(B, T, H)} {phase}: gatedrnn {ratio:.2f}x xlstm vanilla", flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--speed", action="store_true", help="also time ours vs xlstm (slow; quiet machine)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (--speed)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (--speed)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from gatedrnn.training.io import write_text

    results = parity(*PARITY_SHAPE, seed=args.seed)
    print(
        f"slstm vs xlstm vanilla, (B, T, H) = {PARITY_SHAPE}: max abs diff "
        f"float32 {results['max_abs_diff_float32']:.3g}, "
        f"float64 {results['max_abs_diff_float64']:.3g}",
        flush=True,
    )
    if args.speed:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        results["speed_threads_torch"] = torch.get_num_threads()
        results["speed"] = speed(SPEED_SHAPES, rounds=args.rounds, seed=args.seed)
    elif args.out.exists():  # keep the timings of an earlier --speed run
        old = json.loads(args.out.read_text())
        results.update({k: old[k] for k in ("speed", "speed_threads_torch") if k in old})
    write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
