import hashlib
import json
import re
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fdn import FDN, ModelFileError, denoise_image
from fdn.cli import main
from fdn.images import read_image
from fdn.metrics import psnr
from fdn.pretrained import (
    DEFAULT_MODELS,
    available_models,
    load_pretrained,
    model_record,
    resolve_model,
    sample_image_paths,
)

WEIGHTS = Path(str(resources.files("fdn") / "weights"))


def as_batch(pixels):
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].double() / 255


def test_every_bundled_model_matches_its_checksum_and_record():
    assert set(DEFAULT_MODELS.values()) <= set(available_models())
    for name in available_models():
        record = model_record(name)
        data = (WEIGHTS / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        model = load_pretrained(name)
        assert isinstance(model, FDN) and not model.training
        assert model.config.to_dict() == record["config"]
        assert {"data", "iterations"} <= set(record["training"])


def test_the_model_card_lists_every_bundled_model_and_no_other():
    # docs/model-card.md's first table names what ships; a release that adds a model must
    # say there what it is for.
    card = (Path(__file__).resolve().parents[1] / "docs" / "model-card.md").read_text()
    table = card.split("\n## ")[0]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.MULTILINE)
    assert sorted(listed) == available_models()


@pytest.mark.parametrize("name", available_models())
def test_each_bundled_model_names_a_recipe_that_builds_its_architecture(name):
    # A reader who wants to reproduce or continue a bundled model finds its config in
    # models.json; the config's [model] must build exactly the released architecture.
    from fdn.config import load_config

    record = model_record(name)
    recipe = Path(__file__).resolve().parents[1] / record["recipe"]
    config = load_config(recipe)
    assert config.model.to_dict() == {**config.model.to_dict(), **record["config"]}
    assert record["stage_config"]["model"] == config.model.to_dict()


@pytest.mark.parametrize("name", available_models())
def test_bundled_models_denoise_clearly_better_than_the_noisy_input(name):
    model = load_pretrained(name)
    noisy_path, clean_path = sample_image_paths()
    noisy, clean = read_image(noisy_path).pixels, read_image(clean_path).pixels
    if model.config.in_channels == 1:  # the grey model on the photo's luminance
        weights = np.array([0.299, 0.587, 0.114])
        clean = np.rint(clean @ weights).astype(np.uint8)[:, :, None]
        rng = np.random.default_rng(0)
        noisy = np.clip(np.rint(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    noisy_db = psnr(as_batch(noisy), as_batch(clean)).item()
    denoised_db = psnr(as_batch(denoise_image(noisy, model)), as_batch(clean)).item()
    assert denoised_db > noisy_db + 5, (noisy_db, denoised_db)


@pytest.mark.parametrize(
    "name", [n for n in available_models() if "strength_curve" in model_record(n)]
)
def test_a_bundled_strength_curve_beats_strength_1_on_light_noise(name):
    # The curve was fitted on held-back training images; on the bundled sample photo (never
    # used to fit it) with light AWGN, the default denoise must still beat zeroing z_N.
    model = load_pretrained(name)
    clean = read_image(sample_image_paths()[1]).pixels
    if model.config.in_channels == 1:
        clean = np.rint(clean @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[:, :, None]
    rng = np.random.default_rng(0)
    noisy = np.clip(np.rint(clean + rng.normal(0, 5, clean.shape)), 0, 255).astype(np.uint8)
    by_default = psnr(as_batch(denoise_image(noisy, model)), as_batch(clean)).item()
    at_1 = psnr(as_batch(denoise_image(noisy, model, strength=1)), as_batch(clean)).item()
    # At least the least gain the fit keeps a strength below 1 for.
    assert by_default > at_1 + model_record(name)["strength_curve"]["min_gain_db"], (
        by_default,
        at_1,
    )


def test_a_damaged_bundled_model_is_refused(tmp_path):
    name = DEFAULT_MODELS[3]
    record = model_record(name)
    copy = tmp_path / "weights"
    copy.mkdir()
    data = bytearray((WEIGHTS / record["file"]).read_bytes())
    data[-1] ^= 0xFF
    (copy / record["file"]).write_bytes(bytes(data))
    (copy / "models.json").write_text(json.dumps({name: record}))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_pretrained(name, folder=copy)


def test_resolve_model_by_name_path_or_channels(tmp_path):
    assert resolve_model(None, 3).config.in_channels == 3
    assert resolve_model(None, 1).config.in_channels == 1
    assert resolve_model(DEFAULT_MODELS[1], 3).config.in_channels == 1
    with pytest.raises(ValueError, match="neither a file nor a bundled model"):
        resolve_model("fdn-colour-typo", 3)


def test_denoise_without_model_picks_grey_or_colour(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / "g.png")
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "c.png"), str(tmp_path / "g.png"), "-o", str(out)]) == 0
    assert read_image(out / "c.png").mode == "RGB" and read_image(out / "g.png").mode == "L"
    named = tmp_path / "named"
    argv = ["denoise", str(tmp_path / "c.png"), "-o", str(named), "--model", DEFAULT_MODELS[1]]
    assert main(argv) == 0
    assert read_image(named / "c.png").mode == "RGB"  # per channel through the grey model


def test_demo_is_the_readme_main_job_and_is_fast(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path)]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert str(tmp_path / "astronaut_denoised.png") in out
    assert str(tmp_path / "astronaut_comparison.png") in out
    found = re.search(r"PSNR: noisy ([\d.]+) dB -> denoised ([\d.]+) dB", out)
    assert found and float(found[2]) > float(found[1]) + 5
    with Image.open(tmp_path / "astronaut_comparison.png") as figure:
        assert figure.width == 3 * 256 + 2 * 8 and figure.height > 256
    assert seconds < 60
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ".venv/bin/fdn demo" in readme


def test_the_api_takes_bundled_names():
    import numpy as np

    import fdn

    model = fdn.load_model("fdn-grey-blind")
    assert model.config.in_channels == 1 and not model.training
    noisy = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    by_name = fdn.denoise_image(noisy, "fdn-grey-blind")
    assert np.array_equal(by_name, fdn.denoise_image(noisy, model))
    assert np.array_equal(by_name, fdn.denoise_image(noisy))  # grey: the grey model
    with pytest.raises(fdn.ModelFileError, match="no such file"):
        fdn.load_model("fdn-no-such-model")
    with pytest.raises(ValueError, match="neither a file nor a bundled model"):
        fdn.denoise_image(noisy, "fdn-no-such-model")
