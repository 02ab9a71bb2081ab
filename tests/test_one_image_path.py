"""One path from an image file to an array (``fdn.images.read_array``) and one pair finder
(``fdn.data.find_pairs``), shared by training, validation and ``fdn eval`` (#21 item 1)."""

import json

import numpy as np
import png
import torch
from PIL import Image

from fdn import FDN, save_model
from fdn.config import config_from_dict
from fdn.data import TrainingPatches, find_pairs, load_validation
from fdn.evaluation import find_dataset, run_eval
from fdn.training import train
from test_evaluation import parse
from test_training import small_config


def write_png16_grey(path, pixels):
    """A 16-bit greyscale PNG, written with pypng (Pillow cannot write one from uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = pixels.shape
    with path.open("wb") as stream:
        png.Writer(width, height, greyscale=True, bitdepth=16).write(stream, pixels)


def deep_grey(rng, height=36, width=40):
    """Random 16-bit grey values over the whole range, its two ends included."""
    pixels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, 65535
    return pixels


def test_training_reads_16_bit_grey_pngs_at_their_full_depth(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "deep"
    for split, count in (("train", 4), ("val", 1)):
        for i in range(count):
            write_png16_grey(root / split / f"img{i}.png", deep_grey(rng))
    config = small_config(
        root, tmp_path, "model.in_channels=1", "training.iterations=2", "validation.every=1"
    )
    seen = []
    real = TrainingPatches.__getitem__

    def recording(self, index):
        noisy, clean = real(self, index)
        seen.append(clean)
        return noisy, clean

    monkeypatch.setattr(TrainingPatches, "__getitem__", recording)
    result = train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert result.model_file is not None and len(seen) >= 4
    clean = torch.cat([patch.flatten() for patch in seen])
    # Pillow's convert("L") clipped the 16-bit values to 255: nearly every pixel became 1.0.
    assert clean.max() > 0.99 and clean.min() < 0.01
    assert len(torch.unique(clean)) > 256
    assert (clean == 1).float().mean() < 0.01
    # The validation images are read the same way.
    (_, _, validation), *_ = load_validation(config)
    assert validation.shape == (1, 1, 36, 40)
    assert validation.max() == 1 and validation.min() == 0
    assert len(torch.unique(validation)) > 256


def test_eval_reads_every_format_that_denoise_reads(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "mixed"
    data.mkdir()
    colour = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(colour).save(data / "a.webp", lossless=True)
    write_png16_grey(data / "b.png", deep_grey(rng, 20, 16))
    grey_model, colour_model = (
        save_model(
            FDN(in_channels=channels, hidden_channels=8, steps_per_block=1),
            tmp_path / f"m{channels}.safetensors",
        )
        for channels in (1, 3)
    )
    out = tmp_path / "out"
    args = parse(
        "--model", f"M={grey_model}", f"M={colour_model}",
        "--data", str(data),
        "--sigma", "25",
        "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert run_eval(**args) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["failures"] == []
    assert sorted(row["image"] for row in document["images"]) == ["a.webp", "b.png"]


def pair_layouts(root):
    """Folders of noisy/clean pairs that training or evaluation accepted, not always both."""
    rng = np.random.default_rng(2)

    def save(path, fmt="PNG"):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))

    for scene in ("0001_S6", "0002_S6"):  # SIDD: Data/SCENE/NOISY_*.PNG beside GT_*.PNG
        save(root / "SIDD_Small" / "Data" / scene / "NOISY_SRGB_010.PNG")
        save(root / "SIDD_Small" / "Data" / scene / "GT_SRGB_010.PNG")
    save(root / "folders" / "noisy" / "a.webp", "WEBP")  # noisy/ + clean/, by name
    save(root / "folders" / "clean" / "a.webp", "WEBP")
    save(root / "folders" / "noisy" / "b.png")
    save(root / "folders" / "clean" / "b.tif", "TIFF")  # the same name, another format
    return [root / "SIDD_Small", root / "SIDD_Small" / "Data", root / "folders"]


def test_training_and_eval_find_the_same_pairs(tmp_path):
    for folder in pair_layouts(tmp_path):
        pairs = find_pairs(folder)
        found = find_dataset(folder, paired=True).items
        assert sorted((item.noisy, item.clean) for item in found) == sorted(pairs), folder
        assert len(pairs) == 2
        config = config_from_dict(
            {"data": {"root": str(folder), "train": ".", "kind": "paired", "patch_size": 8}}
        )
        assert TrainingPatches(config, seed=0).items == pairs
