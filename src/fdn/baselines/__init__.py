r"""Baseline denoisers, each a :class:`fdn.denoisers.Denoiser`: DnCNN, FFDNet, BM3D, NLM."""

from fdn.baselines.classical import BM3D, MissingExtraError, NonLocalMeans
from fdn.baselines.dncnn import (
    DnCNN,
    DnCNNConfig,
    DnCNNDenoiser,
    load_dncnn,
    load_peer_dncnn,
    save_dncnn,
)
from fdn.baselines.ffdnet import FFDNet, FFDNetDenoiser, load_peer_ffdnet
from fdn.baselines.weights import MissingWeightsError

__all__ = [
    "BM3D",
    "DnCNN",
    "DnCNNConfig",
    "DnCNNDenoiser",
    "FFDNet",
    "FFDNetDenoiser",
    "MissingExtraError",
    "MissingWeightsError",
    "NonLocalMeans",
    "load_dncnn",
    "load_peer_dncnn",
    "load_peer_ffdnet",
    "save_dncnn",
]
