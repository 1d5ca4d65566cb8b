"""Weights in and out of PyTorch's ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells.

PyTorch keeps ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh`` with
the same gate order as gatedrnn (LSTM i, f, g, o; GRU r, z, n), so ``w_x = weight_ih.T``
and ``w_h = weight_hh.T``. The biases:

- vanilla and LSTM: ``b = bias_ih + bias_hh`` (both are added before the nonlinearity),
  summed exactly on the host in float64 and rounded once to the weights' dtype (so a
  float16/bfloat16 sum is the correctly rounded one, and no subnormal is flushed to zero as
  XLA's CPU arithmetic would); going back, ``bias_ih = b`` and ``bias_hh = 0``;
- GRU: ``b_x = bias_ih`` and ``b_h = bias_hh`` (kept apart, as the reset gate multiplies
  ``h w_hn + b_hn``), both ways.

A module's ``dropout`` (between layers, in training) becomes the stack's ``dropout`` and back;
its ``batch_first`` and ``bias`` flags, which the params do not hold, are kept in the
stack's ``origin`` so that :func:`to_torch` builds the same module back. Weights keep their
dtype (float32, float64, float16, bfloat16).

torch is an optional dependency: it is imported only inside these functions, so
``import gatedrnn.interop`` works without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from gatedrnn.cells import GRUParams, LSTMState
from gatedrnn.cells.base import Cell, PyTree
from gatedrnn.interop._layout import (
    PARAMS_TYPES,
    cell_for,
    check_params,
    expect_shape,
    kind_of,
    to_jax,
    torch_to_numpy,
)
from gatedrnn.layers import Bidir, Stack, stack

_TORCH_MODES = {"RNN_TANH": ("vanilla", "tanh"), "RNN_RELU": ("vanilla", "relu")}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "gatedrnn.interop's PyTorch converters need torch: pip install torch "
            "(or the 'torch' extra: pip install 'gatedrnn[torch]')"
        ) from e
    return torch


def _check_not_meta(module: Any, what: str) -> None:
    """Raise ValueError if ``module``'s parameters are on torch's meta device (no values)."""
    if any(p.is_meta for p in module.parameters()):
        raise ValueError(
            f"{what} {type(module).__name__} has its parameters on the meta device (shapes "
            "only, no values); materialize them first, e.g. module.to_empty(device='cpu') "
            "and then module.load_state_dict(...)"
        )


def _torch_kind(module: Any) -> tuple[str, str | None]:
    """``(kind, activation)`` of a torch RNN module or cell, or raise TypeError."""
    nn = _import_torch().nn
    if isinstance(module, nn.RNNBase):
        mode = module.mode
        if mode in _TORCH_MODES:
            return _TORCH_MODES[mode]
        if mode in ("LSTM", "GRU"):
            return mode.lower(), None
        raise ValueError(f"unsupported torch RNN mode {mode!r}")
    if isinstance(module, nn.RNNCell):
        return "vanilla", module.nonlinearity
    if isinstance(module, nn.LSTMCell):
        return "lstm", None
    if isinstance(module, nn.GRUCell):
        return "gru", None
    raise TypeError(
        "expected a torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, got "
        f"{type(module).__name__}"
    )


def _bias_sum(b_ih: Any, b_hh: Any, what: str) -> Any:
    """``b_ih + b_hh`` (torch tensors) as a jax array of their dtype, rounded once.

    Summed on the host in float64, which holds the exact sum of two float16 or bfloat16
    numbers and rounds a float32 sum finely enough that the cast back is correctly
    rounded; on the device XLA would flush subnormal float32/bfloat16 sums to zero.
    """
    b_ih, b_hh = torch_to_numpy(b_ih), torch_to_numpy(b_hh)
    total = b_ih.astype(np.float64) + b_hh.astype(np.float64)
    return to_jax(total.astype(b_ih.dtype), what)


def _layer_from_torch(kind: str, weights: Mapping[str, Any], suffix: str, what: str) -> PyTree:
    """gatedrnn params of one torch layer/direction from its state-dict entries."""
    w_ih = to_jax(weights["weight_ih" + suffix], f"{what} weight_ih{suffix}")
    w_hh = to_jax(weights["weight_hh" + suffix], f"{what} weight_hh{suffix}")
    b_ih, b_hh = weights.get("bias_ih" + suffix), weights.get("bias_hh" + suffix)
    if b_ih is None:  # bias=False (torch has both biases or neither)
        zero = jnp.zeros(w_ih.shape[0], w_ih.dtype)
        if kind == "gru":
            return GRUParams(w_x=w_ih.T, w_h=w_hh.T, b_x=zero, b_h=zero)
        return PARAMS_TYPES[kind](w_x=w_ih.T, w_h=w_hh.T, b=zero)
    if kind == "gru":
        b_x = to_jax(b_ih, f"{what} bias_ih{suffix}")
        return GRUParams(
            w_x=w_ih.T, w_h=w_hh.T, b_x=b_x, b_h=to_jax(b_hh, f"{what} bias_hh{suffix}")
        )
    b = _bias_sum(b_ih, b_hh, f"{what} bias_ih{suffix} + bias_hh{suffix}")
    return PARAMS_TYPES[kind](w_x=w_ih.T, w_h=w_hh.T, b=b)


def _layer_to_torch(kind: str, params: PyTree) -> dict[str, Any]:
    """torch state-dict entries (without suffix) of one layer/direction: see module doc."""
    out = {"weight_ih": params.w_x.T, "weight_hh": params.w_h.T}
    if kind == "gru":
        out["bias_ih"], out["bias_hh"] = params.b_x, params.b_h
    else:
        out["bias_ih"] = params.b
        out["bias_hh"] = jnp.zeros_like(params.b)
    return out


def _to_tensor(value: Any, dtype: Any) -> Any:
    """A jax/numpy array as a C-contiguous torch tensor of ``dtype``, exactly (bfloat16 too)."""
    torch = _import_torch()
    a = np.asarray(value)
    if a.dtype == jnp.bfloat16:  # torch cannot read ml_dtypes' bfloat16: widen exactly
        a = a.astype(np.float32)
    return torch.as_tensor(np.array(a, order="C", copy=True)).to(dtype)


def _torch_dtype(dtype: Any) -> Any:
    torch = _import_torch()
    table = {
        "float32": torch.float32,
        "float64": torch.float64,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }
    return table[jnp.dtype(dtype).name]


def from_torch(module: Any) -> tuple[Stack, tuple] | tuple[Cell, PyTree]:
    """Convert a PyTorch recurrent module's weights to gatedrnn params.

    Args:
      module: a ``torch.nn.RNN`` (``nonlinearity`` ``"tanh"`` or ``"relu"``), ``nn.LSTM``
        or ``nn.GRU`` with any ``num_layers``, ``bidirectional``, ``dropout``, ``bias``
        and ``batch_first``; or a single ``nn.RNNCell``, ``nn.LSTMCell`` or ``nn.GRUCell``.
        ``stack.apply`` is batch-first unless called with ``time_major=True``, whatever
        the module's ``batch_first``.

    Returns:
      For a sequence module, ``(stack, params)``: a :func:`gatedrnn.stack` of the matching
      cell (with the module's ``dropout`` between layers, applied only when
      ``stack.apply`` gets a ``dropout_key``, as torch applies it only in ``train()``) and
      a tuple with one params entry per layer (a :class:`gatedrnn.Bidir` ``(fw, bw)`` per
      layer when bidirectional), so ``stack.apply(params, xs)`` computes what
      ``module.eval()(xs)`` does. The module's ``batch_first`` and ``bias`` are kept in
      ``stack.origin`` (:func:`to_torch` builds the same module back). For a cell,
      ``(cell, params)``. Params keep the torch dtype (bfloat16 included); a bias=False
      module gives zero biases.

    Equations (per layer and direction; see the module docstring)::

        w_x = weight_ih.T (I, G*H),  w_h = weight_hh.T (H, G*H)
        vanilla, LSTM: b = bias_ih + bias_hh;   GRU: b_x = bias_ih, b_h = bias_hh

    (the LSTM/vanilla sum exact in float64, then rounded once to the weights' dtype).

    Raises:
      ValueError: an LSTM with ``proj_size > 0`` (gatedrnn's LSTM has no projection of
        ``h``), float64 weights while JAX runs in float32, or parameters on the meta
        device (no values to convert).
      TypeError: not a torch recurrent module.
    """
    kind, activation = _torch_kind(module)
    _check_not_meta(module, "cannot convert: the")
    weights = dict(module.named_parameters())
    name = type(module).__name__
    cell = cell_for(kind, module.hidden_size, activation)
    if not hasattr(module, "num_layers"):  # a single cell
        return cell, _layer_from_torch(kind, weights, "", name)
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"cannot convert a torch LSTM with proj_size={module.proj_size}: gatedrnn's LSTM "
            "has no projection of h (h' = o * tanh(c'), of size hidden_size); the output and "
            "recurrent state would differ"
        )
    dirs = ("", "_reverse") if module.bidirectional else ("",)
    layers = []
    for layer in range(module.num_layers):
        ps = [_layer_from_torch(kind, weights, f"_l{layer}{d}", name) for d in dirs]
        layers.append(Bidir(*ps) if module.bidirectional else ps[0])
    # torch allows dropout with num_layers=1 (it warns and never applies it); so does stack.
    st = stack(
        cell,
        module.num_layers,
        bidirectional=module.bidirectional,
        dropout=float(module.dropout),
    )
    origin = (("batch_first", bool(module.batch_first)), ("bias", bool(module.bias)))
    return st._replace(origin=origin), tuple(layers)


def _layer_params_by_suffix(
    params: PyTree, num_layers: int | None, bidir: bool
) -> dict[str, PyTree]:
    """Params keyed by torch's name suffix: ``""`` for a cell, ``_l{k}[_reverse]`` else."""
    if num_layers is None:
        return {"": params}
    if not isinstance(params, (tuple, list)) or len(params) != num_layers:
        raise ValueError(f"params must be a tuple of {num_layers} layer params")
    out = {}
    for layer, p in enumerate(params):
        if bidir:
            if not isinstance(p, tuple) or len(p) != 2:
                raise ValueError(f"layer {layer} params must be Bidir(fw, bw)")
            out[f"_l{layer}"], out[f"_l{layer}_reverse"] = p
        else:
            out[f"_l{layer}"] = p
    return out


def _new_torch_module(
    kind: str,
    activation: str | None,
    input_size: int,
    H: int,
    dtype: Any,
    num_layers: int | None,
    bidir: bool,
    dropout: float,
    batch_first: bool,
    bias: bool,
) -> Any:
    """The ``nn.RNN/LSTM/GRU`` (or ``*Cell`` when ``num_layers`` is None) for these sizes."""
    nn = _import_torch().nn
    tdtype = _torch_dtype(dtype)
    if num_layers is None:
        if kind == "vanilla":
            return nn.RNNCell(
                input_size, H, bias=bias, nonlinearity=activation or "tanh", dtype=tdtype
            )
        cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind]
        return cls(input_size, H, bias=bias, dtype=tdtype)
    common = dict(
        num_layers=num_layers,
        bidirectional=bidir,
        batch_first=batch_first,
        bias=bias,
        dropout=dropout,
        dtype=tdtype,
    )
    if kind == "vanilla":
        return nn.RNN(input_size, H, nonlinearity=activation or "tanh", **common)
    return {"lstm": nn.LSTM, "gru": nn.GRU}[kind](input_size, H, **common)


def _check_torch_module(
    module: Any, kind: str, activation: str | None, H: int, num_layers: int | None, bidir: bool
) -> None:
    """Raise ValueError unless ``module`` has the type and sizes the params are for."""
    mkind, mact = _torch_kind(module)
    is_cell = not hasattr(module, "num_layers")
    if is_cell != (num_layers is None):
        cls = type(module).__name__
        raise ValueError(
            f"module is a {cls}, a single cell, but the model is a stack of {num_layers} "
            f"layer(s): load a stack into an nn.{cls.removesuffix('Cell')}, or pass the "
            "stack's cell and one layer's params (model.cell, params[0]) to fill a cell"
            if is_cell
            else f"module is a sequence module ({cls}) but the model is a single cell: "
            f"wrap it with gatedrnn.stack(cell) and params (params,), or pass an nn.{cls}Cell"
        )
    _check_not_meta(module, "cannot load into: the")
    if (mkind, mact) != (kind, activation) or module.hidden_size != H:
        raise ValueError(
            f"module is a {type(module).__name__} ({mkind}, {mact}, hidden_size="
            f"{module.hidden_size}), but the params are for ({kind}, {activation}, "
            f"hidden_size={H})"
        )
    if num_layers is not None and (
        module.num_layers != num_layers
        or module.bidirectional != bidir
        or getattr(module, "proj_size", 0)
    ):
        raise ValueError(
            f"module has num_layers={module.num_layers}, bidirectional={module.bidirectional}"
            f", proj_size={getattr(module, 'proj_size', 0)}; the params are for num_layers="
            f"{num_layers}, bidirectional={bidir}, no projection"
        )


def _load_into(module: Any, kind: str, layer_params: Mapping[str, PyTree]) -> None:
    """Copy the params into ``module``'s parameters (all checked before any is written)."""
    torch = _import_torch()
    named = dict(module.named_parameters())
    new = {}
    for suffix, p in layer_params.items():
        for key, value in _layer_to_torch(kind, p).items():
            name = key + suffix
            if name not in named and key.startswith("bias"):
                if not np.any(np.asarray(value)):
                    continue  # bias=False module, zero bias: nothing lost
                raise ValueError(
                    f"module has no parameter {name!r} (made with bias=False?) but the "
                    "params have a non-zero bias; it would be dropped"
                )
            if name not in named:
                raise ValueError(
                    f"module {type(module).__name__} has no parameter {name!r} (it has "
                    f"{', '.join(sorted(named)) or 'none'}); it is not a complete torch "
                    "module of this kind, so the params cannot be loaded into it"
                )
            expect_shape(value, tuple(named[name].shape), f"torch {name}")
            new[name] = _to_tensor(value, named[name].dtype)
    with torch.no_grad():
        for name, value in new.items():
            named[name].copy_(value)


def to_torch(
    model: Stack | Cell,
    params: PyTree,
    module: Any = None,
    *,
    batch_first: bool | None = None,
    bias: bool | None = None,
) -> Any:
    """Write gatedrnn params into a PyTorch module (made here unless one is given).

    Args:
      model: a :func:`gatedrnn.stack` (params: tuple per layer, :class:`gatedrnn.Bidir`
        per layer if bidirectional) or a single cell (params of that cell).
      params: the params, e.g. from ``model.init`` or :func:`from_torch`.
      module: a torch module of the matching type and sizes to load into (its dtype,
        ``dropout``, ``bias`` and ``batch_first`` are kept); None to build
        ``nn.RNN/LSTM/GRU`` (or the ``*Cell`` for a single cell) with the params' dtype and
        the stack's ``dropout``.
      batch_first: for a module built here; None: the one :func:`from_torch` recorded in
        ``model.origin``, else True (gatedrnn's default layout is batch first).
      bias: for a module built here; None: the one recorded in ``model.origin``, else
        True. With ``bias=False`` the params' biases must be zero.

    Returns:
      The torch module, with weights such that ``module(xs)`` computes what
      ``model.apply(params, xs)`` (or ``gr.scan``) does.

    Equations (see the module docstring): ``weight_ih = w_x.T (G*H, I)``,
    ``weight_hh = w_h.T (G*H, H)``; vanilla and LSTM ``bias_ih = b, bias_hh = 0``; GRU
    ``bias_ih = b_x, bias_hh = b_h``.

    Raises:
      ValueError: a vanilla cell with ``activation="linear"`` (torch has only tanh and
        relu), a GRU with ``reset_after=False`` (torch is reset-after), a ``module`` whose
        type or sizes differ (a stack into a ``*Cell`` or a cell into a sequence module
        included), a module with its parameters on the meta device or missing some, or
        non-zero biases into a module made with ``bias=False``.
    """
    if isinstance(model, Stack):
        cell, num_layers, bidir = model.cell, model.num_layers, model.bidirectional
    elif isinstance(model, Cell):
        cell, num_layers, bidir = model, None, False
    else:
        raise TypeError(f"model must be a gatedrnn Stack or Cell, got {type(model).__name__}")
    kind = kind_of(cell)
    H = cell.hidden_size
    activation = cell.options.get("activation") if kind == "vanilla" else None
    if activation not in (None, "tanh", "relu"):
        raise ValueError(
            f"torch has no vanilla RNN with activation {activation!r} (only tanh and relu)"
        )
    if kind == "gru" and not cell.options.get("reset_after", True):
        raise ValueError(
            "torch's GRU is reset-after; a gatedrnn GRU with reset_after=False computes a "
            "different function and cannot be converted"
        )
    layer_params = _layer_params_by_suffix(params, num_layers, bidir)
    sizes = {s: check_params(kind, p, H) for s, p in layer_params.items()}
    if module is None:
        first = next(iter(layer_params.values()))
        dropout = model.dropout if isinstance(model, Stack) else 0.0
        origin = dict(model.origin) if isinstance(model, Stack) else {}
        batch_first = origin.get("batch_first", True) if batch_first is None else batch_first
        bias = origin.get("bias", True) if bias is None else bias
        module = _new_torch_module(
            kind,
            activation,
            input_size=sizes[next(iter(sizes))],
            H=H,
            dtype=first.w_x.dtype,
            num_layers=num_layers,
            bidir=bidir,
            dropout=dropout,
            batch_first=bool(batch_first),
            bias=bool(bias),
        )
    _check_torch_module(module, kind, activation, H, num_layers, bidir)
    _load_into(module, kind, layer_params)
    return module


def state_from_torch(model: Stack, h: Any, c: Any = None) -> tuple:
    """Torch's ``h_0`` (and ``c_0``) as a gatedrnn stack state (``initial_state=``).

    Args:
      model: the :func:`gatedrnn.stack` (its cell kind, layers and directions).
      h: ``(num_layers * D, *batch, H)`` as torch orders it (layer-major, then direction).
      c: the same for an LSTM's cell state; None otherwise.

    Returns:
      One state per layer (:class:`gatedrnn.Bidir` per layer if bidirectional); LSTM states
      are :class:`gatedrnn.LSTMState` ``(h, c)``, each ``(*batch, H)``.
    """
    is_lstm = kind_of(model.cell) == "lstm"
    if is_lstm != (c is not None):
        raise ValueError("pass c (the cell state) for an LSTM and only for an LSTM")
    D = 2 if model.bidirectional else 1
    h = to_jax(h, "h")
    c = None if c is None else to_jax(c, "c")
    if h.ndim < 2 or h.shape[0] != model.num_layers * D:
        raise ValueError(
            f"h must have shape (num_layers * D = {model.num_layers * D}, *batch, H), "
            f"got {tuple(h.shape)}"
        )
    if c is not None:
        expect_shape(c, h.shape, "c")
    states = [LSTMState(h[k], c[k]) if is_lstm else h[k] for k in range(h.shape[0])]
    if D == 2:
        return tuple(Bidir(states[2 * k], states[2 * k + 1]) for k in range(model.num_layers))
    return tuple(states)


def state_to_torch(model: Stack, states: tuple) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A gatedrnn stack state as torch's ``h_n`` (and ``(h_n, c_n)`` for an LSTM).

    Args:
      model: the :func:`gatedrnn.stack`.
      states: one state per layer, as returned by ``model.apply``.

    Returns:
      numpy ``h_n (num_layers * D, *batch, H)``, or ``(h_n, c_n)`` for an LSTM.
    """
    flat = []
    for s in states:
        flat.extend([s.fw, s.bw] if model.bidirectional else [s])
    if kind_of(model.cell) == "lstm":
        return np.stack([s.h for s in flat]), np.stack([s.c for s in flat])
    return np.stack(flat)


__all__ = ["from_torch", "state_from_torch", "state_to_torch", "to_torch"]
