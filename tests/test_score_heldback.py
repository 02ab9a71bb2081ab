"""scripts/score_heldback.py: models scored on a run's held-back images, at strength 1 and at
their best strength."""

import numpy as np
import pytest
import torch

from fdn import load_model, save_model
from fdn.config import load_config
from fdn.data import load_validation
from fdn.metrics import psnr
from fdn.runstate import to_toml
from fdn.training import build_model
from test_fit_strength import held_back_config

from helpers import load_script, randomize


@pytest.fixture(scope="module")
def score_heldback():
    return load_script("score_heldback")


@pytest.fixture
def run(tmp_path):
    """A run config that holds back 2 of 6 training images, and two small model files."""
    config = held_back_config(tmp_path)
    config_path = tmp_path / "config.toml"
    config_path.write_text(to_toml(config.to_dict()))  # as fdn train writes it
    files = []
    for seed in (1, 2):
        model = randomize(build_model(config), seed=seed, shape=(2, 3, 16, 16)).float().eval()
        files.append(str(tmp_path / f"m{seed}.safetensors"))
        save_model(model, files[-1])
    return config_path, files


def direct(config_path, model_file, sigma, strength):
    """The mean PSNR of ``FDN.denoise`` at ``strength`` over the run's held-back images."""
    config = load_config(config_path)
    config.validation.sigmas = [sigma]
    model = load_model(model_file).eval()
    with torch.no_grad():
        return np.mean(
            [
                psnr(model.denoise(noisy, strength=strength), clean).item()
                for _, noisy, clean in load_validation(config)
            ]
        )


def test_each_score_is_what_denoise_gives_at_that_strength(run, score_heldback):
    config_path, files = run
    strengths = (0.5, 0.75, 1.0)
    results = score_heldback.score(config_path, files, None, (10.0, 40.0), strengths)
    assert list(results) == files
    # The scores encode once and decode at each strength, denoise encodes each time: equal up
    # to float32 rounding, which moved a score by 1.7e-5 dB once (beyond approx's default
    # 1e-6 relative) when the CI's workers ran other threads; a wrong strength moves it by dB.
    same = {"abs": 1e-3}
    for file, row in results.items():
        for i, sigma in enumerate((10.0, 40.0)):
            at_1 = direct(config_path, file, sigma, 1.0)
            assert row["strength_1"][i] == pytest.approx(at_1, **same)
            best = row["best_strength"][i]
            assert best in strengths and row["best"][i] >= row["strength_1"][i]
            assert row["best"][i] == pytest.approx(direct(config_path, file, sigma, best), **same)
    # Two different models score differently: the scores come from the models.
    assert results[files[0]]["strength_1"] != results[files[1]]["strength_1"]


def test_the_command_prints_a_row_per_model_with_both_means(run, score_heldback, capsys):
    config_path, files = run
    assert score_heldback.main([str(config_path), *files, "--sigmas", "25"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| model | sigma 25: s1 / best | mean s1 | mean best |"
    rows = lines[2:4]
    assert [line.split(" | ")[0] for line in rows] == [f"| {file}" for file in files]
    for line in rows:
        mean_s1, mean_best = (float(cell) for cell in line.strip(" |").split(" | ")[-2:])
        assert mean_best >= mean_s1
    # Then the second model against the first, image by image.
    assert lines[4:] == [f"{files[1]} against {files[0]}: " + lines[4].split(": ", 1)[1]]
    assert "strength 1 " in lines[4] and "over 2 images; better on" in lines[4]


def test_the_comparison_is_image_by_image_against_the_first_model(run, score_heldback):
    config_path, files = run
    results = score_heldback.score(config_path, files, None, (10.0, 40.0), (0.5, 0.75, 1.0))
    first, second = results[files[0]], results[files[1]]
    # Two held-back images at each of two sigmas; their mean is the table's.
    assert len(second["images_1"]) == 4
    assert np.mean(second["images_1"][:2]) == pytest.approx(second["strength_1"][0])
    assert np.mean(second["images_best"][2:]) == pytest.approx(second["best"][1])
    differences = np.subtract(second["images_1"], first["images_1"])
    line = score_heldback.comparisons(results)[0]
    assert line.startswith(f"{files[1]} against {files[0]}: strength 1 {differences.mean():+.4f}")
    error = np.std(differences, ddof=1) / 2
    assert f"standard error {error:.4f} over 4 images; better on {(differences > 0).sum()}" in line


def test_a_run_without_held_back_images_is_an_error(run, score_heldback, tmp_path):
    config_path, files = run
    plain = tmp_path / "plain.toml"
    plain.write_text(config_path.read_text().replace("holdout = 2", "holdout = 0"))
    with pytest.raises(SystemExit, match="no held-back images"):
        score_heldback.score(plain, files[:1], None, (25.0,))


def test_a_checkpoint_scores_as_the_model_files_of_its_averages(tmp_path, score_heldback):
    # RUN/checkpoint.pt is the run's own average (what model.safetensors holds) and
    # RUN/checkpoint.pt@DECAY the one kept beside it (ema<DECAY>.safetensors at its last
    # validation, here the last step): a run scored between validations, as releases are.
    from fdn.training import train
    from test_training import small_config

    from helpers import make_images

    images = make_images(tmp_path / "data", counts=(("train", 8), ("val", 1)))
    settings = ("data.holdout=2", "validation.folder=''", "training.ema=0.9")
    config = small_config(images, tmp_path, *settings, "training.ema_extra=[0.1]", "optim.lr=1e-2")
    run = tmp_path / "run"
    train(config, run, progress=False, log=lambda _: None)
    specs = [f"{run}/checkpoint.pt", f"{run}/checkpoint.pt@0.1"]
    files = [str(run / "model.safetensors"), str(run / "ema0.1.safetensors")]
    results = score_heldback.score(run / "config.toml", specs + files, None, (25.0,), (0.8, 1.0))
    for spec, file in zip(specs, files, strict=True):
        assert results[spec] == results[file]
    assert results[specs[0]] != results[specs[1]]
    with pytest.raises(SystemExit, match=r"checkpoint\.pt@0\.5: .*training\.ema_extra: 0\.1"):
        score_heldback.model_of(f"{run}/checkpoint.pt@0.5")
    # @all is the run's own and every average beside it; @raw the weights without one.
    assert score_heldback.expanded([files[0], f"{run}/checkpoint.pt@all"]) == [files[0], *specs]
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    raw = score_heldback.model_of(f"{run}/checkpoint.pt@raw").state_dict()
    assert raw.keys() == checkpoint["model"].keys()
    assert all(torch.equal(raw[k], checkpoint["model"][k]) for k in raw)
    own = score_heldback.model_of(specs[0]).state_dict()
    assert not all(torch.equal(raw[k], own[k]) for k in raw)  # the average differs from it


def test_the_best_is_the_best_the_walk_scored(run, score_heldback, monkeypatch):
    # fit_strength.image_scores walks from strength 1 down and leaves what it skipped NaN: the
    # best is among what it scored (np.argmax would take the first NaN's strength).
    config_path, files = run
    strengths = (0.6, 0.7, 0.8, 0.9, 1.0)
    walked = np.array([[np.nan] * 2, [np.nan] * 2, [29.8, 30.0], [30.2, 30.4], [30.0, 30.2]])
    monkeypatch.setattr(score_heldback, "image_scores", lambda *_: (walked, 20.0))
    row = score_heldback.score(config_path, files[:1], None, (25.0,), strengths)[files[0]]
    assert row == {
        "strength_1": [pytest.approx(30.1)],
        "best": [pytest.approx(30.3)],
        "best_strength": [0.9],
        "images_1": [30.0, 30.2],
        "images_best": [30.2, 30.4],
    }
