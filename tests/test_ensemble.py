import numpy as np
import pytest
import torch

from fdn import FDN, denoise_image
from fdn.ensemble import dihedral, self_ensemble, undo_dihedral


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
