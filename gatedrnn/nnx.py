"""Flax NNX modules: ``nnx.Param`` fields holding the pure params, steps by the pure cells.

Generic over the registered cells (nothing here branches on a cell's name):

* :class:`Cell`: any cell, ``Cell("lstm", 32, 64, rngs=...)`` (in 32, hidden 64),
  ``Cell("gru", 32, 64, cell_options={"reset_after": False}, rngs=...)`` or
  ``Cell(gr.min_gru(64), 32, rngs=...)``, a subclass of ``flax.nnx.RNNCellBase``
  (``__call__(carry, x) -> (carry, y)``, ``initialize_carry``), so it runs under
  ``flax.nnx.RNN`` and ``flax.nnx.Bidirectional``. Each leaf of the pure params is an
  ``nnx.Param`` named by its path (``w_x``, ``w_h``, ``b``, ...; ``field.sub`` in nested
  params, see :func:`gatedrnn._modules.flatten_params`), drawn by one call of the pure
  ``cell.init``; :meth:`~Cell.pure_params` returns the pure pytree and
  :meth:`~Cell.load_pure` writes one in. :class:`VanillaCell`, :class:`LSTMCell`,
  :class:`GRUCell` are the same module with the cell fixed and its options as keywords
  (the spellings of earlier releases).
* :class:`RNN`: several layers, optionally bidirectional, on the fast path
  (:func:`gatedrnn.stack` over :func:`gatedrnn.scan`) with ``seq_lengths``, ``reverse`` and
  dropout between layers.

The options and their defaults are those of :mod:`gatedrnn.linen` (a test compares the
signatures); NNX adds ``in_features`` (params are made eagerly) and ``rngs``. Dropout is off
unless the module is put in training mode (``model.train()``) or called with
``deterministic=False``.

Example::

    from flax import nnx
    import gatedrnn.nnx as grx

    layer = grx.RNN("lstm", 32, 64, num_layers=2, rngs=nnx.Rngs(0))  # in 32, hidden 64
    final_states, ys = layer(xs, seq_lengths=lengths)                 # xs (batch, T, 32)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gatedrnn._modules import (
    check_cell_options,
    flatten_params,
    given_options,
    is_deterministic,
    resolve_cell,
    run_stack,
    uses_dropout,
)
from gatedrnn.cells.base import Array, Initializer, PyTree, check_input_size
from gatedrnn.cells.base import Cell as PureCell
from gatedrnn.layers import Bidir, Stack, stack


class _Static:
    """A value kept in an NNX graphdef as static metadata, compared by identity.

    NNX requires static attributes to be hashable; a :class:`gatedrnn.Cell` is, but a custom
    value may not be: this wrapper hashes by value where it can and by ``id`` otherwise, so
    any cell, registered or custom, can sit in a module.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def _key(self) -> Any:
        try:
            return hash(self.value), self.value
        except TypeError:
            return id(self.value), None

    def __hash__(self) -> int:
        return hash(self._key()[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        if other.value is self.value:
            return True
        a, b = self._key(), other._key()
        return a[1] is not None and b[1] is not None and a[1] == b[1]


class Cell(nnx.RNNCellBase):
    """Any gatedrnn cell as an NNX ``RNNCellBase``: its params as ``nnx.Param`` fields.

    Args:
      cell: a name of :data:`gatedrnn.cells.CELLS` (``"lstm"``, ``"min_gru"``, ...) or a
        pure :class:`gatedrnn.Cell` (then ``cell_options`` stays None).
      in_features: ``I``.
      hidden_size: ``H``; required with a cell name, optional (must match) with a Cell.
      cell_options: keyword arguments of the named cell's factory (e.g.
        ``{"forget_bias": 2.0}``); None: its defaults.
      param_dtype: dtype of the params (and of the inputs).
      rngs: ``nnx.Rngs``; the ``params`` stream draws ``cell.init`` (once).
    """

    def __init__(
        self,
        cell: str | PureCell,
        in_features: int,
        hidden_size: int | None = None,
        *,
        cell_options: Mapping[str, Any] | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        pure = resolve_cell(cell, hidden_size, check_cell_options(cell_options))
        self._cell = _Static(pure)
        self.in_features = check_input_size(in_features)
        self.hidden_size = pure.hidden_size
        params = pure.init(rngs.params(), self.in_features, param_dtype)
        flat = flatten_params(params)
        self._treedef = _Static(jax.tree_util.tree_structure(params))
        self._names = tuple(flat)
        for name, value in flat.items():
            if hasattr(self, name):
                raise ValueError(f"a params leaf is named {name!r}, an attribute of the module")
            setattr(self, name, nnx.Param(value))

    @property
    def cell(self) -> PureCell:
        """The pure gatedrnn cell this module wraps."""
        return self._cell.value

    def pure_params(self) -> PyTree:
        """The params as the pure pytree (e.g. ``LSTMParams(w_x, w_h, b)``)."""
        leaves = [getattr(self, n)[...] for n in self._names]
        return jax.tree_util.tree_unflatten(self._treedef.value, leaves)

    def load_pure(self, params: PyTree) -> None:
        """Overwrite the params with a pure pytree of the same structure and shapes."""
        treedef = jax.tree_util.tree_structure(params)
        if treedef != self._treedef.value:
            want = type(jax.tree_util.tree_unflatten(self._treedef.value, self._names))
            raise TypeError(
                f"expected {want.__name__} params with leaves {self._names}, got "
                f"{type(params).__name__} of structure {treedef}"
            )
        for name, new in flatten_params(params).items():
            old = getattr(self, name)[...]
            if tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
                raise ValueError(
                    f"{name} must be {old.dtype}{tuple(old.shape)}, "
                    f"got {new.dtype}{tuple(new.shape)}"
                )
            getattr(self, name)[...] = new

    def __call__(self, carry: PyTree, inputs: Array) -> tuple[PyTree, Array]:  # type: ignore[override]
        """One step: ``(carry, x (*batch, I)) -> (carry', y (*batch, H))`` (the pure step)."""
        return self.cell.step(self.pure_params(), carry, inputs)

    def initialize_carry(  # type: ignore[override]
        self,
        input_shape: tuple[int, ...],
        rngs: Any = None,
        carry_init: Any = None,
    ) -> PyTree:
        """Zeros state (leaves ``(*batch, n)``, any structure) for inputs ``(*batch, I)``."""
        if carry_init is not None:
            raise ValueError("gatedrnn cells start from zeros; pass initial_carry instead")
        del rngs
        return self.cell.initial_state(self.pure_params(), tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        """Inputs have one feature axis."""
        return 1


class VanillaCell(Cell):
    """``Cell("vanilla", I, H, cell_options={"activation": ...})`` under its earlier name;
    params ``w_x (I, H)``, ``w_h (H, H)``, ``b (H,)``. Options as
    :class:`gatedrnn.linen.VanillaCell`."""

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        kernel_init: Initializer | None = None,
        recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        options = given_options(
            activation=activation,
            kernel_init=kernel_init,
            recurrent_init=recurrent_init,
            bias_init=bias_init,
        )
        super().__init__(
            "vanilla",
            in_features,
            hidden_size,
            cell_options=options,
            param_dtype=param_dtype,
            rngs=rngs,
        )


class LSTMCell(Cell):
    """``Cell("lstm", I, H, ...)`` under its earlier name; params ``w_x (I, 4H)``,
    ``w_h (H, 4H)``, ``b (4H,)``; carry ``LSTMState(h, c)``. Options as
    :class:`gatedrnn.linen.LSTMCell`."""

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        forget_bias: float | str = 1.0,
        t_max: int | None = None,
        kernel_init: Initializer | None = None,
        recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        options = given_options(
            forget_bias=forget_bias,
            t_max=t_max,
            kernel_init=kernel_init,
            recurrent_init=recurrent_init,
            bias_init=bias_init,
        )
        super().__init__(
            "lstm",
            in_features,
            hidden_size,
            cell_options=options,
            param_dtype=param_dtype,
            rngs=rngs,
        )


class GRUCell(Cell):
    """``Cell("gru", I, H, ...)`` under its earlier name; params ``w_x (I, 3H)``,
    ``w_h (H, 3H)``, ``b_x (3H,)``, ``b_h (3H,)``. Options as
    :class:`gatedrnn.linen.GRUCell`."""

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        reset_after: bool = True,
        update_bias: float | str = 0.0,
        t_max: int | None = None,
        kernel_init: Initializer | None = None,
        recurrent_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        options = given_options(
            reset_after=reset_after,
            update_bias=update_bias,
            t_max=t_max,
            kernel_init=kernel_init,
            recurrent_init=recurrent_init,
            bias_init=bias_init,
        )
        super().__init__(
            "gru",
            in_features,
            hidden_size,
            cell_options=options,
            param_dtype=param_dtype,
            rngs=rngs,
        )


class _BidirLayer(nnx.Module):
    """Forward and backward cell params of one bidirectional layer."""

    def __init__(self, fw: Cell, bw: Cell) -> None:
        self.fw, self.bw = fw, bw


class RNN(nnx.Module):
    """Recurrent layers on gatedrnn's fast path, like ``torch.nn.LSTM`` (NNX).

    Args:
      cell: a name of :data:`gatedrnn.cells.CELLS` (``"vanilla"``, ``"lstm"``, ``"gru"``,
        ``"min_gru"``, ...) or a pure :class:`gatedrnn.Cell` (then ``cell_options`` stays
        None).
      in_features: ``I``, the input size.
      hidden_size: ``H``; required with a cell name, optional (must match) with a Cell.
      num_layers: stacked layers; layer ``k > 0`` takes ``D * H`` features.
      bidirectional: each layer runs both ways (``D = 2``), outputs concatenated.
      dropout: rate between layers while not deterministic.
      deterministic: None or True: no dropout; False: dropout (``model.train()`` sets it
        False, ``model.eval()`` True; a call's ``deterministic`` overrides it).
      time_major: inputs and outputs ``(T, *batch, ...)``.
      unroll: steps per ``lax.scan`` iteration; None: ``gr.default_unroll``.
      param_dtype: dtype of params and inputs.
      cell_options: keyword arguments of the named cell's factory (e.g.
        ``{"forget_bias": "chrono", "t_max": 1000}``); None: its defaults.
      rngs: ``nnx.Rngs`` for the params (``params`` stream) and dropout (``dropout``).

    Attributes:
      layers: an ``nnx.List`` of :class:`Cell` modules (``fw``/``bw`` pairs when
        bidirectional).
    """

    def __init__(
        self,
        cell: str | PureCell,
        in_features: int,
        hidden_size: int | None = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        deterministic: bool | None = None,
        time_major: bool = False,
        unroll: int | None = None,
        param_dtype: Any = jnp.float32,
        cell_options: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        pure = resolve_cell(cell, hidden_size, check_cell_options(cell_options))
        st = stack(pure, num_layers, bidirectional=bidirectional, dropout=dropout)
        self._stack = _Static(st)
        self.in_features = check_input_size(in_features)
        D = 2 if bidirectional else 1
        make = lambda size: Cell(pure, size, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
        layers = []
        for layer in range(st.num_layers):
            size = self.in_features if layer == 0 else D * pure.hidden_size
            layers.append(_BidirLayer(make(size), make(size)) if bidirectional else make(size))
        self.layers = nnx.List(layers)
        self.time_major = time_major
        self.unroll = unroll
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if st.dropout > 0.0 else nnx.data(None)

    @property
    def stack(self) -> Stack:
        """The pure :func:`gatedrnn.stack` this module runs."""
        return self._stack.value

    @property
    def cell(self) -> Cell:
        """The pure cell of every layer."""
        return self.stack.cell

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
          initial_state: a state per layer (``Bidir`` if bidirectional), each leaf
            ``(*batch, H)``, or None for zeros.
          seq_lengths: ``(*batch,)`` valid lengths (see :func:`gatedrnn.scan`).
          reverse: run from the end (unidirectional only).
          deterministic: no dropout if True; None: the module's ``deterministic`` (None:
            no dropout).

        Returns:
          ``(final_states, ys)``; ``ys`` is ``(*batch, T, D * H)``.
        """
        st = self.stack
        det = is_deterministic(deterministic, self.deterministic)
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


__all__ = ["RNN", "Cell", "GRUCell", "LSTMCell", "VanillaCell"]
