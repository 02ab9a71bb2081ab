r"""``fdn compare``: one clean image, its noisy version and every method's result in a strip,
each with its PSNR and the same zoomed inset (as the paper's Fig. 1 and 6)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fdn.denoisers import Denoiser, build_baseline, load_denoiser
from fdn.metrics import psnr

__all__ = ["build_methods", "compare", "pick_inset"]


def build_methods(
    specs: Sequence[str], weights: str | os.PathLike | None, device: str | torch.device
) -> list[Denoiser]:
    """``fdn:MODEL`` (a bundled name or file) or a baseline name, one Denoiser each.

    ``weights`` is the reference weights folder (None: :func:`fdn.choices.default_weights`);
    a missing file raises :class:`fdn.baselines.MissingWeightsError`, naming it.
    """
    methods: list[Denoiser] = []
    for spec in specs:
        kind, _, target = spec.partition(":")
        if kind == "fdn":
            methods.append(load_denoiser(target or "fdn-color-blind", None, device))
        else:
            methods.append(build_baseline(spec, weights, device))
    return methods


def pick_inset(results: Sequence[Tensor], size: int) -> tuple[int, int]:
    """Top-left corner of the ``size x size`` window where the results differ most (their
    per-pixel spread across methods, summed over the window)."""
    stack = torch.stack([r[0].mean(0) for r in results])  # (methods, H, W)
    spread = stack.std(dim=0) if len(results) > 1 else stack[0]
    window = torch.nn.functional.avg_pool2d(spread[None, None], size, stride=max(1, size // 4))
    index = int(window.flatten().argmax())
    columns = window.shape[-1]
    stride = max(1, size // 4)
    return (index // columns) * stride, (index % columns) * stride


def _to_uint8(image: Tensor) -> np.ndarray:
    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def _with_inset(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The image with the inset region, enlarged 2x, pasted in its bottom-right corner and
    the region outlined."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    crop = Image.fromarray(image[top : top + size, left : left + size])
    zoom = crop.resize((2 * size, 2 * size), Image.Resampling.NEAREST)
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([left, top, left + size - 1, top + size - 1], outline=(255, 0, 0), width=2)
    position = (width - 2 * size, height - 2 * size)
    canvas.paste(zoom, position)
    draw.rectangle([*position, width - 1, height - 1], outline=(255, 0, 0), width=2)
    return np.asarray(canvas)


def compare(
    clean_path: str | os.PathLike,
    methods: Sequence,
    sigma: float,
    out: str | os.PathLike,
    inset: tuple[int, int] | None = None,
    inset_size: int | None = None,
    seed: int = 0,
    estimator: str | None = None,
) -> tuple[Path, list[tuple[str, float]]]:
    """Writes the comparison strip to ``out``; returns it and (label, PSNR) per panel.

    With ``estimator`` (``--sigma auto``), non-blind methods are told the noisy image's sigma
    as :func:`fdn.estimate_noise` estimates it with that method, not ``sigma``, and their
    labels say what they were told.

    ``out``'s folder must exist: it is one file, and a mistyped folder would otherwise be
    created without a word (``fdn denoise -o`` names a folder to create; ``--out`` does not).
    Checked first, so that no method runs for a figure that cannot be written.
    """
    from fdn.evaluation import synthetic_noise
    from fdn.figures import side_by_side
    from fdn.images import read_array

    folder = Path(out).parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder for --out")
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder for --out")
    clean = torch.from_numpy(read_array(clean_path).transpose(2, 0, 1).copy())[None]
    noise = synthetic_noise(sigma)  # the noise fdn eval adds, seeded by the file's name
    noisy = noise.sample(clean, noise.seed_for(Path(clean_path).name, seed))
    channels = clean.shape[1]
    told = sigma
    if estimator is not None:
        from fdn.noise_level import estimate_noise_tensor

        told = estimate_noise_tensor(noisy, estimator)
    results = []
    for method in methods:
        reason = method.supports(channels, None if method.blind else told)
        if reason:
            raise ValueError(f"{method.name}: {reason}")
        with torch.no_grad():
            results.append(method.denoise(noisy, None if method.blind else told).clamp(0, 1))
    height, width = clean.shape[-2:]
    size = inset_size or max(16, min(height, width) // 5)
    top, left = inset if inset is not None else pick_inset(results, size)
    panels = [("clean", clean, None), (f"noisy (sigma {sigma:g})", noisy, psnr(noisy, clean))]
    panels += [
        (
            m.name if m.blind or estimator is None else f"{m.name} (told {told:.1f})",
            r,
            psnr(r, clean),
        )
        for m, r in zip(methods, results, strict=True)
    ]
    labelled = []
    scores = []
    for label, image, score in panels:
        text = label if score is None else f"{label}: {score.item():.2f} dB"
        if score is not None:
            scores.append((label, score.item()))
        labelled.append((text, _with_inset(_to_uint8(image), top, left, size)))
    return side_by_side(labelled, out), scores
