r"""What a model is: its size, its cost and the layout of its latent."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from fdn.model import FDN

__all__ = ["count_parameters", "denoise_flops", "model_info"]


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def denoise_flops(model: FDN, height: int = 256, width: int = 256) -> int:
    """FLOPs of one ``denoise`` of a ``1 x C x height x width`` image, as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-accumulate).

    The count runs on the meta device, so it costs no real compute at any size.
    """
    meta = FDN.from_config(model.config).to("meta").eval()
    image = torch.empty(1, model.config.in_channels, height, width, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.denoise(image)
    return counter.get_total_flops()


def model_info(model: FDN, height: int = 256, width: int = 256) -> dict:
    """A JSON-ready summary of ``model`` for a ``height x width`` denoise."""
    config = model.config
    flops = denoise_flops(model, height, width)
    multiple = config.size_multiple
    padded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    clean = config.clean_channels
    return {
        "config": config.to_dict(),
        "parameters": count_parameters(model),
        "image_size": [height, width],
        # The paper's Table V "GFLOPs" (76.80 for FDN at 256x256, 73.32 for DnCNN) are
        # multiply-accumulates of a full denoise (encode + decode), so that is what we report
        # as GFLOPs; FlopCounterMode's raw count, at 2 FLOPs per MAC, is kept beside it.
        "denoise_gflops": flops / 2e9,
        "denoise_flops_counted": flops,
        "flops_convention": "GFLOPs as in the paper: multiply-accumulates (counted FLOPs / 2)",
        "latent_shape": [
            1,
            config.latent_channels,
            padded[0] // multiple,
            padded[1] // multiple,
        ],
        "z_c_channels": [0, clean],
        "z_n_channels": [clean, config.latent_channels],
    }
