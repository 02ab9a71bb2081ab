r"""The reference weights folder of DnCNN and FFDNet, and the error for a file missing from it.

``fdn eval --baselines`` and ``fdn compare`` read the reference files from ``--weights DIR``,
else ``$FDN_WEIGHTS``, else ``../shared/peer-weights`` beside the repository
(:func:`fdn.choices.default_weights`, the one place that default is defined). A baseline asked
for by name is never dropped silently: a missing file raises :class:`MissingWeightsError`,
whose one-line message names the file and both ways of pointing at its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from fdn.choices import WEIGHTS_ENV, default_weights
from fdn.serialization import ModelFileError

__all__ = ["MissingWeightsError", "peer_file", "weights_folder"]


class MissingWeightsError(ModelFileError):
    """A reference weight file that is not where fdn looked; the message says how to fix it."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(
            path,
            "reference weight file not found; give the folder that holds it with --weights "
            f"DIR or the {WEIGHTS_ENV} environment variable (docs/evaluation.md says where "
            "each file is published)",
        )


def weights_folder(weights: str | os.PathLike | None) -> Path:
    """``weights``, or the default folder (:func:`fdn.choices.default_weights`) for None."""
    return default_weights() if weights is None else Path(weights)


def peer_file(folder: Path, relative: str) -> Path:
    """``folder / relative`` if it is a file, else :class:`MissingWeightsError` naming it."""
    path = folder / relative
    if not path.is_file():
        raise MissingWeightsError(path)
    return path
