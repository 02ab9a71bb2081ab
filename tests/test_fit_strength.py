"""scripts/fit_strength.py: a model's strength curve, fitted on its held-back images."""

import hashlib
import json

import numpy as np
import pytest

from fdn import save_model
from fdn.training import build_model
from test_training import small_config

from helpers import load_script, make_images


@pytest.fixture(scope="module")
def fit_strength():
    return load_script("fit_strength")


def held_back_config(tmp_path):
    """A small run's config that holds back 2 of its 6 training images to score models on."""
    images = make_images(tmp_path / "data", counts=(("train", 6), ("val", 1)))
    return small_config(images, tmp_path, "data.holdout=2", "validation.folder=''")


@pytest.fixture
def released(tmp_path):
    """A weights folder with one small model whose stage held back 2 training images."""
    config = held_back_config(tmp_path)
    model = build_model(config).eval()
    weights = tmp_path / "weights"
    weights.mkdir()
    save_model(model, weights / "tiny.safetensors")
    table = {"tiny": {"file": "tiny.safetensors", "stage_config": config.to_dict()}}
    (weights / "models.json").write_text(json.dumps(table))
    return weights


def test_the_best_strength_per_sigma_is_kept_where_it_gains_enough(
    released, fit_strength, monkeypatch
):
    # PSNR by strength (0, 0.05, ..., 1) per sigma: at 5 the best is 0.6, +0.5 dB; at 25 the
    # best is 0.95 but gains only 0.01 dB, under min_gain: 1 is kept.
    strengths = fit_strength.STRENGTHS
    results = [
        (np.array([30 - abs(s - 0.6) for s in strengths]), 3.0),  # sigma 5
        (np.array([30 - 0.01 * (s != 0.95) - (s < 0.9) for s in strengths]), 20.0),  # 25
    ]
    calls = []

    def scores(model, images, strengths_, patience):
        calls.append(len(images))
        return results[len(calls) - 1]

    monkeypatch.setattr(fit_strength, "scores", scores)
    table = json.loads((released / "models.json").read_text())
    curve = fit_strength.fit(table, "tiny", released, None, (5.0, 25.0), strengths, 0.02)
    assert calls == [2, 2]  # the two held-back images, once per sigma
    assert curve["sigmas"] == [3.0, 20.0] and curve["awgn_sigmas"] == [5.0, 25.0]
    assert curve["strengths"] == [0.6, 1.0]
    assert curve["gain_db"] == [pytest.approx(0.4), 0.0]


def test_fitting_writes_the_curve_that_load_pretrained_reads(released, fit_strength, monkeypatch):
    from fdn.pretrained import load_pretrained

    strengths = fit_strength.STRENGTHS
    results = iter([(np.array([20 - abs(s - 0.5) for s in strengths]), 4.0), (np.ones(21), 9.0)])
    monkeypatch.setattr(fit_strength, "scores", lambda *_: next(results))
    argv = ["tiny", "--weights", str(released), "--sigmas", "5", "50"]
    assert fit_strength.main(argv) == 0
    record = json.loads((released / "models.json").read_text())["tiny"]
    curve = record["strength_curve"]
    assert curve["sigmas"] == [4.0, 9.0] and curve["strengths"] == [0.5, 1.0]
    assert curve["fitted_on"] == "2 held-back images of train"
    record["sha256"] = hashlib.sha256((released / "tiny.safetensors").read_bytes()).hexdigest()
    (released / "models.json").write_text(json.dumps({"tiny": record}))
    model = load_pretrained("tiny", folder=released)
    assert model.strength_curve.sigmas == (4.0, 9.0)
    assert model.strength_curve.strengths == (0.5, 1.0)


def test_what_others_write_while_it_fits_is_kept(released, fit_strength, monkeypatch):
    # The fit takes minutes; release_models.py --psnr may write models.json meanwhile.
    path = released / "models.json"

    def scores_and_a_write_meanwhile(*_):
        table = json.loads(path.read_text())
        table["tiny"]["psnr_db"] = {"BSD68": {"sigma25": 28.0}}
        table["other"] = {"file": "other.safetensors"}
        path.write_text(json.dumps(table))
        return np.array([20 - abs(s - 0.5) for s in fit_strength.STRENGTHS]), 4.0

    monkeypatch.setattr(fit_strength, "scores", scores_and_a_write_meanwhile)
    assert fit_strength.main(["tiny", "--weights", str(released), "--sigmas", "5"]) == 0
    table = json.loads(path.read_text())
    assert table["tiny"]["strength_curve"]["strengths"] == [0.5]
    assert table["tiny"]["psnr_db"] == {"BSD68": {"sigma25": 28.0}} and "other" in table


def test_a_model_released_again_while_it_fits_gets_no_stale_curve(
    released, fit_strength, monkeypatch
):
    path = released / "models.json"

    def scores_and_a_release_meanwhile(*_):
        table = json.loads(path.read_text())
        table["tiny"]["sha256"] = "0" * 64
        path.write_text(json.dumps(table))
        return np.array([20 - abs(s - 0.5) for s in fit_strength.STRENGTHS]), 4.0

    monkeypatch.setattr(fit_strength, "scores", scores_and_a_release_meanwhile)
    with pytest.raises(SystemExit, match="released again"):
        fit_strength.main(["tiny", "--weights", str(released), "--sigmas", "5"])
    assert "strength_curve" not in json.loads(path.read_text())["tiny"]


def mild_model_and_images(seed, noise):
    """A small float64 model and two noisy/clean pairs, as ``load_validation`` gives them."""
    import torch

    from helpers import mild_model

    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(2, 1, 3, 18, 22, generator=generator, dtype=torch.float64)
    noisy = clean + noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return mild_model().double().eval(), [("a", noisy[0], clean[0]), ("b", noisy[1], clean[1])]


def test_the_scores_are_those_of_fdn_denoise_at_each_strength(fit_strength):
    from fdn.metrics import psnr
    from fdn.model import residual_sigma

    model, images = mild_model_and_images(0, 0.1)
    means, residual = fit_strength.scores(model, images, (0.3, 1.0), patience=0)
    for k, strength in enumerate((0.3, 1.0)):
        expected = np.mean([psnr(model.denoise(y, strength), x).item() for _, y, x in images])
        assert means[k] == pytest.approx(expected, abs=1e-9)
    expected = np.mean([residual_sigma(y, model.denoise(y, 1.0)).item() for _, y, _ in images])
    assert residual == pytest.approx(expected, abs=1e-9)


def test_the_walk_down_the_grid_stops_patience_strengths_past_the_best(fit_strength):
    # Noise strong enough for this model's PSNR to peak inside the grid (at 0.35).
    model, images = mild_model_and_images(1, 0.4)
    grid = fit_strength.STRENGTHS
    full, residual_full = fit_strength.scores(model, images, grid, patience=0)
    assert not np.isnan(full).any()
    # The walk in the order it goes (1 first), on the whole grid's scores: where it must stop.
    walk = full[::-1]
    best_at = [int(np.argmax(walk[: k + 1])) for k in range(len(walk))]
    for patience in (1, 2, 3):
        stop = next((k for k in range(len(walk)) if k - best_at[k] >= patience), len(walk) - 1)
        means, residual = fit_strength.scores(model, images, grid, patience=patience)
        scored = ~np.isnan(means[::-1])
        assert scored.tolist() == [k <= stop for k in range(len(walk))]
        assert stop < len(walk) - 1  # it stopped before the grid's end
        assert np.nanargmax(means) == np.argmax(full)  # and found the whole grid's best
        np.testing.assert_allclose(means[::-1][scored], walk[scored], atol=1e-12)
        assert residual == pytest.approx(residual_full, abs=1e-12)


def test_what_the_walk_skipped_is_never_chosen(released, fit_strength, monkeypatch):
    # Scores as the walk leaves them: 1 and 0.95 and 0.9 scored, the rest skipped (NaN).
    means = np.full(len(fit_strength.STRENGTHS), np.nan)
    means[-3:] = [30.2, 30.5, 30.0]
    monkeypatch.setattr(fit_strength, "scores", lambda *_: (means, 4.0))
    table = json.loads((released / "models.json").read_text())
    curve = fit_strength.fit(table, "tiny", released, None, (5.0,))
    assert curve["strengths"] == [0.95] and curve["gain_db"] == [pytest.approx(0.5)]


def test_a_negative_patience_is_refused(released, fit_strength, capsys):
    with pytest.raises(SystemExit):
        fit_strength.main(["tiny", "--weights", str(released), "--patience", "-1"])
    assert "--patience must be 0 or more" in capsys.readouterr().err


def test_a_residual_that_does_not_grow_with_sigma_is_refused(released, fit_strength, monkeypatch):
    results = iter([(np.ones(21), 9.0), (np.ones(21), 8.0)])
    monkeypatch.setattr(fit_strength, "scores", lambda *_: next(results))
    table = json.loads((released / "models.json").read_text())
    with pytest.raises(SystemExit, match="does not grow"):
        fit_strength.fit(table, "tiny", released, None, (5.0, 50.0))
