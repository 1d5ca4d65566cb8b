"""Flax NNX modules: ``nnx.Param`` fields holding the pure params, steps by the pure cells.

* :class:`VanillaCell`, :class:`LSTMCell`, :class:`GRUCell` subclass
  ``flax.nnx.RNNCellBase`` (``__call__(carry, x) -> (carry, y)``, ``initialize_carry``),
  so they run under ``flax.nnx.RNN`` and ``flax.nnx.Bidirectional``. Each field of the
  pure params (``w_x``, ``w_h``, ``b`` or ``b_x``, ``b_h``) is an ``nnx.Param`` of that
  name, drawn by the pure ``cell.init``; :meth:`~VanillaCell.pure_params` returns the
  NamedTuple and :meth:`~VanillaCell.load_pure` writes one in.
* :class:`RNN`: several layers, optionally bidirectional, on the fast path
  (:func:`gatedrnn.stack` over :func:`gatedrnn.scan`) with ``seq_lengths``, ``reverse`` and
  dropout between layers.

Example::

    from flax import nnx
    import gatedrnn.nnx as grx

    layer = grx.RNN("lstm", in_features=32, hidden_size=64, num_layers=2, rngs=nnx.Rngs(0))
    final_states, ys = layer(xs, seq_lengths=lengths)      # xs (batch, T, 32)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from gatedrnn._modules import CELLS, init_options, run_stack, uses_dropout
from gatedrnn.cells.base import Array, Cell, Initializer, PyTree, check_input_size
from gatedrnn.layers import Bidir, Stack, stack


class _CellBase(nnx.RNNCellBase):
    """Shared body: params from the pure ``init`` into ``nnx.Param``s, step = pure step."""

    kind: str = ""

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        **options: Any,
    ) -> None:
        inits = init_options(kernel_init, recurrent_init, bias_init)
        # Hashable static attributes only (NNX graphdefs are compared and hashed): the pure
        # cell is rebuilt from them on demand by `cell`.
        self._cell_args = (hidden_size, tuple(sorted({**options, **inits}.items())))
        cell = self.cell
        self.in_features = check_input_size(in_features)
        self.hidden_size = cell.hidden_size
        params = cell.init(rngs.params(), self.in_features, param_dtype)
        self._fields = tuple(params._fields)
        self._ptype = type(params)
        for name, value in params._asdict().items():
            setattr(self, name, nnx.Param(value))

    @property
    def cell(self) -> Cell:
        """The pure gatedrnn cell this module wraps."""
        hidden_size, options = self._cell_args
        return CELLS[self.kind](hidden_size, **dict(options))

    def pure_params(self) -> PyTree:
        """The params as the pure NamedTuple (e.g. ``LSTMParams(w_x, w_h, b)``)."""
        return self._ptype(**{f: getattr(self, f)[...] for f in self._fields})

    def load_pure(self, params: PyTree) -> None:
        """Overwrite the params with a pure NamedTuple of the same type and shapes."""
        if type(params) is not self._ptype:
            raise TypeError(f"expected {self._ptype.__name__}, got {type(params).__name__}")
        for f in self._fields:
            old, new = getattr(self, f)[...], getattr(params, f)
            if tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
                raise ValueError(
                    f"{f} must be {old.dtype}{tuple(old.shape)}, got {new.dtype}{tuple(new.shape)}"
                )
            getattr(self, f)[...] = new

    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:  # type: ignore[override]
        """One step: ``(carry, x (*batch, I)) -> (carry', y (*batch, H))`` (the pure step)."""
        return self.cell.step(self.pure_params(), carry, inputs)

    def initialize_carry(  # type: ignore[override]
        self,
        input_shape: tuple[int, ...],
        rngs: Any = None,
        carry_init: Any = None,
    ) -> PyTree:
        """Zeros state for inputs ``(*batch, I)`` (``rngs``/``carry_init`` must be None)."""
        if carry_init is not None:
            raise ValueError("gatedrnn cells start from zeros; pass initial_carry instead")
        del rngs
        return self.cell.initial_state(self.pure_params(), tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        """Inputs have one feature axis."""
        return 1


class VanillaCell(_CellBase):
    """Vanilla RNN cell (see :func:`gatedrnn.vanilla`): ``VanillaCell(I, H, activation=
    "tanh", rngs=...)``; params ``w_x (I, H)``, ``w_h (H, H)``, ``b (H,)``."""

    kind = "vanilla"


class LSTMCell(_CellBase):
    """LSTM cell (see :func:`gatedrnn.lstm`): ``LSTMCell(I, H, forget_bias=1.0, rngs=...)``;
    params ``w_x (I, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``; carry ``LSTMState(h, c)``."""

    kind = "lstm"


class GRUCell(_CellBase):
    """GRU cell (see :func:`gatedrnn.gru`): ``GRUCell(I, H, reset_after=True, rngs=...)``;
    params ``w_x (I, 3H)``, ``w_h (H, 3H)``, ``b_x (3H,)``, ``b_h (3H,)``."""

    kind = "gru"


_CELL_MODULES = {"vanilla": VanillaCell, "lstm": LSTMCell, "gru": GRUCell}


class _BidirLayer(nnx.Module):
    """Forward and backward cell params of one bidirectional layer."""

    def __init__(self, fw: _CellBase, bw: _CellBase) -> None:
        self.fw, self.bw = fw, bw


class RNN(nnx.Module):
    """Recurrent layers on gatedrnn's fast path, like ``torch.nn.LSTM`` (NNX).

    Args:
      cell: ``"vanilla"``, ``"lstm"`` or ``"gru"``.
      in_features: ``I``, the input size.
      hidden_size: ``H``.
      num_layers: stacked layers; layer ``k > 0`` takes ``D * H`` features.
      bidirectional: each layer runs both ways (``D = 2``), outputs concatenated.
      dropout: rate between layers while not ``deterministic`` (``model.train()``).
      time_major: inputs and outputs ``(T, *batch, ...)``.
      unroll: steps per ``lax.scan`` iteration.
      param_dtype: dtype of params and inputs.
      rngs: ``nnx.Rngs`` for the params (``params`` stream) and dropout (``dropout``).
      **cell_options: passed to the cell (``activation``, ``forget_bias``,
        ``reset_after``, initializers).

    Attributes:
      layers: an ``nnx.List`` of cell modules (``fw``/``bw`` pairs when bidirectional).
    """

    def __init__(
        self,
        cell: str,
        in_features: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        time_major: bool = False,
        unroll: int = 1,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        **cell_options: Any,
    ) -> None:
        if cell not in _CELL_MODULES:
            raise ValueError(f"cell must be one of {sorted(_CELL_MODULES)}, got {cell!r}")
        module = _CELL_MODULES[cell]
        make = lambda size: module(  # noqa: E731
            size, hidden_size, rngs=rngs, param_dtype=param_dtype, **cell_options
        )
        self.in_features = check_input_size(in_features)
        D = 2 if bidirectional else 1
        layers = []
        probe = make(self.in_features)
        self._stack_args = (num_layers, bool(bidirectional), float(dropout))
        for layer in range(num_layers):
            size = self.in_features if layer == 0 else D * hidden_size
            first = probe if layer == 0 else make(size)
            layers.append(_BidirLayer(first, make(size)) if bidirectional else first)
        self.layers = nnx.List(layers)
        self.time_major = time_major
        self.unroll = unroll
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if dropout > 0.0 else nnx.data(None)

    @property
    def stack(self) -> Stack:
        """The pure :func:`gatedrnn.stack` this module runs."""
        num_layers, bidirectional, dropout = self._stack_args
        first = self.layers[0].fw if self._stack_args[1] else self.layers[0]
        return stack(first.cell, num_layers, bidirectional=bidirectional, dropout=dropout)

    def pure_params(self) -> tuple:
        """The params as :func:`gatedrnn.stack` params: a tuple per layer (``Bidir``)."""
        return tuple(
            Bidir(m.fw.pure_params(), m.bw.pure_params())
            if isinstance(m, _BidirLayer)
            else m.pure_params()
            for m in self.layers
        )

    def load_pure(self, params: tuple) -> None:
        """Overwrite the params with :func:`gatedrnn.stack` params of the same shapes."""
        if not isinstance(params, (tuple, list)) or len(params) != len(self.layers):
            raise ValueError(f"params must be a tuple of {len(self.layers)} layer params")
        for m, p in zip(self.layers, params, strict=True):
            if isinstance(m, _BidirLayer):
                m.fw.load_pure(p.fw)
                m.bw.load_pure(p.bw)
            else:
                m.load_pure(p)

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
          initial_state: a state per layer (``Bidir`` if bidirectional), or None for zeros.
          seq_lengths: ``(*batch,)`` valid lengths (see :func:`gatedrnn.scan`).
          reverse: run from the end (unidirectional only).
          deterministic: override the module's ``deterministic`` (no dropout if True).

        Returns:
          ``(final_states, ys)``; ``ys`` is ``(*batch, T, D * H)``.
        """
        st = self.stack
        det = self.deterministic if deterministic is None else deterministic
        return run_stack(
            st,
            self.pure_params(),
            xs,
            initial_state,
            seq_lengths=seq_lengths,
            reverse=reverse,
            time_major=self.time_major,
            unroll=self.unroll,
            dropout_key=self.rngs() if uses_dropout(st, det) else None,
        )


__all__ = ["RNN", "GRUCell", "LSTMCell", "VanillaCell"]
