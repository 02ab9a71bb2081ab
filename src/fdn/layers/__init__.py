r"""Invertible layers, in the order of the paper's architecture section."""

from fdn.layers.actnorm import ActNorm
from fdn.layers.base import InvertibleLayer, SequentialFlow
from fdn.layers.coupling import AffineCoupling
from fdn.layers.dense import DenseBlock
from fdn.layers.invconv import InvConv1x1
from fdn.layers.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "DenseBlock",
    "InvConv1x1",
    "InvertibleLayer",
    "SequentialFlow",
    "Squeeze",
]
