r"""FFDNet: a DnCNN body on the 2x2 pixel-unshuffled image plus a noise-level map.

References:
    | FFDNet: Toward a Fast and Flexible Solution for CNN-Based Image Denoising
    | (Zhang et al., IEEE TIP 2018), https://arxiv.org/abs/1710.04026

The reference weights are the IPOL PyTorch port's ``net_gray.pth`` (15 layers, 64 features)
and ``net_rgb.pth`` (12 layers, 96 features): a DataParallel state_dict with keys
``module.intermediate_dncnn.itermediate_dncnn.N.*`` (sic). Its input is the noise map
(C channels of sigma / 255) followed by the pixel-unshuffled image (4C channels, channel
``4c + 2i + j`` holding pixel ``(i, j)`` of each 2x2 block of channel c, which is
:func:`torch.nn.functional.pixel_unshuffle`); its output, pixel-shuffled back, is the noise.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdn.baselines.dncnn import DnCNN, conv_weights, load_exact, read_state_dict
from fdn.runtime import channels_last
from fdn.serialization import ModelFileError

__all__ = ["FFDNet", "FFDNetDenoiser", "load_peer_ffdnet"]

_PEER_PREFIX = "module.intermediate_dncnn.itermediate_dncnn."
# The IPOL architecture for each channel count: (depth, features).
_DEFAULTS = {1: (15, 64), 3: (12, 96)}


class FFDNet(nn.Module):
    r"""FFDNet; ``forward(noisy, sigma)`` returns the noise estimate (H, W even).

    Arguments:
        in_channels: image channels, 1 or 3.
        depth: convolution layers of the body; the IPOL value for ``in_channels`` by default.
        features: hidden channels of the body; the IPOL value by default.

    Example:
        >>> model = FFDNet(in_channels=3, depth=3, features=8).eval()
        >>> model.denoise(torch.rand(1, 3, 9, 6), sigma=25).shape
        torch.Size([1, 3, 9, 6])
    """

    def __init__(
        self, in_channels: int = 1, depth: int | None = None, features: int | None = None
    ) -> None:
        super().__init__()
        default_depth, default_features = _DEFAULTS.get(in_channels, (15, 64))
        self.in_channels = in_channels
        self.body = DnCNN(
            in_channels=5 * in_channels,
            depth=depth or default_depth,
            features=features or default_features,
            batch_norm=True,
            out_channels=4 * in_channels,
        )

    def forward(self, noisy: Tensor, sigma: float | Tensor) -> Tensor:
        """Noise estimate for an even-sized ``noisy`` at ``sigma`` (0-255, scalar or (B,))."""
        batch, channels, height, width = noisy.shape
        if channels != self.in_channels or height % 2 or width % 2:
            raise ValueError(
                f"expected a (B, {self.in_channels}, H, W) batch with H and W even, "
                f"got shape {tuple(noisy.shape)}"
            )
        level = torch.as_tensor(sigma, dtype=noisy.dtype, device=noisy.device) / 255
        noise_map = level.reshape(-1, 1, 1, 1).expand(batch, channels, height // 2, width // 2)
        features = torch.cat([noise_map, F.pixel_unshuffle(noisy, 2)], dim=1)  # (B, 5C, H/2, W/2)
        return F.pixel_shuffle(self.body(features), 2)

    def denoise(self, noisy: Tensor, sigma: float | Tensor) -> Tensor:
        """Denoises any size: odd sizes are padded by repeating the last row / column.

        In eval mode it runs channels-last (:func:`fdn.runtime.channels_last`).
        """
        height, width = noisy.shape[-2:]
        padded = F.pad(noisy, (0, width % 2, 0, height % 2), mode="replicate")
        padded = channels_last(self, padded)
        denoised = padded - self(padded, sigma)
        return denoised[..., :height, :width].clamp(0, 1)


class FFDNetDenoiser:
    r"""An FFDNet as a :class:`fdn.denoisers.Denoiser`: non-blind, any sigma.

    Arguments:
        model: the network; it is put in eval mode.
        name: the method's name in tables.
    """

    blind = False

    def __init__(self, model: FFDNet, name: str = "FFDNet") -> None:
        self.model = model.eval()
        self.name = name
        self.channels = model.in_channels

    def supports(self, channels: int, sigma: float | None) -> str | None:
        if channels != self.channels:
            return f"takes {self.channels}-channel images, not {channels}-channel ones"
        if sigma is None:
            return "needs the noise level sigma"
        return None

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        if sigma is None:
            raise ValueError("FFDNet needs the noise level sigma")
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model.denoise(noisy.to(device), sigma).cpu()


def load_peer_ffdnet(path: str | os.PathLike) -> FFDNet:
    """Builds an FFDNet from an IPOL weight file (``net_gray.pth``, ``net_rgb.pth``).

    A file with another key layout, or shapes that do not fit FFDNet, raises
    :class:`fdn.ModelFileError` naming the file.
    """
    state = read_state_dict(path)
    if not state or not all(name.startswith(_PEER_PREFIX) for name in state):
        shown = ", ".join(sorted(state)[:3]) or "no tensors"
        raise ModelFileError(
            path, f"not an FFDNet weight file: expected keys {_PEER_PREFIX}N.*, got {shown}"
        )
    convs = conv_weights(state, _PEER_PREFIX)
    if len(convs) < 2 or convs[0].shape[1] % 5 or convs[0].shape[1] // 5 not in (1, 3):
        first = tuple(convs[0].shape) if convs else None
        raise ModelFileError(
            path,
            f"not an FFDNet weight file: first convolution {first} should take 5 (grey) or "
            "15 (colour) channels",
        )
    channels = convs[0].shape[1] // 5
    model = FFDNet(channels, depth=len(convs), features=convs[0].shape[0])
    renamed = {"body.layers." + name[len(_PEER_PREFIX) :]: t for name, t in state.items()}
    load_exact(model, renamed, path)
    return model.eval()
