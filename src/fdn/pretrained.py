r"""The models that ship inside the package, checked by SHA-256 before they are used.

``weights/models.json`` is the table: for each name, its file, checksum, the record of how
it was trained and how well it does (the model card in ``docs/model-card.md`` says the same
in prose), and what was calibrated for its weights after their release: ``strength_curve``
(``scripts/fit_strength.py``), ``ood_guard`` (the likelihood guard's threshold,
``benchmarks/ood_calibration.py``) and ``noise_calibration`` (the flow noise estimator's
curve, ``benchmarks/noise_estimation.py --fit``). A release writes a new record, so it drops
all three until they are measured again for the new weights (:func:`store_calibration`).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from fdn.atomic import update_json
from fdn.model import FDN, StrengthCurve
from fdn.serialization import ModelFileError, load_model

__all__ = [
    "DEFAULT_MODELS",
    "MODELS_JSON",
    "available_models",
    "data_name",
    "load_pretrained",
    "model_record",
    "pretrained_name",
    "resolve_model",
    "sample_image_paths",
    "store_calibration",
]

# The bundled model used for an image with this many channels when none is named.
DEFAULT_MODELS = {3: "fdn-color-blind", 1: "fdn-grey-blind"}


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("fdn") / name))


def _read_table(folder: Path) -> dict[str, dict]:
    table = folder / "models.json"
    return json.loads(table.read_text()) if table.is_file() else {}


# The package's table, which the calibration scripts write into by default.
MODELS_JSON = _package_dir("weights") / "models.json"


@cache
def _table() -> dict[str, dict]:
    return _read_table(MODELS_JSON.parent)


def available_models() -> list[str]:
    """Names of the bundled models."""
    return sorted(_table())


def model_record(name: str) -> dict:
    """The table entry of a bundled model: file, sha256, training record, measured PSNR."""
    if name not in _table():
        raise KeyError(f"no bundled model {name!r}; bundled: {', '.join(available_models())}")
    return _table()[name]


def data_name(name: str, folder: str | os.PathLike) -> str:
    """How bundled model ``name``'s record names the image folder ``folder`` that something was
    calibrated on: relative to the data root its last stage trained from (``train/CBSD432``),
    so that it reads the same on every machine; as given when it lies elsewhere."""
    root = model_record(name).get("stage_config", {}).get("data", {}).get("root")
    path = Path(folder).resolve()
    if root and path.is_relative_to(Path(root).resolve()):
        return path.relative_to(Path(root).resolve()).as_posix()
    return str(folder)


def store_calibration(
    table_path: str | os.PathLike,
    key: str,
    calibrations: Mapping[str, dict | None],
    weights_sha256: Mapping[str, str],
) -> dict:
    """Stores each model's calibration as ``key`` of its record in the table at ``table_path``
    (None removes the key): into the table as it is when the measurement ends and under its
    lock (:func:`fdn.atomic.update_json`), so that what another process wrote meanwhile (a
    release, another calibration) is kept. Returns the table as written.

    A calibration holds for the weights it was measured on, ``weights_sha256[name]``: when a
    record's weights are others by then (the model was released again meanwhile), nothing is
    written and ValueError is raised, rather than file a stale calibration with new weights.
    """

    def store(table: dict) -> None:
        for name, calibration in calibrations.items():
            record = table.get(name)
            if record is None or record.get("sha256") != weights_sha256[name]:
                raise ValueError(
                    f"{name}: released again (or gone) while its {key} was measured: "
                    "measure it again"
                )
            if calibration is None:
                record.pop(key, None)
            else:
                record[key] = calibration

    return update_json(table_path, store)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(
    name: str, device: str | torch.device = "cpu", folder: str | os.PathLike | None = None
) -> FDN:
    """Loads a bundled model (see :func:`available_models`) after checking its checksum, in
    eval mode. ``folder``: another folder of model files with its own ``models.json`` (a copy
    of the package's ``weights``, say); the package's by default."""
    if folder is None:
        record, weights = model_record(name), _package_dir("weights")
    else:
        weights = Path(folder)
        table = _read_table(weights)
        if name not in table:
            raise KeyError(f"no model {name!r} in {weights / 'models.json'}")
        record = table[name]
    path = weights / record["file"]
    if not path.is_file():
        raise ModelFileError(path, f"bundled model {name} is missing from the installation")
    if _sha256(path) != record["sha256"]:
        raise ModelFileError(
            path, f"checksum mismatch for bundled model {name}: the file is damaged; reinstall fdn"
        )
    model = load_model(path, device=device)
    curve = record.get("strength_curve")  # fitted on held-back images: scripts/fit_strength.py
    if curve:
        model.strength_curve = StrengthCurve(tuple(curve["sigmas"]), tuple(curve["strengths"]))
    if folder is None:
        _NAMES[model] = name
    return model


# The bundled model each loaded FDN is, so that what was calibrated for it (the likelihood
# guard's threshold in its record) can be found; a weak map, so that it never keeps a model
# alive.
_NAMES: weakref.WeakKeyDictionary[FDN, str] = weakref.WeakKeyDictionary()


def pretrained_name(model: FDN) -> str | None:
    """The bundled model's name if ``model`` was loaded by :func:`load_pretrained` (and
    not from another folder), else None."""
    return _NAMES.get(model)


def resolve_model(spec: str | None, channels: int, device: str | torch.device = "cpu") -> FDN:
    """A model from a bundled name, a file path, or (``None``) the default for ``channels``."""
    if spec is None:
        name = DEFAULT_MODELS[3 if channels >= 3 else 1]
        if name not in _table():
            raise ValueError(f"this installation has no bundled model {name}; give --model PATH")
        return load_pretrained(name, device)
    if spec in _table():
        return load_pretrained(spec, device)
    path = Path(spec)
    if not path.exists() and path.suffix == "":
        raise ValueError(
            f"--model {spec}: neither a file nor a bundled model ({', '.join(available_models())})"
        )
    return load_model(path, device=device)


def sample_image_paths() -> tuple[Path, Path]:
    """The bundled sample: (noisy, clean) PNG paths."""
    assets = _package_dir("assets")
    return assets / "astronaut_noisy_sigma25.png", assets / "astronaut.png"
