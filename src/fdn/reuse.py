r"""``fdn eval --reuse DIR``: the methods of an earlier ``fdn eval --out DIR`` as columns of a new
table, without running them again.

BM3D takes about 3 s an image, so a table over 1,000 faces costs an hour for that column alone;
a paper's table grows one trained model at a time. Taking an earlier run's rows is sound only if
both runs scored the same noisy images, so the reuse checks, for every condition (data set
and sigma) of the new run: the seed, real or synthetic noise, the noise's name, the number and
names of the images, how non-blind methods were told the sigma, and, when both runs recorded it,
the SHA-256 of the noisy images themselves (:attr:`fdn.evaluation.Evaluation.digests`). Any
mismatch is a :class:`ReuseError` naming the folder and what differs; nothing is guessed.
:func:`load` checks all but the noisy images before anything runs; :func:`merge` the rest.

Data sets are matched by name, or by folder (resolved from the working directory), since older
runs named ``faces/celeba/test`` plain ``test``. A condition the earlier run did not cover shows
``-`` for its methods, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fdn.evaluation import Dataset, Evaluation, Result

__all__ = ["Earlier", "ReuseError", "load", "merge"]


class ReuseError(ValueError):
    """An earlier evaluation that cannot be combined with this one (the message says why)."""


def _sigma(value: float | str | None) -> float | None:
    return None if value is None else float(value)


def _read(folder: Path) -> dict:
    path = folder / "results.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReuseError(f"{path}: no such file (give the --out folder of an fdn eval)") from None
    except (OSError, ValueError) as error:
        raise ReuseError(f"{path}: cannot read it: {error}") from None
    if not isinstance(document, dict) or not {"settings", "methods", "images"} <= set(document):
        raise ReuseError(f"{path}: not the results.json of fdn eval")
    return document


def _dataset_names(settings: dict, datasets: Sequence[Dataset], path: Path) -> dict[str, str]:
    """Earlier data set name -> this run's, for the data sets both runs have."""
    # settings["data"] (folders) and settings["images"] (name -> count) are in the same order.
    earlier = list(zip(settings.get("images", {}), settings.get("data", []), strict=False))
    mapping = {}
    for name, root in earlier:
        for dataset in datasets:
            same_folder = Path(root).resolve() == Path(dataset.root).resolve()
            if name == dataset.name or same_folder:
                mapping[name] = dataset.name
    if not mapping:
        names = ", ".join(name for name, _ in earlier) or "none"
        raise ReuseError(f"{path}: evaluated other data sets ({names})")
    return mapping


def _check_settings(settings: dict, now: dict, path: Path) -> None:
    for key, label in [
        ("seed", "noise seed"),
        ("paired", "real noise (--paired)"),
        ("sigma_given", "sigma told to non-blind methods"),
    ]:
        if settings.get(key) != now.get(key):
            raise ReuseError(
                f"{path}: {label} was {settings.get(key)!r} there, {now.get(key)!r} now"
            )


@dataclass
class Earlier:
    """An earlier evaluation, checked against this run's settings and data sets by
    :func:`load` (everything but the noisy images, known only once they are drawn)."""

    path: Path
    methods: list[str]
    names: dict[str, str]  # its data set names -> this run's
    results: dict[tuple[str, float | None], list[Result]]
    digests: dict[tuple[str, float | None], str]
    document: dict


def load(
    folder: str | os.PathLike,
    datasets: Sequence[Dataset],
    settings: dict,
    methods: Sequence[str],
) -> Earlier:
    """Reads the earlier ``fdn eval --out`` folder and checks it before anything runs.

    Arguments:
        folder: the folder (its ``results.json``).
        datasets: this run's data sets.
        settings: this run's ``seed``, ``paired`` and ``sigma_given``.
        methods: this run's method names (and those reused before): none may be in both.
    """
    from fdn.evaluation import Result

    path = Path(folder)
    document = _read(path)
    _check_settings(document["settings"], settings, path)
    names = _dataset_names(document["settings"], datasets, path)
    clash = [m for m in document["methods"] if m in methods]
    if clash:
        raise ReuseError(
            f"{path}: {', '.join(clash)} already in this table (run it under another name "
            "with --model NAME=PATH, or leave it out)"
        )
    items = {d.name: {item.name for item in d.items} for d in datasets}
    counts = document["settings"].get("images", {})
    for earlier, now in names.items():
        if counts.get(earlier) != len(items[now]):
            raise ReuseError(
                f"{path}: {now} had {counts.get(earlier)} images there, {len(items[now])} now"
            )
    results: dict[tuple[str, float | None], list[Result]] = {}
    for row in document["images"]:
        if row["dataset"] not in names:
            continue
        dataset = names[row["dataset"]]
        if row["image"] not in items[dataset]:
            raise ReuseError(f"{path}: {dataset} had an image not here: {row['image']}")
        psnr = math.inf if row["psnr"] == "inf" else float(row["psnr"])
        result = Result(
            dataset,
            _sigma(row["sigma"]),
            row["method"],
            row["image"],
            psnr,
            float(row["ssim"]),
            float(row["seconds"]),
            row.get("noise", ""),
            _sigma(row.get("told")),
        )
        results.setdefault((dataset, result.sigma), []).append(result)
    digests = {
        (names[row["dataset"]], _sigma(row["sigma"])): row["sha256"]
        for row in document.get("noisy_digests", [])
        if row["dataset"] in names
    }
    return Earlier(path, list(document["methods"]), names, results, digests, document)


def merge(evaluation: Evaluation, earlier: Earlier) -> None:
    """Adds the methods of ``earlier`` (from :func:`load`) to ``evaluation``, in place, after
    any reused before and before this run's own; checks each condition's noise and, when both
    runs recorded it, the digest of its noisy images.

    Raises :class:`ReuseError` when the noisy images differ.
    """
    from fdn.evaluation import Failure, noise_name

    path, names, methods = earlier.path, earlier.names, earlier.methods
    unchecked = []
    for dataset, sigma in evaluation.conditions:
        rows = earlier.results.get((dataset, sigma))
        if rows is None:
            for method in methods:
                reason = f"not in {path}"
                evaluation.not_applicable.setdefault((dataset, sigma, method), reason)
            continue
        label = f"{dataset} at sigma {sigma:g}" if sigma is not None else dataset
        noise = noise_name(sigma, dataset in evaluation.paired)
        if any(r.noise and r.noise != noise for r in rows):
            raise ReuseError(f"{path}: {label} had other noise than {noise}")
        theirs, ours = (
            earlier.digests.get((dataset, sigma)),
            evaluation.digests.get((dataset, sigma)),
        )
        if theirs is None or ours is None:
            unchecked.append(label)
        elif theirs != ours:
            raise ReuseError(f"{path}: {label}: the noisy images differ from this run's")
        evaluation.results.extend(rows)
    for row in earlier.document.get("failures", []):
        if row["dataset"] in names and row.get("method") in methods:
            evaluation.failures.append(
                Failure(
                    names[row["dataset"]],
                    _sigma(row["sigma"]),
                    row["method"],
                    row["image"],
                    row["error"],
                    row.get("noise", ""),
                )
            )
    for row in earlier.document.get("not_applicable", []):
        if row["dataset"] in names and row["method"] in methods:
            key = (names[row["dataset"]], _sigma(row["sigma"]), row["method"])
            evaluation.not_applicable[key] = row["reason"]
    if unchecked:
        print(
            f"fdn eval: {path} has no digest of the noisy images for {', '.join(unchecked)}: "
            "reused on matching seed, noise and image names only",
            file=sys.stderr,
        )
    at = sum(len(before) for _, before in evaluation.reused)  # after earlier reuses
    evaluation.methods[at:at] = methods
    evaluation.reused.append((str(path), methods))
