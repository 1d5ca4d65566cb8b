"""gatedrnn: vanilla RNN, LSTM and GRU cells as pure JAX functions.

Every cell is a :class:`Cell` of pure functions; :func:`scan` runs any cell over a
sequence with ``jax.lax.scan``; ``jax.grad`` through it is BPTT. ``make_cell(name, H)``
builds any registered cell (:data:`CELLS`: the classical ones and ``"lru"``, ``"rglru"``,
``"slstm"``, ``"mlstm"``, ...).
"""

from gatedrnn.cells import (
    ACTIVATIONS,
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    LSTMState,
    MinGRUParams,
    MinLSTMParams,
    Split,
    VanillaParams,
    gru,
    lstm,
    make_cell,
    min_gru,
    min_lstm,
    vanilla,
)
from gatedrnn.layers import Bidir, Stack, bidirectional_scan, stack
from gatedrnn.scan import default_unroll, parallel_crossover, scan

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "Bidir",
    "Cell",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "MinGRUParams",
    "MinLSTMParams",
    "Split",
    "Stack",
    "VanillaParams",
    "__version__",
    "bidirectional_scan",
    "default_unroll",
    "gru",
    "lstm",
    "make_cell",
    "min_gru",
    "min_lstm",
    "parallel_crossover",
    "scan",
    "stack",
    "vanilla",
]
