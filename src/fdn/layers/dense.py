r"""The Dense Block subnet of the affine couplings (spec section 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fdn.layers.base import autocast_dtype

__all__ = ["DenseBlock", "widened"]


class _ChannelsLastCat(torch.autograd.Function):
    """``torch.cat(features, dim=1)`` whose backward hands each input a dense gradient.

    In channels-last, a channel slice of the concatenation's gradient is strided (a few
    channels out of every pixel's run), and every op that consumes it in backward (the
    LeakyReLU's gradient, the accumulation over the Dense Block's later convolutions) runs
    several times slower on it. Copying each slice once into channels-last is cheaper: a
    reduced-FDN training step takes 0.88x the time (bf16, one CPU thread, batch 16 at 64x64).
    """

    @staticmethod
    def forward(ctx, *features: Tensor) -> Tensor:  # noqa: ANN001
        ctx.channels = [feature.shape[1] for feature in features]
        return torch.cat(features, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN001
        slices = torch.split(grad, ctx.channels, dim=1)
        return tuple(piece.contiguous(memory_format=torch.channels_last) for piece in slices)


def _cat(features: list[Tensor]) -> Tensor:
    channels_last = features[0].is_contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() and channels_last and features[0].dim() == 4:
        return _ChannelsLastCat.apply(*features)
    return torch.cat(features, dim=1)


def widened(fresh: Tensor, old: Tensor, in_channels: int, growth: int) -> Tensor:
    r"""A weight or bias of a :class:`DenseBlock` of ``growth`` (the old, narrower one) laid
    into ``fresh``, the same tensor of a block with more growth, so that the wider block
    computes what the old one did.

    The old block's channels are the first ``growth`` of each of its features in the wider
    one. Every weight from an old input channel to an old output keeps its value; a weight
    from an added input channel to an old output (and to every output of the last
    convolution, which has no added outputs) is 0, so the added channels cannot change what
    the block outputs; an added output channel of the first four convolutions keeps
    ``fresh``'s values, its weights from all inputs and its bias. With ``fresh`` at zero (Adam's
    moments) the added entries start at 0.

    Raises:
        ValueError: ``old`` is not the narrower tensor of ``fresh`` (the message has shapes).

    Example:
        >>> old = torch.ones(1, 1 + 1, 3, 3)  # a second convolution: in_channels 1, growth 1
        >>> new = widened(torch.full((2, 1 + 2, 3, 3), 7.0), old, in_channels=1, growth=1)
        >>> new[:, :, 0, 0].tolist()
        [[1.0, 1.0, 0.0], [7.0, 7.0, 7.0]]
    """
    if old.dim() == 1:  # a bias: its first outputs are the old block's
        if old.shape[0] > fresh.shape[0]:
            raise ValueError(f"a bias of {old.shape[0]} has no place in one of {fresh.shape[0]}")
        out = fresh.clone()
        out[: old.shape[0]] = old
        return out
    inputs, wider = old.shape[1], fresh.shape[1]
    features = (inputs - in_channels) // growth  # the old features this convolution reads
    new_growth = (wider - in_channels) // features if features else growth
    if (
        old.dim() != 4
        or (inputs - in_channels) % growth
        or wider != in_channels + features * new_growth
        or new_growth < growth
        or old.shape[0] > fresh.shape[0]
        or old.shape[2:] != fresh.shape[2:]
    ):
        raise ValueError(f"{tuple(old.shape)} has no place in {tuple(fresh.shape)}")
    columns = list(range(in_channels)) + [
        in_channels + j * new_growth + r for j in range(features) for r in range(growth)
    ]
    out = fresh.clone()
    rows = old.shape[0]
    out[:rows] = 0
    out[:rows, columns] = old
    return out


class DenseBlock(nn.Module):
    r"""Five densely connected 3x3 convolutions, as IRN's ``DenseBlock``.

    Convolution k sees the concatenation of the input and the outputs of convolutions
    1 .. k-1. The first four have ``growth`` output channels and a LeakyReLU(0.2); the last
    maps to ``out_channels`` with no activation. The first four start Xavier-normal scaled by
    0.1, and the last starts at zero, so the block outputs 0 at initialisation and every
    coupling that uses it starts as the identity.

    References:
        | Invertible Image Rescaling (Xiao et al., 2020), https://arxiv.org/abs/2005.05650

    Arguments:
        in_channels: input channels.
        out_channels: output channels.
        growth: channels added by each of the first four convolutions (``gc``, 32 in FDN).

    Example:
        >>> import torch
        >>> block = DenseBlock(3, 9)
        >>> block(torch.randn(1, 3, 8, 8)).abs().max().item()
        0.0
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + k * growth, growth, 3, padding=1) for k in range(4)
        )
        self.last = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.activation = nn.LeakyReLU(0.2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs:
            assert isinstance(conv, nn.Conv2d)
            nn.init.xavier_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.last.weight)
        assert self.last.bias is not None
        nn.init.zeros_(self.last.bias)

    def forward(self, x: Tensor) -> Tensor:
        dtype = autocast_dtype(x)
        if dtype is not None:
            # Concatenate in the autocast type, not float32 (cat would promote the activations).
            x = x.to(dtype)
        features = [x]
        for conv in self.convs:
            features.append(self.activation(conv(_cat(features))))
        return self.last(_cat(features))
