"""Flax Linen modules: they create parameters and call gatedrnn's pure functions.

This is the only module of gatedrnn that imports ``flax.linen``. Two kinds of module, both
generic over the registered cells (nothing here branches on a cell's name):

* :class:`Cell`: any cell, ``Cell("lstm", 64)``, ``Cell("gru", 64, cell_options={
  "reset_after": False})`` or ``Cell(gr.min_gru(64))``, a subclass of
  ``flax.linen.RNNCellBase`` with ``__call__(carry, x) -> (carry, y)``, so it works in
  ``flax.linen.RNN`` and ``flax.linen.Bidirectional`` like Flax's own cells. Its params
  are the pure params' leaves, named by their field paths (``w_x``, ``w_h``, ``b``, ...;
  ``field.sub`` in nested params, see :func:`gatedrnn._modules.flatten_params`), all
  drawn by one call of the pure cell's ``init``; a step is the pure ``cell.step``; the
  carry is the pure cell's state, whatever its structure. :class:`VanillaCell`,
  :class:`LSTMCell` and :class:`GRUCell` are the same module with the cell fixed and its
  options as attributes (the spellings of earlier releases);
* :class:`RNN`: a whole (multi-layer, optionally bidirectional) recurrent layer running
  the fast path, :func:`gatedrnn.stack` over :func:`gatedrnn.scan` (one ``lax.scan`` per
  layer and direction with the input projection hoisted out of the loop), with
  ``seq_lengths``, ``reverse`` and inter-layer dropout.

:mod:`gatedrnn.nnx` has the same modules for Flax NNX, with the same option names and
defaults (NNX adds ``in_features`` and ``rngs``).

Example::

    import flax.linen as nn
    import gatedrnn.linen as grl

    ys = nn.RNN(grl.Cell("lstm", 64))                      # Flax's per-step loop
    layer = grl.RNN("gru", 64, num_layers=2, cell_options={"reset_after": False})
    variables = layer.init(key, xs)                        # xs (batch, T, features)
    final_states, ys = layer.apply(variables, xs, seq_lengths=lengths)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from gatedrnn._modules import (
    check_cell_options,
    check_xs,
    flatten_params,
    given_options,
    is_deterministic,
    resolve_cell,
    run_stack,
    unflatten_params,
    uses_dropout,
)
from gatedrnn.cells import CELLS as CELLS  # re-exported: the registry of cells by name
from gatedrnn.cells.base import Array, Initializer, PyTree
from gatedrnn.cells.base import Cell as PureCell
from gatedrnn.layers import Bidir, Stack, stack


def param_shapes(cell: PureCell, input_size: int, dtype: Any = jnp.float32) -> PyTree:
    """The params ``cell.init`` would draw, as ``jax.ShapeDtypeStruct`` leaves (no compute)."""
    return jax.eval_shape(lambda k: cell.init(k, input_size, dtype), jax.random.key(0))


def create_params(module: nn.Module, cell: PureCell, input_size: int, dtype: Any) -> PyTree:
    """Declare ``cell``'s params on a Linen ``module``, one Flax param per leaf.

    Each leaf of the pure params (any pytree of arrays) is a Flax param named by its path
    (:func:`gatedrnn._modules.flatten_params`: ``w_x``, ``w_h``, ``b``, ``field.sub``,
    ...). All leaves come from ONE call of the pure ``cell.init`` (with the rng Flax gives
    the first param), so init rules that tie leaves together (the LSTM's
    ``forget_bias="chrono"``, a normalization computed from another leaf) hold as in the
    pure cell. Returns the pure params pytree.
    """
    shapes = param_shapes(cell, input_size, dtype)
    drawn: dict[str, dict[str, Array]] = {}

    def draw(key: Array, name: str) -> Array:
        if "all" not in drawn:
            drawn["all"] = flatten_params(cell.init(key, input_size, dtype))
        return drawn["all"][name]

    names = flatten_params(shapes)
    values = [module.param(name, draw, name) for name in names]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), values)


def _unwrap(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"expected Flax variables (a dict), got {type(variables).__name__}")
    return variables["params"] if "params" in variables else variables


class _CellModule(nn.RNNCellBase):
    """Shared body of the Linen cells: params from the pure init, a step from the pure step.

    Subclasses say which pure cell they run (:meth:`make_cell`) and have a ``param_dtype``.
    """

    @nn.nowrap
    def make_cell(self) -> PureCell:
        """The pure gatedrnn cell this module wraps."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:
        """One step: ``(carry, x (*batch, I)) -> (carry', y (*batch, H))``.

        The carry is the pure cell's state (``LSTMState(h, c)`` for the LSTM, ``h`` for
        most cells; leaves ``(*batch, n)``), as made by :meth:`initialize_carry`.
        """
        cell = self.make_cell()
        params = create_params(self, cell, inputs.shape[-1], self.param_dtype)
        return cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> PyTree:
        """Zeros state (leaves ``(*batch, n)``) for inputs ``(*batch, I)`` (``rng`` unused)."""
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
        return unflatten_params(self.make_cell(), _unwrap(variables), type(self).__name__)

    @nn.nowrap
    def from_pure(self, params: PyTree) -> dict[str, Any]:
        """Pure params as Flax variables ``{"params": {name: array}}`` for this cell."""
        return {"params": flatten_params(params)}


class Cell(_CellModule):
    """Any gatedrnn cell as a Linen ``RNNCellBase``: ``nn.RNN(Cell("lstm", 64))`` works.

    Attributes:
      cell: a name of :data:`gatedrnn.cells.CELLS` (``"lstm"``, ``"min_gru"``, ...) or a
        pure :class:`gatedrnn.Cell` (then ``cell_options`` stays None).
      hidden_size: ``H``; required with a cell name, optional (must match) with a Cell.
      cell_options: keyword arguments of the named cell's factory (e.g.
        ``{"forget_bias": 2.0}``, ``{"activation": "relu"}``, initializers); None: its
        defaults. Kept as a ``FrozenDict`` (modules stay hashable).
      param_dtype: dtype of the params (and of the computation: inputs must match it).

    Params: one Flax param per leaf of the pure params, named as
    :func:`gatedrnn._modules.flatten_params` names them; :meth:`to_pure` and
    :meth:`from_pure` convert.
    """

    cell: str | PureCell
    hidden_size: int | None = None
    cell_options: Mapping[str, Any] | None = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if isinstance(self.cell_options, Mapping):
            object.__setattr__(self, "cell_options", FrozenDict(self.cell_options))
        super().__post_init__()

    @nn.nowrap
    def make_cell(self) -> PureCell:
        """The pure gatedrnn cell this module wraps (from the registry, or ``cell``)."""
        options = check_cell_options(self.cell_options)
        return resolve_cell(self.cell, self.hidden_size, options)


class _NamedCell(_CellModule):
    """A :class:`Cell` whose cell is fixed (``_kind``) and whose options are attributes.

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
    _kind: ClassVar[str]
    _option_names: ClassVar[tuple[str, ...]] = ()

    @nn.nowrap
    def make_cell(self) -> PureCell:
        """The pure gatedrnn cell this module wraps (from the registry)."""
        names = (*self._option_names, "kernel_init", "recurrent_init", "bias_init")
        options = given_options(**{n: getattr(self, n) for n in names})
        return resolve_cell(self._kind, self.hidden_size, options)


class VanillaCell(_NamedCell):
    """``Cell("vanilla", H, cell_options={"activation": ...})`` under its earlier name.

    Attributes:
      hidden_size: ``H``; params ``w_x (I, H)``, ``w_h (H, H)``, ``b (H,)``.
      activation: ``"tanh"``, ``"relu"`` or ``"linear"``.
    """

    activation: str = "tanh"
    _kind: ClassVar[str] = "vanilla"
    _option_names: ClassVar[tuple[str, ...]] = ("activation",)


class LSTMCell(_NamedCell):
    """``Cell("lstm", H, ...)`` under its earlier name; the carry is ``LSTMState(h, c)``.

    Attributes:
      hidden_size: ``H``; params ``w_x (I, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``, gate
        blocks i, f, g, o.
      forget_bias: added to the forget gate's bias at init; or ``"chrono"`` with
        ``t_max`` (see :func:`gatedrnn.lstm`).
      t_max: the longest dependency in steps, for ``forget_bias="chrono"`` only.
    """

    forget_bias: float | str = 1.0
    t_max: int | None = None
    _kind: ClassVar[str] = "lstm"
    _option_names: ClassVar[tuple[str, ...]] = ("forget_bias", "t_max")


class GRUCell(_NamedCell):
    """``Cell("gru", H, ...)`` under its earlier name.

    Attributes:
      hidden_size: ``H``; params ``w_x (I, 3H)``, ``w_h (H, 3H)``, ``b_x (3H,)``,
        ``b_h (3H,)``, gate blocks r, z, n.
      reset_after: True (PyTorch, Flax) or False (Cho et al. 2014).
      update_bias: added to the update gate's input bias at init; or ``"chrono"`` with
        ``t_max`` (see :func:`gatedrnn.gru`).
      t_max: the longest dependency in steps, for ``update_bias="chrono"`` only.
    """

    reset_after: bool = True
    update_bias: float | str = 0.0
    t_max: int | None = None
    _kind: ClassVar[str] = "gru"
    _option_names: ClassVar[tuple[str, ...]] = ("reset_after", "update_bias", "t_max")


class _LayerParams(nn.Module):
    """Declares one layer's (one direction's) params; see :func:`create_params`."""

    cell: PureCell
    input_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> PyTree:
        return create_params(self, self.cell, self.input_size, self.param_dtype)


class RNN(nn.Module):
    """A recurrent layer (or several) on gatedrnn's fast path, like ``torch.nn.LSTM``.

    Attributes:
      cell: a name of :data:`gatedrnn.cells.CELLS` (``"vanilla"``, ``"lstm"``, ``"gru"``,
        ``"min_gru"``, ...) or a pure :class:`gatedrnn.Cell` (then ``cell_options`` stays
        None).
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
      cell_options: keyword arguments of the named cell's factory, e.g.
        ``{"forget_bias": "chrono", "t_max": 1000}`` for the LSTM, ``{"reset_after":
        False}`` for the GRU, initializers; None: its defaults. Kept as a ``FrozenDict``.

    Params are named ``layer_{k}`` (or ``layer_{k}_fw`` and ``layer_{k}_bw``), each a dict
    of the pure params' leaves (named as in :class:`Cell`); :meth:`to_pure` and
    :meth:`from_pure` convert to and from the tuple that :func:`gatedrnn.stack` (and
    :func:`gatedrnn.interop.from_torch`) use.
    """

    cell: str | PureCell
    hidden_size: int | None = None
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    deterministic: bool | None = None
    time_major: bool = False
    unroll: int | None = None
    param_dtype: Any = jnp.float32
    cell_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cell_options, Mapping):
            object.__setattr__(self, "cell_options", FrozenDict(self.cell_options))
        super().__post_init__()

    @nn.nowrap
    def make_stack(self) -> Stack:
        """The pure :func:`gatedrnn.stack` this module runs."""
        options = check_cell_options(self.cell_options)
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
            ps = [unflatten_params(cell, tree[n], n) for n in names]
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
                tree[name] = flatten_params(q)
        return {"params": tree}


__all__ = ["RNN", "Cell", "GRUCell", "LSTMCell", "VanillaCell", "create_params", "param_shapes"]
