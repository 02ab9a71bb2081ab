import pytest
import torch

from fdn import FDN, FDNConfig
from fdn.info import count_parameters
from fdn.layers import AffineCoupling

from helpers import brute_force_logdet, has_channels_last_weights, randomize


def dense_block_parameters(c_in: int, c_out: int, gc: int = 32) -> int:
    """The spec's formula (section 3) for one Dense Block."""
    return 9 * gc * (4 * c_in + 6 * gc) + 4 * gc + 9 * (c_in + 4 * gc) * c_out + c_out


def fdn_parameters(in_channels: int, num_blocks: int = 2, steps: int = 8, gc: int = 32) -> int:
    """Spec section 5: per step an ActNorm (2C), a 1x1 conv (C^2) and three Dense Blocks."""
    total = 0
    for k in range(1, num_blocks + 1):
        channels = in_channels * 4**k
        rest = channels - in_channels
        coupling = dense_block_parameters(rest, in_channels, gc) + 2 * dense_block_parameters(
            in_channels, rest, gc
        )
        total += steps * (2 * channels + channels**2 + coupling)
    return total


def test_paper_model_has_4375680_parameters():
    assert count_parameters(FDN()) == 4_375_680 == fdn_parameters(3)


def test_grey_model_parameters_follow_the_spec_formula():
    grey = FDN(in_channels=1)
    assert count_parameters(grey) == fdn_parameters(1) == 3_220_000


@pytest.mark.parametrize(
    "config",
    [
        FDNConfig(),
        FDNConfig(in_channels=1),
        FDNConfig(hidden_channels=16, steps_per_block=4),
        FDNConfig(in_channels=1, num_blocks=3, steps_per_block=1, hidden_channels=5),
    ],
)
def test_config_counts_the_parameters_of_its_network(config):
    model = FDN.from_config(config)
    assert config.num_parameters == count_parameters(model)
    assert config.num_parameters == fdn_parameters(
        config.in_channels, config.num_blocks, config.steps_per_block, config.hidden_channels
    )


def test_latent_layout():
    config = FDN().config
    assert config == FDNConfig()
    assert (config.latent_channels, config.clean_channels) == (48, 36)
    grey = FDN(in_channels=1).config
    assert (grey.latent_channels, grey.clean_channels) == (16, 12)


def test_config_rejects_fraction_that_is_not_whole_channels():
    with pytest.raises(ValueError, match="whole number"):
        FDNConfig(clean_fraction=0.7)
    with pytest.raises(ValueError, match="in_channels"):
        FDNConfig(in_channels=0)


@pytest.fixture(scope="module")
def random_fdn():
    torch.manual_seed(0)
    return randomize(FDN(), shape=(8, 3, 8, 8))


def test_full_model_round_trip_float64(random_fdn):
    y = torch.rand(2, 3, 16, 12, dtype=torch.float64)
    with torch.no_grad():
        z, _ = random_fdn.encode(y)
        assert z.shape == (2, 48, 4, 3)
        # Not the identity: z holds y's 1152 values, so a flow that only rearranged pixels
        # (the Squeezes, with every Step of Flow a no-op) would give the same sorted values.
        assert (z.flatten().sort().values - y.flatten().sort().values).abs().max() > 0.1
        assert (random_fdn.decode(z) - y).abs().max() < 1e-10


def test_full_model_logdet_matches_brute_force(random_fdn):
    y = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    z, logdet = random_fdn.encode(y)
    assert abs(logdet.item() - brute_force_logdet(random_fdn.encode, y).item()) < 1e-8
    _, inverse_logdet = random_fdn.inverse(z)
    assert abs(inverse_logdet.item() + logdet.item()) < 1e-8


def test_every_coupling_is_identity_at_initialisation():
    model = FDN()
    couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
    assert len(couplings) == 16
    for coupling in couplings:
        channels = coupling.split + coupling.g2.last.out_channels
        x = torch.randn(1, channels, 4, 4)
        y, logdet = coupling(x)
        assert torch.equal(y, x) and logdet.item() == 0


def test_disentangle_zeroes_exactly_the_last_quarter():
    model = FDN(hidden_channels=4, steps_per_block=1)
    z = torch.randn(2, 48, 3, 3) + 5
    z_hat = model.disentangle(z)
    assert torch.equal(z_hat[:, :36], z[:, :36])
    assert torch.count_nonzero(z_hat[:, 36:]) == 0


def test_denoise_is_decode_of_disentangled_encode(random_fdn):
    # Its own generator, and denoise first: in eval mode denoise turns the weights
    # channels-last, and the plain path on the old layout differs from it by ~1e-13 wherever a
    # pixel is not clamped, so the result hung on y, that is on the tests run before this one.
    # (fast path vs plain path, to a tolerance: test_fast_inference_path_equals_the_plain_path)
    # Equal to float64 rounding, not bit for bit: some CPUs' kernels (AVX2, not AVX-512) sum a
    # channels-last convolution in another order than a contiguous one, by an ulp.
    y = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        denoised = random_fdn.denoise(y)
        expected = random_fdn.decode(random_fdn.disentangle(random_fdn.encode(y)[0]))
        torch.testing.assert_close(denoised, expected.clamp(0, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(250, 333), (3, 2), (1, 1), (16, 16)])
def test_denoise_keeps_any_size(size, device):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(2, 3, 8, 8)).float()
    model.to(device)
    y = torch.rand(1, 3, *size, device=device)
    with torch.no_grad():
        x = model.denoise(y)
    assert x.shape == y.shape
    assert x.min() >= 0 and x.max() <= 1


def test_denoise_pads_by_reflection(random_fdn):
    # Padding by reflection means the crop of a larger reflect-padded image denoises the same.
    y = torch.rand(1, 3, 6, 7, dtype=torch.float64)
    padded = torch.nn.functional.pad(y, (0, 1, 0, 2), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(random_fdn.denoise(y), random_fdn.denoise(padded)[..., :6, :7])


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FDN(hidden_channels=4, steps_per_block=1).denoise(torch.rand(1, 1, 8, 8))


def test_float32_round_trip_is_close(device):
    # Milder weights than the float64 tests: float32 error grows with how far the flow
    # stretches space, and a trained flow maps images to z ~ N(0, I), not far beyond.
    torch.manual_seed(0)
    model = randomize(FDN(), shape=(4, 3, 16, 16), scale=0.02).float().to(device)
    y = torch.rand(1, 3, 32, 32, device=device)
    with torch.no_grad():
        assert (model.decode(model.encode(y)[0]) - y).abs().max() < 1e-4


def test_fresh_model_in_eval_mode_never_initialises_actnorm():
    from fdn.layers import ActNorm

    model = FDN(hidden_channels=4, steps_per_block=1).eval()
    with torch.no_grad():
        model.denoise(torch.rand(2, 3, 8, 8) * 7)
    assert not any(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    model.train()
    with torch.no_grad():
        model.encode(torch.rand(2, 3, 8, 8))
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))


def test_fast_inference_path_equals_the_plain_path(device):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=8, steps_per_block=2), shape=(4, 3, 16, 16), scale=0.02)
    model.float().to(device)
    y = torch.rand(2, 3, 36, 44, device=device)
    with torch.no_grad():
        plain = model.decode(model.disentangle(model.encode(y)[0])).clamp(0, 1)
        fast = model.denoise(y)  # eval mode: channels-last weights and input
    assert has_channels_last_weights(model)
    assert (fast - plain).abs().max() < 1e-5
    # Training still works on the converted weights.
    model.train()
    model.encode(y)[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def assert_same_flow(grown, source):
    """The grown FDN encodes, with its log-det, and decodes as its source does (float64);
    returns the image and its latent."""
    y = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    z, logdet = source.encode(y)
    z_grown, logdet_grown = grown.encode(y)
    assert torch.allclose(z_grown, z, rtol=0, atol=1e-12)
    assert torch.allclose(logdet_grown, logdet, rtol=0, atol=1e-9)
    assert torch.allclose(grown.decode(z), y, rtol=0, atol=1e-10)
    return y, z


def test_a_grown_network_computes_what_the_shallower_one_did():
    # Depth is added without starting over: the added Steps of Flow are the identity, so the
    # deeper network encodes, and decodes, exactly as the one it grew from (float64).
    shallow = randomize(FDN(hidden_channels=4, steps_per_block=2), seed=3, shape=(2, 3, 8, 8))
    deep = FDN(hidden_channels=4, steps_per_block=4).double()
    deep.grow_from(shallow.state_dict(), steps_per_block=2)
    y, z = assert_same_flow(deep, shallow)
    # Trained on, the added steps are the first to differ from the identity: nothing of the
    # shallow network's training is lost, and nothing re-initialises them on a batch.
    deep.train()
    z_train, _ = deep.encode(y)
    assert torch.allclose(z_train, z, rtol=0, atol=1e-12)
    added = deep.layers[0].layers[3]
    assert torch.equal(added.layers[1].weight, torch.eye(12, dtype=torch.float64))
    assert added.layers[0].initialized


def test_a_widened_network_computes_what_the_narrower_one_did():
    # Width (the Dense Blocks' growth) is added the same way, with depth at once: the added
    # channels start at their own random weights but feed nothing the old ones compute.
    narrow = randomize(FDN(hidden_channels=4, steps_per_block=2), seed=5, shape=(2, 3, 8, 8))
    wide = FDN(hidden_channels=6, steps_per_block=3).double()
    wide.grow_from(narrow.state_dict(), steps_per_block=2, hidden_channels=4)
    y, _ = assert_same_flow(wide, narrow)
    # The added channels are not dead: their convolutions have weights, and the features
    # they compute reach the last convolution, whose weights from them training will move.
    g1 = wide.layers[0].layers[1].layers[2].g1
    inputs = g1.convs[0].in_channels  # then the first feature: 4 old channels, 2 added
    assert g1.convs[1].weight[4:].abs().sum() > 0
    assert g1.convs[1].weight[:4, inputs + 4 :].eq(0).all()
    wide.train()
    wide.encode(y)[0].square().sum().backward()
    assert g1.last.weight.grad[:, inputs + 4 : inputs + 6].abs().sum() > 0


def test_growing_needs_the_same_network_but_for_depth():
    shallow = FDN(hidden_channels=4, steps_per_block=2)
    with pytest.raises(ValueError, match="not from 3"):
        FDN(hidden_channels=4, steps_per_block=2).grow_from(shallow.state_dict(), 3)
    with pytest.raises(ValueError, match="has no place"):
        FDN(hidden_channels=8, steps_per_block=3).grow_from(shallow.state_dict(), 2)
    with pytest.raises(ValueError, match="not from 8"):  # narrower than its parent
        FDN(hidden_channels=4, steps_per_block=2).grow_from(shallow.state_dict(), 2, 8)
    with pytest.raises(ValueError, match=r"g1\.convs\.1\.weight \(4, 13, 3, 3\) has no place"):
        FDN(hidden_channels=8, steps_per_block=2).grow_from(shallow.state_dict(), 2, 3)
    state = dict(shallow.state_dict())
    del state["layers.1.layers.2.layers.0.bias"]
    with pytest.raises(ValueError, match=r"layers\.1\.layers\.2\.layers\.0\.bias is missing"):
        FDN(hidden_channels=4, steps_per_block=3).grow_from(state, 2)
