import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fdn import FDN, ModelFileError, save_model
from fdn.baselines import (
    BM3D,
    DnCNN,
    DnCNNDenoiser,
    FFDNet,
    FFDNetDenoiser,
    MissingExtraError,
    NonLocalMeans,
    load_dncnn,
    load_peer_dncnn,
    load_peer_ffdnet,
    save_dncnn,
)
from fdn.evaluation import read_image_tensor
from fdn.metrics import psnr
from fdn.noise import add_gaussian_noise

from helpers import has_channels_last_weights

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "peer-weights"
needs_shared = pytest.mark.skipif(
    not WEIGHTS.is_dir() or not (SHARED / "data" / "test").is_dir(),
    reason=f"reference weights and test sets not found at {SHARED}",
)


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BatchNorm statistic random, so no key mapping error can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                scale = 1 / tensor[0].numel() ** 0.5 if tensor.dim() == 4 else 0.1
                tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))
    return module.eval()


def save_as_peer(model: nn.Module, prefix: str, path: Path, drop: str = "") -> Path:
    """Writes ``model``'s state_dict the way the reference repositories did."""
    state = {
        prefix + name.removeprefix(drop): tensor
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    return path


def smooth_image(channels: int, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(3 * x + 2 * y)
    return torch.stack([base * (0.8 + 0.1 * c) for c in range(channels)]).unsqueeze(0)


# DnCNN


@pytest.mark.parametrize("batch_norm", [True, False])
def test_dncnn_layers_and_residual_output(batch_norm):
    model = randomized(DnCNN(in_channels=3, depth=5, features=8, batch_norm=batch_norm))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 5 and len(norms) == (3 if batch_norm else 0)
    assert all((conv.bias is None) == batch_norm for conv in convs)
    noisy = torch.rand(2, 3, 9, 7)
    with torch.no_grad():
        assert torch.equal(model.denoise(noisy), (noisy - model(noisy)).clamp(0, 1))


@pytest.mark.parametrize(
    ("prefix", "batch_norm", "depth"),
    [("module.dncnn.", True, 4), ("model.", False, 5)],  # DnCNN-PyTorch, KAIR
)
def test_peer_dncnn_layouts_load_exactly(tmp_path, prefix, batch_norm, depth):
    model = randomized(DnCNN(in_channels=1, depth=depth, features=8, batch_norm=batch_norm))
    path = save_as_peer(model, prefix, tmp_path / "peer.pth", drop="layers.")
    loaded = load_peer_dncnn(path)
    assert loaded.config == model.config
    noisy = torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(loaded(noisy), model(noisy))


def test_own_dncnn_file_round_trip(tmp_path):
    model = randomized(DnCNN(in_channels=3, depth=4, features=8))
    loaded = load_dncnn(save_dncnn(model, tmp_path / "dncnn.safetensors"))
    assert loaded.config == model.config and not loaded.training
    noisy = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(noisy), model(noisy))


# FFDNet


def ipol_concatenate_input_noise_map(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The IPOL port's input builder, transcribed loop for loop."""
    n, c, h, w = image.shape
    down = torch.zeros(n, 4 * c, h // 2, w // 2)
    for idx, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        down[:, idx : 4 * c : 4] = image[:, :, i::2, j::2]
    noise_map = torch.full((n, c, h // 2, w // 2), sigma / 255)
    return torch.cat([noise_map, down], dim=1)


def ipol_upsample_features(features: torch.Tensor) -> torch.Tensor:
    n, c4, h, w = features.shape
    out = torch.zeros(n, c4 // 4, 2 * h, 2 * w)
    for idx, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[:, :, i::2, j::2] = features[:, idx:c4:4]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_ffdnet_matches_the_ipol_input_and_output_layout(channels):
    model = randomized(FFDNet(channels, depth=3, features=8))
    noisy = torch.rand(2, channels, 10, 6)
    with torch.no_grad():
        ours = model(noisy, 30)
        body = model.body(ipol_concatenate_input_noise_map(noisy, 30))
    assert torch.allclose(ours, ipol_upsample_features(body))


def test_ffdnet_odd_sizes_are_padded_and_cropped():
    model = randomized(FFDNet(1, depth=3, features=8))
    noisy = torch.rand(1, 1, 9, 7)
    with torch.no_grad():
        denoised = model.denoise(noisy, 25)
        padded = F.pad(noisy, (0, 1, 0, 1), mode="replicate")
        expected = (padded - model(padded, 25))[..., :9, :7].clamp(0, 1)
    assert denoised.shape == noisy.shape
    assert torch.equal(denoised, expected)
    with pytest.raises(ValueError, match="even"):
        model(noisy, 25)


@pytest.mark.parametrize("channels", [1, 3])
def test_peer_ffdnet_layout_loads_exactly(tmp_path, channels):
    model = randomized(FFDNet(channels, depth=4, features=8))
    prefix = "module.intermediate_dncnn.itermediate_dncnn."
    path = save_as_peer(model, prefix, tmp_path / "net.pth", drop="body.layers.")
    loaded = load_peer_ffdnet(path)
    assert loaded.in_channels == channels
    noisy = torch.rand(1, channels, 8, 12)
    with torch.no_grad():
        assert torch.equal(loaded(noisy, 15), model(noisy, 15))


# Every loader rejects files it cannot use, naming the file


def test_loaders_reject_the_wrong_layout(tmp_path):
    ffdnet = randomized(FFDNet(1, depth=3, features=8))
    ffdnet_file = save_as_peer(
        ffdnet, "module.intermediate_dncnn.itermediate_dncnn.", tmp_path / "f.pth", "body.layers."
    )
    dncnn_file = save_as_peer(
        randomized(DnCNN(depth=3, features=8)), "module.dncnn.", tmp_path / "d.pth", "layers."
    )
    with pytest.raises(ModelFileError, match="not a DnCNN weight file") as error:
        load_peer_dncnn(ffdnet_file)
    assert str(ffdnet_file) in str(error.value)
    with pytest.raises(ModelFileError, match="not an FFDNet weight file") as error:
        load_peer_ffdnet(dncnn_file)
    assert str(dncnn_file) in str(error.value)
    with pytest.raises(ModelFileError, match="not a DnCNN model file"):
        load_dncnn(save_model(FDN(hidden_channels=4, steps_per_block=1), tmp_path / "f.st"))


def test_loaders_reject_wrong_shapes_and_missing_tensors(tmp_path):
    model = DnCNN(depth=4, features=8)
    state = {"module.dncnn." + k.removeprefix("layers."): v for k, v in model.state_dict().items()}
    broken = dict(state, **{"module.dncnn.3.weight": torch.ones(5)})  # a BatchNorm of 5
    torch.save(broken, tmp_path / "shape.pth")
    with pytest.raises(ModelFileError, match=r"shape\.pth: tensor layers\.3\.weight has shape"):
        load_peer_dncnn(tmp_path / "shape.pth")
    del state["module.dncnn.3.running_mean"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ModelFileError, match=r"missing tensors layers\.3\.running_mean"):
        load_peer_dncnn(tmp_path / "missing.pth")
    ffdnet = {
        "module.intermediate_dncnn.itermediate_dncnn.0.weight": torch.zeros(8, 7, 3, 3),
        "module.intermediate_dncnn.itermediate_dncnn.2.weight": torch.zeros(8, 8, 3, 3),
    }
    torch.save(ffdnet, tmp_path / "channels.pth")
    with pytest.raises(ModelFileError, match="5 \\(grey\\) or 15 \\(colour\\)"):
        load_peer_ffdnet(tmp_path / "channels.pth")


@pytest.mark.parametrize("loader", [load_peer_dncnn, load_peer_ffdnet])
def test_loaders_never_unpickle_and_reject_non_state_dicts(tmp_path, loader):
    torch.save(nn.Conv2d(1, 1, 3), tmp_path / "module.pth")  # a whole pickled module
    with pytest.raises(ModelFileError, match="weights_only=True"):
        loader(tmp_path / "module.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ModelFileError, match="is not a state_dict"):
        loader(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"junk\.pth"):
        loader(tmp_path / "junk.pth")
    with pytest.raises(ModelFileError, match="no such file"):
        loader(tmp_path / "absent.pth")


# Classical baselines


def test_missing_extra_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes `import bm3d` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'fdn-denoise\[baselines\]'"):
        BM3D()


@pytest.mark.parametrize("channels", [1, 3])
def test_nlm_removes_noise(channels):
    pytest.importorskip("skimage", reason="scikit-image is not installed")
    clean = smooth_image(channels)
    noisy = add_gaussian_noise(clean, 25, seed=0)
    denoiser = NonLocalMeans()
    denoised = denoiser.denoise(noisy, 25)
    assert denoised.shape == clean.shape and denoised.min() >= 0 and denoised.max() <= 1
    assert psnr(denoised, clean) > psnr(noisy, clean) + 3
    assert denoiser.supports(channels, None) is not None


@pytest.mark.parametrize("channels", [1, 3])
def test_bm3d_removes_noise(channels):
    pytest.importorskip("bm3d", reason="bm3d is not installed (the baselines extra)")
    clean = smooth_image(channels)
    noisy = add_gaussian_noise(clean, 25, seed=0)
    denoised = BM3D().denoise(noisy, 25)
    assert denoised.shape == clean.shape
    assert psnr(denoised, clean) > psnr(noisy, clean) + 3


def test_denoiser_adapters_declare_what_they_support():
    dncnn = DnCNNDenoiser(DnCNN(in_channels=1, depth=3, features=4))
    ffdnet = FFDNetDenoiser(FFDNet(3, depth=3, features=4))
    assert dncnn.blind and not ffdnet.blind
    assert dncnn.supports(1, None) is None and "1-channel" in dncnn.supports(3, None)
    assert ffdnet.supports(3, 25) is None and "sigma" in ffdnet.supports(3, None)
    assert ffdnet.denoise(torch.rand(1, 3, 7, 5), 25).shape == (1, 3, 7, 5)


# The reference weights (only where ../shared exists; a few seconds)


@needs_shared
def test_every_reference_file_loads():
    configs = {
        path.name: load_peer_dncnn(path).config
        for path in sorted((WEIGHTS / "saoyan-dncnn-pytorch").glob("*.pth"))
    }
    assert {name: c.depth for name, c in configs.items()} == {
        "DnCNN-B.net.pth": 20,
        "DnCNN-S-15.net.pth": 17,
        "DnCNN-S-25.net.pth": 17,
        "DnCNN-S-50.net.pth": 17,
    }
    assert not load_peer_dncnn(WEIGHTS / "kair" / "dncnn_25.pth").config.batch_norm
    grey = load_peer_ffdnet(WEIGHTS / "ipol-ffdnet-pytorch" / "net_gray.pth")
    colour = load_peer_ffdnet(WEIGHTS / "ipol-ffdnet-pytorch" / "net_rgb.pth")
    assert (grey.in_channels, grey.body.config.depth) == (1, 15)
    assert (colour.in_channels, colour.body.config.depth) == (3, 12)


REFERENCE_DENOISERS = {
    "DnCNN-S-25": lambda: DnCNNDenoiser(
        load_peer_dncnn(WEIGHTS / "saoyan-dncnn-pytorch" / "DnCNN-S-25.net.pth")
    ),
    "KAIR-DnCNN-25": lambda: DnCNNDenoiser(load_peer_dncnn(WEIGHTS / "kair" / "dncnn_25.pth")),
    "FFDNet-grey": lambda: FFDNetDenoiser(
        load_peer_ffdnet(WEIGHTS / "ipol-ffdnet-pytorch" / "net_gray.pth")
    ),
    "FFDNet-colour": lambda: FFDNetDenoiser(
        load_peer_ffdnet(WEIGHTS / "ipol-ffdnet-pytorch" / "net_rgb.pth")
    ),
}


def real_crop(channels: int) -> torch.Tensor:
    """A smooth 96x96 crop of a BSD68 (grey) or CBSD68 (colour) image."""
    path = "BSD68/test010.png" if channels == 1 else "CBSD68/103070.png"
    return read_image_tensor(SHARED / "data" / "test" / path)[..., 100:196, 100:196]


@needs_shared
@pytest.mark.parametrize("name", REFERENCE_DENOISERS)
def test_reference_weights_denoise_a_real_crop(name):
    # At sigma 25 the noisy crop is about 20 dB; the correctly mapped networks reach 31-34 dB
    # on it, while a wrong key, BatchNorm or channel order falls far short of +8 dB.
    denoiser = REFERENCE_DENOISERS[name]()
    clean = real_crop(3 if name.endswith("colour") else 1)
    noisy = add_gaussian_noise(clean, 25, seed=0)
    denoised = denoiser.denoise(noisy, 25)
    assert psnr(denoised, clean).item() > psnr(noisy, clean).item() + 8


@needs_shared
def test_two_independent_dncnn_25_files_agree():
    # DnCNN-PyTorch (BatchNorm) and KAIR (merged) were trained apart and map differently:
    # both being right makes them agree to about 0.1 dB.
    clean = real_crop(1)
    noisy = add_gaussian_noise(clean, 25, seed=1)
    scores = [
        psnr(REFERENCE_DENOISERS[name]().denoise(noisy, 25), clean).item()
        for name in ("DnCNN-S-25", "KAIR-DnCNN-25")
    ]
    assert scores[0] == pytest.approx(scores[1], abs=0.2)


@pytest.mark.parametrize("network", ["dncnn", "ffdnet"])
def test_channels_last_inference_equals_the_plain_path(network):
    # denoise() runs channels-last in eval mode (fdn.runtime.channels_last), as FDN does, so
    # that fdn bench compares like with like; the result must not change.
    if network == "dncnn":
        model = randomized(DnCNN(in_channels=3, depth=5, features=16))
        plain = lambda x: (x - model(x)).clamp(0, 1)  # noqa: E731
        fast = model.denoise
    else:
        model = randomized(FFDNet(in_channels=3, depth=5, features=16))
        plain = lambda x: (x - model(x, 30.0)).clamp(0, 1)  # noqa: E731
        fast = lambda x: model.denoise(x, 30.0)  # noqa: E731
    noisy = torch.rand(2, 3, 18, 22)
    with torch.no_grad():
        expected = plain(noisy)
        got = fast(noisy)
    assert has_channels_last_weights(model)
    assert (got - expected).abs().max() < 1e-5


# The reference weights folder: where fdn looks, and what it says when a file is missing

IPOL = "module.intermediate_dncnn.itermediate_dncnn."


def write_peer_weights(folder: Path, ffdnet: dict[str, int] | None = None) -> Path:
    """Tiny random networks in the reference layouts, under the names fdn looks for."""
    saoyan, ipol = folder / "saoyan-dncnn-pytorch", folder / "ipol-ffdnet-pytorch"
    saoyan.mkdir(parents=True)
    ipol.mkdir()
    for name in ("DnCNN-S-15", "DnCNN-S-25", "DnCNN-S-50", "DnCNN-B"):
        dncnn = randomized(DnCNN(depth=3, features=4))
        save_as_peer(dncnn, "module.dncnn.", saoyan / f"{name}.net.pth", "layers.")
    for file, channels in (ffdnet or {"net_gray.pth": 1, "net_rgb.pth": 3}).items():
        model = randomized(FFDNet(channels, depth=3, features=4), seed=channels)
        save_as_peer(model, IPOL, ipol / file, "body.layers.")
    return folder


def test_the_default_weights_folder_is_fdn_weights_else_beside_the_repository(
    tmp_path, monkeypatch
):
    from fdn.choices import default_weights

    monkeypatch.setenv("FDN_WEIGHTS", str(tmp_path / "mine"))
    assert default_weights() == tmp_path / "mine"
    monkeypatch.delenv("FDN_WEIGHTS")
    monkeypatch.chdir(tmp_path)  # never read relative to the working directory
    folder = default_weights()
    assert folder.is_absolute() and folder.parts[-2:] == ("shared", "peer-weights")
    assert not folder.is_relative_to(tmp_path)
    if WEIGHTS.is_dir():  # a source checkout beside ../shared
        assert folder == WEIGHTS.resolve()


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("dncnn", "saoyan-dncnn-pytorch/DnCNN-S-"),
        ("dncnn-b", "saoyan-dncnn-pytorch/DnCNN-B.net.pth"),
        ("ffdnet", "ipol-ffdnet-pytorch/net_gray.pth"),
    ],
)
def test_a_missing_reference_file_is_named_with_how_to_point_at_the_folder(
    tmp_path, name, missing
):
    from fdn.denoisers import build_baseline

    with pytest.raises(ModelFileError) as error:
        build_baseline(name, tmp_path / "none")
    message = str(error.value)
    assert str(tmp_path / "none" / missing) in message
    assert "--weights" in message and "FDN_WEIGHTS" in message
    assert "\n" not in message


def test_ffdnet_needs_both_networks_and_names_the_missing_one(tmp_path):
    from fdn.denoisers import build_baseline

    folder = write_peer_weights(tmp_path / "w", ffdnet={"net_gray.pth": 1})
    with pytest.raises(ModelFileError, match=r"net_rgb\.pth.*--weights.*FDN_WEIGHTS"):
        build_baseline("ffdnet", folder)


def test_baselines_read_fdn_weights_when_no_folder_is_given(tmp_path, monkeypatch):
    from fdn.denoisers import build_baseline

    monkeypatch.setenv("FDN_WEIGHTS", str(write_peer_weights(tmp_path / "w")))
    assert build_baseline("dncnn-b").supports(1, None) is None
    monkeypatch.setenv("FDN_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(ModelFileError, match="empty"):
        build_baseline("ffdnet")


def test_ffdnet_uses_its_colour_network_on_colour_images_and_grey_on_grey(tmp_path):
    from fdn.denoisers import build_baseline

    folder = write_peer_weights(tmp_path / "w")
    ffdnet = build_baseline("ffdnet", folder)
    for channels, file in ((1, "net_gray.pth"), (3, "net_rgb.pth")):
        assert ffdnet.supports(channels, 25) is None
        noisy = torch.rand(1, channels, 10, 12)
        alone = FFDNetDenoiser(load_peer_ffdnet(folder / "ipol-ffdnet-pytorch" / file))
        assert torch.equal(ffdnet.denoise(noisy, 25), alone.denoise(noisy, 25))


@pytest.mark.parametrize(
    "swapped", [{"net_gray.pth": 1, "net_rgb.pth": 1}, {"net_gray.pth": 3, "net_rgb.pth": 3}]
)
def test_an_ffdnet_file_with_the_other_channel_count_is_rejected(tmp_path, swapped):
    # Two grey files would otherwise make one grey column that silently skips colour images.
    from fdn.denoisers import build_baseline

    folder = write_peer_weights(tmp_path / "w", ffdnet=swapped)
    wrong = "net_rgb.pth" if swapped["net_rgb.pth"] == 1 else "net_gray.pth"
    with pytest.raises(ModelFileError, match=rf"{wrong}: .*-channel FFDNet, expected"):
        build_baseline("ffdnet", folder)
