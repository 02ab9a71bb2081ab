import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import fdn
from fdn import FDN, ModelFileError, load_model, save_model
from fdn.layers import ActNorm

from helpers import randomize


def small_fdn(**overrides) -> FDN:
    return FDN(**{"hidden_channels": 4, "steps_per_block": 2, **overrides})


@pytest.fixture
def trained_file(tmp_path):
    torch.manual_seed(0)
    model = randomize(small_fdn(), shape=(4, 3, 8, 8)).float()
    return model, save_model(model, tmp_path / "model.safetensors")


def test_round_trip_gives_identical_outputs(trained_file):
    model, path = trained_file
    loaded = load_model(path)
    assert loaded.config == model.config
    assert not loaded.training
    y = torch.rand(2, 3, 12, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(y)[0], model.encode(y)[0])
        assert torch.equal(loaded.denoise(y), model.denoise(y))


def test_actnorm_initialised_state_survives_save_load(trained_file):
    model, path = trained_file
    loaded = load_model(path).train()
    actnorms = [m for m in loaded.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    with torch.no_grad():
        loaded(torch.randn(4, 3, 8, 8) * 9 + 4)  # training-mode forward must not re-init
    for before, after in zip(
        model.state_dict().values(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(before, after)


def test_config_round_trips_for_a_grey_model(tmp_path):
    model = small_fdn(in_channels=1, clean_fraction=0.5, num_blocks=1)
    loaded = load_model(save_model(model, tmp_path / "grey.safetensors"))
    assert loaded.config == model.config


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_model(small_fdn(), tmp_path / "a" / "m.safetensors")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.safetensors"]
    assert (tmp_path / "a" / "m.safetensors").stat().st_mode & 0o044  # readable by others


def test_file_records_version_and_config(trained_file):
    from safetensors import safe_open

    _, path = trained_file
    with safe_open(path, framework="pt") as archive:
        metadata = archive.metadata()
    assert metadata["fdn_version"] == fdn.__version__
    assert json.loads(metadata["config"])["hidden_channels"] == 4


def bad_file(kind: str, good, tmp_path):
    model, path = good
    target = tmp_path / f"{kind}.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "fdn.model",
        "format_version": "1",
        "config": json.dumps(model.config.to_dict()),
    }
    if kind == "missing":
        target = tmp_path / "nope.safetensors"
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "garbage":
        target.write_bytes(b"this is not a model at all, just text\n" * 10)
    elif kind == "pickle":
        target.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "torch_save":
        torch.save(model.state_dict(), target)
    elif kind == "truncated":
        target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "no_metadata":
        save_file(tensors, target)
    elif kind == "unknown_config_key":
        metadata["config"] = json.dumps({**model.config.to_dict(), "attention_heads": 8})
        save_file(tensors, target, metadata=metadata)
    elif kind == "invalid_config_value":
        metadata["config"] = json.dumps({**model.config.to_dict(), "clean_fraction": 2})
        save_file(tensors, target, metadata=metadata)
    elif kind == "malformed_config":
        metadata["config"] = "{not json"
        save_file(tensors, target, metadata=metadata)
    elif kind == "future_format":
        metadata["format_version"] = "99"
        save_file(tensors, target, metadata=metadata)
    elif kind == "missing_key":
        tensors.pop(next(iter(tensors)))
        save_file(tensors, target, metadata=metadata)
    elif kind == "extra_key":
        save_file({**tensors, "head.weight": torch.zeros(3)}, target, metadata=metadata)
    elif kind == "wrong_shape":
        name = next(k for k in tensors if k.endswith("weight"))
        tensors[name] = torch.zeros(tensors[name].numel() + 1)
        save_file(tensors, target, metadata=metadata)
    elif kind == "directory":
        target.mkdir()
    return target


BAD_FILES = {
    "missing": "no such file",
    "directory": "not a file",
    "empty": "empty file",
    "garbage": "truncated or corrupt",
    "pickle": "never unpickles",
    "torch_save": "never unpickles",
    "truncated": "truncated or corrupt",
    "no_metadata": "not an fdn model file",
    "unknown_config_key": "unknown keys: attention_heads",
    "invalid_config_value": "invalid config: clean_fraction",
    "malformed_config": "malformed config",
    "future_format": "format '99' is not supported",
    "missing_key": "missing tensors",
    "extra_key": "unexpected tensors head.weight",
    "wrong_shape": "has shape",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_model_files_get_one_clear_error(kind, trained_file, tmp_path):
    path = bad_file(kind, trained_file, tmp_path)
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert BAD_FILES[kind] in message
    assert "\n" not in message


def test_float16_storage_halves_the_file_and_loads_as_float32(trained_file, tmp_path):
    model, full = trained_file
    half = save_model(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            expected = value.half().float()
            assert torch.equal(loaded.state_dict()[name], expected), name


def test_a_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    # This config's safetensors header happens to be 0x1c80 bytes long: the file starts 0x80.
    model = FDN(in_channels=1, hidden_channels=4, steps_per_block=1)
    path = save_model(model, tmp_path / "grey.safetensors")
    assert path.read_bytes()[:1] == b"\x80"
    assert load_model(path).config == model.config
