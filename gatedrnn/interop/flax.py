"""Weights in and out of Flax's own cells: Linen and NNX ``SimpleCell``, ``LSTMCell``,
``OptimizedLSTMCell`` and ``GRUCell``.

* Flax Linen cells keep one ``Dense`` per gate (``ii, if, ig, io, hi, ...``); the kernels
  are concatenated side by side. Flax's ``GRUCell`` has biases on ``ir, iz, in`` and
  ``hn`` only, so going to Flax the recurrent biases of r and z are folded into the input
  ones (``b_xr + b_hr``), which changes nothing in the function.
* Flax NNX cells convert the same way, read from and written into module instances. NNX's
  ``GRUCell`` has no ``b_hn`` bias at all, so a gatedrnn GRU with a non-zero ``b_hn``
  cannot go there: that raises a ValueError.

Whatever cannot be converted exactly raises a ValueError that says why: a GRU with
``reset_after=False`` (Flax is reset-after), a Flax cell with a custom ``gate_fn``,
``residual`` or compute ``dtype``, float64 weights while JAX runs in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

from gatedrnn.cells import GRUParams, LSTMParams, LSTMState, VanillaParams
from gatedrnn.cells.base import Cell, PyTree
from gatedrnn.interop._layout import (
    GATES,
    blocks,
    cell_for,
    check_params,
    concat,
    fold_gru_biases,
    kind_of,
    to_jax,
)

Array = jax.Array

_FLAX_KINDS = {
    linen.SimpleCell: "vanilla",
    linen.LSTMCell: "lstm",
    linen.OptimizedLSTMCell: "lstm",
    linen.GRUCell: "gru",
    nnx.SimpleCell: "vanilla",
    nnx.LSTMCell: "lstm",
    nnx.OptimizedLSTMCell: "lstm",
    nnx.GRUCell: "gru",
}


def identity(z: Array) -> Array:
    """The identity, as the ``activation_fn`` of a Flax ``SimpleCell`` that
    :func:`to_flax` makes from ``gr.vanilla(h, "linear")`` (and :func:`from_flax` reads)."""
    return z


_ACTIVATIONS = {
    jnp.tanh: "tanh",
    linen.tanh: "tanh",
    nnx.tanh: "tanh",
    jax.nn.relu: "relu",
    linen.relu: "relu",
    nnx.relu: "relu",
    identity: "linear",
}


def _flax_activation(activation: str | None) -> Any:
    return {None: jnp.tanh, "tanh": jnp.tanh, "relu": jax.nn.relu, "linear": identity}[activation]


def _flax_kind(module: Any) -> tuple[str, str | None, bool]:
    """``(kind, activation, is_nnx)`` of a Flax cell instance, after checking it is exact."""
    kind = _FLAX_KINDS.get(type(module))
    if kind is None:
        raise TypeError(
            "expected a Flax SimpleCell, LSTMCell, OptimizedLSTMCell or GRUCell instance "
            f"(flax.linen or flax.nnx), got {type(module).__name__}"
        )
    act_fn = module.activation_fn
    if kind == "vanilla":
        activation = _ACTIVATIONS.get(act_fn)
        if activation is None:
            raise ValueError(
                f"{type(module).__name__} has activation_fn={act_fn!r}; only tanh, relu and "
                "gatedrnn.interop.identity have a gatedrnn counterpart"
            )
        if getattr(module, "residual", False):
            raise ValueError(
                "SimpleCell(residual=True) adds h before the activation; gatedrnn's vanilla "
                "cell has no such term (fold it yourself: w_h + identity)"
            )
        return kind, activation, isinstance(module, nnx.Module)
    gate_fn = module.gate_fn
    if gate_fn not in (jax.nn.sigmoid, linen.sigmoid, nnx.sigmoid) or act_fn not in (
        jnp.tanh,
        linen.tanh,
        nnx.tanh,
    ):
        raise ValueError(
            f"{type(module).__name__} has gate_fn={gate_fn!r}, activation_fn={act_fn!r}; "
            "gatedrnn's gated cells use sigmoid gates and tanh, so this cannot convert"
        )
    return kind, None, isinstance(module, nnx.Module)


def _check_compute_dtype(module: Any, param_dtype: Any) -> None:
    """A Flax cell with a ``dtype`` other than its params' computes in another precision."""
    dtype = getattr(module, "dtype", None)
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(param_dtype):
        raise ValueError(
            f"{type(module).__name__} computes in dtype={jnp.dtype(dtype)} with {param_dtype} "
            "params; gatedrnn computes in the params' dtype, so the numbers would differ. "
            "Cast the params to the compute dtype first, or use dtype=None"
        )


def _unwrap_variables(params: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise TypeError(f"expected a Flax params dict, got {type(params).__name__}")
    if set(params) == {"params"}:
        params = params["params"]
    return params


def _check_linen_entries(params: Mapping[str, Any], kind: str) -> None:
    """Raise ValueError unless ``params`` has exactly the ``Dense`` entries of a Linen
    cell of ``kind`` (``i, h`` for SimpleCell; ``ii, if, ..., ho`` / ``ir, ..., hn``)."""
    names = ["i", "h"] if kind == "vanilla" else [p + g for p in "ih" for g in GATES[kind]]
    for name in names:
        if name not in params:
            raise ValueError(
                f"Flax params have no {name!r} entry (keys: {sorted(params)}); pass the cell's "
                "own params, e.g. variables['params'] or variables['params']['cell'] for nn.RNN"
            )
    extra = sorted(set(params) - set(names))
    if extra:
        raise ValueError(
            f"Flax params have unexpected entries {extra} besides the cell's {names}; they "
            "would be ignored, so these are not (only) this cell's params: pass the cell's "
            "own params dict"
        )


def _linen_dense(params: Mapping[str, Any], name: str, bias: bool) -> tuple[Array, Array | None]:
    """``(kernel, bias or None)`` of the Linen cell's ``Dense`` called ``name``."""
    d = params[name]
    if not isinstance(d, Mapping):
        raise TypeError(
            f"Flax params {name!r} must be a dict with a 'kernel', got {type(d).__name__}"
        )
    if "kernel" not in d:
        raise ValueError(
            f"Flax params {name!r} have no 'kernel' (keys: {sorted(d)}); a Dense layer's "
            "params are {'kernel': (in, out)} plus 'bias' where the cell has one"
        )
    extra = sorted(set(d) - {"kernel", "bias"})
    if extra:
        raise ValueError(
            f"Flax params {name!r} have unexpected entries {extra} besides 'kernel' and "
            "'bias'; they would be ignored"
        )
    kernel = to_jax(d["kernel"], f"Flax {name}/kernel")
    if bias != ("bias" in d):
        raise ValueError(
            f"Flax {name} {'lacks' if bias else 'has'} a bias; this is not the layout of the "
            "cell given"
        )
    return kernel, to_jax(d["bias"], f"Flax {name}/bias") if bias else None


def _from_linen(kind: str, p: Mapping[str, Any]) -> PyTree:
    """gatedrnn params from a Linen cell's params dict (see :func:`from_flax`)."""
    _check_linen_entries(p, kind)
    if kind == "vanilla":
        w_x, b = _linen_dense(p, "i", True)
        w_h, _ = _linen_dense(p, "h", False)
        return VanillaParams(w_x=w_x, w_h=w_h, b=b)
    if kind == "lstm":
        xs = [_linen_dense(p, "i" + g, False)[0] for g in GATES["lstm"]]
        hs = [_linen_dense(p, "h" + g, True) for g in GATES["lstm"]]
        return LSTMParams(
            w_x=concat(xs), w_h=concat([k for k, _ in hs]), b=concat([b for _, b in hs])
        )
    xs = [_linen_dense(p, "i" + g, True) for g in GATES["gru"]]
    hs = [_linen_dense(p, "h" + g, g == "n") for g in GATES["gru"]]
    b_hn = hs[2][1]
    return GRUParams(
        w_x=concat([k for k, _ in xs]),
        w_h=concat([k for k, _ in hs]),
        b_x=concat([b for _, b in xs]),
        b_h=concat([jnp.zeros_like(b_hn), jnp.zeros_like(b_hn), b_hn]),
    )


def _from_nnx(module: Any, kind: str) -> PyTree:
    """gatedrnn params read from an NNX cell (see :func:`from_flax`)."""
    v = lambda x: to_jax(x[...], "NNX param")  # noqa: E731
    if kind == "vanilla":
        m = module
        return VanillaParams(w_x=v(m.dense_i.kernel), w_h=v(m.dense_h.kernel), b=v(m.dense_i.bias))
    if isinstance(module, nnx.OptimizedLSTMCell):
        m = module
        return LSTMParams(w_x=v(m.dense_i.kernel), w_h=v(m.dense_h.kernel), b=v(m.dense_h.bias))
    if kind == "lstm":
        names = ("i", "f_", "g", "o")  # NNX spells the forget gate's input layer `if_`
        return LSTMParams(
            w_x=concat([v(getattr(module, "i" + g).kernel) for g in names]),
            w_h=concat([v(getattr(module, "h" + g[0]).kernel) for g in names]),
            b=concat([v(getattr(module, "h" + g[0]).bias) for g in names]),
        )
    b_x = v(module.dense_i.bias)
    return GRUParams(
        w_x=v(module.dense_i.kernel), w_h=v(module.dense_h.kernel), b_x=b_x, b_h=jnp.zeros_like(b_x)
    )


def from_flax(module: Any, params: Mapping[str, Any] | None = None) -> tuple[Cell, PyTree]:
    """Convert a Flax cell's params (Linen or NNX) to a gatedrnn cell and its params.

    Args:
      module: a ``flax.linen`` or ``flax.nnx`` ``SimpleCell``, ``LSTMCell``,
        ``OptimizedLSTMCell`` or ``GRUCell`` instance (read for its activation and gates).
      params: for a Linen cell, its params: ``variables`` (``{"params": {...}}``) or the
        inner dict (for ``nn.RNN(cell)`` that is ``variables["params"]["cell"]``). None for
        an NNX cell (its params are read from the module).

    Returns:
      ``(cell, params)`` with ``gr.vanilla/lstm/gru`` params (``w_x (I, G*H)``,
      ``w_h (H, G*H)``, biases ``(G*H,)``) computing what the Flax cell does. Flax's LSTM
      carry is ``(c, h)`` while gatedrnn's state is ``LSTMState(h, c)``: see
      :func:`carry_from_flax`.

    Equations: ``w_x = concat(kernel of ii, if, ig, io)`` (``ir, iz, in`` for a GRU),
    ``w_h = concat(kernel of hi, hf, hg, ho)``; LSTM ``b = concat(bias of hi, hf, hg,
    ho)``; GRU ``b_x = concat(bias of ir, iz, in)``, ``b_h = (0, 0, bias of hn)`` (NNX:
    ``b_x`` = ``dense_i`` bias, ``b_h = 0``); SimpleCell ``b`` = bias of ``i``.

    Raises:
      ValueError: a cell with ``gate_fn``/``activation_fn`` other than sigmoid/tanh (tanh,
        relu or identity for SimpleCell), ``residual=True``, a compute ``dtype`` other than
        the params', or params of the wrong layout: an entry or a kernel missing, or
        entries the cell does not have (they would be ignored), named in the message.
    """
    kind, activation, is_nnx = _flax_kind(module)
    if is_nnx:
        if params is not None:
            raise ValueError("an NNX cell holds its own params; call from_flax(module)")
        out = _from_nnx(module, kind)
        H = module.hidden_features
    else:
        if params is None:
            raise ValueError("a Linen cell needs its params: from_flax(module, variables)")
        out = _from_linen(kind, _unwrap_variables(params))
        H = out.w_h.shape[0]
        if H != module.features:
            raise ValueError(
                f"params have hidden size {H}, the module has features={module.features}"
            )
    _check_compute_dtype(module, out.w_x.dtype)
    check_params(kind, out, H)
    return cell_for(kind, H, activation), out


def _flax_cell_for(cell: Cell, flavor: str) -> tuple[str, str | None]:
    """Check a gatedrnn cell can go to Flax; return ``(kind, activation)``."""
    kind = kind_of(cell)
    if kind == "gru" and not cell.options.get("reset_after", True):
        raise ValueError(
            f"Flax's GRUCell ({flavor}) is reset-after; a gatedrnn GRU with "
            "reset_after=False computes a different function and cannot be converted"
        )
    return kind, cell.options.get("activation") if kind == "vanilla" else None


def to_flax(cell: Cell, params: PyTree, *, optimized: bool = False) -> tuple[Any, dict[str, Any]]:
    """A Flax Linen cell and its variables computing what a gatedrnn cell does.

    Args:
      cell: a ``gr.vanilla``, ``gr.lstm`` or ``gr.gru`` (``reset_after=True``) cell.
      params: its params (``w_x (I, G*H)``, ``w_h (H, G*H)``, biases ``(G*H,)``).
      optimized: for an LSTM, build ``flax.linen.OptimizedLSTMCell`` (same param layout)
        instead of ``LSTMCell``.

    Returns:
      ``(module, variables)``: a ``flax.linen`` ``SimpleCell``/``LSTMCell``/
      ``OptimizedLSTMCell``/``GRUCell`` and ``{"params": {...}}`` (kernels ``(I, H)`` and
      ``(H, H)`` per gate) for ``module.apply``.

    Equations: the inverse of :func:`from_flax`; for a GRU the recurrent biases of r and z
    are folded into the input ones (``bias of ir = b_xr + b_hr``), which Flax's GRU cannot
    keep apart (exact as a function; the original split is not recoverable).

    Raises:
      ValueError: a GRU with ``reset_after=False``.
    """
    kind, activation = _flax_cell_for(cell, "flax.linen")
    H = cell.hidden_size
    check_params(kind, params, H)
    dtype = params.w_x.dtype
    bx, bh = blocks(kind, params.w_x), blocks(kind, params.w_h)
    if kind == "vanilla":
        module = linen.SimpleCell(H, activation_fn=_flax_activation(activation), param_dtype=dtype)
        return module, {
            "params": {"i": {"kernel": params.w_x, "bias": params.b}, "h": {"kernel": params.w_h}}
        }
    p = {}
    if kind == "lstm":
        module = (linen.OptimizedLSTMCell if optimized else linen.LSTMCell)(H, param_dtype=dtype)
        for g, kx, kh, b in zip(GATES[kind], bx, bh, blocks(kind, params.b), strict=True):
            p["i" + g], p["h" + g] = {"kernel": kx}, {"kernel": kh, "bias": b}
    else:
        module = linen.GRUCell(H, param_dtype=dtype)
        b_x, b_hn = fold_gru_biases(params, H)
        for g, kx, kh, b in zip(GATES[kind], bx, bh, blocks(kind, b_x), strict=True):
            p["i" + g], p["h" + g] = {"kernel": kx, "bias": b}, {"kernel": kh}
        p["hn"]["bias"] = b_hn
    return module, {"params": p}


def _put(param: Any, value: Array) -> None:
    param[...] = value


def to_flax_nnx(cell: Cell, params: PyTree, *, optimized: bool = False, rngs: Any = None) -> Any:
    """A Flax NNX cell (``flax.nnx.SimpleCell/LSTMCell/OptimizedLSTMCell/GRUCell``) holding
    gatedrnn params.

    Args:
      cell: a ``gr.vanilla``, ``gr.lstm`` or ``gr.gru`` (``reset_after=True``) cell.
      params: its params (``w_x (I, G*H)``, ``w_h (H, G*H)``, biases ``(G*H,)``).
      optimized: for an LSTM, build ``nnx.OptimizedLSTMCell`` instead of ``nnx.LSTMCell``.
      rngs: ``nnx.Rngs`` for the constructor (its draws are overwritten); default
        ``nnx.Rngs(0)``.

    Returns:
      The NNX module, computing what ``cell.step(params, ...)`` does (LSTM carry
      ``(c, h)``).

    Raises:
      ValueError: a GRU with ``reset_after=False``, or with a non-zero ``b_hn`` (NNX's
        ``GRUCell`` has no recurrent bias; ``b_hr, b_hz`` are folded into ``b_x``).
    """
    kind, activation = _flax_cell_for(cell, "flax.nnx")
    H = cell.hidden_size
    I = check_params(kind, params, H)
    kw = dict(param_dtype=params.w_x.dtype, rngs=nnx.Rngs(0) if rngs is None else rngs)
    if kind == "vanilla":
        m = nnx.SimpleCell(I, H, activation_fn=_flax_activation(activation), **kw)
        _put(m.dense_i.kernel, params.w_x)
        _put(m.dense_i.bias, params.b)
        _put(m.dense_h.kernel, params.w_h)
    elif kind == "lstm" and optimized:
        m = nnx.OptimizedLSTMCell(I, H, **kw)
        _put(m.dense_i.kernel, params.w_x)
        _put(m.dense_h.kernel, params.w_h)
        _put(m.dense_h.bias, params.b)
    elif kind == "lstm":
        m = nnx.LSTMCell(I, H, **kw)
        parts = zip(*(blocks(kind, w) for w in (params.w_x, params.w_h, params.b)), strict=True)
        for g, (kx, kh, b) in zip(("i", "f_", "g", "o"), parts, strict=True):
            _put(getattr(m, "i" + g).kernel, kx)
            _put(getattr(m, "h" + g[0]).kernel, kh)
            _put(getattr(m, "h" + g[0]).bias, b)
    else:
        b_x, b_hn = fold_gru_biases(params, H)
        if isinstance(b_hn, jax.core.Tracer) or np.any(np.asarray(b_hn) != 0):
            raise ValueError(
                "flax.nnx.GRUCell has no recurrent bias b_hn (the reset gate multiplies "
                "h w_hn alone), but these params have a non-zero b_h[2H:]; converting would "
                "change the function. Use flax.linen.GRUCell (to_flax) or gatedrnn.nnx.GRUCell"
            )
        m = nnx.GRUCell(I, H, **kw)
        _put(m.dense_i.kernel, params.w_x)
        _put(m.dense_i.bias, b_x)
        _put(m.dense_h.kernel, params.w_h)
    return m


def carry_from_flax(cell: Cell, carry: Any) -> PyTree:
    """A Flax cell's carry as the gatedrnn state: LSTM ``(c, h) -> LSTMState(h, c)``."""
    if kind_of(cell) == "lstm":
        c, h = carry
        return LSTMState(h=h, c=c)
    return carry


def carry_to_flax(cell: Cell, state: PyTree) -> Any:
    """A gatedrnn state as a Flax cell's carry: LSTM ``LSTMState(h, c) -> (c, h)``."""
    if kind_of(cell) == "lstm":
        return (state.c, state.h)
    return state


__all__ = [
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "identity",
    "to_flax",
    "to_flax_nnx",
]
