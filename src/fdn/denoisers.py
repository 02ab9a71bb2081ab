r"""Every method ``fdn eval`` and ``fdn compare`` run, as a :class:`Denoiser`.

The :class:`Denoiser` protocol, the adapters (FDN, the self-ensemble, a column of several
models) and the baselines' name table: :data:`BASELINE_FACTORIES` maps each name ``--baselines``
takes to the function that builds it, and :data:`BASELINES` is its keys. Adding a baseline is
one adapter (in :mod:`fdn.baselines`) and one line in the table, plus its name in
:data:`fdn.choices.BASELINES`, the torch-free copy the command line offers (a test keeps the two
equal).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from fdn.baselines import (
    BM3D,
    DnCNNDenoiser,
    FFDNetDenoiser,
    NonLocalMeans,
    load_dncnn,
    load_peer_dncnn,
    load_peer_ffdnet,
)
from fdn.baselines.dncnn import ModuleDenoiser, read_state_dict
from fdn.baselines.weights import MissingWeightsError, peer_file, weights_folder
from fdn.choices import ensemble_size
from fdn.ensemble import ensemble_name, self_ensemble
from fdn.model import FDN
from fdn.serialization import ModelFileError, load_model

__all__ = [
    "BASELINES",
    "BASELINE_FACTORIES",
    "Denoiser",
    "DenoiserSet",
    "EnsembleDenoiser",
    "FDNDenoiser",
    "build_baseline",
    "load_denoiser",
    "models_from_specs",
    "parse_model_spec",
]


@runtime_checkable
class Denoiser(Protocol):
    r"""What :func:`fdn.evaluation.evaluate` needs from a method.

    Attributes:
        name: the method's column header.
        blind: True when the method does not use the noise level; ``evaluate`` then
            passes ``sigma=None``, so a blind method cannot peek at it.
    """

    name: str
    blind: bool

    def supports(self, channels: int, sigma: float | None) -> str | None:
        """None if the method can denoise ``channels``-channel images at ``sigma`` (None for
        a blind method or unknown real noise), else the reason it cannot."""
        ...

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        """Denoises a (B, C, H, W) float batch (unclipped) at noise level ``sigma``
        (0-255 scale; None for a blind method) into a (B, C, H, W) batch in [0, 1]."""
        ...


class FDNDenoiser(ModuleDenoiser):
    r"""An FDN model as a :class:`Denoiser`: blind (it takes no sigma).

    Arguments:
        model: the flow; it is put in eval mode.
        name: the method's name in tables.
        strength: :meth:`FDN.denoise`'s (None: the model's default, its strength curve's
            for a bundled model that has one).
    """

    def __init__(self, model: FDN, name: str = "FDN", strength: float | None = None) -> None:
        super().__init__(model, name)
        self.strength = strength  # FDN.denoise's; None: the model's default

    def _run(self, noisy: Tensor) -> Tensor:
        return typing.cast("FDN", self.model).denoise(noisy, self.strength)


class EnsembleDenoiser:
    r"""Any :class:`Denoiser` with a self-ensemble: its results on ``size`` flips and
    rotations of the noisy image (:func:`fdn.ensemble.self_ensemble`), transformed back and
    averaged. Named :func:`fdn.ensemble.ensemble_name`'s ``"NAME x8"`` (``x2``, ``x4``).

    Arguments:
        inner: the method to ensemble.
        size: how many transforms: 2, 4 or 8.
    """

    def __init__(self, inner: Denoiser, size: int = 8) -> None:
        self.inner = inner
        self.size = ensemble_size(size)
        self.name = ensemble_name(inner.name, self.size)
        self.blind = inner.blind

    def supports(self, channels: int, sigma: float | None) -> str | None:
        return self.inner.supports(channels, sigma)

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        return self_ensemble(lambda x: self.inner.denoise(x, sigma), noisy, self.size)


class DenoiserSet:
    r"""One table column made of several models, each for a channel count and a sigma.

    A member keyed with sigma ``None`` serves every sigma for its channel count (FFDNet's grey
    and colour networks); one keyed with a number serves that sigma only (DnCNN-S-15/25/50,
    or FDN models trained per noise level). The set is non-blind as soon as one member is
    keyed by sigma or needs it.

    Arguments:
        name: the column header.
        members: ``{(channels, sigma or None): denoiser}``.
    """

    def __init__(self, name: str, members: dict[tuple[int, float | None], Denoiser]) -> None:
        if not members:
            raise ValueError(f"{name}: a denoiser set needs at least one member")
        self.name = name
        self.members = dict(members)
        self.blind = all(
            sigma is None and member.blind for (_, sigma), member in self.members.items()
        )

    def _member(self, channels: int, sigma: float | None) -> Denoiser | None:
        if (channels, sigma) in self.members:
            return self.members[channels, sigma]
        return self.members.get((channels, None))

    def supports(self, channels: int, sigma: float | None) -> str | None:
        member = self._member(channels, sigma)
        if member is None:
            levels = sorted(s for c, s in self.members if c == channels and s is not None)
            if levels:
                shown = ", ".join(f"{s:g}" for s in levels)
                return f"has {channels}-channel models for sigma {shown} only"
            shown = ", ".join(sorted({f"{c}-channel" for c, _ in self.members}))
            return f"has no {channels}-channel model (only {shown})"
        return member.supports(channels, None if member.blind else sigma)

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        member = self._member(noisy.shape[1], sigma)
        if member is None:
            raise ValueError(self.supports(noisy.shape[1], sigma))
        return member.denoise(noisy, None if member.blind else sigma)


# The baselines, by name


def _dncnn_s(weights: Path, device: str | torch.device) -> Denoiser:
    # DnCNN-S: one network per sigma (DnCNN-S-15/25/50.net.pth), one column.
    folder = weights / "saoyan-dncnn-pytorch"
    files = sorted(folder.glob("DnCNN-S-*.net.pth"))
    if not files:
        raise MissingWeightsError(folder / "DnCNN-S-{15,25,50}.net.pth")
    members: dict[tuple[int, float | None], Denoiser] = {}
    for path in files:
        sigma = float(path.name.removeprefix("DnCNN-S-").removesuffix(".net.pth"))
        model = load_peer_dncnn(path).to(device)
        members[model.config.in_channels, sigma] = DnCNNDenoiser(model, path.name)
    return DenoiserSet("DnCNN-S", members)


def _dncnn_b(weights: Path, device: str | torch.device) -> Denoiser:
    model = load_peer_dncnn(peer_file(weights, "saoyan-dncnn-pytorch/DnCNN-B.net.pth"))
    return DnCNNDenoiser(model.to(device), "DnCNN-B")


def _ffdnet(weights: Path, device: str | torch.device) -> Denoiser:
    # FFDNet: the grey and the colour network, one column, each picked by the image's channels.
    members: dict[tuple[int, float | None], Denoiser] = {}
    for channels, file in ((1, "net_gray.pth"), (3, "net_rgb.pth")):
        path = peer_file(weights, f"ipol-ffdnet-pytorch/{file}")
        model = load_peer_ffdnet(path)
        if model.in_channels != channels:
            raise ModelFileError(
                path, f"holds a {model.in_channels}-channel FFDNet, expected {channels}-channel"
            )
        members[channels, None] = FFDNetDenoiser(model.to(device), file)
    return DenoiserSet("FFDNet", members)


# Name -> factory(weights folder, device), in the order the help lists them.
BASELINE_FACTORIES: dict[str, Callable[[Path, str | torch.device], Denoiser]] = {
    "bm3d": lambda weights, device: BM3D(),
    "nlm": lambda weights, device: NonLocalMeans(),
    "dncnn": _dncnn_s,
    "dncnn-b": _dncnn_b,
    "ffdnet": _ffdnet,
}
BASELINES = tuple(BASELINE_FACTORIES)


def build_baseline(
    name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> Denoiser:
    """One of :data:`BASELINES`; DnCNN and FFDNet read the reference weights in ``weights``
    (None: :func:`fdn.choices.default_weights`, ``$FDN_WEIGHTS`` or ``../shared/peer-weights``).

    Raises :class:`fdn.baselines.MissingExtraError` when an optional package is missing,
    :class:`fdn.baselines.MissingWeightsError` (a :class:`fdn.ModelFileError`) when a weight
    file is missing and :class:`fdn.ModelFileError` when one is malformed.
    """
    factory = BASELINE_FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return factory(weights_folder(weights), device)


# Model files


def load_denoiser(
    path: str | os.PathLike,
    name: str | None = None,
    device: str | torch.device = "cpu",
    strength: float | None = None,
) -> FDNDenoiser | DnCNNDenoiser | FFDNetDenoiser:
    """Any model file as a blind-or-not :class:`Denoiser`, by what the file holds.

    ``.safetensors``: an FDN model file (:func:`fdn.save_model`) or one of our DnCNN files
    (:func:`fdn.baselines.save_dncnn`). Anything else is read as a reference state_dict with
    ``weights_only=True``: FFDNet (IPOL) or DnCNN (DnCNN-PyTorch, KAIR) by its key layout.
    ``strength`` is an FDN's (:class:`FDNDenoiser`).
    """
    from fdn.pretrained import available_models, load_pretrained

    if not Path(path).exists() and str(path) in available_models():
        return FDNDenoiser(load_pretrained(str(path), device), name or str(path), strength)
    path = Path(path)
    name = name or path.name.split(".")[0]
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt", device="cpu") as archive:
                kind = (archive.metadata() or {}).get("format")
        except (SafetensorError, OSError, RuntimeError) as error:
            raise ModelFileError(path, f"not a readable safetensors file ({error})") from None
        if kind == "fdn.dncnn":
            return DnCNNDenoiser(load_dncnn(path).to(device), name)
        return FDNDenoiser(load_model(path, device), name, strength)
    if any(key.startswith("module.intermediate_dncnn.") for key in read_state_dict(path)):
        return FFDNetDenoiser(load_peer_ffdnet(path).to(device), name)
    return DnCNNDenoiser(load_peer_dncnn(path).to(device), name)


def parse_model_spec(spec: str) -> tuple[str | None, float | None, str]:
    """``[NAME[@SIGMA]=]PATH`` -> (name, sigma, path)."""
    head, sep, tail = spec.partition("=")
    if not sep or "/" in head or os.sep in head:
        return None, None, spec
    name, at, sigma_text = head.partition("@")
    if not name:
        raise ValueError(f"--model {spec!r}: empty name before '='")
    if not at:
        return name, None, tail
    try:
        return name, float(sigma_text), tail
    except ValueError:
        raise ValueError(f"--model {spec!r}: {sigma_text!r} is not a sigma") from None


def models_from_specs(
    specs: Iterable[str], device: str | torch.device, strength: float | None = None
) -> list[Denoiser]:
    """``--model`` specs (:func:`parse_model_spec`) as denoisers: files that share a NAME form
    one column (a :class:`DenoiserSet`), one model per channel count and sigma. ``strength``:
    every FDN's (None: each model's default)."""
    groups: dict[str, list[tuple[float | None, FDNDenoiser | DnCNNDenoiser | FFDNetDenoiser]]] = {}
    for spec in specs:
        name, sigma, path = parse_model_spec(spec)
        denoiser = load_denoiser(path, name, device, strength)
        groups.setdefault(denoiser.name, []).append((sigma, denoiser))
    models: list[Denoiser] = []
    for name, members in groups.items():
        if len(members) == 1 and members[0][0] is None:
            models.append(members[0][1])
            continue
        keyed: dict[tuple[int, float | None], Denoiser] = {}
        for sigma, denoiser in members:
            key = (denoiser.channels, sigma)
            if key in keyed:
                at = "" if sigma is None else f" at sigma {sigma:g}"
                raise ValueError(f"--model: two {key[0]}-channel models named {name}{at}")
            keyed[key] = denoiser
        models.append(DenoiserSet(name, keyed))
    return models
