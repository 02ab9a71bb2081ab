import numpy as np
import pytest
import torch

from fdn import FDN, denoise_image
from fdn.data import load_validation_by_sigma
from fdn.denoising import denoise_tensor
from fdn.ensemble import dihedral, self_ensemble, undo_dihedral
from fdn.metrics import psnr
from fdn.training import build_model
from test_fit_strength import held_back_config

from helpers import load_script, randomize


@pytest.mark.parametrize("k", range(8))
def test_each_transform_is_undone(k):
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(undo_dihedral(dihedral(x, k), k), x)


def test_the_eight_transforms_are_distinct():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        seen.add((tuple(y.shape), tuple(y.flatten().tolist())))
    assert len(seen) == 8


def test_ensemble_of_an_equivariant_denoiser_is_its_plain_output():
    # A 3x3 box blur with symmetric padding commutes with every flip and rotation.
    def blur(x):
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        return torch.nn.functional.avg_pool2d(padded, 3, stride=1)

    x = torch.rand(1, 3, 9, 6, dtype=torch.float64)
    assert torch.allclose(self_ensemble(blur, x), blur(x), atol=1e-12)


def test_ensemble_of_a_non_equivariant_denoiser_differs():
    def shift(x):
        return torch.roll(x, 1, dims=-1)

    x = torch.rand(1, 1, 6, 6)
    assert not torch.allclose(self_ensemble(shift, x), shift(x))


def test_fdn_ensemble_through_denoise_image():
    model = FDN(hidden_channels=4, steps_per_block=1).train()
    model(torch.rand(2, 3, 8, 8))
    model.eval()
    image = np.random.default_rng(0).random((10, 14, 3)).astype(np.float32)
    plain = denoise_image(image, model)
    ensembled = denoise_image(image, model, ensemble=True)
    assert ensembled.shape == plain.shape
    # The by-hand mean of the eight transformed denoises.
    expected = np.mean(
        [
            np.rot90(
                denoise_image(
                    np.ascontiguousarray(np.rot90(image[:, ::-1] if k >= 4 else image, k % 4)),
                    model,
                ),
                -(k % 4),
            )[:, :: -1 if k >= 4 else 1]
            for k in range(8)
        ],
        axis=0,
    )
    assert np.allclose(ensembled, expected, atol=1e-5)


@pytest.fixture(scope="module")
def ensemble_sizes():
    return load_script("ensemble_sizes", "benchmarks")


def test_the_benchmarks_sized_rows_are_the_transforms_denoise_takes(ensemble_sizes):
    # `--ensemble-size N` takes the first N of dihedral's order: the rows the benchmark
    # measured it by (docs/evaluation.md) must be those.
    sized = {
        int(name.rsplit("(x", 1)[1].rstrip(")")): ks
        for name, ks in ensemble_sizes.ENSEMBLES.items()
        if "(x" in name
    }
    assert sized == {2: (0, 1), 4: (0, 1, 2, 3), 8: tuple(range(8))}


def test_the_benchmark_scores_each_ensemble_as_denoise_gives_it(tmp_path, ensemble_sizes):
    config = held_back_config(tmp_path)
    model = randomize(build_model(config), seed=3, shape=(2, 3, 16, 16)).float().eval()
    images = load_validation_by_sigma(config, (10.0, 40.0))
    results = ensemble_sizes.ensemble_scores(model, images)
    assert list(results) == list(ensemble_sizes.ENSEMBLES)
    for name, size in (("plain", 1), ("quarter turn (x2)", 2), ("all eight (x8)", 8)):
        for i, sigma in enumerate((10.0, 40.0)):
            expected = np.mean(
                [
                    psnr(denoise_tensor(noisy[0], model, ensemble=size)[None], clean).item()
                    for _, noisy, clean in images[sigma]
                ]
            )
            assert results[name][i] == pytest.approx(expected, abs=1e-4)
    assert results["plain"] != results["all eight (x8)"]
    lines = ensemble_sizes.table(results, (10.0, 40.0)).splitlines()
    assert lines[0] == "| ensemble | transforms | sigma 10 | sigma 40 | mean | gain |"
    assert lines[2].startswith("| plain | 0 |") and lines[2].endswith("| +0.0000 |")
    assert len(lines) == 2 + len(ensemble_sizes.ENSEMBLES)
