"""The noise objects (fdn.noise), and that every noisy image is bit-identical to the one the
code before them made: training patches (fixed and range sigma), validation images, and the
noisy images of ``fdn eval`` and ``fdn compare``. Resumed runs and published tables depend on
it. The reference digests were computed with the code before the noise objects existed."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdn.compare import compare
from fdn.config import config_from_dict
from fdn.data import TrainingPatches, load_validation
from fdn.evaluation import (
    Evaluation,
    ImageItem,
    Result,
    _load_pair,
    evaluate,
    find_dataset,
    markdown_table,
    noise_name,
    summarize,
    write_results,
)
from fdn.noise import (
    AWGN,
    AWGNRange,
    Noise,
    add_gaussian_noise,
    noise_from_config,
    noise_seed,
    validation_noises,
)

REFERENCE = {
    "patch-fixed-0": "9e35805ff4b95be2",
    "patch-fixed-3": "9489fbf12837ad53",
    "patch-fixed-11": "c60463329f4d235d",
    "patch-fixed-1000": "3a9a2243564fd70a",
    "patch-range-0": "8cf780a731c24354",
    "patch-range-3": "7f9e6016ca6d1908",
    "patch-range-11": "94c496e223deae88",
    "patch-range-1000": "f2d379a1a2d23004",
    "validation-0-img0.png": "ea1e40247d1857bf",
    "validation-1-img0.png": "795edfaebde74591",
    "validation-2-img2.png": "cb191db7928e05cf",
    "validation-3-img2.png": "6cb44c5e214fc292",
    "gaussian-15": "df5f0eb1af318624",
    "gaussian-25.0": "56d9b937ae30f037",
    "gaussian-50": "4a0c30f00a10b1e5",
    "eval-15": "c5e3e87bd126d58b",
    "compare-15": "a600ed7cad4a23b4",
    "eval-50": "bd281d8ef87321c7",
    "compare-50": "e6bd5fb83671bda3",
}


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def write_images(root: Path, count: int = 4, size: tuple[int, int] = (24, 20)) -> Path:
    rng = np.random.default_rng(1234)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"img{i}.png")
    return root


class Recorder:
    """A stand-in method for ``compare`` that records the noisy image it is given."""

    name, blind = "recorder", False

    def __init__(self):
        self.seen = []

    def supports(self, channels, sigma):
        return None

    def denoise(self, noisy, sigma):
        self.seen.append(noisy.clone())
        return noisy


def noisy_digests(root: Path) -> dict[str, str]:
    write_images(root)
    out = {}
    base = {"root": str(root), "train": "train", "patch_size": 16, "augment": "flip_rot"}
    for label, extra in [("fixed", {"sigma": 25}), ("range", {"sigma_range": [0, 55]})]:
        patches = TrainingPatches(config_from_dict({"data": {**base, **extra}}), seed=7)
        for i in (0, 3, 11, 1000):
            out[f"patch-{label}-{i}"] = digest(patches[i][0])
    config = config_from_dict(
        {
            "data": {**base, "holdout": 2},
            "validation": {"sigmas": [15, 50], "seed": 3, "crop": 16},
        }
    )
    for k, (name, noisy, _) in enumerate(load_validation(config)):
        out[f"validation-{k}-{name}"] = digest(noisy)
    pixels = np.asarray(Image.open(root / "train" / "img0.png"), dtype=np.float32)
    clean = torch.from_numpy(pixels.transpose(2, 0, 1) / 255)[None]
    for sigma in (15, 25.0, 50):
        noisy = add_gaussian_noise(clean, sigma, noise_seed("a/b.png", sigma, 5))
        out[f"gaussian-{sigma}"] = digest(noisy)
    for sigma in (15, 50):
        item = ImageItem("train/img1.png", root / "train" / "img1.png")
        out[f"eval-{sigma}"] = digest(_load_pair(item, sigma, 2)[0])
        recorder = Recorder()
        compare(root / "train" / "img3.png", [recorder], sigma, root / "strip.png", seed=4)
        out[f"compare-{sigma}"] = digest(recorder.seen[0])
    return out


def test_noisy_images_are_bit_identical_to_before_the_noise_objects(tmp_path):
    assert noisy_digests(tmp_path) == REFERENCE


# The objects


def test_describe_names_the_noise():
    assert AWGN(25).describe() == "awgn-25"
    assert AWGN(12.5).describe() == "awgn-12.5"
    assert AWGNRange(0, 55).describe() == "awgn-0-55"
    assert AWGN(25) == AWGN(25.0) and hash(AWGN(25)) == hash(AWGN(25.0))


def test_noise_objects_are_frozen_and_share_the_extension_point():
    noise = AWGN(25)
    with pytest.raises(AttributeError):
        noise.sigma = 50  # type: ignore[misc]
    assert isinstance(noise, Noise) and isinstance(AWGNRange(0, 55), Noise)


def test_awgn_scale_is_converted_once_and_keeps_device_and_type():
    clean = torch.full((1, 3, 64, 64), 0.5)
    noisy = AWGN(25).sample(clean, 0)
    assert noisy.dtype == clean.dtype and noisy.shape == clean.shape
    assert 255 * (noisy - clean).std().item() == pytest.approx(25, rel=0.05)
    assert torch.equal(noisy, add_gaussian_noise(clean, 25, 0))
    assert torch.equal(AWGN(0).sample(clean, 3), clean)
    array = AWGN(25).sample(clean.numpy(), 0)
    assert isinstance(array, np.ndarray) and np.array_equal(array, noisy.numpy())


def test_a_numpy_generator_is_advanced_and_repeats_from_its_seed():
    clean = torch.zeros(3, 8, 8)
    first = AWGN(10).sample(clean, np.random.default_rng([1, 2]))
    again = AWGN(10).sample(clean, np.random.default_rng([1, 2]))
    assert torch.equal(first, again)
    rng = np.random.default_rng([1, 2])
    assert not torch.equal(AWGN(10).sample(clean, rng), AWGN(10).sample(clean, rng))


def test_a_range_draws_its_sigma_per_sample_inside_the_range():
    noise = AWGNRange(5, 40)
    clean = torch.zeros(3, 64, 64)
    stds = [255 * noise.sample(clean, np.random.default_rng(i)).std().item() for i in range(40)]
    assert 5 * 0.9 < min(stds) < 15 and 30 < max(stds) < 40 * 1.1
    # The sigma comes first from the generator, then the noise at that sigma.
    after_sigma = np.random.default_rng(9)
    sigma = float(after_sigma.uniform(5, 40))
    expected = AWGN(sigma).sample(clean, after_sigma)
    assert torch.equal(noise.sample(clean, np.random.default_rng(9)), expected)
    assert noise.draw_sigma(np.random.default_rng(9)) == sigma
    # With an integer seed: repeatable too.
    assert torch.equal(noise.sample(clean, 4), noise.sample(clean, 4))


def test_seeds_depend_on_the_image_the_noise_and_the_base_seed():
    assert AWGN(25).seed_for("a.png", 1) == noise_seed("a.png", 25, 1)
    seeds = {
        AWGN(25).seed_for("a.png"),
        AWGN(25).seed_for("b.png"),
        AWGN(50).seed_for("a.png"),
        AWGN(25).seed_for("a.png", 1),
        AWGNRange(0, 55).seed_for("a.png"),
    }
    assert len(seeds) == 5
    assert AWGNRange(0, 55).seed_for("a.png") == AWGNRange(0, 55).seed_for("a.png")


def test_noise_from_config_follows_the_training_data():
    def data(**values):
        return config_from_dict({"data": values}).data

    assert noise_from_config(data(sigma=25)) == AWGN(25)
    assert noise_from_config(data(sigma=25, sigma_range=[0, 55])) == AWGNRange(0, 55)
    assert noise_from_config(data(kind="synthetic", sigma=15)) == AWGN(15)
    assert noise_from_config(data(kind="paired")) is None
    validation = config_from_dict({"validation": {"sigma": 30}}).validation
    assert validation_noises(validation) == [AWGN(30)]
    validation = config_from_dict({"validation": {"sigmas": [15, 50]}}).validation
    assert validation_noises(validation) == [AWGN(15), AWGN(50)]


# Results keyed by the noise


class Identity:
    name, blind = "identity", True

    def supports(self, channels, sigma):
        return None

    def denoise(self, noisy, sigma):
        return noisy


def test_eval_rows_and_files_carry_the_noise_beside_the_sigma(tmp_path):
    dataset = find_dataset(write_images(tmp_path / "set") / "train", limit=2)
    evaluation = evaluate([Identity()], [dataset], [15, 50], progress=False)
    assert {(r.sigma, r.noise) for r in evaluation.results} == {(15, "awgn-15"), (50, "awgn-50")}
    _, rows, results = write_results(evaluation, tmp_path / "out")
    with rows.open() as stream:
        records = list(csv.DictReader(stream))
    assert [(r["sigma"], r["noise"]) for r in records[:1]] == [("15", "awgn-15")]
    document = json.loads(results.read_text())
    assert {(m["sigma"], m["noise"]) for m in document["means"]} == {
        (15, "awgn-15"),
        (50, "awgn-50"),
    }
    assert all(row["noise"] == f"awgn-{row['sigma']}" for row in document["images"])


def test_rows_made_without_a_noise_get_it_from_their_condition(tmp_path):
    evaluation = Evaluation(methods=["A"], conditions=[("set", 25.0), ("real", None)])
    evaluation.paired = ["real"]
    evaluation.results += [
        Result("set", 25.0, "A", "x", 30.0, 0.9, 1.0),
        Result("real", None, "A", "y", 35.0, 0.9, 1.0),
    ]
    evaluation.not_applicable["real", None, "B"] = "needs a sigma"
    document = json.loads(write_results(evaluation, tmp_path)[2].read_text())
    assert [r["noise"] for r in document["images"]] == ["awgn-25", "real"]
    assert [m["noise"] for m in document["means"]] == ["awgn-25", "real"]
    assert document["not_applicable"][0]["noise"] == "real"
    assert noise_name(25.0, paired=True) == "real" and noise_name(50, False) == "awgn-50"


def test_two_noises_at_one_sigma_form_two_groups(tmp_path):
    evaluation = Evaluation(methods=["A"], conditions=[("set", 25.0)])
    evaluation.results += [
        Result("set", 25.0, "A", "x", 30.0, 0.9, 1.0, noise="awgn-25"),
        Result("set", 25.0, "A", "x", 20.0, 0.5, 1.0, noise="poisson-gaussian-25"),
    ]
    means = summarize(evaluation)
    assert [(m.noise, m.sigma, m.psnr) for m in means] == [
        ("awgn-25", 25.0, 30.0),
        ("poisson-gaussian-25", 25.0, 20.0),
    ]
    rows = [line for line in markdown_table(evaluation).splitlines() if line.startswith("| set")]
    assert rows[:2] == [
        "| set | 25 | **30.00** / **0.9000** |",
        "| set | 25 | **20.00** / **0.5000** |",
    ]
    document = json.loads(write_results(evaluation, tmp_path)[2].read_text())
    assert [(m["noise"], m["sigma"]) for m in document["means"]] == [
        ("awgn-25", 25),
        ("poisson-gaussian-25", 25),
    ]
