"""Flax Linen modules: they create parameters and call gatedrnn's pure functions.

This is the only module of gatedrnn that imports ``flax.linen``. Two kinds of module:

* cells, :class:`VanillaCell`, :class:`LSTMCell`, :class:`GRUCell`: subclasses of
  ``flax.linen.RNNCellBase`` with ``__call__(carry, x) -> (carry, y)``, so they work in
  ``flax.linen.RNN`` and ``flax.linen.Bidirectional`` like Flax's own cells. Their
  params are named as the fields of the pure params (``w_x``, ``w_h``, ``b`` or ``b_x``,
  ``b_h``), drawn by the pure cell's ``init``, and a step is the pure ``cell.step``;
* :class:`RNN`: a whole (multi-layer, optionally bidirectional) recurrent layer running
  the fast path, :func:`gatedrnn.stack` over :func:`gatedrnn.scan` (one ``lax.scan`` per
  layer and direction with the input projection hoisted out of the loop), with
  ``seq_lengths``, ``reverse`` and inter-layer dropout.

:mod:`gatedrnn.nnx` has the same modules for Flax NNX, with the same option names and
defaults (NNX adds ``in_features`` and ``rngs``).

Example::

    import flax.linen as nn
    import gatedrnn.linen as grl

    ys = nn.RNN(grl.LSTMCell(64))                         # Flax's per-step loop
    layer = grl.RNN("lstm", 64, num_layers=2, bidirectional=True)
    variables = layer.init(key, xs)                        # xs (batch, T, features)
    final_states, ys = layer.apply(variables, xs, seq_lengths=lengths)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gatedrnn._modules import (
    cell_options,
    check_xs,
    is_deterministic,
    resolve_cell,
    run_stack,
    uses_dropout,
)
from gatedrnn.cells import CELLS as CELLS  # re-exported: the registry of cells by name
from gatedrnn.cells.base import Array, Cell, Initializer, PyTree
from gatedrnn.layers import Bidir, Stack, stack


def param_shapes(cell: Cell, input_size: int, dtype: Any = jnp.float32) -> PyTree:
    """The params ``cell.init`` would draw, as ``jax.ShapeDtypeStruct`` leaves (no compute)."""
    return jax.eval_shape(lambda k: cell.init(k, input_size, dtype), jax.random.key(0))


def create_params(module: nn.Module, cell: Cell, input_size: int, dtype: Any) -> PyTree:
    """Declare ``cell``'s params on a Linen ``module``, one Flax param per field.

    Each param is named as its field (``w_x (I, G*H)``, ``w_h (H, G*H)``, ``b (G*H,)``,
    ...) and drawn by the pure ``cell.init`` (with the rng Flax gives that param), so init
    rules such as the LSTM's ``forget_bias`` live in one place. Returns the pure params
    NamedTuple.
    """
    ptype = type(param_shapes(cell, input_size, dtype))
    values = {
        f: module.param(f, lambda key, f=f: getattr(cell.init(key, input_size, dtype), f))
        for f in ptype._fields
    }
    return ptype(**values)


def _unwrap(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"expected Flax variables (a dict), got {type(variables).__name__}")
    return variables["params"] if "params" in variables else variables


def _to_namedtuple(cell: Cell, tree: Mapping[str, Any], what: str) -> PyTree:
    """A ``{field: array}`` dict as ``cell``'s params NamedTuple (fields checked)."""
    input_size = tree["w_x"].shape[0] if "w_x" in tree else 1
    ptype = type(param_shapes(cell, input_size))
    if set(tree) != set(ptype._fields):
        raise ValueError(f"{what} must have params {ptype._fields}, got {sorted(tree)}")
    return ptype(**{f: tree[f] for f in ptype._fields})


class _CellBase(nn.RNNCellBase):
    """Shared body of the Linen cells: params from the pure init, a step from the pure step.

    Attributes:
      hidden_size: ``H``.
      kernel_init, recurrent_init, bias_init: initializers for the pure cell (None: its
        defaults: fan-in normal, orthogonal per gate, zeros).
      param_dtype: dtype of the params (and of the computation: inputs must match it).
    """

    hidden_size: int
    kernel_init: Initializer | None = None
    recurrent_init: Initializer | None = None
    bias_init: Initializer | None = None
    param_dtype: Any = jnp.float32

    @nn.nowrap
    def _options(self) -> dict[str, Any]:
        return {}

    @nn.nowrap
    def make_cell(self) -> Cell:
        """The pure gatedrnn cell this module wraps (from the registry)."""
        options = cell_options(
            **self._options(),
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_init,
            bias_init=self.bias_init,
        )
        return resolve_cell(self._kind, self.hidden_size, options)

    @nn.compact
    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:
        """One step: ``(carry, x (*batch, I)) -> (carry', y (*batch, H))``.

        The carry is the pure cell's state (``LSTMState(h, c)`` for the LSTM, ``h``
        otherwise, each ``(*batch, H)``), as made by :meth:`initialize_carry`.
        """
        cell = self.make_cell()
        params = create_params(self, cell, inputs.shape[-1], self.param_dtype)
        return cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> PyTree:
        """Zeros state, leaves ``(*batch, H)``, for inputs ``(*batch, I)`` (``rng`` unused)."""
        del rng
        cell = self.make_cell()
        shapes = param_shapes(cell, input_shape[-1], self.param_dtype)
        return cell.initial_state(shapes, tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        """Inputs have one feature axis."""
        return 1

    @nn.nowrap
    def to_pure(self, variables: Mapping[str, Any]) -> PyTree:
        """This cell's Flax variables (or their ``"params"`` dict) as the pure params."""
        return _to_namedtuple(self.make_cell(), _unwrap(variables), type(self).__name__)

    @nn.nowrap
    def from_pure(self, params: PyTree) -> dict[str, Any]:
        """Pure params as Flax variables ``{"params": {field: array}}`` for this cell."""
        return {"params": dict(params._asdict())}


class VanillaCell(_CellBase):
    """Vanilla RNN cell ``h' = act(x w_x + h w_h + b)`` (see :func:`gatedrnn.vanilla`).

    Attributes:
      hidden_size: ``H``; params ``w_x (I, H)``, ``w_h (H, H)``, ``b (H,)``.
      activation: ``"tanh"``, ``"relu"`` or ``"linear"``.
    """

    activation: str = "tanh"
    _kind = "vanilla"

    @nn.nowrap
    def _options(self) -> dict[str, Any]:
        return {"activation": self.activation}


class LSTMCell(_CellBase):
    """LSTM cell (see :func:`gatedrnn.lstm`); the carry is ``LSTMState(h, c)``.

    Attributes:
      hidden_size: ``H``; params ``w_x (I, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``, gate
        blocks i, f, g, o.
      forget_bias: added to the forget gate's bias at init; or ``"chrono"`` with
        ``t_max`` (Tallec & Ollivier 2018: ``log U(1, t_max - 1)`` per unit, the input
        gate's bias its negative).
      t_max: the longest dependency in steps, for ``forget_bias="chrono"`` only.
    """

    forget_bias: float | str = 1.0
    t_max: int | None = None
    _kind = "lstm"

    @nn.nowrap
    def _options(self) -> dict[str, Any]:
        return {"forget_bias": self.forget_bias, "t_max": self.t_max}


class GRUCell(_CellBase):
    """GRU cell (see :func:`gatedrnn.gru`).

    Attributes:
      hidden_size: ``H``; params ``w_x (I, 3H)``, ``w_h (H, 3H)``, ``b_x (3H,)``,
        ``b_h (3H,)``, gate blocks r, z, n.
      reset_after: True (PyTorch, Flax) or False (Cho et al. 2014).
      update_bias: added to the update gate's input bias at init; or ``"chrono"`` with
        ``t_max`` (``log U(1, t_max - 1)`` per unit, Tallec & Ollivier 2018).
      t_max: the longest dependency in steps, for ``update_bias="chrono"`` only.
    """

    reset_after: bool = True
    update_bias: float | str = 0.0
    t_max: int | None = None
    _kind = "gru"

    @nn.nowrap
    def _options(self) -> dict[str, Any]:
        return {
            "reset_after": self.reset_after,
            "update_bias": self.update_bias,
            "t_max": self.t_max,
        }


class _LayerParams(nn.Module):
    """Declares one layer's (one direction's) params; see :func:`create_params`."""

    cell: Cell
    input_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> PyTree:
        return create_params(self, self.cell, self.input_size, self.param_dtype)


class RNN(nn.Module):
    """A recurrent layer (or several) on gatedrnn's fast path, like ``torch.nn.LSTM``.

    Attributes:
      cell: a name of :data:`gatedrnn.cells.CELLS` (``"vanilla"``, ``"lstm"``, ``"gru"``,
        ...) or a pure :class:`gatedrnn.Cell` (then the cell options below stay None).
      hidden_size: ``H``; required with a cell name, optional (must match) with a Cell.
      num_layers: stacked layers; layer ``k > 0`` takes the ``D * H`` outputs of layer
        ``k - 1`` (``D = 2`` if bidirectional else 1).
      bidirectional: run each layer both ways and concatenate the outputs.
      dropout: dropout rate between layers (not after the last), applied only when not
        deterministic (needs a ``"dropout"`` rng).
      deterministic: the default of the call's ``deterministic``; None (and True) means no
        dropout.
      time_major: inputs and outputs are ``(T, *batch, ...)``.
      unroll: steps per ``lax.scan`` iteration; None: ``gr.default_unroll``.
      param_dtype: dtype of the params (and of the inputs).
      activation, forget_bias, reset_after, update_bias, t_max: options of the named cell
        (vanilla: ``activation``; LSTM: ``forget_bias``, a number or ``"chrono"`` with
        ``t_max``; GRU: ``reset_after``, ``update_bias``, a number or ``"chrono"`` with
        ``t_max``); None: the cell's default.
      kernel_init, recurrent_init, bias_init: initializers of the named cell; None: its
        defaults.

    Params are named ``layer_{k}`` (or ``layer_{k}_fw`` and ``layer_{k}_bw``), each a dict
    of the pure cell's fields; :meth:`to_pure` and :meth:`from_pure` convert to and from
    the tuple that :func:`gatedrnn.stack` (and :func:`gatedrnn.interop.from_torch`) use.
    """

    cell: str | Cell
    hidden_size: int | None = None
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    deterministic: bool | None = None
    time_major: bool = False
    unroll: int | None = None
    param_dtype: Any = jnp.float32
    activation: str | None = None
    forget_bias: float | str | None = None
    reset_after: bool | None = None
    update_bias: float | str | None = None
    t_max: int | None = None
    kernel_init: Initializer | None = None
    recurrent_init: Initializer | None = None
    bias_init: Initializer | None = None

    @nn.nowrap
    def make_stack(self) -> Stack:
        """The pure :func:`gatedrnn.stack` this module runs."""
        options = cell_options(
            activation=self.activation,
            forget_bias=self.forget_bias,
            reset_after=self.reset_after,
            update_bias=self.update_bias,
            t_max=self.t_max,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_init,
            bias_init=self.bias_init,
        )
        cell = resolve_cell(self.cell, self.hidden_size, options)
        return stack(cell, self.num_layers, bidirectional=self.bidirectional, dropout=self.dropout)

    @nn.nowrap
    def _names(self, layer: int) -> tuple[str, ...]:
        if self.bidirectional:
            return (f"layer_{layer}_fw", f"layer_{layer}_bw")
        return (f"layer_{layer}",)

    @nn.compact
    def __call__(
        self,
        xs: Array,
        initial_state: tuple | None = None,
        *,
        seq_lengths: Array | None = None,
        reverse: bool = False,
        deterministic: bool | None = None,
    ) -> tuple[tuple, Array]:
        """Run all layers over ``xs``.

        Args:
          xs: ``(*batch, T, I)`` (``(T, *batch, I)`` with ``time_major``).
          initial_state: one state per layer (``Bidir`` per layer if bidirectional), each
            leaf ``(*batch, H)``, or None for zeros.
          seq_lengths: ``(*batch,)`` valid lengths (see :func:`gatedrnn.scan`).
          reverse: run from the end (unidirectional only).
          deterministic: no dropout if True; None: the module's ``deterministic`` (None:
            no dropout).

        Returns:
          ``(final_states, ys)``: a state per layer, and the last layer's outputs
          ``(*batch, T, D * H)``.
        """
        st = self.make_stack()
        check_xs(xs)
        D = 2 if self.bidirectional else 1
        params = []
        for layer in range(self.num_layers):
            size = xs.shape[-1] if layer == 0 else D * st.cell.hidden_size
            ps = [
                _LayerParams(st.cell, size, self.param_dtype, name=n)() for n in self._names(layer)
            ]
            params.append(Bidir(*ps) if self.bidirectional else ps[0])
        det = is_deterministic(deterministic, self.deterministic)
        if uses_dropout(st, det) and not self.has_rng("dropout"):
            raise ValueError(
                f"dropout={self.dropout} is on (deterministic=False) but no 'dropout' rng was "
                "given: apply(..., rngs={'dropout': key}), or deterministic=True"
            )
        return run_stack(
            st,
            tuple(params),
            xs,
            initial_state,
            seq_lengths=seq_lengths,
            reverse=reverse,
            time_major=self.time_major,
            unroll=self.unroll,
            dropout_key=self.make_rng("dropout") if uses_dropout(st, det) else None,
        )

    @nn.nowrap
    def to_pure(self, variables: Mapping[str, Any]) -> tuple:
        """This module's Flax variables as :func:`gatedrnn.stack` params (tuple per layer)."""
        tree = _unwrap(variables)
        cell = self.make_stack().cell
        out = []
        for layer in range(self.num_layers):
            names = self._names(layer)
            missing = [n for n in names if n not in tree]
            if missing:
                raise ValueError(f"variables have no {missing} (keys: {sorted(tree)})")
            ps = [_to_namedtuple(cell, tree[n], n) for n in names]
            out.append(Bidir(*ps) if self.bidirectional else ps[0])
        return tuple(out)

    @nn.nowrap
    def from_pure(self, params: tuple) -> dict[str, Any]:
        """:func:`gatedrnn.stack` params as Flax variables ``{"params": ...}`` for this module."""
        if not isinstance(params, (tuple, list)) or len(params) != self.num_layers:
            raise ValueError(f"params must be a tuple of {self.num_layers} layer params")
        tree = {}
        for layer, p in enumerate(params):
            parts = (p.fw, p.bw) if self.bidirectional else (p,)
            for name, q in zip(self._names(layer), parts, strict=True):
                tree[name] = dict(q._asdict())
        return {"params": tree}


__all__ = ["RNN", "GRUCell", "LSTMCell", "VanillaCell", "create_params", "param_shapes"]
