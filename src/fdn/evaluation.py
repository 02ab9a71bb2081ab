r"""``fdn eval``: FDN and the baselines on the same noisy images, in the paper's table layout.

Every method is a :class:`fdn.denoisers.Denoiser`, so :func:`evaluate` never branches on the
method: it reads each image once, adds noise from a seed fixed by the image's name and sigma (or
reads its real noisy partner), hands the same noisy tensor to every method, and scores the
outputs with :mod:`fdn.metrics`. A method or image that fails is recorded and the rest still
run. :func:`run_eval` builds the methods (:mod:`fdn.denoisers`), runs them and writes the table,
CSV and JSON (:mod:`fdn.reports`).

The names of those modules are importable from here too, as they were before the split.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

import fdn.reuse
from fdn._version import __version__
from fdn.baselines import MissingExtraError
from fdn.choices import DEFAULT_SIGMAS, ensemble_size
from fdn.data import DataError, find_pairs, list_images
from fdn.denoisers import (
    BASELINES,
    Denoiser,
    DenoiserSet,
    EnsembleDenoiser,
    FDNDenoiser,
    build_baseline,
    load_denoiser,
    models_from_specs,
)
from fdn.denoising import precision_context
from fdn.images import EXTENSIONS, read_array
from fdn.metrics import psnr, ssim
from fdn.noise import AWGN, Noise
from fdn.progress import progress as progress_bar
from fdn.reports import Summary, markdown_table, summarize, write_results
from fdn.runtime import resolve_device

__all__ = [
    "BASELINES",
    "Dataset",
    "Denoiser",
    "DenoiserSet",
    "EnsembleDenoiser",
    "Evaluation",
    "FDNDenoiser",
    "Failure",
    "ImageItem",
    "Result",
    "Summary",
    "build_baseline",
    "evaluate",
    "find_dataset",
    "load_denoiser",
    "markdown_table",
    "noise_name",
    "read_image_tensor",
    "run_eval",
    "summarize",
    "synthetic_noise",
    "write_results",
]


# Data


@dataclass(frozen=True)
class ImageItem:
    """One test image: ``name`` (its path inside the data set) seeds its synthetic noise."""

    name: str
    clean: Path
    noisy: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """A folder of test images, or of noisy/clean pairs when ``paired``."""

    name: str
    root: Path
    items: tuple[ImageItem, ...]
    paired: bool = False


def _images_under(root: Path) -> list[Path]:
    # The files training reads (fdn.images.EXTENSIONS), in the order of their paths' text.
    try:
        found = list_images(root)
    except DataError:
        return []
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _pair_items(root: Path) -> list[ImageItem]:
    # The pairs training reads. An item is named by its noisy image's path: inside noisy/
    # without its extension (clean/ may hold another), else inside the data set.
    noisy_root = root / "noisy"
    keyed = []
    for noisy, clean in find_pairs(root):
        if noisy_root.is_dir() and (root / "clean").is_dir():
            name = noisy.relative_to(noisy_root).with_suffix("").as_posix()
        else:
            name = noisy.relative_to(root).as_posix()
        keyed.append((noisy.relative_to(root).as_posix(), ImageItem(name, clean, noisy)))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


# Folder names that say which split, not which data set: a data set is named with its parent.
_SPLITS = {"test", "testing", "train", "training", "val", "valid", "validation"}


def find_dataset(
    root: str | os.PathLike, paired: bool = False, limit: int | None = None
) -> Dataset:
    """Finds the test images under ``root`` (searched recursively, sorted by path).

    Arguments:
        root: a folder of clean images, or with ``paired``, of noisy/clean pairs as
            :func:`fdn.data.find_pairs` finds them for training: ``noisy/`` and ``clean/``
            subfolders matched by name, or SIDD's layout (``NOISY_*`` next to ``GT_*``).
            Every format ``fdn denoise`` reads counts (:data:`fdn.images.EXTENSIONS`).
        paired: read real noisy/clean pairs instead of clean images.
        limit: keep only the first ``limit`` images (in sorted order).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    if paired:
        items = _pair_items(root)
    else:
        items = [ImageItem(p.relative_to(root).as_posix(), p) for p in _images_under(root)]
    if not items:
        raise ValueError(f"{root}: found no images ({', '.join(sorted(EXTENSIONS))})")
    name = root.resolve().name
    if name.lower() == "data" and paired:  # SIDD's .../SIDD_Small/Data: name it by its parent
        name = root.resolve().parent.name
    elif name.lower() in _SPLITS:  # faces/celeba/test: "celeba/test", not "test"
        name = f"{root.resolve().parent.name}/{name}"
    return Dataset(name, root, tuple(items[:limit] if limit else items), paired)


def _read_image(path: str | os.PathLike) -> Tensor:
    """Reads an image file (:func:`fdn.images.read_array`, alpha dropped, in its own channel
    count) as a (1, C, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(read_array(path).transpose(2, 0, 1).copy())[None]


read_image_tensor = _read_image  # the public name of the reader every evaluation uses

# Evaluation


@dataclass(frozen=True)
class Result:
    """One method on one image: PSNR (dB), SSIM and seconds for the ``denoise`` call."""

    dataset: str
    sigma: float | None
    method: str
    image: str
    psnr: float
    ssim: float
    seconds: float
    noise: str = ""  # the noise's describe() ("awgn-25"), "real" for pairs: see noise_name
    told: float | None = None  # the sigma the method was told (None: blind, or none given)


@dataclass(frozen=True)
class Failure:
    """A method (or, with ``method`` None, an image) that failed, and why."""

    dataset: str
    sigma: float | None
    method: str | None
    image: str
    error: str
    noise: str = ""


@dataclass
class Evaluation:
    """Everything :func:`evaluate` measured, in the order the table shows it."""

    methods: list[str]
    conditions: list[tuple[str, float | None]]
    results: list[Result] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    not_applicable: dict[tuple[str, float | None, str], str] = field(default_factory=dict)
    images: dict[tuple[str, float | None], int] = field(default_factory=dict)
    paired: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    estimator: str | None = None  # with --sigma auto: what estimated the sigma methods are told
    # SHA-256 of each condition's noisy images (name and float32 pixels, in order): two
    # evaluations with the same digest saw the same noisy inputs (see fdn.reuse).
    digests: dict[tuple[str, float | None], str] = field(default_factory=dict)
    reused: list[tuple[str, list[str]]] = field(default_factory=list)  # (folder, methods)


def synthetic_noise(sigma: float) -> Noise:
    """The synthetic noise ``fdn eval`` and ``fdn compare`` add at ``sigma`` (0-255)."""
    return AWGN(sigma)


def noise_name(sigma: float | None, paired: bool) -> str:
    """What a condition's results are keyed by besides its sigma: the synthetic noise's
    :meth:`fdn.noise.Noise.describe` (``"awgn-25"``), or ``"real"`` for noisy/clean pairs
    (whose sigma, if any, is only what non-blind methods are told)."""
    if paired or sigma is None:
        return "real"
    return synthetic_noise(sigma).describe()


def _sigma_rows(dataset: Dataset, sigmas: Sequence[float]) -> list[float | None]:
    # Real noise has no sigma; given sigmas are then what non-blind methods are told.
    if dataset.paired:
        return list(sigmas) or [None]
    if not sigmas:
        raise ValueError("synthetic noise needs at least one --sigma")
    return list(sigmas)


def _load_pair(item: ImageItem, sigma: float | None, seed: int) -> tuple[Tensor, Tensor]:
    clean = _read_image(item.clean)
    if item.noisy is not None:
        noisy = _read_image(item.noisy)
        if noisy.shape != clean.shape:
            raise ValueError(
                f"noisy image {tuple(noisy.shape[1:])} and clean {tuple(clean.shape[1:])} "
                "differ in shape"
            )
        return noisy, clean
    assert sigma is not None
    noise = synthetic_noise(sigma)
    return noise.sample(clean, noise.seed_for(item.name, seed)), clean


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def evaluate(
    denoisers: Sequence[Denoiser],
    datasets: Sequence[Dataset],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    seed: int = 0,
    progress: bool | str = True,
    estimator: str | None = None,
) -> Evaluation:
    """Runs every denoiser on every image of every data set at every sigma.

    Synthetic noise is :func:`synthetic_noise` (AWGN), seeded by
    :meth:`fdn.noise.Noise.seed_for` (``seed``, the image's name, the noise), so every method
    sees the same noisy image and reruns repeat. Results carry the noise's name
    (:func:`noise_name`) beside their sigma. A method that raises on an image is recorded in
    ``failures`` (and reported on stderr) and the rest go on; a method that cannot handle a
    data set (wrong channel count, missing sigma) is recorded once in ``not_applicable``.

    Arguments:
        denoisers: the methods; their names must be distinct.
        datasets: from :func:`find_dataset`.
        sigmas: noise levels on the 0-255 scale; for paired data sets, the levels non-blind
            methods are told (none: they are not applicable).
        seed: base seed of the synthetic noise.
        progress: True (or ``"bar"``) shows a tqdm bar on stderr, ``"lines"`` a plain line
            at most once a minute (:func:`fdn.progress.progress`), False (``"off"``) nothing.
        estimator: None tells non-blind methods the true sigma; a method of
            :func:`fdn.estimate_noise` (``--sigma auto``) tells them each noisy image's
            estimated sigma instead, and records it in each result's ``told``.
    """
    names = [denoiser.name for denoiser in denoisers]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    conditions = [(d.name, s) for d in datasets for s in _sigma_rows(d, sigmas)]
    evaluation = Evaluation(methods=names, conditions=conditions, estimator=estimator)
    evaluation.paired = [d.name for d in datasets if d.paired]
    total = sum(len(d.items) * len(_sigma_rows(d, sigmas)) for d in datasets) * len(denoisers)
    bar = progress_bar(
        mode=progress, label="fdn eval", total=total, unit="run", file=sys.stderr, leave=False
    )

    def report(message: str) -> None:
        tqdm.write(f"fdn eval: {message}", file=sys.stderr)

    with bar:
        for dataset in datasets:
            for sigma in _sigma_rows(dataset, sigmas):
                label = dataset.name if sigma is None else f"{dataset.name}, sigma {sigma:g}"
                noise = noise_name(sigma, dataset.paired)
                bar.set_description(label)
                evaluation.images[dataset.name, sigma] = len(dataset.items)
                digest = hashlib.sha256()
                for item in dataset.items:
                    try:
                        noisy, clean = _load_pair(item, sigma, seed)
                        told = sigma if estimator is None else _estimate(noisy, estimator)
                        digest.update(item.name.encode() + b"\0")
                        digest.update(noisy.numpy().tobytes())
                    except Exception as error:  # noqa: BLE001 - report the image, go on
                        failure = Failure(
                            dataset.name, sigma, None, item.name, _one_line(error), noise
                        )
                        evaluation.failures.append(failure)
                        report(f"{label}: cannot read {item.name}: {failure.error}")
                        bar.update(len(denoisers))
                        continue
                    for denoiser in denoisers:
                        pair = (noisy, clean)
                        _run_one(denoiser, dataset, sigma, told, item, pair, evaluation, report)
                        bar.update(1)
                evaluation.digests[dataset.name, sigma] = digest.hexdigest()
    return evaluation


def _sigma_given(estimator: str | None) -> str:
    # How non-blind methods learn the sigma, as settings and results.json record it.
    return "true" if estimator is None else f"auto ({estimator})"


def _estimate(noisy: Tensor, estimator: str) -> float:
    from fdn.noise_level import estimate_noise_tensor

    return estimate_noise_tensor(noisy, estimator, noisy.device)


def _run_one(
    denoiser: Denoiser,
    dataset: Dataset,
    sigma: float | None,
    told: float | None,
    item: ImageItem,
    pair: tuple[Tensor, Tensor],
    evaluation: Evaluation,
    report: Callable[[str], None],
) -> None:
    # ``sigma`` is the condition (the noise added); ``told`` what non-blind methods are told.
    noisy, clean = pair
    given = None if denoiser.blind else told
    key = (dataset.name, sigma, denoiser.name)
    noise = noise_name(sigma, dataset.paired)
    reason = denoiser.supports(clean.shape[1], given)
    if reason is not None and given is None and not denoiser.blind:
        reason += " (real noise has none unless a sigma is given)"
    if reason is not None:
        if key not in evaluation.not_applicable:
            evaluation.not_applicable[key] = reason
            report(f"{denoiser.name} skipped on {dataset.name}: {reason}")
        return
    try:
        start = time.perf_counter()
        denoised = denoiser.denoise(noisy.clone(), given)
        seconds = time.perf_counter() - start
        if denoised.shape != clean.shape:
            raise ValueError(
                f"returned shape {tuple(denoised.shape)}, expected {tuple(clean.shape)}"
            )
        scores = psnr(denoised, clean).item(), ssim(denoised, clean).item()
    except Exception as error:  # noqa: BLE001 - one method failing must not stop the others
        failure = Failure(dataset.name, sigma, denoiser.name, item.name, _one_line(error), noise)
        evaluation.failures.append(failure)
        report(f"{denoiser.name} failed on {dataset.name}/{item.name}: {failure.error}")
        return
    evaluation.results.append(
        Result(dataset.name, sigma, denoiser.name, item.name, *scores, seconds, noise, given)
    )


# Running it all


def run_eval(
    data: Sequence[str | os.PathLike],
    models: Sequence[str] = (),
    baselines: Sequence[str] = (),
    *,
    weights: str | os.PathLike | None = None,
    sigmas: Sequence[float] | None = None,
    paired: bool = False,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    ensemble: bool | int = False,
    precision: str = "fp32",
    progress: bool | str = True,
    estimator: str | None = None,
    reuse: Sequence[str | os.PathLike] = (),
    strength: float | None = None,
) -> int:
    """Runs ``fdn eval``: prints the Markdown table, writes files with ``out``.

    Arguments:
        data: the test set folders (:func:`find_dataset`).
        models: model files as ``[NAME[@SIGMA]=]PATH``; files with the same NAME form one
            column, @SIGMA marks a model for that noise level only.
        baselines: names from :data:`BASELINES`.
        weights: the reference weights folder for dncnn, dncnn-b and ffdnet (None:
            :func:`fdn.choices.default_weights`, ``$FDN_WEIGHTS`` or ../shared/peer-weights).
        sigmas: noise levels (None: 15, 25, 50; with ``paired``, none).
        paired: real noise: noisy/clean pairs instead of clean images.
        out: a folder for ``table.md``, ``results.csv`` and ``results.json``.
        seed, limit, ensemble, precision, progress: as for :func:`evaluate`,
            :func:`find_dataset`, :class:`EnsembleDenoiser` and ``fdn eval``'s options.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (:func:`fdn.runtime.resolve_device`)
            or a :class:`torch.device`.
        estimator: ``--sigma auto``: non-blind methods are told each noisy image's sigma as
            this method of :func:`fdn.estimate_noise` estimates it (None: the true sigma).
        reuse: earlier ``out`` folders whose methods join the table without running again,
            when they saw the same noisy images (:mod:`fdn.reuse`: a mismatch raises
            :class:`fdn.reuse.ReuseError`, before this run's methods run except for a
            difference in the noisy images themselves, known only once they are drawn).
        strength: every FDN model's :meth:`FDN.denoise` strength (None: each model's
            default, its strength curve's for a bundled model that has one).

    Returns 0 when every method ran on every image, 1 when something failed. A baseline
    whose optional package (BM3D, NLM) is missing is skipped with a message on stderr; a
    missing or unreadable weight file raises :class:`fdn.ModelFileError` before anything
    runs (:class:`fdn.baselines.MissingWeightsError` says how to point at the folder).
    """
    device = resolve_device(device)
    denoisers: list[Denoiser] = []
    for name in baselines:
        try:
            denoisers.append(build_baseline(name, weights, device))
        except MissingExtraError as error:
            print(f"fdn eval: skipping {name}: {error}", file=sys.stderr)
    denoisers += models_from_specs(models, device, strength)
    if not denoisers and not reuse:
        raise ValueError("nothing to evaluate: give --model, --baselines and/or --reuse")
    size = ensemble_size(ensemble)
    if size > 1:
        denoisers = [EnsembleDenoiser(d, size) for d in denoisers]
    datasets = [find_dataset(root, paired, limit) for root in data]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"data set folders must have distinct names, got {names}")
    if sigmas is None:
        sigmas = [] if paired else DEFAULT_SIGMAS
    given = {"seed": seed, "paired": paired, "sigma_given": _sigma_given(estimator)}
    earlier: list[fdn.reuse.Earlier] = []
    for folder in reuse:  # checked before anything runs
        taken = [m for e in earlier for m in e.methods] + [d.name for d in denoisers]
        earlier.append(fdn.reuse.load(folder, datasets, given, taken))
    with precision_context(precision, device):
        evaluation = evaluate(denoisers, datasets, sigmas, seed, progress, estimator)
    for before in earlier:
        fdn.reuse.merge(evaluation, before)
    evaluation.settings = {
        "data": [str(d.root) for d in datasets],
        "images": {d.name: len(d.items) for d in datasets},
        "paired": paired,
        "sigmas": list(sigmas),
        "sigma_given": given["sigma_given"],
        "seed": seed,
        "limit": limit,
        "methods": list(evaluation.methods),  # the reused ones first
        "models": list(models),
        "strength": "auto" if strength is None else strength,  # of the FDN models
        "device": str(device),
        "precision": precision,
        "fdn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if evaluation.reused:
        evaluation.settings["reused"] = [
            {"from": folder, "methods": methods} for folder, methods in evaluation.reused
        ]
    print(markdown_table(evaluation), end="")
    if out:
        for path in write_results(evaluation, out):
            print(f"fdn eval: wrote {path}", file=sys.stderr)
    if evaluation.failures:
        print(f"fdn eval: {len(evaluation.failures)} failure(s)", file=sys.stderr)
        return 1
    return 0
