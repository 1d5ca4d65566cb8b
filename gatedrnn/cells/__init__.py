"""The math of each cell, and nothing else."""

from gatedrnn.cells.base import Cell
from gatedrnn.cells.gru import GRUParams, gru, gru_gates
from gatedrnn.cells.lstm import LSTMParams, LSTMState, lstm, lstm_gates
from gatedrnn.cells.vanilla import ACTIVATIONS, VanillaParams, vanilla

__all__ = [
    "ACTIVATIONS",
    "Cell",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "VanillaParams",
    "gru",
    "gru_gates",
    "lstm",
    "lstm_gates",
    "vanilla",
]
