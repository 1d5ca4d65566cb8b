"""Weights in and out of PyTorch (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) and Flax's own cells.

gatedrnn's parameter layouts were chosen so that every conversion is a transpose, a
reshuffle of gate blocks or a bias sum, never an approximation; whatever cannot be
converted exactly raises a ValueError that says why.

* :mod:`gatedrnn.interop.torch`: :func:`from_torch`, :func:`to_torch`,
  :func:`state_from_torch`, :func:`state_to_torch` (torch is imported only when one of
  them is called: ``import gatedrnn.interop`` works without torch);
* :mod:`gatedrnn.interop.flax`: :func:`from_flax`, :func:`to_flax`, :func:`to_flax_nnx`,
  :func:`carry_from_flax`, :func:`carry_to_flax`, :func:`identity`;
* :mod:`gatedrnn.interop._layout`: the gate-block layout math both share.
"""

from gatedrnn.interop.flax import (
    carry_from_flax,
    carry_to_flax,
    from_flax,
    identity,
    to_flax,
    to_flax_nnx,
)
from gatedrnn.interop.torch import from_torch, state_from_torch, state_to_torch, to_torch

__all__ = [
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "from_torch",
    "identity",
    "state_from_torch",
    "state_to_torch",
    "to_flax",
    "to_flax_nnx",
    "to_torch",
]
