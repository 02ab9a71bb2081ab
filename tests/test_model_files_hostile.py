"""Hostile model files (issue #16, items 2, 3, 15): refused with ModelFileError before any
network is built from them, and before any weight of theirs is used."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fdn import FDN, ModelFileError, load_model, save_model
from fdn.model import FDN as ModelClass

from helpers import randomize


@pytest.fixture
def good(tmp_path):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=2), shape=(2, 3, 8, 8)).float()
    return save_model(model, tmp_path / "good.safetensors")


def tampered(good, tmp_path, config=None, tensors=None):
    """A copy of ``good`` with its config metadata or some tensors changed."""
    with safe_open(good, framework="pt") as archive:
        metadata = archive.metadata()
        state = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    if config is not None:
        fields = json.loads(metadata["config"])
        fields.update(config)
        metadata["config"] = json.dumps(fields)
    for name, change in (tensors or {}).items():
        state[name] = change(state[name])
    path = tmp_path / "tampered.safetensors"
    save_file(state, path, metadata=metadata)
    return path


def first(good, suffix):
    with safe_open(good, framework="pt") as archive:
        return next(name for name in archive.keys() if name.endswith(suffix))  # noqa: SIM118


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_blocks": 12}, "num_blocks = 12 is outside"),
        ({"steps_per_block": 1_000_000}, "steps_per_block = 1000000 is outside"),
        ({"hidden_channels": 10_000_000}, "hidden_channels = 10000000 is outside"),
        ({"clamp": float("inf")}, "clamp = inf is outside"),
        # in bounds, but far more weights than the file holds
        ({"steps_per_block": 64}, "holds 76,512 weights where its config makes 2,448,384"),
    ],
)
def test_configs_that_disagree_with_the_tensors_are_refused_before_building(
    good, tmp_path, monkeypatch, config, message
):
    path = tampered(good, tmp_path, config=config)
    built = []
    real_init = ModelClass.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(ModelClass, "__init__", spy)
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert built == []  # refused before any network was built


@pytest.mark.parametrize(
    ("suffix", "change", "message"),
    [
        ("g1.last.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN"),
        ("actnorm_bias_or_any", lambda t: t + float("inf"), "NaN or infinite"),
        ("log_scale", lambda t: t.fill_(1e4), "log-scale beyond"),
        ("layers.1.weight", lambda t: t.index_fill(0, torch.tensor([0]), 0.0), "singular"),
    ],
)
def test_weights_no_trained_model_has_are_refused(good, tmp_path, suffix, change, message):
    name = first(good, ".bias") if suffix == "actnorm_bias_or_any" else first(good, suffix)
    path = tampered(good, tmp_path, tensors={name: change})
    with pytest.raises(ModelFileError, match=message) as caught:
        load_model(path)
    assert name in str(caught.value)


def test_the_good_file_still_loads(good):
    assert load_model(good).config.hidden_channels == 4
