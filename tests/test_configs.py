import json
from pathlib import Path

import pytest

from fdn.config import load_config
from fdn.training import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


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


@pytest.mark.slow
def test_the_smoke_config_trains_on_images_it_draws(tmp_path):
    from fdn.training import train

    config = load_config(
        ROOT / "configs" / "smoke.toml",
        [f"data.root={tmp_path}", "training.iterations=100", "validation.every=100"],
    )
    result = train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert len(list((tmp_path / "fdn-smoke-data").glob("*.png"))) == 40
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    noisy, trained = rows[0]["val_psnr_noisy"], rows[-1]["val_psnr"]
    assert trained > noisy + 0.5  # it learns to denoise within 100 steps
    assert result.model_file.is_file()
