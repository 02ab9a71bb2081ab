r"""What ``fdn eval`` writes: the means per data set, noise and method, the Markdown table in
the paper's layout (data set x sigma rows, methods as columns, the best in bold), a CSV with one
row per image and method, and a JSON file with the settings, means, rows and failures."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fdn.evaluation import Evaluation, Result

__all__ = ["Summary", "groups", "markdown_table", "summarize", "write_results"]


@dataclass(frozen=True)
class Summary:
    """Means over the images of one data set and noise (with its sigma) for one method."""

    dataset: str
    sigma: float | None
    method: str
    psnr: float
    ssim: float
    seconds: float
    images: int
    expected: int
    noise: str = ""  # fdn.evaluation.noise_name: "awgn-25", or "real" for pairs


def _noise_of(evaluation: Evaluation, dataset: str, sigma: float | None, noise: str) -> str:
    # Rows built without their noise (by hand, in older code) get it from their condition.
    from fdn.evaluation import noise_name

    return noise or noise_name(sigma, dataset in evaluation.paired)


def groups(evaluation: Evaluation) -> list[tuple[str, str, float | None]]:
    """The groups results form, as ``(dataset, noise, sigma)`` in the table's order.

    Results are keyed by the noise's description (``"awgn-25"``, ``"real"``), not by a bare
    sigma: each condition ``(dataset, sigma)`` of ``evaluation.conditions`` gives one group
    per distinct noise among its results (in the order they first appear), or the noise its
    sigma names when it has none. The sigma is kept beside the noise for the table and JSON.
    """
    noises: dict[tuple[str, float | None], list[str]] = {}
    for result in evaluation.results:
        found = noises.setdefault((result.dataset, result.sigma), [])
        noise = _noise_of(evaluation, result.dataset, result.sigma, result.noise)
        if noise not in found:
            found.append(noise)
    seen: set[tuple[str, str]] = set()
    ordered = []
    for dataset, sigma in evaluation.conditions:
        for noise in noises.get((dataset, sigma)) or [_noise_of(evaluation, dataset, sigma, "")]:
            if (dataset, noise) not in seen:
                seen.add((dataset, noise))
                ordered.append((dataset, noise, sigma))
    return ordered


def summarize(evaluation: Evaluation) -> list[Summary]:
    """Mean PSNR, SSIM and seconds per (data set, noise, method) that has results."""
    by_group: dict[tuple[str, str, str], list[Result]] = {}
    for result in evaluation.results:
        noise = _noise_of(evaluation, result.dataset, result.sigma, result.noise)
        by_group.setdefault((result.dataset, noise, result.method), []).append(result)
    summaries = []
    for dataset, noise, sigma in groups(evaluation):
        for method in evaluation.methods:
            results = by_group.get((dataset, noise, method))
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
                    noise=noise,
                )
            )
    return summaries


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
    means = {(s.dataset, s.noise, s.method): s for s in summarize(evaluation)}
    not_applicable = {
        (d, _noise_of(evaluation, d, s, ""), m) for d, s, m in evaluation.not_applicable
    }
    paired = set(evaluation.paired)
    header = "| Data set | sigma | " + " | ".join(evaluation.methods) + " |"
    rule = "|---|---:|" + "---:|" * len(evaluation.methods)
    quality, timing = [header, rule], [header, rule]
    partial = False
    for dataset, noise, sigma in groups(evaluation):
        row = [means.get((dataset, noise, m)) for m in evaluation.methods]
        shown = [(f"{s.psnr:.2f}", f"{s.ssim:.4f}") if s else None for s in row]
        # Means over fewer images are not comparable: they compete only if all are partial.
        complete = [
            t for s, t in zip(row, shown, strict=True) if s and t and s.images == s.expected
        ]
        contenders = complete or [t for t in shown if t]
        best_psnr = max((float(p) for p, _ in contenders), default=None)
        best_ssim = max((float(q) for _, q in contenders), default=None)
        cells, times = [], []
        for method, summary, text in zip(evaluation.methods, row, shown, strict=True):
            if summary is None or text is None:
                missing = (dataset, noise, method) in not_applicable
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
    if evaluation.estimator is not None:
        lines += [
            "",
            "Non-blind methods were told each noisy image's estimated sigma (--sigma auto: "
            f"fdn.estimate_noise, method {evaluation.estimator}), not the true one; the sigma "
            "column is the noise added.",
        ]
    for folder, methods in evaluation.reused:
        lines += [
            "",
            f"Reused from {folder} (same noisy images, not run again; seconds as measured "
            f"there): {', '.join(methods)}.",
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


def _with_noise(evaluation: Evaluation, row: dict) -> dict:
    row["noise"] = _noise_of(evaluation, row["dataset"], row["sigma"], row.get("noise") or "")
    return row


def write_results(evaluation: Evaluation, out: str | os.PathLike) -> list[Path]:
    """Writes ``table.md``, ``results.csv`` (one row per image and method) and
    ``results.json`` (settings, means, per-image rows, failures) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(markdown_table(evaluation))
    rows = out / "results.csv"
    images = [_with_noise(evaluation, asdict(r)) for r in evaluation.results]
    fields = ["dataset", "sigma", "noise", "method", "image", "psnr", "ssim", "seconds", "told"]
    with rows.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(images)
    document = {
        "settings": evaluation.settings,
        "methods": evaluation.methods,
        "means": [{**asdict(s), "psnr": _json_ready(s.psnr)} for s in summarize(evaluation)],
        "images": [{**r, "psnr": _json_ready(r["psnr"])} for r in images],
        "failures": [_with_noise(evaluation, asdict(f)) for f in evaluation.failures],
        "not_applicable": [
            _with_noise(evaluation, {"dataset": d, "sigma": s, "method": m, "reason": reason})
            for (d, s, m), reason in evaluation.not_applicable.items()
        ],
        "noisy_digests": [
            {"dataset": d, "sigma": s, "noise": _noise_of(evaluation, d, s, ""), "sha256": h}
            for (d, s), h in evaluation.digests.items()
        ],
    }
    results = out / "results.json"
    results.write_text(json.dumps(document, indent=2) + "\n")
    return [table, rows, results]
