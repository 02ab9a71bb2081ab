r"""FDN: flow-based image denoising (Liu et al., 2022), as a tested PyTorch library."""

from fdn._version import __version__
from fdn.denoising import denoise_image
from fdn.model import FDN, FDNConfig
from fdn.runtime import tune_allocator
from fdn.serialization import ModelFileError, load_model, save_model

__all__ = [
    "FDN",
    "FDNConfig",
    "ModelFileError",
    "__version__",
    "denoise_image",
    "load_model",
    "save_model",
    "tune_allocator",
]
