r"""``fdn eval``: FDN and the baselines on the same noisy images, in the paper's table layout.

Every method is a :class:`Denoiser`, so :func:`evaluate` never branches on the method: it
reads each image once, adds noise from a seed fixed by the image's name and sigma (or reads
its real noisy partner), hands the same noisy tensor to every method, and scores the outputs
with :mod:`fdn.metrics`. A method or image that fails is recorded and the rest still run.
The writers turn the per-image results into a Markdown table (data set x sigma rows, methods as
columns, the best in bold), a CSV and a JSON file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from fdn._version import __version__
from fdn.baselines import (
    BM3D,
    DnCNNDenoiser,
    FFDNetDenoiser,
    MissingExtraError,
    NonLocalMeans,
    load_dncnn,
    load_peer_dncnn,
    load_peer_ffdnet,
)
from fdn.baselines.dncnn import ModuleDenoiser, read_state_dict
from fdn.choices import BASELINES, DEFAULT_SIGMAS, DEFAULT_WEIGHTS
from fdn.data import DataError, find_pairs, list_images
from fdn.denoising import precision_context
from fdn.images import EXTENSIONS, read_array
from fdn.metrics import psnr, ssim
from fdn.model import FDN
from fdn.noise import add_gaussian_noise, noise_seed
from fdn.runtime import resolve_device
from fdn.serialization import ModelFileError, load_model

__all__ = [
    "BASELINES",
    "Dataset",
    "Denoiser",
    "DenoiserSet",
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
    "read_image_tensor",
    "run_eval",
    "summarize",
    "write_results",
]


@runtime_checkable
class Denoiser(Protocol):
    r"""What :func:`evaluate` needs from a method.

    Attributes:
        name: the method's column header.
        blind: True when the method does not use the noise level; :func:`evaluate` then
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
    """

    def __init__(self, model: FDN, name: str = "FDN") -> None:
        super().__init__(model, name)


class EnsembleDenoiser:
    r"""Any :class:`Denoiser` with the x8 self-ensemble: its results on the eight flips and
    rotations of the noisy image, transformed back and averaged. Named ``"NAME x8"``.

    Arguments:
        inner: the method to ensemble.
    """

    def __init__(self, inner: Denoiser) -> None:
        self.inner = inner
        self.name = f"{inner.name} x8"
        self.blind = inner.blind

    def supports(self, channels: int, sigma: float | None) -> str | None:
        return self.inner.supports(channels, sigma)

    def denoise(self, noisy: Tensor, sigma: float | None) -> Tensor:
        from fdn.ensemble import self_ensemble

        return self_ensemble(lambda x: self.inner.denoise(x, sigma), noisy)


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
    items = []
    for noisy, clean in find_pairs(root):
        if noisy_root.is_dir() and (root / "clean").is_dir():
            name = noisy.relative_to(noisy_root).with_suffix("").as_posix()
        else:
            name = noisy.relative_to(root).as_posix()
        items.append(ImageItem(name, clean, noisy))
    return sorted(items, key=lambda item: item.noisy.relative_to(root).as_posix())


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


@dataclass(frozen=True)
class Failure:
    """A method (or, with ``method`` None, an image) that failed, and why."""

    dataset: str
    sigma: float | None
    method: str | None
    image: str
    error: str


@dataclass(frozen=True)
class Summary:
    """Means over the images of one data set and sigma for one method."""

    dataset: str
    sigma: float | None
    method: str
    psnr: float
    ssim: float
    seconds: float
    images: int
    expected: int


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
    return add_gaussian_noise(clean, sigma, noise_seed(item.name, sigma, seed)), clean


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def evaluate(
    denoisers: Sequence[Denoiser],
    datasets: Sequence[Dataset],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    seed: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Runs every denoiser on every image of every data set at every sigma.

    Synthetic noise comes from :func:`fdn.noise.noise_seed` (``seed``, the image's name,
    sigma), so every method sees the same noisy image and reruns repeat. A method that
    raises on an image is recorded in ``failures`` (and reported on stderr) and the rest go
    on; a method that cannot handle a data set (wrong channel count, missing sigma) is
    recorded once in ``not_applicable``.

    Arguments:
        denoisers: the methods; their names must be distinct.
        datasets: from :func:`find_dataset`.
        sigmas: noise levels on the 0-255 scale; for paired data sets, the levels non-blind
            methods are told (none: they are not applicable).
        seed: base seed of the synthetic noise.
        progress: show a tqdm progress bar on stderr.
    """
    names = [denoiser.name for denoiser in denoisers]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    conditions = [(d.name, s) for d in datasets for s in _sigma_rows(d, sigmas)]
    evaluation = Evaluation(methods=names, conditions=conditions)
    evaluation.paired = [d.name for d in datasets if d.paired]
    total = sum(len(d.items) * len(_sigma_rows(d, sigmas)) for d in datasets) * len(denoisers)
    bar = tqdm(total=total, unit="run", file=sys.stderr, disable=not progress, leave=False)

    def report(message: str) -> None:
        tqdm.write(f"fdn eval: {message}", file=sys.stderr)

    with bar:
        for dataset in datasets:
            for sigma in _sigma_rows(dataset, sigmas):
                label = dataset.name if sigma is None else f"{dataset.name}, sigma {sigma:g}"
                bar.set_description(label)
                evaluation.images[dataset.name, sigma] = len(dataset.items)
                for item in dataset.items:
                    try:
                        noisy, clean = _load_pair(item, sigma, seed)
                    except Exception as error:  # noqa: BLE001 - report the image, go on
                        failure = Failure(dataset.name, sigma, None, item.name, _one_line(error))
                        evaluation.failures.append(failure)
                        report(f"{label}: cannot read {item.name}: {failure.error}")
                        bar.update(len(denoisers))
                        continue
                    for denoiser in denoisers:
                        _run_one(denoiser, dataset, sigma, item, noisy, clean, evaluation, report)
                        bar.update(1)
    return evaluation


def _run_one(
    denoiser: Denoiser,
    dataset: Dataset,
    sigma: float | None,
    item: ImageItem,
    noisy: Tensor,
    clean: Tensor,
    evaluation: Evaluation,
    report: Callable[[str], None],
) -> None:
    given = None if denoiser.blind else sigma
    key = (dataset.name, sigma, denoiser.name)
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
        failure = Failure(dataset.name, sigma, denoiser.name, item.name, _one_line(error))
        evaluation.failures.append(failure)
        report(f"{denoiser.name} failed on {dataset.name}/{item.name}: {failure.error}")
        return
    evaluation.results.append(
        Result(dataset.name, sigma, denoiser.name, item.name, *scores, seconds)
    )


def summarize(evaluation: Evaluation) -> list[Summary]:
    """Mean PSNR, SSIM and seconds per (data set, sigma, method) that has results."""
    groups: dict[tuple[str, float | None, str], list[Result]] = {}
    for result in evaluation.results:
        groups.setdefault((result.dataset, result.sigma, result.method), []).append(result)
    summaries = []
    for dataset, sigma in evaluation.conditions:
        for method in evaluation.methods:
            results = groups.get((dataset, sigma, method))
            if not results:
                continue
            summaries.append(
                Summary(
                    dataset,
                    sigma,
                    method,
                    psnr=sum(r.psnr for r in results) / len(results),
                    ssim=sum(r.ssim for r in results) / len(results),
                    seconds=sum(r.seconds for r in results) / len(results),
                    images=len(results),
                    expected=evaluation.images.get((dataset, sigma), len(results)),
                )
            )
    return summaries


# Writers


def _sigma_label(sigma: float | None, paired: bool) -> str:
    if sigma is None:
        return "real"
    return f"real (told {sigma:g})" if paired else f"{sigma:g}"


def markdown_table(evaluation: Evaluation) -> str:
    """The paper's layout: one row per data set and sigma, one column per method.

    Cells read ``PSNR / SSIM``; in each row the best PSNR and the best SSIM (at the shown
    precision, ties included, among the means over all images) are bold. ``-`` marks a method
    that does not apply, ``failed`` one that produced no result, and ``*`` a mean over fewer
    images than the data set has.
    A second table gives the mean seconds per image.
    """
    means = {(s.dataset, s.sigma, s.method): s for s in summarize(evaluation)}
    paired = set(evaluation.paired)
    header = "| Data set | sigma | " + " | ".join(evaluation.methods) + " |"
    rule = "|---|---:|" + "---:|" * len(evaluation.methods)
    quality, timing = [header, rule], [header, rule]
    partial = False
    for dataset, sigma in evaluation.conditions:
        row = [means.get((dataset, sigma, m)) for m in evaluation.methods]
        shown = [(f"{s.psnr:.2f}", f"{s.ssim:.4f}") if s else None for s in row]
        # Means over fewer images are not comparable: they compete only if all are partial.
        complete = [t for s, t in zip(row, shown, strict=True) if s and s.images == s.expected]
        contenders = complete or [t for t in shown if t]
        best_psnr = max((float(p) for p, _ in contenders), default=None)
        best_ssim = max((float(q) for _, q in contenders), default=None)
        cells, times = [], []
        for method, summary, text in zip(evaluation.methods, row, shown, strict=True):
            if summary is None or text is None:
                missing = (dataset, sigma, method) in evaluation.not_applicable
                cells.append("-" if missing else "failed")
                times.append("-" if missing else "failed")
                continue
            p, q = text
            p = f"**{p}**" if float(p) == best_psnr else p
            q = f"**{q}**" if float(q) == best_ssim else q
            mark = "*" if summary.images < summary.expected else ""
            partial |= bool(mark)
            cells.append(f"{p} / {q}{mark}")
            times.append(f"{summary.seconds:.3g}{mark}")
        label = f"| {dataset} | {_sigma_label(sigma, dataset in paired)} | "
        quality.append(label + " | ".join(cells) + " |")
        timing.append(label + " | ".join(times) + " |")
    lines = [
        "PSNR (dB) / SSIM, mean over images (8-bit, FDN_SPEC 7.3); best of each row in bold.",
        "",
        *quality,
        "",
        "Seconds per image:",
        "",
        *timing,
    ]
    if partial:
        lines += ["", "\\* mean over the images that succeeded; see the failures."]
    if evaluation.not_applicable:
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for (dataset, sigma, method), reason in evaluation.not_applicable.items():
            label = "" if sigma is None else f"{sigma:g}"
            grouped.setdefault((method, dataset, reason), []).append(label)
        lines += ["", "Not applicable (-):"]
        for (method, dataset, reason), labels in grouped.items():
            at = ", ".join(filter(None, labels))
            lines.append(f"- {method} on {dataset}{f' (sigma {at})' if at else ''}: {reason}")
    if evaluation.failures:
        lines += ["", f"Failures: {len(evaluation.failures)} (listed in results.json)."]
    return "\n".join(lines) + "\n"


def _json_ready(value: float | None) -> float | str | None:
    # JSON has no infinity; PSNR is infinite only for a perfect result.
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def write_results(evaluation: Evaluation, out: str | os.PathLike) -> list[Path]:
    """Writes ``table.md``, ``results.csv`` (one row per image and method) and
    ``results.json`` (settings, means, per-image rows, failures) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(markdown_table(evaluation))
    rows = out / "results.csv"
    fields = ["dataset", "sigma", "method", "image", "psnr", "ssim", "seconds"]
    with rows.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        for result in evaluation.results:
            writer.writerow(asdict(result))
    document = {
        "settings": evaluation.settings,
        "methods": evaluation.methods,
        "means": [{**asdict(s), "psnr": _json_ready(s.psnr)} for s in summarize(evaluation)],
        "images": [{**asdict(r), "psnr": _json_ready(r.psnr)} for r in evaluation.results],
        "failures": [asdict(f) for f in evaluation.failures],
        "not_applicable": [
            {"dataset": d, "sigma": s, "method": m, "reason": reason}
            for (d, s, m), reason in evaluation.not_applicable.items()
        ],
    }
    results = out / "results.json"
    results.write_text(json.dumps(document, indent=2) + "\n")
    return [table, rows, results]


# Building the methods


def build_baseline(
    name: str, weights: str | os.PathLike = DEFAULT_WEIGHTS, device: str | torch.device = "cpu"
) -> Denoiser:
    """One of :data:`BASELINES`; DnCNN and FFDNet read the reference weights in ``weights``.

    Raises :class:`fdn.baselines.MissingExtraError` when an optional package is missing and
    :class:`fdn.ModelFileError` when a weight file is missing or malformed.
    """
    weights = Path(weights)
    if name == "bm3d":
        return BM3D()
    if name == "nlm":
        return NonLocalMeans()
    if name == "dncnn":
        folder = weights / "saoyan-dncnn-pytorch"
        files = sorted(folder.glob("DnCNN-S-*.net.pth"))
        if not files:
            raise ModelFileError(folder, "no DnCNN-S-SIGMA.net.pth weight files")
        members: dict[tuple[int, float | None], Denoiser] = {}
        for path in files:
            sigma = float(path.name.removeprefix("DnCNN-S-").removesuffix(".net.pth"))
            model = load_peer_dncnn(path).to(device)
            members[model.config.in_channels, sigma] = DnCNNDenoiser(model, path.name)
        return DenoiserSet("DnCNN-S", members)
    if name == "dncnn-b":
        model = load_peer_dncnn(weights / "saoyan-dncnn-pytorch" / "DnCNN-B.net.pth")
        return DnCNNDenoiser(model.to(device), "DnCNN-B")
    if name == "ffdnet":
        members = {}
        for file in ("net_gray.pth", "net_rgb.pth"):
            model = load_peer_ffdnet(weights / "ipol-ffdnet-pytorch" / file).to(device)
            members[model.in_channels, None] = FFDNetDenoiser(model, file)
        return DenoiserSet("FFDNet", members)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def load_denoiser(
    path: str | os.PathLike, name: str | None = None, device: str | torch.device = "cpu"
) -> FDNDenoiser | DnCNNDenoiser | FFDNetDenoiser:
    """Any model file as a blind-or-not :class:`Denoiser`, by what the file holds.

    ``.safetensors``: an FDN model file (:func:`fdn.save_model`) or one of our DnCNN files
    (:func:`fdn.baselines.save_dncnn`). Anything else is read as a reference state_dict with
    ``weights_only=True``: FFDNet (IPOL) or DnCNN (DnCNN-PyTorch, KAIR) by its key layout.
    """
    from fdn.pretrained import available_models, load_pretrained

    if not Path(path).exists() and str(path) in available_models():
        return FDNDenoiser(load_pretrained(str(path), device), name or str(path))
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
        return FDNDenoiser(load_model(path, device), name)
    if any(key.startswith("module.intermediate_dncnn.") for key in read_state_dict(path)):
        return FFDNetDenoiser(load_peer_ffdnet(path).to(device), name)
    return DnCNNDenoiser(load_peer_dncnn(path).to(device), name)


def _parse_model_spec(spec: str) -> tuple[str | None, float | None, str]:
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


def _models_from_specs(specs: Iterable[str], device: str | torch.device) -> list[Denoiser]:
    # Files that share a NAME form one column: one model per channel count and sigma.
    groups: dict[str, list[tuple[float | None, Denoiser]]] = {}
    for spec in specs:
        name, sigma, path = _parse_model_spec(spec)
        denoiser = load_denoiser(path, name, device)
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


# Running it all


def run_eval(
    data: Sequence[str | os.PathLike],
    models: Sequence[str] = (),
    baselines: Sequence[str] = (),
    *,
    weights: str | os.PathLike = DEFAULT_WEIGHTS,
    sigmas: Sequence[float] | None = None,
    paired: bool = False,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    ensemble: bool = False,
    precision: str = "fp32",
    progress: bool = True,
) -> int:
    """Runs ``fdn eval``: prints the Markdown table, writes files with ``out``.

    Arguments:
        data: the test set folders (:func:`find_dataset`).
        models: model files as ``[NAME[@SIGMA]=]PATH``; files with the same NAME form one
            column, @SIGMA marks a model for that noise level only.
        baselines: names from :data:`BASELINES`.
        weights: the reference weights folder for dncnn, dncnn-b and ffdnet.
        sigmas: noise levels (None: 15, 25, 50; with ``paired``, none).
        paired: real noise: noisy/clean pairs instead of clean images.
        out: a folder for ``table.md``, ``results.csv`` and ``results.json``.
        seed, limit, ensemble, precision, progress: as for :func:`evaluate`,
            :func:`find_dataset`, :class:`EnsembleDenoiser` and ``fdn eval``'s options.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (:func:`fdn.runtime.resolve_device`)
            or a :class:`torch.device`.

    Returns 0 when every method ran on every image, 1 when something failed. Baselines
    whose optional package or weights are missing are skipped with a message on stderr.
    """
    device = resolve_device(device)
    denoisers: list[Denoiser] = []
    for name in baselines:
        try:
            denoisers.append(build_baseline(name, weights, device))
        except (MissingExtraError, ModelFileError) as error:
            print(f"fdn eval: skipping {name}: {error}", file=sys.stderr)
    denoisers += _models_from_specs(models, device)
    if not denoisers:
        raise ValueError("nothing to evaluate: give --model and/or --baselines")
    if ensemble:
        denoisers = [EnsembleDenoiser(d) for d in denoisers]
    datasets = [find_dataset(root, paired, limit) for root in data]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"data set folders must have distinct names, got {names}")
    if sigmas is None:
        sigmas = [] if paired else DEFAULT_SIGMAS
    with precision_context(precision, device):
        evaluation = evaluate(denoisers, datasets, sigmas, seed, progress)
    evaluation.settings = {
        "data": [str(d.root) for d in datasets],
        "images": {d.name: len(d.items) for d in datasets},
        "paired": paired,
        "sigmas": list(sigmas),
        "seed": seed,
        "limit": limit,
        "methods": [d.name for d in denoisers],
        "models": list(models),
        "device": str(device),
        "precision": precision,
        "fdn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(markdown_table(evaluation), end="")
    if out:
        for path in write_results(evaluation, out):
            print(f"fdn eval: wrote {path}", file=sys.stderr)
    if evaluation.failures:
        print(f"fdn eval: {len(evaluation.failures)} failure(s)", file=sys.stderr)
        return 1
    return 0
