"""The one registry of cells by name: ``"vanilla"``, ``"lstm"``, ``"gru"``, ``"min_gru"``, ...

Every place that turns a name into a cell (Flax modules, the char LM, experiments,
benchmarks, checkpoints) goes through :func:`make_cell` or reads :data:`CELLS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from gatedrnn.cells.base import Cell
from gatedrnn.cells.gru import gru
from gatedrnn.cells.lru import lru
from gatedrnn.cells.lstm import lstm
from gatedrnn.cells.min_rnn import min_gru, min_lstm
from gatedrnn.cells.mlstm import mlstm
from gatedrnn.cells.rglru import rglru
from gatedrnn.cells.slstm import slstm
from gatedrnn.cells.vanilla import vanilla

CELLS: Mapping[str, Callable[..., Cell]] = MappingProxyType(
    {
        "vanilla": vanilla,
        "lstm": lstm,
        "gru": gru,
        "min_gru": min_gru,
        "min_lstm": min_lstm,
        "slstm": slstm,
        "mlstm": mlstm,
        "lru": lru,
        "rglru": rglru,
    }
)
"""Cell factories by name, read-only: ``CELLS["lstm"](64)`` is ``gr.lstm(64)``."""


def make_cell(name: str, hidden_size: int, **options: Any) -> Cell:
    """The cell called ``name`` with ``hidden_size`` units and the factory's ``options``.

    Args:
      name: a key of :data:`CELLS` (``"vanilla"``, ``"lstm"``, ``"gru"``, ``"min_gru"``,
        ``"min_lstm"``).
      hidden_size: number of hidden units ``H``.
      **options: keyword arguments of that factory (``activation=``, ``forget_bias=``,
        ``reset_after=``, initializers, ...).

    Raises:
      ValueError: ``name`` is not a registered cell.
    """
    if not isinstance(name, str) or name not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name](hidden_size, **options)
