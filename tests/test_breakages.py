"""Tests that catch specific ways the code can be quietly broken (one breakage per test)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import fdn.training as training
from fdn import FDN, ModelFileError, denoise_image, load_model, save_model
from fdn.batch import denoise_files
from fdn.cli import main
from fdn.config import config_from_dict
from fdn.data import TrainingPatches
from fdn.ensemble import self_ensemble
from fdn.evaluation import EnsembleDenoiser
from fdn.images import read_image
from fdn.metrics import psnr
from test_training import small_config

from helpers import make_images, randomize


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(4, 3, 8, 8), scale=0.02)
    return save_model(model.float(), tmp_path_factory.mktemp("model") / "small.safetensors")


def quiet_train(config, run_dir):
    return training.train(config, run_dir, progress=False, log=lambda _: None)


# 1. The self-ensemble (x2, x4, x8)


def add_ramp(x):
    """A denoiser that adds a function of position: not flip- or rotation-equivariant, nor
    linear in position (the four quarter turns of a linear ramp average to a constant, as the
    eight do, which could not tell x4 from x8)."""
    height, width = x.shape[-2:]
    position = torch.arange(height * width, dtype=x.dtype).view(height, width)
    return x + torch.sin(1.3 * position) / 10


def ensemble_by_hand(array, size=8):
    """The mean over the first ``size`` flips/rotations of ``add_ramp`` (the quarter turns,
    then the flipped ones), in numpy, on the last two axes."""
    outputs = []
    for k in range(size):
        t = np.rot90(array, k % 4, axes=(-2, -1))
        t = t[..., ::-1] if k >= 4 else t
        d = add_ramp(torch.from_numpy(t.copy())).numpy()
        d = d[..., ::-1] if k >= 4 else d
        outputs.append(np.rot90(d, -(k % 4), axes=(-2, -1)))
    return np.mean(outputs, axis=0)


@pytest.mark.parametrize("size", [2, 4, 8])
def test_self_ensemble_is_the_mean_of_its_transformed_back_outputs(size):
    # Breakage: the ensemble calls the denoiser once instead of on the flips/rotations, or
    # on another number of them than asked.
    x = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    expected = ensemble_by_hand(x.numpy(), size)
    assert not np.allclose(expected, add_ramp(x).numpy())
    for other in {2, 4, 8} - {size}:
        assert not np.allclose(expected, ensemble_by_hand(x.numpy(), other))
    assert np.allclose(self_ensemble(add_ramp, x, size).numpy(), expected, atol=1e-12)
    if size == 8:  # the default
        assert np.allclose(self_ensemble(add_ramp, x).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("size", [2, 4, 8])
def test_eval_ensemble_denoiser_averages_its_transforms(size):
    # Breakage: `fdn eval --ensemble` runs its method once instead of on the transforms.
    class Ramp:
        name, blind = "ramp", True

        def denoise(self, noisy, sigma):
            return add_ramp(noisy)

    x = torch.rand(1, 3, 6, 9, dtype=torch.float64)
    wrapped = EnsembleDenoiser(Ramp(), size) if size != 8 else EnsembleDenoiser(Ramp())
    assert wrapped.name == f"ramp x{size}"
    expected = ensemble_by_hand(x.numpy(), size)
    assert np.allclose(wrapped.denoise(x, None).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("ensemble, size", [(True, 8), (8, 8), (4, 4), (2, 2)])
def test_denoise_image_ensemble_averages_its_transforms(ensemble, size):
    # Breakage: denoise_image(..., ensemble=True) denoises only the image as given.
    model = FDN(hidden_channels=4, steps_per_block=1).eval()
    model.denoise = lambda x, strength=1.0: add_ramp(x)  # the instance's, not equivariant
    image = np.random.default_rng(0).random((6, 10, 3)).astype(np.float32) * 0.5
    got = denoise_image(image, model, ensemble=ensemble)
    expected = ensemble_by_hand(image.transpose(2, 0, 1)[None], size)[0].transpose(1, 2, 0)
    assert np.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("ensemble", [3, 16, 0.5, -8])
def test_an_ensemble_of_another_size_is_refused_before_anything_runs(ensemble):
    model = FDN(hidden_channels=4, steps_per_block=1).eval()
    model.denoise = lambda x, strength=1.0: pytest.fail("denoised")
    with pytest.raises(ValueError, match="ensemble: expected 1, 2, 4 or 8 transforms"):
        denoise_image(np.zeros((6, 10, 3), np.float32), model, ensemble=ensemble)
    with pytest.raises(ValueError, match="ensemble: expected"):
        denoise_files([], model, ensemble=ensemble)


# 2-3. Training patches


def one_image_config(tmp_path, pixels, **data):
    folder = tmp_path / "train"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "only.png")
    return config_from_dict({"data": {"root": str(tmp_path), "train": "train", **data}})


@pytest.mark.parametrize(
    "augment, kinds", [("none", {0}), ("flip", {0, 4}), ("flip_rot", set(range(8)))]
)
def test_augmentation_yields_the_dihedral_transforms_of_its_mode(tmp_path, augment, kinds):
    # Breakage: _augment returns the patch unchanged whatever data.augment says.
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    config = one_image_config(tmp_path, pixels, patch_size=12, augment=augment, sigma=0)
    patches = TrainingPatches(config, seed=0)
    original = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)) / 255
    transforms = [torch.rot90(original, k % 4, dims=(1, 2)) for k in range(8)]
    transforms = [t.flip(-1) if k >= 4 else t for k, t in enumerate(transforms)]
    seen = set()
    for index in range(100):
        clean = patches[index][1]
        matches = [k for k, t in enumerate(transforms) if torch.equal(clean, t)]
        assert len(matches) == 1, index  # whole-image patch: exactly one transform of it
        seen.add(matches[0])
    assert seen == kinds


def test_blind_training_noise_spans_the_sigma_range(tmp_path):
    # Breakage: data.sigma_range ignored, every patch drawn at the fixed data.sigma.
    pixels = np.full((16, 16, 3), 128, dtype=np.uint8)
    config = one_image_config(tmp_path, pixels, patch_size=16, sigma=50, sigma_range=[0, 55])
    patches = TrainingPatches(config, seed=0)
    stds = [255 * (n - c).std().item() for n, c in (patches[i] for i in range(60))]
    assert min(stds) < 10 and max(stds) > 45 and max(stds) < 55 * 1.15


# 4-5. Validation and best.safetensors


def test_best_model_file_holds_the_weights_of_the_best_validation(images, tmp_path, monkeypatch):
    # Breakage: best.safetensors overwritten at every validation, not only on improvement.
    scores, states = iter([20.0, 30.0, 25.0]), []

    def fake_validate(model, images, device):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(training, "validate", fake_validate)
    quiet_train(small_config(images, tmp_path, "validation.every=2"), tmp_path / "run")
    best = load_model(tmp_path / "run" / "best.safetensors").state_dict()
    assert len(states) == 3
    assert all(torch.equal(best[k], states[1][k]) for k in states[1])
    assert not all(torch.equal(best[k], states[2][k]) for k in states[2])


def test_validate_scores_the_denoised_output_not_the_noisy_input():
    # Breakage: validation computes the PSNR of the noisy input instead of the denoised one.
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(2, 3, 8, 8)).float()
    generator = torch.Generator().manual_seed(0)
    images = []
    for name in ("a", "b"):
        clean = torch.rand(1, 3, 12, 16, generator=generator)
        images.append((name, clean + 0.1 * torch.randn(clean.shape, generator=generator), clean))
    with torch.no_grad():
        denoised = [psnr(model.denoise(n), c).item() for _, n, c in images]
    noisy = [psnr(n, c).item() for _, n, c in images]
    assert np.mean(denoised) != pytest.approx(np.mean(noisy), abs=0.01)
    value = training.validate(model, images, torch.device("cpu"))
    assert value == pytest.approx(np.mean(denoised), abs=1e-4)


# 6-7. Command-line flags


def test_denoise_cli_tile_flag_really_tiles(tmp_path, model_file):
    # Breakage: `fdn denoise` ignores --tile and denoises the whole image at once.
    pixels = np.random.default_rng(0).integers(0, 65536, (40, 40, 3), dtype=np.uint16)
    source = tmp_path / "in.tif"
    Image.fromarray(pixels[:, :, 0]).save(source)  # 16-bit grey
    argv = ["denoise", str(source), "--model", str(model_file), "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "whole")]) == 0
    assert main([*argv, "-o", str(tmp_path / "tiled"), "--tile", "16", "--tile-overlap", "0"]) == 0
    whole = read_image(tmp_path / "whole" / "in.tif").pixels.astype(np.int64)
    tiled = read_image(tmp_path / "tiled" / "in.tif").pixels.astype(np.int64)
    grey = read_image(source).pixels
    expected = denoise_image(grey, load_model(model_file), tile=16, overlap=0).astype(np.int64)
    assert np.abs(tiled - expected).max() <= 1
    assert np.abs(tiled - whole).max() > 1


def test_eval_bf16_precision_changes_the_results(tmp_path, model_file):
    # Breakage: `fdn eval --precision bf16` is recorded in the results but not applied.
    data = tmp_path / "set"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(data / f"{i}.png")
    psnrs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        argv = ["eval", "--model", str(model_file), "--data", str(data), "--sigma", "25"]
        assert main([*argv, "--precision", precision, "--out", str(out), "--no-progress"]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["settings"]["precision"] == precision
        psnrs[precision] = [row["psnr"] for row in results["images"]]
    assert len(psnrs["fp32"]) == 2
    assert psnrs["bf16"] != psnrs["fp32"]


# Gradient clipping and model-file dtypes


def test_gradient_clipping_bounds_the_norm_each_step_uses(images, tmp_path):
    # Breakage: optim.grad_clip not applied, so Adam steps on unclipped gradients.
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    handle = register_optimizer_step_pre_hook(record)
    try:
        settings = ["optim.grad_clip=0.001", "validation.every=0", "training.iterations=3"]
        quiet_train(small_config(images, tmp_path, *settings), tmp_path / "run")
    finally:
        handle.remove()
    assert len(norms) == 3 and max(norms) <= 0.001 * 1.001


def test_a_float_tensor_stored_as_int32_is_a_dtype_error(tmp_path):
    # Breakage: load_model no longer checks tensor dtypes and casts int32 into float weights.
    path = save_model(FDN(hidden_channels=4, steps_per_block=1), tmp_path / "m.safetensors")
    with safe_open(path, framework="pt") as archive:
        metadata = archive.metadata()
        tensors = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.dim() == 1)
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(ModelFileError, match=f"{name} has dtype torch.int32"):
        load_model(tmp_path / "bad.safetensors")
