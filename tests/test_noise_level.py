"""Noise-level estimation: the estimators on images of known noise, ``fdn estimate-noise``, and
``--sigma auto`` in ``fdn eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fdn
from fdn import pretrained
from fdn.choices import DEFAULT_NOISE_ESTIMATOR
from fdn.cli import main
from fdn.model import residual_sigma
from fdn.noise import AWGN
from fdn.noise_level import METHODS, estimate_noise, flow_model_name
from fdn.pretrained import load_pretrained, model_record

from helpers import load_script, records_from

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN = SHARED / "data" / "train" / "CBSD432"


def smooth_image(size: int = 192, channels: int = 3) -> np.ndarray:
    """A smooth (H, W, C) float image in [0.1, 0.9]: gradients and slow waves, no texture."""
    rows, columns = np.mgrid[0:size, 0:size] / size
    planes = [
        0.5 + 0.2 * np.sin(2 * math.pi * (rows + phase)) * np.cos(math.pi * columns) + 0.1 * rows
        for phase in np.linspace(0, 0.5, channels)
    ]
    return np.clip(np.stack(planes, axis=2), 0.1, 0.9).astype(np.float32)


def noisy(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return AWGN(sigma).sample(clean, seed)


# The estimators


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [5, 25, 50])
@pytest.mark.parametrize("method", ["mad", "pca"])
def test_classical_estimates_are_within_15_percent_on_smooth_images(method, sigma, channels):
    # Measured (seed 0, 192 x 192), sigma 5 / 25 / 50: mad 4.88 / 24.39 / 48.78 grey,
    # 5.01 / 25.05 / 50.10 colour; pca 5.00 / 24.99 / 50.06 grey, 4.98 / 24.88 / 49.78 colour.
    # The clean image: 0.007 (mad), 0.000 (pca).
    estimate = estimate_noise(noisy(smooth_image(channels=channels), sigma), method)
    assert abs(estimate - sigma) <= 0.15 * sigma, estimate


@pytest.mark.parametrize("method", ["mad", "pca"])
def test_a_clean_smooth_image_gives_a_small_estimate(method):
    assert estimate_noise(smooth_image(), method) < 1.0


def test_the_flow_estimate_is_close_on_a_noisy_smooth_image():
    for sigma in (15, 50):
        estimate = estimate_noise(noisy(smooth_image(96), sigma), "flow")
        assert abs(estimate - sigma) <= 0.25 * sigma, (sigma, estimate)


def test_the_flow_is_calibrated_for_the_bundled_models():
    # A release drops the record's noise_calibration (the residual the raw estimate measures
    # changes): this fails until it is fitted again (benchmarks/noise_estimation.py --fit
    # --write, as release_models.py says).
    for channels in (3, 1):
        name = flow_model_name(channels)
        curve = model_record(name).get("noise_calibration")
        assert curve, f"{name}: no noise_calibration in models.json: fit it again"
        assert len(curve["sigmas"]) == len(curve["raw"]) and all(np.diff(curve["raw"]) > 0)
        assert all(np.diff(curve["sigmas"]) > 0)


def test_a_model_without_its_calibration_gives_the_raw_estimate(monkeypatch):
    image = noisy(smooth_image(48, channels=1), 25)
    name = flow_model_name(1)
    raw = estimate_noise(image, "flow", calibrate=False)
    assert estimate_noise(image, "flow") != pytest.approx(raw, abs=0.01)  # calibrated
    record = dict(model_record(name))
    del record["noise_calibration"]
    records_from(monkeypatch, {name: record})
    assert estimate_noise(image, "flow") == raw


def test_the_fit_prints_or_writes_the_curve_the_estimator_reads(tmp_path, monkeypatch, capsys):
    fitting = load_script("noise_estimation", "benchmarks")
    table = tmp_path / "models.json"
    table.write_text(pretrained.MODELS_JSON.read_text())

    def images(folder, sigma, limit, seed):  # three grey images that carry their sigma
        for index in range(3):
            yield f"img{index}", np.full((16, 16, 1), sigma, np.float32)

    # A raw estimate of 0.9 sigma + 1: the curve maps it back to sigma.
    monkeypatch.setattr(fitting, "noisy_images", images)
    monkeypatch.setattr(
        fitting, "estimate_noise", lambda image, *_, **__: 0.9 * image[0, 0, 0] + 1
    )
    argv = ["--fit", "--data", str(tmp_path / "Train400"), "--models-json", str(table)]
    assert fitting.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert table.read_text() == pretrained.MODELS_JSON.read_text()
    assert fitting.main([*argv, "--write"]) == 0
    written = json.loads(table.read_text())
    curve = written["fdn-grey-blind"]["noise_calibration"]
    assert curve == printed["fdn-grey-blind"] and "fdn-color-blind" not in printed
    assert curve["images"] == 3 and curve["seed"] == 1
    assert curve["raw"] == [round(0.9 * sigma + 1, 3) for sigma in curve["sigmas"]]
    records_from(monkeypatch, written)
    image = noisy(smooth_image(48, channels=1), 25)
    raw = estimate_noise(image, "flow", calibrate=False)
    assert estimate_noise(image, "flow") == pytest.approx((raw - 1) / 0.9)


def test_the_raw_flow_estimate_is_the_residual_sigma_the_strength_reads():
    # One statistic for the noise estimator and the default strength (fdn.model).
    image = noisy(smooth_image(48), 25)
    model = load_pretrained(flow_model_name(3))
    y = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        expected = residual_sigma(y, model.denoise(y, 1.0)).item()
    assert estimate_noise(image, "flow", calibrate=False) == pytest.approx(expected, rel=1e-5)


def test_inputs_of_every_kind_give_the_same_estimate():
    image = np.clip(noisy(smooth_image(64), 25), 0, 1)
    as_uint8 = np.rint(image * 255).astype(np.uint8)
    as_uint16 = as_uint8.astype(np.uint16) * 257
    with_alpha = np.concatenate([as_uint8, np.full_like(as_uint8[..., :1], 255)], axis=2)
    values = [estimate_noise(a, "mad") for a in (as_uint8, as_uint16, with_alpha)]
    assert values[0] == pytest.approx(values[1], rel=1e-5) == pytest.approx(values[2])
    grey = estimate_noise(as_uint8[..., 0], "mad")
    assert grey == pytest.approx(estimate_noise(as_uint8[..., :1], "mad"))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method"):
        estimate_noise(smooth_image(16), "nope")
    with pytest.raises(ValueError, match="too small"):
        estimate_noise(np.zeros((3, 3)), "pca")
    with pytest.raises(ValueError, match="dtype"):
        estimate_noise(np.zeros((8, 8), dtype=np.int64), "mad")


def test_the_api_exports_it_lazily():
    assert fdn.estimate_noise is estimate_noise
    assert "estimate_noise" in fdn.__all__
    assert set(METHODS) >= {"mad", "pca", "flow"}


@pytest.mark.skipif(not TRAIN.is_dir(), reason="needs ../shared/data/train")
def test_real_photographs_estimate_close():
    path = sorted(TRAIN.iterdir())[0]
    from fdn.images import read_array

    clean = read_array(path)[:160, :160]
    for method in ("pca", "flow"):
        estimate = estimate_noise(noisy(clean, 25), method)
        assert abs(estimate - 25) <= 5, (method, estimate)


# fdn estimate-noise


def write_noisy(folder: Path, sigmas: dict[str, float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sigma in sigmas.items():
        pixels = np.clip(noisy(smooth_image(64), sigma), 0, 1)
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_cli_prints_a_table_of_every_file(tmp_path, capsys):
    folder = write_noisy(tmp_path / "in", {"a.png": 10, "b.png": 40})
    assert main(["estimate-noise", str(folder), "--method", "mad", "pca"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "mad", "pca"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    assert set(rows) == {str(folder / "a.png"), str(folder / "b.png")}
    assert all(abs(v - 10) < 2 for v in rows[str(folder / "a.png")])
    assert all(abs(v - 40) < 6 for v in rows[str(folder / "b.png")])


def test_cli_json(tmp_path, capsys):
    folder = write_noisy(tmp_path / "in", {"a.png": 20})
    assert main(["estimate-noise", str(folder / "a.png"), "--method", "pca", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["file"] for row in rows] == [str(folder / "a.png")]
    assert set(rows[0]["sigma"]) == {"pca"} and abs(rows[0]["sigma"]["pca"] - 20) < 3


def test_cli_names_a_bad_file_on_one_line(tmp_path, capsys):
    folder = write_noisy(tmp_path / "in", {"a.png": 20})
    (folder / "broken.png").write_bytes(b"not a png")
    assert main(["estimate-noise", str(folder), "--method", "mad"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert str(folder / "a.png") in captured.out  # the good file is still reported
    assert main(["estimate-noise", str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err


def test_cli_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["estimate-noise", "--help"])
    text = capsys.readouterr().out
    for option in ("--method", "--json", "--device"):
        assert option in text


# --sigma auto


def test_eval_with_sigma_auto_tells_bm3d_the_estimate(tmp_path, capsys):
    pytest.importorskip("bm3d")
    data = tmp_path / "tiny"
    data.mkdir()
    for i in range(2):
        pixels = np.rint(smooth_image(64) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(data / f"img{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "--baselines", "bm3d", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--sigma", "25", "auto", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "estimated sigma" in table
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["sigma_given"] == f"auto ({DEFAULT_NOISE_ESTIMATOR})"
    given = [row["told"] for row in results["images"]]
    assert len(given) == 2 and all(g != 25 and abs(g - 25) < 5 for g in given)
