"""What the Flax Linen and NNX wrappers share (no Flax import here): turning a cell name or a
:class:`gatedrnn.Cell` plus one ``cell_options`` mapping into a pure cell through the one
registry, naming any params pytree's leaves as Flax params, dropout's on/off rule, and
running a :func:`gatedrnn.stack` the way both ``RNN`` modules do.

Nothing here (or in :mod:`gatedrnn.linen`, :mod:`gatedrnn.nnx`) knows a cell by its name:
a cell's options go to its factory untouched (``cell_options``), its params are whatever
pytree of arrays its ``init`` draws (named by :func:`flatten_params`), its carry whatever
its ``initial_state`` gives.

Both ``RNN`` modules take the same options with the same defaults (a test compares their
signatures): ``cell`` (a name of :data:`gatedrnn.cells.CELLS` or a :class:`gatedrnn.Cell`),
``hidden_size``, ``num_layers``, ``bidirectional``, ``dropout``, ``deterministic``,
``time_major``, ``unroll``, ``param_dtype`` and ``cell_options`` (the named cell's factory
options, e.g. ``{"forget_bias": 2.0}``; None: its defaults). So do both generic ``Cell``
modules: ``cell``, ``hidden_size``, ``cell_options``, ``param_dtype``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax

from gatedrnn.cells import CELLS, make_cell
from gatedrnn.cells.base import Array, Cell, PyTree
from gatedrnn.layers import Stack


def given_options(**given: Any) -> dict[str, Any]:
    """The options that were given (None means: the pure cell's default)."""
    return {k: v for k, v in given.items() if v is not None}


def check_cell_options(options: Any) -> dict[str, Any]:
    """``cell_options`` as a plain dict: None gives ``{}``.

    Raises:
      TypeError: ``options`` is not a mapping with string keys.
      ValueError: it holds ``hidden_size`` (a module option of its own).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            "cell_options must be a mapping of the cell factory's keyword arguments, e.g. "
            f"{{'forget_bias': 2.0}}, got {options!r}"
        )
    if "hidden_size" in options:
        raise ValueError("pass hidden_size to the module itself, not in cell_options")
    return dict(options)


def resolve_cell(cell: str | Cell, hidden_size: int | None, options: dict[str, Any]) -> Cell:
    """The pure cell a module runs: ``cell`` itself, or ``make_cell(cell, hidden_size, ...)``.

    Args:
      cell: a registered name (a key of :data:`gatedrnn.cells.CELLS`) or a Cell.
      hidden_size: ``H``; required with a name, optional (must match) with a Cell.
      options: the named cell factory's keyword arguments (see :func:`check_cell_options`).

    Raises:
      ValueError: an unknown name, a missing or mismatched ``hidden_size``, options given
        together with a Cell, or an option the named cell does not take.
    """
    if isinstance(cell, Cell):
        if hidden_size is not None and hidden_size != cell.hidden_size:
            raise ValueError(
                f"hidden_size={hidden_size} but the cell has hidden size {cell.hidden_size}"
            )
        if options:
            raise ValueError(
                f"{sorted(options)} go to the cell factory; a ready-made Cell was given, so "
                "pass them there (gatedrnn.cells.make_cell(name, H, ...)) or pass the cell's name"
            )
        return cell
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)} or a gatedrnn Cell, got {cell!r}")
    if hidden_size is None:
        raise ValueError(f"cell={cell!r} needs hidden_size")
    takes = inspect.signature(CELLS[cell]).parameters
    unknown = sorted(set(options) - set(takes))
    if unknown:
        accepted = sorted(set(takes) - {"hidden_size"})
        raise ValueError(f"the {cell!r} cell takes no {unknown}; its options are {accepted}")
    return make_cell(cell, hidden_size, **options)


# ------------------------------------------------------------------ params as Flax params


def _leaf_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def flatten_params(params: PyTree) -> dict[str, Array]:
    """Any params pytree as ``{name: leaf}``, one entry per array, in leaf order.

    A leaf's name is its path of field names (and tuple indices) joined by dots:
    ``w_x`` for ``LSTMParams.w_x``, ``gates.w`` for a field ``gates`` holding a NamedTuple
    with a field ``w``, ``heads.0`` for the first entry of a tuple field. These are the
    names of the Flax params (Linen) and ``nnx.Param`` attributes (NNX).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    flat = {_leaf_name(path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError(f"params leaves must have distinct names, got {[p for p, _ in leaves]}")
    return flat


def param_structure(cell: Cell) -> tuple[tuple[str, ...], Any]:
    """The leaf names (:func:`flatten_params`) and treedef of ``cell``'s params (no compute).

    Read from ``cell.init`` for input size 1 under ``jax.eval_shape``: a cell's params
    structure does not depend on the input size.
    """
    shapes = jax.eval_shape(lambda k: cell.init(k, 1), jax.random.key(0))
    return tuple(flatten_params(shapes)), jax.tree_util.tree_structure(shapes)


def unflatten_params(cell: Cell, tree: Mapping[str, Any], what: str) -> PyTree:
    """A ``{name: array}`` dict (:func:`flatten_params`' names) as ``cell``'s params pytree.

    Raises:
      ValueError: the names are not those of ``cell``'s params.
    """
    names, treedef = param_structure(cell)
    if not isinstance(tree, Mapping) or set(tree) != set(names):
        got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"{what} must have params {names}, got {got}")
    return jax.tree_util.tree_unflatten(treedef, [tree[n] for n in names])


# --------------------------------------------------------------------------- running


def is_deterministic(call: bool | None, attribute: bool | None) -> bool:
    """Dropout's switch: the call's ``deterministic``, else the module's, else True (off)."""
    if call is not None:
        return bool(call)
    return True if attribute is None else bool(attribute)


def uses_dropout(st: Stack, deterministic: bool) -> bool:
    """Whether a stack call needs a dropout key: rate > 0, training, and >= 2 layers."""
    return st.dropout > 0.0 and not deterministic and st.num_layers > 1


def check_xs(xs: Any) -> None:
    """Raise ValueError unless ``xs`` is an array of shape ``(*batch, T, features)``."""
    if not hasattr(xs, "ndim") or xs.ndim < 2:
        raise ValueError(
            f"xs must have shape (*batch, T, features), got {getattr(xs, 'shape', xs)!r}"
        )


def run_stack(
    st: Stack,
    params: tuple,
    xs: Array,
    initial_state: tuple | None,
    *,
    seq_lengths: Array | None,
    reverse: bool,
    time_major: bool,
    unroll: int | None,
    dropout_key: Array | None,
) -> tuple[tuple, Array]:
    """``st.apply`` with a ``reverse`` option for unidirectional stacks.

    Args:
      xs: ``(*batch, T, I)`` (``(T, *batch, I)`` with ``time_major``).

    Returns:
      ``(final_states, ys)`` as :func:`gatedrnn.stack`'s ``apply``; ``ys`` is
      ``(*batch, T, D * H)``.

    Raises:
      ValueError: ``reverse=True`` on a bidirectional stack, or ``xs`` of rank < 2.
    """
    check_xs(xs)
    if reverse and st.bidirectional:
        raise ValueError("reverse=True makes no sense with bidirectional=True")
    extra = {"reverse": True} if reverse else {}
    return st.apply(
        params,
        xs,
        initial_state,
        seq_lengths=seq_lengths,
        time_major=time_major,
        dropout_key=dropout_key,
        unroll=unroll,
        **extra,
    )
