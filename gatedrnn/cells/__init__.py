"""The math of each cell, and nothing else."""

from gatedrnn.cells.base import Cell, Split
from gatedrnn.cells.gru import GRUInput, GRUParams, gru, gru_gates
from gatedrnn.cells.lstm import LSTMParams, LSTMState, lstm, lstm_gates
from gatedrnn.cells.min_rnn import (
    MinGRUParams,
    MinLSTMParams,
    linear_recurrence,
    min_gru,
    min_gru_coefficients,
    min_lstm,
    min_lstm_coefficients,
)
from gatedrnn.cells.registry import CELLS, make_cell
from gatedrnn.cells.vanilla import ACTIVATIONS, VanillaParams, vanilla

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "Cell",
    "GRUInput",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "MinGRUParams",
    "MinLSTMParams",
    "Split",
    "VanillaParams",
    "gru",
    "gru_gates",
    "linear_recurrence",
    "lstm",
    "lstm_gates",
    "make_cell",
    "min_gru",
    "min_gru_coefficients",
    "min_lstm",
    "min_lstm_coefficients",
    "vanilla",
]
