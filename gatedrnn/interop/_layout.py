"""The layout math both converters share: gate blocks, params checks, array conversion.

gatedrnn keeps ``w_x (I, G*H)``, ``w_h (H, G*H)`` with the gate blocks side by side (LSTM
i, f, g, o; GRU r, z, n; vanilla one block), which is PyTorch's order transposed and Flax's
per-gate ``Dense`` kernels concatenated; this module holds what both sides need to know
about that layout. No torch or flax import here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells import GRUParams, LSTMParams, VanillaParams, make_cell
from gatedrnn.cells.base import Cell, to_jax_array

Array = jax.Array

GATES: dict[str, tuple[str, ...]] = {"vanilla": ("",), "lstm": tuple("ifgo"), "gru": tuple("rzn")}
"""Gate blocks per convertible cell kind, in gatedrnn's (= PyTorch's, = Flax's) order."""

PARAMS_TYPES: dict[str, type] = {"vanilla": VanillaParams, "lstm": LSTMParams, "gru": GRUParams}


def to_jax(x: Any, what: str) -> Array:
    """A torch tensor, numpy or jax array as a jax array of the same dtype.

    JAX arrays (and tracers) pass through, so the Flax conversions are differentiable.
    bfloat16 torch tensors (which numpy cannot hold) go through float32 exactly.

    Raises:
      ValueError: float64 while JAX has x64 disabled (it would round silently).
      TypeError: not floating point.
    """
    if not isinstance(x, jax.Array):
        if hasattr(x, "detach"):  # a torch tensor
            x = torch_to_numpy(x)
        x = np.asarray(x)
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"{what} is float64 but JAX runs in float32 (jax_enable_x64 is off), so the "
                "weights would be rounded silently; enable x64 "
                "(jax.config.update('jax_enable_x64', True)) or convert the source to float32"
            )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what} must be floating point, got {x.dtype}")
    return to_jax_array(x)


def torch_to_numpy(t: Any) -> np.ndarray:
    """A torch tensor as numpy, bit-exact; bfloat16 becomes ``ml_dtypes.bfloat16``."""
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen exactly, narrow back
        return t.float().numpy().astype(jnp.bfloat16)
    return t.numpy()


def expect_shape(x: Any, shape: tuple[int, ...], what: str) -> None:
    """Raise ValueError naming ``what`` unless ``x.shape == shape``."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def kind_of(cell: Cell) -> str:
    """``cell.name`` if the converters handle it (vanilla, lstm, gru), else raise."""
    if not isinstance(cell, Cell):
        raise TypeError(f"expected a gatedrnn Cell, got {type(cell).__name__}")
    if cell.name not in GATES:
        raise ValueError(
            f"cannot convert a {cell.name!r} cell; only vanilla, lstm and gru cells convert"
        )
    return cell.name


def cell_for(kind: str, hidden_size: int, activation: str | None = None) -> Cell:
    """The gatedrnn cell of ``kind`` (from the registry) that a converted module computes."""
    options = {"activation": activation} if kind == "vanilla" and activation else {}
    return make_cell(kind, hidden_size, **options)


def check_params(kind: str, params: Any, hidden_size: int) -> int:
    """Check ``params`` are the NamedTuple of ``kind`` with hidden size ``H``; return ``I``.

    Expected shapes: ``w_x (I, G*H)``, ``w_h (H, G*H)``, every bias ``(G*H,)``.
    """
    ptype = PARAMS_TYPES[kind]
    if not isinstance(params, ptype):
        raise TypeError(f"{kind} params must be {ptype.__name__}, got {type(params).__name__}")
    G, H = len(GATES[kind]), hidden_size
    I = params.w_x.shape[0]
    expect_shape(params.w_x, (I, G * H), f"{kind} w_x")
    expect_shape(params.w_h, (H, G * H), f"{kind} w_h")
    for name in ("b", "b_x", "b_h"):
        if hasattr(params, name):
            expect_shape(getattr(params, name), (G * H,), f"{kind} {name}")
    return I


def blocks(kind: str, w: Array) -> list[Array]:
    """``w (..., G*H)`` split into its ``G`` gate blocks ``(..., H)``."""
    return jnp.split(w, len(GATES[kind]), axis=-1)


def concat(ws: list[Array]) -> Array:
    """Gate blocks ``(..., H)`` side by side: ``(..., G*H)`` (inverse of :func:`blocks`)."""
    return jnp.concatenate(ws, axis=-1)


def fold_gru_biases(params: GRUParams, H: int) -> tuple[Array, Array]:
    """GRU biases as Flax keeps them: ``b_x`` with ``b_hr, b_hz`` folded in, and ``b_hn``.

    Returns ``(b_x (3H,), b_hn (H,))``; exact as a function since ``r`` and ``z`` see only
    ``b_xr + b_hr`` and ``b_xz + b_hz``.
    """
    b_x = jnp.concatenate([params.b_x[: 2 * H] + params.b_h[: 2 * H], params.b_x[2 * H :]])
    return b_x, params.b_h[2 * H :]
