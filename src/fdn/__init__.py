r"""FDN: flow-based image denoising (Liu et al., 2022), as a tested PyTorch library.

The public names load on first use (PEP 562), so ``import fdn`` (and ``fdn --version``,
``fdn --help``) does not import torch; ``from fdn import FDN`` works as usual.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from fdn._version import __version__

if TYPE_CHECKING:
    from fdn.denoising import denoise_image
    from fdn.model import FDN, FDNConfig
    from fdn.noise_level import estimate_noise
    from fdn.runtime import tune_allocator
    from fdn.serialization import ModelFileError, load_model, save_model
    from fdn.synthesis import renoise

# Each public name and the module that defines it.
_LAZY = {
    "FDN": "fdn.model",
    "FDNConfig": "fdn.model",
    "ModelFileError": "fdn.serialization",
    "denoise_image": "fdn.denoising",
    "estimate_noise": "fdn.noise_level",
    "load_model": "fdn.serialization",
    "renoise": "fdn.synthesis",
    "save_model": "fdn.serialization",
    "tune_allocator": "fdn.runtime",
}

__all__ = [
    "FDN",
    "FDNConfig",
    "ModelFileError",
    "__version__",
    "denoise_image",
    "estimate_noise",
    "load_model",
    "renoise",
    "save_model",
    "tune_allocator",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'fdn' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
