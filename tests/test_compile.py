"""training.compile: the training step through torch.compile, one graph compiled once."""

import pytest
import torch

from fdn import load_model, save_model
from fdn.config import ConfigError, config_for_resume, load_config
from fdn.layers import ActNorm
from fdn.training import _Objective, train
from test_training import small_config
from test_training_fast import losses

from helpers import make_images, mild_model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), counts=(("train", 8), ("val", 2)))


def test_a_loaded_models_training_loss_is_one_graph(tmp_path):
    # Each ActNorm asked its `initialized` buffer on every training forward: a device sync
    # per layer per step on a GPU, and under torch.compile a break in the graph at each one
    # (12 graphs for the colour model's loss). The buffer is now read once, as it is loaded.
    save_model(mild_model(), tmp_path / "model.safetensors")
    model = load_model(tmp_path / "model.safetensors").train()
    config = load_config(None, ["model.hidden_channels=8", "model.steps_per_block=2"])
    objective = _Objective(model, config)
    clean = torch.rand(2, 3, 16, 16)
    noisy = clean + 0.1 * torch.randn_like(clean)
    explained = torch._dynamo.explain(lambda n, c: objective(n, c, 5)["loss"])(noisy, clean)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_an_actnorm_that_loads_an_uninitialised_state_initialises_again():
    layer = ActNorm(3).train()
    layer(torch.randn(8, 3, 4, 4) * 5 + 2)  # initialised by this batch
    layer.load_state_dict(ActNorm(3).state_dict())  # a fresh layer's state
    y, _ = layer(torch.randn(8, 3, 4, 4) * 3 - 1)
    assert bool(layer.initialized)
    assert abs(y.mean().item()) < 1e-4 and abs(y.std(correction=0).item() - 1) < 1e-3


def test_compiled_training_takes_the_eager_steps_and_compiles_once(images, tmp_path):
    # From trained weights, as every run of the bundled models starts: the step is captured
    # whole (backend aot_eager, "check") and not again as the step number changes.
    save_model(mild_model(), tmp_path / "start.safetensors")
    base = (
        "validation.every=0",
        "training.iterations=5",
        "model.hidden_channels=8",
        "model.steps_per_block=2",
        f"training.init='{tmp_path / 'start.safetensors'}'",
    )
    quiet = {"progress": False, "log": lambda _: None}
    train(small_config(images, tmp_path, *base), tmp_path / "eager", **quiet)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = small_config(images, tmp_path, *base, "training.compile='check'")
    train(compiled, tmp_path / "compiled", **quiet)
    assert counters["stats"]["unique_graphs"] == 1
    eager, check = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == len(check) == 5
    assert check == pytest.approx(eager, rel=1e-4, abs=1e-6)


def test_compile_is_one_of_the_choices_and_may_change_on_resume():
    with pytest.raises(ConfigError, match=r"training\.compile"):
        load_config(None, ["training.compile='fast'"])
    config = config_for_resume(load_config(None), ["training.compile='cudagraphs'"])
    assert config.training.compile == "cudagraphs"
