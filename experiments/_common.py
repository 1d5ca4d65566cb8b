"""What every experiment script shares: its command line, float64, and writing results.

Experiments import this as ``from experiments._common import ...`` (run from the repo root,
``python experiments/NAME.py``); the scripts put the repo root on ``sys.path`` themselves.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gatedrnn import cli

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> cli.ArgumentParser:
    """An argparse parser with the options every experiment has: --quick, --seed, --out.

    Its errors are one line with exit status 2 when the script runs through
    :func:`gatedrnn.cli.run`; ``--out`` must be a folder that can be written to.
    """
    p = cli.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="a small, fast run (for tests and smoke checks)"
    )
    p.add_argument("--seed", type=cli.nonneg_int, default=0, help="base random seed")
    p.add_argument(
        "--out", type=cli.output_dir, default=RESULTS, help="directory for the JSON and PNG results"
    )
    return p


def setup_jax(x64: bool = True) -> None:
    """Float64 on request (so tiny gradients do not underflow to zero)."""
    import jax

    jax.config.update("jax_enable_x64", x64)


def to_jsonable(x: Any) -> Any:
    """Arrays to lists, NaN/Inf to strings JSON can hold ("nan", "inf", "-inf")."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return to_jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def write_results(out: Path, name: str, results: dict[str, Any], fig: Any) -> tuple[Path, Path]:
    """Write ``out/name.json`` and ``out/name.png`` atomically; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / f"{name}.json", out / f"{name}.png"
    with cli.atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    cli.write_text(js, json.dumps(to_jsonable(results), indent=1) + "\n")
    pyplot().close(fig)
    print(f"wrote {js} and {png}")
    return js, png


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def loss_last_output(final: Any, ys: Any) -> Any:
    """L = sum over the batch of the last output's units / sqrt(H): a fixed readout.

    ``ys`` is time-major (as :func:`gatedrnn.diagnostics.state_gradients` passes it).
    """
    import jax.numpy as jnp

    return jnp.sum(ys[-1]) / jnp.sqrt(ys.shape[-1])


def whole_state(norms: Any) -> np.ndarray:
    """Norms of the gradient with respect to the whole state from per-part norms
    (``sqrt(|g_h|^2 + |g_c|^2)`` for LSTM; the norms themselves for one-part states)."""
    import jax

    return np.sqrt(sum(np.asarray(n, np.float64) ** 2 for n in jax.tree_util.tree_leaves(norms)))


def geomean(a: Any, axis: int = 0) -> np.ndarray:
    """Geometric mean along ``axis`` (zeros count as 1e-300)."""
    return np.exp(np.mean(np.log(np.maximum(np.asarray(a, np.float64), 1e-300)), axis=axis))
