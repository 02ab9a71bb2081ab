from pathlib import Path

import pytest

from fdn.config import load_config
from fdn.training import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_is_a_config_for_every_experiment_of_the_paper():
    names = {path.stem for path in CONFIGS}
    for dataset in ("celeba", "flowers", "birds"):
        assert {f"{dataset}_sigma{s}" for s in (15, 25, 50)} | {f"{dataset}_blind"} <= names
    for dataset in ("rice1", "rice2"):
        assert {f"{dataset}_sigma{s}" for s in (30, 50, 70)} <= names
    assert {"sidd_real", "natural_color_blind", "natural_grey_blind"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_validates_and_builds(path):
    config = load_config(path, ["data.root=/somewhere/else"])
    assert config.data.root == "/somewhere/else"
    # every config is validated: on a folder of its own or on images held back from training
    assert config.data.train and (config.validation.folder or config.data.holdout)
    assert build_model(config).config.in_channels == config.model.in_channels
