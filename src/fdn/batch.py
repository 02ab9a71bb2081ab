r"""Denoising files and folders: finding the inputs, naming the outputs, and carrying on past
a bad file."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fdn.choices import check_strength, ensemble_size
from fdn.denoising import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    denoise_image,
    effective_tile,
)
from fdn.images import EXTENSIONS, ImageFileError, read_image, write_image
from fdn.likelihood import Likelihood, ood_threshold
from fdn.model import FDN
from fdn.progress import progress as progress_bar
from fdn.progress import progress_mode

__all__ = [
    "BatchResult",
    "InputError",
    "Job",
    "check_outputs",
    "denoise_files",
    "find_images",
    "plan_jobs",
]


class InputError(ValueError):
    """The inputs or the output folder cannot be used at all (nothing was processed)."""


@dataclass(frozen=True)
class Job:
    """One input file and the output file it becomes."""

    source: Path
    target: Path


@dataclass
class BatchResult:
    denoised: int
    failed: int


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def find_images(
    inputs: Sequence[str | os.PathLike], skip: str | os.PathLike | None = None
) -> list[tuple[Path, Path]]:
    """Files, folders (searched recursively, leaving out anything inside ``skip``) and glob
    patterns, as ``(image, name)`` pairs: a file's and a glob match's name is the file's, a
    folder's image's is its path relative to the folder. Raises :class:`InputError` for a
    missing path or a folder or pattern with no images.
    """
    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        text = os.fspath(entry)
        path = Path(text)
        if path.is_dir():
            images = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and _is_image_name(p)
                and not (skip is not None and _inside(p, Path(skip)))
            )
            if not images:
                raise InputError(f"{path}: no images in this folder ({_extension_list()})")
            found += [(p, p.relative_to(path)) for p in images]
        elif path.is_file():
            found.append((path, Path(path.name)))
        elif glob.has_magic(text):
            images = sorted(Path(p) for p in glob.glob(text, recursive=True))
            images = [p for p in images if p.is_file() and _is_image_name(p)]
            if not images:
                raise InputError(f"{text}: no images match this pattern")
            found += [(p, Path(p.name)) for p in images]
        elif path.exists():
            raise InputError(f"{path}: not a file or folder")
        else:
            raise InputError(f"{path}: no such file or folder")
    return found


def plan_jobs(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Job]:
    """Turns files, folders (searched recursively) and glob patterns into jobs.

    A file keeps its name under ``out_dir``; a folder's images keep their path relative to
    the folder; a glob's matches keep their names (:func:`find_images`; an earlier run's
    outputs inside a folder are not new inputs). Raises :class:`InputError` for a missing
    path, a folder or pattern with no images, two inputs that would write the same output,
    or an output that would overwrite an input.
    """
    out_dir = Path(out_dir)
    jobs = [Job(source, out_dir / name) for source, name in find_images(inputs, skip=out_dir)]
    check_outputs(jobs)
    return jobs


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is in ``folder`` (an earlier run's outputs are not new inputs)."""
    return path.resolve().is_relative_to(folder.resolve())


def _extension_list() -> str:
    return ", ".join(sorted(EXTENSIONS))


def check_outputs(jobs: Sequence[Job]) -> None:
    """Raises :class:`InputError` if a job's target is an input or another job's target."""
    sources = {job.source.resolve() for job in jobs}
    targets: dict[Path, Path] = {}
    for job in jobs:
        target = job.target.resolve()
        if target in sources:
            raise InputError(
                f"{job.target}: output would overwrite an input; choose another output folder"
            )
        if target in targets:
            raise InputError(
                f"{job.target}: both {targets[target]} and {job.source} would be written here"
            )
        targets[target] = job.source


def denoise_files(
    jobs: Sequence[Job],
    model: FDN | Callable[[int], FDN],
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool | str = True,
    report: Callable[[str], None] = print,
    ensemble: bool | int = False,
    precision: str = "fp32",
    strength: float | None = None,
    ood_check: bool = True,
    likelihood_map: bool = False,
) -> BatchResult:
    """Denoises each job's file into its target; a bad file is reported and skipped.

    A failure of any kind (``Exception``) in one file is reported on one line naming the file
    and counted in ``failed``; it never ends the batch. Only an interrupt (Ctrl-C, SIGTERM)
    does.

    ``model`` is an FDN, or a function from an image's channel count (1 or 3) to the FDN to
    use for it (how the bundled grey and colour models are picked).

    ``report`` receives one line per problem or notice (it should not break a progress bar:
    the CLI passes ``tqdm.write``).

    ``progress`` is True (``"bar"``: a tqdm bar, and one over tiles), ``"lines"`` (a line on
    stderr at most once a minute, :func:`fdn.progress.progress`) or False (``"off"``).

    ``strength`` is :meth:`FDN.denoise`'s (None: the model's default); a value outside
    [0, 2] stops the batch before it starts rather than failing every file, as does an
    ``ensemble`` that is not one of :data:`fdn.choices.ENSEMBLE_SIZES` (True: 8).

    With ``ood_check``, an image whose bits/dim under a bundled model is above the model's
    calibrated threshold (:func:`fdn.likelihood.ood_threshold`: far from its training images)
    is reported on one line starting ``fdn: warning:``; its output is still written. With
    ``likelihood_map``, a bits/dim map is written beside each output as ``NAME_bpd.png``
    and the image's mean bits/dim is reported. Both come from the denoise's own encode.
    """
    check_strength(strength)
    ensemble_size(ensemble)
    result = BatchResult(0, 0)
    bar = progress_bar(jobs, mode=progress, label="fdn denoise", desc="denoising", unit="image")
    for job in bar:
        bar.set_postfix_str(job.source.name, refresh=False)
        try:
            image = read_image(job.source)
            for note in image.notes:
                report(f"{job.source}: {note}")
            height, width = image.pixels.shape[:2]
            if (
                tile is None
                and max_pixels is not None
                and effective_tile(height, width, tile, max_pixels) is not None
            ):
                report(
                    f"{job.source}: {height * width / 1e6:.1f} MP is above the "
                    f"{max_pixels / 1e6:.1f} MP budget, denoising in {DEFAULT_TILE}px tiles"
                )
            chosen = model if isinstance(model, FDN) else model(image.pixels.shape[2])
            threshold = ood_threshold(chosen) if ood_check else None
            likelihood = Likelihood() if threshold is not None or likelihood_map else None
            denoised = denoise_image(
                image.pixels,
                chosen,
                tile,
                overlap,
                max_pixels,
                progress_mode(progress) == "bar",
                ensemble,
                precision,
                strength,
                likelihood,
            )
            write_image(job.target, image, denoised)
            if likelihood is not None:
                size = (height, width)
                _report_likelihood(job, size, likelihood, threshold, likelihood_map, report)
        except Exception as error:  # noqa: BLE001 - whatever one file does, the batch goes on
            result.failed += 1
            report(f"fdn: error: {_one_line(error, job.source)}")
            continue
        result.denoised += 1
    return result


def _report_likelihood(
    job: Job,
    size: tuple[int, int],
    likelihood: Likelihood,
    threshold: float | None,
    write_map: bool,
    report: Callable[[str], None],
) -> None:
    if threshold is not None and likelihood.worst > threshold:
        report(
            f"fdn: warning: {job.source}: far outside the model's training images "
            f"({likelihood.worst:.1f} bits/dim, above {threshold:g}): the output may be wrong"
        )
    if write_map:
        from fdn.figures import likelihood_map

        target = job.target.with_name(f"{job.target.stem}_bpd.png")
        mean = likelihood_map(likelihood, *size, target)
        report(f"{job.source}: {mean:.2f} bits/dim (mean); map -> {target}")


def _one_line(error: Exception, source: Path) -> str:
    if isinstance(error, ImageFileError):
        message = str(error)
    elif isinstance(error, (ValueError, OSError)):
        message = f"{source}: {error}"
    else:
        # An unexpected kind (a RuntimeError from the model, a KeyError): its message alone,
        # such as "'x'" or nothing at all, would not say what went wrong.
        message = f"{source}: {type(error).__name__}: {error}"
    return " ".join(message.split())
