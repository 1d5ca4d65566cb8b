"""Weights in and out of PyTorch (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) and Flax's own cells.

gatedrnn's parameter layouts were chosen so that every conversion here is a transpose, a
reshuffle of gate blocks or a bias sum, never an approximation:

* PyTorch keeps ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh``
  with the same gate order as gatedrnn (LSTM i, f, g, o; GRU r, z, n), so
  ``w_x = weight_ih.T`` and ``w_h = weight_hh.T``. The biases:

  - vanilla and LSTM: ``b = bias_ih + bias_hh`` (both are added before the nonlinearity);
    going back, ``bias_ih = b`` and ``bias_hh = 0``;
  - GRU: ``b_x = bias_ih`` and ``b_h = bias_hh`` (kept apart, as the reset gate multiplies
    ``h w_hn + b_hn``), both ways.

* Flax Linen cells keep one ``Dense`` per gate (``ii, if, ig, io, hi, ...``); the kernels
  are concatenated side by side. Flax's ``GRUCell`` has biases on ``ir, iz, in`` and
  ``hn`` only, so going to Flax the recurrent biases of r and z are folded into the input
  ones (``b_xr + b_hr``), which changes nothing in the function.

* Flax NNX cells (``flax.nnx.LSTMCell``, ``OptimizedLSTMCell``, ``SimpleCell``,
  ``GRUCell``) convert the same way, read from and written into module instances. NNX's
  ``GRUCell`` has no ``b_hn`` bias at all, so a gatedrnn GRU with a non-zero ``b_hn``
  cannot go there: that raises a ValueError.

Whatever cannot be converted exactly raises a ValueError that says why: a PyTorch
``proj_size``, a GRU with ``reset_after=False`` (PyTorch and Flax are reset-after), an
activation the other side lacks, a Flax cell with a custom ``gate_fn``, ``residual`` or
compute ``dtype``, a non-zero bias going into a module built with ``bias=False``, float64
weights while JAX runs in float32.

torch is an optional dependency: it is imported only inside the PyTorch functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatedrnn.cells import GRUParams, LSTMParams, LSTMState, VanillaParams, gru, lstm, vanilla
from gatedrnn.cells.base import Cell, PyTree
from gatedrnn.layers import Bidir, Stack, stack

Array = jax.Array

# Gate blocks per cell kind, and the order in which Flax names its per-gate Dense layers.
_GATES: dict[str, tuple[str, ...]] = {"vanilla": ("",), "lstm": tuple("ifgo"), "gru": tuple("rzn")}


# ------------------------------------------------------------------------------ helpers


def _to_jax(x: Any, what: str) -> Array:
    """A torch tensor, numpy or jax array as a jax array of the same dtype.

    JAX arrays (and tracers) pass through, so the Flax conversions are differentiable.
    Raises ValueError for float64 while JAX has x64 disabled (it would round silently).
    """
    if not isinstance(x, jax.Array):
        if hasattr(x, "detach"):  # a torch tensor
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                f"{what} is float64 but JAX runs in float32 (jax_enable_x64 is off), so the "
                "weights would be rounded silently; enable x64 "
                "(jax.config.update('jax_enable_x64', True)) or convert the source to float32"
            )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what} must be floating point, got {x.dtype}")
    return jnp.asarray(x)


def _expect_shape(x: Any, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def _kind(cell: Cell) -> str:
    if not isinstance(cell, Cell):
        raise TypeError(f"expected a gatedrnn Cell, got {type(cell).__name__}")
    if cell.name not in _GATES:
        raise ValueError(
            f"cannot convert a {cell.name!r} cell; only vanilla, lstm and gru cells convert"
        )
    return cell.name


def _params_type(kind: str) -> type:
    return {"vanilla": VanillaParams, "lstm": LSTMParams, "gru": GRUParams}[kind]


def _check_params(kind: str, params: Any, hidden_size: int) -> int:
    """Check ``params`` are the NamedTuple of ``kind`` with hidden size H; return ``I``."""
    ptype = _params_type(kind)
    if not isinstance(params, ptype):
        raise TypeError(f"{kind} params must be {ptype.__name__}, got {type(params).__name__}")
    G = len(_GATES[kind])
    H = hidden_size
    I = params.w_x.shape[0]
    _expect_shape(params.w_x, (I, G * H), f"{kind} w_x")
    _expect_shape(params.w_h, (H, G * H), f"{kind} w_h")
    for name in ("b", "b_x", "b_h"):
        if hasattr(params, name):
            _expect_shape(getattr(params, name), (G * H,), f"{kind} {name}")
    return I


# ------------------------------------------------------------------------------ PyTorch

_TORCH_MODES = {"RNN_TANH": ("vanilla", "tanh"), "RNN_RELU": ("vanilla", "relu")}


def _torch_kind(module: Any) -> tuple[str, str | None]:
    """``(kind, activation)`` of a torch RNN module or cell, or raise TypeError."""
    import torch

    nn = torch.nn
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


def _make_cell(kind: str, hidden_size: int, activation: str | None) -> Cell:
    if kind == "vanilla":
        return vanilla(hidden_size, activation or "tanh")
    return lstm(hidden_size) if kind == "lstm" else gru(hidden_size)


def _layer_from_torch(kind: str, weights: Mapping[str, Any], suffix: str, what: str) -> PyTree:
    """gatedrnn params of one torch layer/direction from its state-dict entries."""
    w_ih = _to_jax(weights["weight_ih" + suffix], f"{what} weight_ih{suffix}")
    w_hh = _to_jax(weights["weight_hh" + suffix], f"{what} weight_hh{suffix}")
    zero = jnp.zeros(w_ih.shape[0], w_ih.dtype)
    b_ih = weights.get("bias_ih" + suffix)
    b_hh = weights.get("bias_hh" + suffix)
    b_ih = zero if b_ih is None else _to_jax(b_ih, f"{what} bias_ih{suffix}")
    b_hh = zero if b_hh is None else _to_jax(b_hh, f"{what} bias_hh{suffix}")
    if kind == "gru":
        return GRUParams(w_x=w_ih.T, w_h=w_hh.T, b_x=b_ih, b_h=b_hh)
    return _params_type(kind)(w_x=w_ih.T, w_h=w_hh.T, b=b_ih + b_hh)


def _layer_to_torch(kind: str, params: PyTree) -> dict[str, np.ndarray]:
    """torch state-dict entries (without suffix) of one layer/direction: see module doc."""
    out = {"weight_ih": np.asarray(params.w_x).T, "weight_hh": np.asarray(params.w_h).T}
    if kind == "gru":
        out["bias_ih"], out["bias_hh"] = np.asarray(params.b_x), np.asarray(params.b_h)
    else:
        out["bias_ih"] = np.asarray(params.b)
        out["bias_hh"] = np.zeros_like(out["bias_ih"])
    return {k: np.array(v, order="C", copy=True) for k, v in out.items()}


def from_torch(module: Any) -> tuple[Stack, tuple] | tuple[Cell, PyTree]:
    """Convert a PyTorch recurrent module's weights to gatedrnn params.

    Args:
      module: a ``torch.nn.RNN`` (``nonlinearity`` ``"tanh"`` or ``"relu"``), ``nn.LSTM``
        or ``nn.GRU`` with any ``num_layers`` and ``bidirectional``; or a single
        ``nn.RNNCell``, ``nn.LSTMCell`` or ``nn.GRUCell``. ``batch_first`` does not
        matter (weights only); gatedrnn is batch-first unless ``time_major=True``.

    Returns:
      For a sequence module, ``(stack, params)``: a :func:`gatedrnn.stack` of the matching
      cell and a tuple with one params entry per layer (a :class:`gatedrnn.Bidir`
      ``(fw, bw)`` per layer when bidirectional), so ``stack.apply(params, xs)`` computes
      what ``module(xs)`` does. For a cell, ``(cell, params)``.

    Equations (per layer and direction; see the module docstring)::

        w_x = weight_ih.T,  w_h = weight_hh.T
        vanilla, LSTM: b = bias_ih + bias_hh;   GRU: b_x = bias_ih, b_h = bias_hh

    Raises:
      ValueError: an LSTM with ``proj_size > 0`` (gatedrnn's LSTM has no projection of
        ``h``), or float64 weights while JAX runs in float32.
      TypeError: not a torch recurrent module.
    """
    kind, activation = _torch_kind(module)
    weights = dict(module.named_parameters())
    name = type(module).__name__
    if not hasattr(module, "num_layers"):  # a single cell
        cell = _make_cell(kind, module.hidden_size, activation)
        return cell, _layer_from_torch(kind, weights, "", name)
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"cannot convert a torch LSTM with proj_size={module.proj_size}: gatedrnn's LSTM "
            "has no projection of h (h' = o * tanh(c'), of size hidden_size); the output and "
            "recurrent state would differ"
        )
    cell = _make_cell(kind, module.hidden_size, activation)
    dirs = ("", "_reverse") if module.bidirectional else ("",)
    layers = []
    for layer in range(module.num_layers):
        ps = [_layer_from_torch(kind, weights, f"_l{layer}{d}", name) for d in dirs]
        layers.append(Bidir(*ps) if module.bidirectional else ps[0])
    return stack(cell, module.num_layers, bidirectional=module.bidirectional), tuple(layers)


def to_torch(
    model: Stack | Cell,
    params: PyTree,
    module: Any = None,
    *,
    batch_first: bool = True,
) -> Any:
    """Write gatedrnn params into a PyTorch module (made here unless one is given).

    Args:
      model: a :func:`gatedrnn.stack` (params: tuple per layer, :class:`gatedrnn.Bidir`
        per layer if bidirectional) or a single cell (params of that cell).
      params: the params, e.g. from ``model.init`` or :func:`from_torch`.
      module: a torch module of the matching type and sizes to load into (its dtype is
        kept); None to build ``nn.RNN/LSTM/GRU`` (or the ``*Cell`` for a single cell) with
        the params' dtype.
      batch_first: for a module built here (gatedrnn's default layout is batch first).

    Returns:
      The torch module, with weights such that ``module(xs)`` computes what
      ``model.apply(params, xs)`` (or ``gr.scan``) does.

    Equations (see the module docstring): ``weight_ih = w_x.T``, ``weight_hh = w_h.T``;
    vanilla and LSTM ``bias_ih = b, bias_hh = 0``; GRU ``bias_ih = b_x, bias_hh = b_h``.

    Raises:
      ValueError: a vanilla cell with ``activation="linear"`` (torch has only tanh and
        relu), a GRU with ``reset_after=False`` (torch is reset-after), a ``module`` whose
        type or sizes differ, or non-zero biases into a module made with ``bias=False``.
    """
    import torch

    if isinstance(model, Stack):
        cell, num_layers, bidir = model.cell, model.num_layers, model.bidirectional
    elif isinstance(model, Cell):
        cell, num_layers, bidir = model, None, False
    else:
        raise TypeError(f"model must be a gatedrnn Stack or Cell, got {type(model).__name__}")
    kind = _kind(cell)
    H = cell.hidden_size
    activation = cell.options.get("activation")
    if activation not in (None, "tanh", "relu"):
        raise ValueError(
            f"torch has no vanilla RNN with activation {activation!r} (only tanh and relu)"
        )
    if kind == "gru" and not cell.options.get("reset_after", True):
        raise ValueError(
            "torch's GRU is reset-after; a gatedrnn GRU with reset_after=False computes a "
            "different function and cannot be converted"
        )
    if num_layers is None:
        layer_params = {"": params}
    else:
        if not isinstance(params, (tuple, list)) or len(params) != num_layers:
            raise ValueError(f"params must be a tuple of {num_layers} layer params")
        layer_params = {}
        for layer, p in enumerate(params):
            if bidir:
                if not isinstance(p, tuple) or len(p) != 2:
                    raise ValueError(f"layer {layer} params must be Bidir(fw, bw)")
                layer_params[f"_l{layer}"], layer_params[f"_l{layer}_reverse"] = p
            else:
                layer_params[f"_l{layer}"] = p
    sizes = {s: _check_params(kind, p, H) for s, p in layer_params.items()}
    input_size = next(iter(sizes.values()))
    dtype = np.asarray(next(iter(layer_params.values())).w_x).dtype

    if module is None:
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        nn = torch.nn
        if num_layers is None:
            if kind == "vanilla":
                module = nn.RNNCell(input_size, H, nonlinearity=activation, dtype=tdtype)
            else:
                module = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](input_size, H, dtype=tdtype)
        else:
            common = dict(
                num_layers=num_layers,
                bidirectional=bidir,
                batch_first=batch_first,
                dtype=tdtype,
            )
            if kind == "vanilla":
                module = nn.RNN(input_size, H, nonlinearity=activation, **common)
            else:
                module = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](input_size, H, **common)

    mkind, mact = _torch_kind(module)
    want = (kind, activation)
    if (mkind, mact) != want or module.hidden_size != H:
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
    named = dict(module.named_parameters())
    new = {}
    for suffix, p in layer_params.items():
        for key, value in _layer_to_torch(kind, p).items():
            name = key + suffix
            if name not in named:
                if key.startswith("bias") and not np.any(value):
                    continue  # bias=False module, zero bias: nothing lost
                raise ValueError(
                    f"module has no parameter {name!r} (made with bias=False?) but the "
                    "params have a non-zero bias; it would be dropped"
                )
            _expect_shape(value, tuple(named[name].shape), f"torch {name}")
            new[name] = torch.as_tensor(value, dtype=named[name].dtype)
    with torch.no_grad():
        for name, value in new.items():
            named[name].copy_(value)
    return module


def state_from_torch(model: Stack, h: Any, c: Any = None) -> tuple:
    """Torch's ``h_0`` (and ``c_0``) as a gatedrnn stack state (``initial_state=``).

    Args:
      model: the :func:`gatedrnn.stack` (its cell kind, layers and directions).
      h: ``(num_layers * D, *batch, H)`` as torch orders it (layer-major, then direction).
      c: the same for an LSTM's cell state; None otherwise.

    Returns:
      One state per layer (:class:`gatedrnn.Bidir` per layer if bidirectional); LSTM states
      are :class:`gatedrnn.LSTMState` ``(h, c)``.
    """
    is_lstm = _kind(model.cell) == "lstm"
    if is_lstm != (c is not None):
        raise ValueError("pass c (the cell state) for an LSTM and only for an LSTM")
    D = 2 if model.bidirectional else 1
    h = _to_jax(h, "h")
    c = None if c is None else _to_jax(c, "c")
    if h.ndim < 2 or h.shape[0] != model.num_layers * D:
        raise ValueError(
            f"h must have shape (num_layers * D = {model.num_layers * D}, *batch, H), "
            f"got {tuple(h.shape)}"
        )
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
    if _kind(model.cell) == "lstm":
        return np.stack([s.h for s in flat]), np.stack([s.c for s in flat])
    return np.stack(flat)


# ------------------------------------------------------------------------ Flax (Linen, NNX)


def _flax_kind(module: Any) -> tuple[str, str | None, bool]:
    """``(kind, activation, is_nnx)`` of a Flax cell instance, after checking it is exact."""
    from flax import linen, nnx

    table = {
        linen.SimpleCell: "vanilla",
        linen.LSTMCell: "lstm",
        linen.OptimizedLSTMCell: "lstm",
        linen.GRUCell: "gru",
        nnx.SimpleCell: "vanilla",
        nnx.LSTMCell: "lstm",
        nnx.OptimizedLSTMCell: "lstm",
        nnx.GRUCell: "gru",
    }
    kind = table.get(type(module))
    if kind is None:
        raise TypeError(
            "expected a Flax SimpleCell, LSTMCell, OptimizedLSTMCell or GRUCell instance "
            f"(flax.linen or flax.nnx), got {type(module).__name__}"
        )
    is_nnx = isinstance(module, nnx.Module)
    act_fn = module.activation_fn
    activation = None
    if kind == "vanilla":
        acts = {jnp.tanh: "tanh", linen.tanh: "tanh", jax.nn.relu: "relu", linen.relu: "relu"}
        acts.update({nnx.tanh: "tanh", nnx.relu: "relu"})
        activation = acts.get(act_fn)
        if act_fn is identity:
            activation = "linear"
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
    else:
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
    return kind, activation, is_nnx


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


def _linen_dense(params: Mapping[str, Any], name: str, bias: bool) -> tuple[Array, Array | None]:
    if name not in params:
        raise ValueError(
            f"Flax params have no {name!r} entry (keys: {sorted(params)}); pass the cell's "
            "own params, e.g. variables['params'] or variables['params']['cell'] for nn.RNN"
        )
    d = params[name]
    kernel = _to_jax(d["kernel"], f"Flax {name}/kernel")
    if bias != ("bias" in d):
        raise ValueError(
            f"Flax {name} {'lacks' if bias else 'has'} a bias; this is not the layout of the "
            "cell given"
        )
    return kernel, _to_jax(d["bias"], f"Flax {name}/bias") if bias else None


def from_flax(module: Any, params: Mapping[str, Any] | None = None) -> tuple[Cell, PyTree]:
    """Convert a Flax cell's params (Linen or NNX) to a gatedrnn cell and its params.

    Args:
      module: a ``flax.linen`` or ``flax.nnx`` ``SimpleCell``, ``LSTMCell``,
        ``OptimizedLSTMCell`` or ``GRUCell`` instance (read for its activation and gates).
      params: for a Linen cell, its params: ``variables`` (``{"params": {...}}``) or the
        inner dict (for ``nn.RNN(cell)`` that is ``variables["params"]["cell"]``). None for
        an NNX cell (its params are read from the module).

    Returns:
      ``(cell, params)`` with ``gr.vanilla/lstm/gru`` params computing what the Flax cell
      does. Flax's LSTM carry is ``(c, h)`` while gatedrnn's state is
      ``LSTMState(h, c)``: see :func:`carry_from_flax`.

    Equations: ``w_x = concat(kernel of ii, if, ig, io)`` (``ir, iz, in`` for a GRU),
    ``w_h = concat(kernel of hi, hf, hg, ho)``; LSTM ``b = concat(bias of hi, hf, hg,
    ho)``; GRU ``b_x = concat(bias of ir, iz, in)``, ``b_h = (0, 0, bias of hn)`` (NNX:
    ``b_x`` = ``dense_i`` bias, ``b_h = 0``); SimpleCell ``b`` = bias of ``i``.

    Raises:
      ValueError: a cell with ``gate_fn``/``activation_fn`` other than sigmoid/tanh (tanh,
        relu or identity for SimpleCell), ``residual=True``, a compute ``dtype`` other than
        the params', or params of the wrong layout.
    """
    kind, activation, is_nnx = _flax_kind(module)
    if is_nnx:
        if params is not None:
            raise ValueError("an NNX cell holds its own params; call from_flax(module)")
        return _from_nnx(module, kind, activation)
    if params is None:
        raise ValueError("a Linen cell needs its params: from_flax(module, variables)")
    p = _unwrap_variables(params)
    if kind == "vanilla":
        w_x, b = _linen_dense(p, "i", True)
        w_h, _ = _linen_dense(p, "h", False)
        out = VanillaParams(w_x=w_x, w_h=w_h, b=b)
    elif kind == "lstm":
        xs = [_linen_dense(p, "i" + g, False)[0] for g in _GATES["lstm"]]
        hs = [_linen_dense(p, "h" + g, True) for g in _GATES["lstm"]]
        out = LSTMParams(
            w_x=jnp.concatenate(xs, axis=1),
            w_h=jnp.concatenate([k for k, _ in hs], axis=1),
            b=jnp.concatenate([b for _, b in hs]),
        )
    else:
        xs = [_linen_dense(p, "i" + g, True) for g in _GATES["gru"]]
        hs = [_linen_dense(p, "h" + g, g == "n") for g in _GATES["gru"]]
        b_hn = hs[2][1]
        out = GRUParams(
            w_x=jnp.concatenate([k for k, _ in xs], axis=1),
            w_h=jnp.concatenate([k for k, _ in hs], axis=1),
            b_x=jnp.concatenate([b for _, b in xs]),
            b_h=jnp.concatenate([jnp.zeros_like(b_hn), jnp.zeros_like(b_hn), b_hn]),
        )
    _check_compute_dtype(module, out.w_x.dtype)
    H = out.w_h.shape[0]
    if H != module.features:
        raise ValueError(f"params have hidden size {H}, the module has features={module.features}")
    _check_params(kind, out, H)
    return _make_cell(kind, H, activation), out


def _flax_cell_for(cell: Cell, flavor: str) -> tuple[str, str | None]:
    """Check a gatedrnn cell can go to Flax; return ``(kind, activation)``."""
    kind = _kind(cell)
    if kind == "gru" and not cell.options.get("reset_after", True):
        raise ValueError(
            f"Flax's GRUCell ({flavor}) is reset-after; a gatedrnn GRU with "
            "reset_after=False computes a different function and cannot be converted"
        )
    return kind, cell.options.get("activation")


def identity(z: Array) -> Array:
    """The identity, as the ``activation_fn`` of a Flax ``SimpleCell`` that
    :func:`to_flax` makes from ``gr.vanilla(h, "linear")`` (and :func:`from_flax` reads)."""
    return z


def _flax_activation(activation: str | None) -> Any:
    return {None: jnp.tanh, "tanh": jnp.tanh, "relu": jax.nn.relu, "linear": identity}[activation]


def _fold_gru_biases(params: GRUParams, H: int) -> tuple[Array, Array]:
    """GRU biases as Flax keeps them: ``b_x`` with ``b_hr, b_hz`` folded in, and ``b_hn``."""
    b_x = jnp.concatenate([params.b_x[: 2 * H] + params.b_h[: 2 * H], params.b_x[2 * H :]])
    return b_x, params.b_h[2 * H :]


def to_flax(cell: Cell, params: PyTree, *, optimized: bool = False) -> tuple[Any, dict[str, Any]]:
    """A Flax Linen cell and its variables computing what a gatedrnn cell does.

    Args:
      cell: a ``gr.vanilla``, ``gr.lstm`` or ``gr.gru`` (``reset_after=True``) cell.
      params: its params.
      optimized: for an LSTM, build ``flax.linen.OptimizedLSTMCell`` (same param layout)
        instead of ``LSTMCell``.

    Returns:
      ``(module, variables)``: a ``flax.linen`` ``SimpleCell``/``LSTMCell``/
      ``OptimizedLSTMCell``/``GRUCell`` and ``{"params": {...}}`` for ``module.apply``.

    Equations: the inverse of :func:`from_flax`; for a GRU the recurrent biases of r and z
    are folded into the input ones (``bias of ir = b_xr + b_hr``), which Flax's GRU cannot
    keep apart (exact as a function; the original split is not recoverable).

    Raises:
      ValueError: a GRU with ``reset_after=False``.
    """
    from flax import linen

    kind, activation = _flax_cell_for(cell, "flax.linen")
    H = cell.hidden_size
    _check_params(kind, params, H)
    dtype = params.w_x.dtype
    blocks = lambda w: jnp.split(w, len(_GATES[kind]), axis=-1)  # noqa: E731
    if kind == "vanilla":
        module = linen.SimpleCell(H, activation_fn=_flax_activation(activation), param_dtype=dtype)
        p = {"i": {"kernel": params.w_x, "bias": params.b}, "h": {"kernel": params.w_h}}
    elif kind == "lstm":
        ctor = linen.OptimizedLSTMCell if optimized else linen.LSTMCell
        module = ctor(H, param_dtype=dtype)
        p = {}
        for g, kx, kh, b in zip(
            _GATES[kind], blocks(params.w_x), blocks(params.w_h), blocks(params.b)
        ):
            p["i" + g] = {"kernel": kx}
            p["h" + g] = {"kernel": kh, "bias": b}
    else:
        module = linen.GRUCell(H, param_dtype=dtype)
        b_x, b_hn = _fold_gru_biases(params, H)
        p = {}
        for g, kx, kh, b in zip(_GATES[kind], blocks(params.w_x), blocks(params.w_h), blocks(b_x)):
            p["i" + g] = {"kernel": kx, "bias": b}
            p["h" + g] = {"kernel": kh}
        p["hn"]["bias"] = b_hn
    return module, {"params": p}


def _from_nnx(module: Any, kind: str, activation: str | None) -> tuple[Cell, PyTree]:
    from flax import nnx

    H = module.hidden_features
    v = lambda x: _to_jax(x[...], "NNX param")  # noqa: E731
    if kind == "vanilla":
        out = VanillaParams(
            w_x=v(module.dense_i.kernel), w_h=v(module.dense_h.kernel), b=v(module.dense_i.bias)
        )
    elif isinstance(module, nnx.OptimizedLSTMCell):
        out = LSTMParams(
            w_x=v(module.dense_i.kernel), w_h=v(module.dense_h.kernel), b=v(module.dense_h.bias)
        )
    elif kind == "lstm":
        names = ("i", "f_", "g", "o")  # NNX spells the forget gate's input layer `if_`
        out = LSTMParams(
            w_x=jnp.concatenate([v(getattr(module, "i" + g).kernel) for g in names], axis=1),
            w_h=jnp.concatenate([v(getattr(module, "h" + g[0]).kernel) for g in names], axis=1),
            b=jnp.concatenate([v(getattr(module, "h" + g[0]).bias) for g in names]),
        )
    else:
        b_x = v(module.dense_i.bias)
        out = GRUParams(
            w_x=v(module.dense_i.kernel),
            w_h=v(module.dense_h.kernel),
            b_x=b_x,
            b_h=jnp.zeros_like(b_x),
        )
    _check_params(kind, out, H)
    _check_compute_dtype(module, out.w_x.dtype)
    return _make_cell(kind, H, activation), out


def to_flax_nnx(cell: Cell, params: PyTree, *, optimized: bool = False, rngs: Any = None) -> Any:
    """A Flax NNX cell (``flax.nnx.SimpleCell/LSTMCell/OptimizedLSTMCell/GRUCell``) holding
    gatedrnn params.

    Args:
      cell: a ``gr.vanilla``, ``gr.lstm`` or ``gr.gru`` (``reset_after=True``) cell.
      params: its params.
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
    from flax import nnx

    kind, activation = _flax_cell_for(cell, "flax.nnx")
    H = cell.hidden_size
    I = _check_params(kind, params, H)
    dtype = params.w_x.dtype
    rngs = nnx.Rngs(0) if rngs is None else rngs
    blocks = lambda w: jnp.split(w, len(_GATES[kind]), axis=-1)  # noqa: E731

    def put(param: Any, value: Array) -> None:
        param[...] = value

    if kind == "vanilla":
        m = nnx.SimpleCell(
            I, H, activation_fn=_flax_activation(activation), param_dtype=dtype, rngs=rngs
        )
        put(m.dense_i.kernel, params.w_x)
        put(m.dense_i.bias, params.b)
        put(m.dense_h.kernel, params.w_h)
    elif kind == "lstm" and optimized:
        m = nnx.OptimizedLSTMCell(I, H, param_dtype=dtype, rngs=rngs)
        put(m.dense_i.kernel, params.w_x)
        put(m.dense_h.kernel, params.w_h)
        put(m.dense_h.bias, params.b)
    elif kind == "lstm":
        m = nnx.LSTMCell(I, H, param_dtype=dtype, rngs=rngs)
        for g, kx, kh, b in zip(
            ("i", "f_", "g", "o"), blocks(params.w_x), blocks(params.w_h), blocks(params.b)
        ):
            put(getattr(m, "i" + g).kernel, kx)
            put(getattr(m, "h" + g[0]).kernel, kh)
            put(getattr(m, "h" + g[0]).bias, b)
    else:
        b_x, b_hn = _fold_gru_biases(params, H)
        if isinstance(b_hn, jax.core.Tracer) or np.any(np.asarray(b_hn) != 0):
            raise ValueError(
                "flax.nnx.GRUCell has no recurrent bias b_hn (the reset gate multiplies "
                "h w_hn alone), but these params have a non-zero b_h[2H:]; converting would "
                "change the function. Use flax.linen.GRUCell (to_flax) or gatedrnn.nnx.GRUCell"
            )
        m = nnx.GRUCell(I, H, param_dtype=dtype, rngs=rngs)
        put(m.dense_i.kernel, params.w_x)
        put(m.dense_i.bias, b_x)
        put(m.dense_h.kernel, params.w_h)
    return m


def carry_from_flax(cell: Cell, carry: Any) -> PyTree:
    """A Flax cell's carry as the gatedrnn state: LSTM ``(c, h) -> LSTMState(h, c)``."""
    if _kind(cell) == "lstm":
        c, h = carry
        return LSTMState(h=h, c=c)
    return carry


def carry_to_flax(cell: Cell, state: PyTree) -> Any:
    """A gatedrnn state as a Flax cell's carry: LSTM ``LSTMState(h, c) -> (c, h)``."""
    if _kind(cell) == "lstm":
        return (state.c, state.h)
    return state


__all__ = [
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "from_torch",
    "state_from_torch",
    "state_to_torch",
    "to_flax",
    "to_flax_nnx",
    "to_torch",
]
