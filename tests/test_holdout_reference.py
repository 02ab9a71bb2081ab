"""scripts/holdout_reference.py: a baseline scored on exactly the noisy images that a run's
validation scores, for a reference line beside its curve."""

import pytest

from fdn.config import load_config
from fdn.data import load_validation
from fdn.metrics import psnr
from test_training import small_config

from helpers import load_script, make_images


@pytest.fixture(scope="module")
def script():
    return load_script("holdout_reference")


def test_the_reference_is_the_baseline_on_the_validation_images(tmp_path, script, monkeypatch):
    images = make_images(tmp_path / "data", counts=(("train", 6), ("val", 1)))
    small_config(images, tmp_path)
    config_path = tmp_path / "small.toml"
    text = config_path.read_text().replace("sigma_range = [0, 55]", "sigma = 30")
    config_path.write_text(text)
    # A stand-in baseline that returns its input, so the score is known: the mean PSNR of
    # the noisy input, computed from the validation images themselves.
    seen = []

    class Identity:
        def denoise(self, noisy, sigma):
            seen.append(sigma)
            return noisy

    monkeypatch.setitem(script.METHODS, "bm3d", Identity)
    value = script.reference_psnr(config_path, "bm3d")
    validation = load_validation(load_config(config_path))
    expected = sum(psnr(n, c).item() for _, n, c in validation) / len(validation)
    assert value == pytest.approx(expected) and seen == [30] * len(validation)


def test_a_blind_run_has_no_single_reference(tmp_path, script):
    images = make_images(tmp_path / "data", counts=(("train", 4), ("val", 1)))
    small_config(images, tmp_path)  # sigma drawn from [0, 55]
    with pytest.raises(SystemExit, match=r"one fixed data\.sigma"):
        script.reference_psnr(tmp_path / "small.toml", "bm3d")
