import pytest
import torch

from fdn.layers import (
    ActNorm,
    AffineCoupling,
    DenseBlock,
    InvConv1x1,
    SequentialFlow,
    Squeeze,
)
from fdn.model import DownscaleFlowBlock, StepOfFlow

from helpers import brute_force_logdet, randomize

# Each case: a layer factory and an input shape of 48 dimensions, small enough for a Jacobian.
LAYERS = {
    "squeeze": (Squeeze, (1, 3, 4, 4)),
    "actnorm": (lambda: ActNorm(3), (1, 3, 4, 4)),
    "invconv": (lambda: InvConv1x1(3), (1, 3, 4, 4)),
    "coupling_rgb_block1": (lambda: AffineCoupling(12, 3, hidden_channels=8), (1, 12, 2, 2)),
    "coupling_grey_block2": (lambda: AffineCoupling(16, 1, hidden_channels=8), (1, 16, 1, 3)),
    "step_of_flow": (lambda: StepOfFlow(12, 3, hidden_channels=8), (1, 12, 2, 2)),
    "downscale_block": (lambda: DownscaleFlowBlock(3, 2, 3, hidden_channels=8), (1, 3, 4, 4)),
    "sequential": (lambda: SequentialFlow(ActNorm(3), InvConv1x1(3), Squeeze()), (1, 3, 4, 4)),
}


@pytest.fixture(params=sorted(LAYERS))
def case(request):
    factory, shape = LAYERS[request.param]
    torch.manual_seed(0)
    return randomize(factory(), shape=shape), shape


def test_inverse_undoes_forward(case):
    layer, shape = case
    x = torch.randn((3, *shape[1:]), dtype=torch.float64)
    y, _ = layer(x)
    assert y.shape[0] == 3 and y.numel() == x.numel()
    assert torch.allclose(layer.inverse(y)[0], x, rtol=0, atol=1e-12)


def test_forward_undoes_inverse(case):
    layer, shape = case
    y = torch.randn(layer(torch.zeros(shape, dtype=torch.float64))[0].shape, dtype=torch.float64)
    assert torch.allclose(layer(layer.inverse(y)[0])[0], y, rtol=0, atol=1e-12)


def test_logdet_matches_brute_force_jacobian(case):
    layer, shape = case
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = layer(x)
    assert logdet.shape == (1,)
    assert logdet.dtype == torch.float64
    assert abs(logdet.item() - brute_force_logdet(layer, x).item()) < 1e-8
    # The inverse's log-det is the brute force of the inverse map, and the negative of forward.
    _, inverse_logdet = layer.inverse(y)
    assert abs(inverse_logdet.item() + logdet.item()) < 1e-10
    assert abs(inverse_logdet.item() - brute_force_logdet(layer.inverse, y).item()) < 1e-8


def test_logdet_is_per_sample(case):
    layer, shape = case
    x = torch.randn((4, *shape[1:]), dtype=torch.float64) * torch.arange(1.0, 5.0).double().view(
        4, 1, 1, 1
    )
    _, logdet = layer(x)
    assert logdet.shape == (4,)
    for i in range(4):
        assert torch.allclose(layer(x[i : i + 1])[1], logdet[i : i + 1], rtol=0, atol=1e-10)


def test_squeeze_is_checkerboard_pixel_unshuffle():
    x = torch.arange(2 * 4 * 6.0).view(1, 2, 4, 6)
    y, logdet = Squeeze()(x)
    assert y.shape == (1, 8, 2, 3)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2])
    assert logdet.tolist() == [0.0]


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 3, 5, 4))


def test_actnorm_initialises_once_in_training_mode_only():
    layer = ActNorm(3)
    data = torch.randn(16, 3, 8, 8) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1) + 3
    # In eval mode nothing happens: the layer is the identity and stays uninitialised.
    layer.eval()
    y, _ = layer(data)
    assert torch.equal(y, data) and not layer.initialized
    # The first training batch standardises each channel.
    layer.train()
    y, _ = layer(data)
    assert layer.initialized
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    # A second batch with other statistics does not re-initialise.
    log_scale, bias = layer.log_scale.detach().clone(), layer.bias.detach().clone()
    layer(data * 10 - 7)
    assert torch.equal(layer.log_scale, log_scale) and torch.equal(layer.bias, bias)


def test_actnorm_initialised_state_travels_in_state_dict():
    trained = ActNorm(3).train()
    trained(torch.randn(8, 3, 4, 4) * 4 + 1)
    fresh = ActNorm(3).train()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.initialized
    fresh(torch.randn(8, 3, 4, 4))
    assert torch.equal(fresh.log_scale, trained.log_scale)


def test_invconv_starts_as_rotation():
    layer = InvConv1x1(12)
    w = layer.weight.double()
    assert torch.allclose(w @ w.T, torch.eye(12, dtype=torch.float64), atol=1e-6)


def test_invconv_caches_inverse_in_eval_mode_and_drops_it_when_weight_changes(monkeypatch):
    layer = InvConv1x1(6).eval()
    calls = []
    real_inv = torch.linalg.inv
    monkeypatch.setattr(torch.linalg, "inv", lambda a: calls.append(1) or real_inv(a))
    y = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        first = layer.inverse(y)[0]
        layer.inverse(y)
        layer(y)
        assert len(calls) == 1
        layer.weight.mul_(2)  # what an optimiser step or load_state_dict does
        second = layer.inverse(y)[0]
    assert len(calls) == 2
    assert torch.allclose(second, first / 2, atol=1e-6)
    # Training mode recomputes on every call, so autograd sees W.
    layer.train()
    layer.inverse(y)[0].sum().backward()
    layer.inverse(y)
    assert len(calls) == 4
    assert layer.weight.grad is not None


def test_invconv_cache_is_dropped_when_moved_to_another_dtype():
    layer = InvConv1x1(4).eval()
    y = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        layer.inverse(y)
        layer.double()
        x, _ = layer.inverse(y.double())
    assert x.dtype == torch.float64
    assert torch.allclose(layer(x)[0], y.double(), atol=1e-12)


def test_coupling_is_identity_at_initialisation():
    layer = AffineCoupling(12, split=3)
    x = torch.randn(2, 12, 4, 4)
    y, logdet = layer(x)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.equal(layer.inverse(x)[0], x)


def test_coupling_scale_is_bounded_by_clamp():
    layer = AffineCoupling(4, split=1, hidden_channels=4, clamp=1.0)
    with torch.no_grad():
        layer.g2.last.bias.fill_(100.0)  # a huge raw scale saturates at exp(clamp)
    x = torch.randn(1, 4, 3, 3)
    y, logdet = layer(x)
    assert torch.allclose(y[:, 1:], x[:, 1:] * torch.e, atol=1e-5)
    assert torch.allclose(logdet, torch.tensor([27.0]), atol=1e-4)


def test_coupling_rejects_bad_split():
    with pytest.raises(ValueError, match="split"):
        AffineCoupling(3, split=3)


def test_dense_block_matches_spec():
    block = DenseBlock(3, 9, growth=32)
    assert [conv.in_channels for conv in block.convs] == [3, 35, 67, 99]
    assert all(conv.out_channels == 32 for conv in block.convs)
    assert (block.last.in_channels, block.last.out_channels) == (131, 9)
    assert all(
        conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        for conv in block.modules()
        if isinstance(conv, torch.nn.Conv2d)
    )
    assert torch.count_nonzero(block.last.weight) == 0
    assert torch.count_nonzero(block.last.bias) == 0
    assert all(torch.count_nonzero(conv.bias) == 0 for conv in block.convs)
    # Xavier-normal x 0.1: std = 0.1 * sqrt(2 / (fan_in + fan_out)).
    conv = block.convs[3]
    fan_in, fan_out = 99 * 9, 32 * 9
    expected = 0.1 * (2 / (fan_in + fan_out)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.05
    n_params = sum(p.numel() for p in block.parameters())
    assert n_params == 9 * 32 * (4 * 3 + 6 * 32) + 4 * 32 + 9 * (3 + 4 * 32) * 9 + 9


def test_dense_block_gradients_are_the_same_in_channels_last():
    # Channels-last training takes another concatenation (fdn.layers.dense._ChannelsLastCat):
    # its gradients must equal the plain NCHW ones.
    from fdn.layers import DenseBlock

    torch.manual_seed(0)
    block = DenseBlock(3, 9, growth=4).double()
    for conv in [*block.convs, block.last]:
        torch.nn.init.normal_(conv.weight, std=0.1)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        block.zero_grad()
        block.to(memory_format=layout)
        inp = x.clone().contiguous(memory_format=layout).requires_grad_()
        (block(inp) ** 2).sum().backward()
        grads.append([inp.grad, *(p.grad.clone() for p in block.parameters())])
    for plain, fast in zip(*grads, strict=True):
        assert torch.allclose(plain, fast, atol=1e-12)
