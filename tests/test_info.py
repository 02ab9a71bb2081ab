"""``fdn info`` describes the bundled model by default, and the paper's FDN with --paper."""

import json

import pytest

import fdn
from fdn.cli import main
from fdn.pretrained import model_record


def _parameters(model: fdn.FDN) -> int:
    return sum(p.numel() for p in model.parameters())


def test_info_describes_the_bundled_colour_model(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["model", "fdn-color-blind", "(bundled,", "the", "default)"]
    bundled = _parameters(fdn.load_model("fdn-color-blind"))
    assert f"parameters       {bundled:,}" in lines
    assert "2 DownScale Flow Blocks x 4 Steps of Flow, Dense Blocks gc=16" in out
    record = model_record("fdn-color-blind")
    assert f"{record['cumulative']['iterations']:,} iterations" in out
    assert f"{record['holdout']['psnr_db']:.2f} dB" in out
    scores = " / ".join(f"{record['psnr_db']['CBSD68'][f'sigma{s}']:.2f}" for s in (15, 25, 50))
    assert f"CBSD68 sigma 15/25/50: {scores} dB" in out
    assert "configs/bundled_color_blind.toml" in out
    # The grey model, briefly.
    grey = _parameters(fdn.load_model("fdn-grey-blind"))
    assert "fdn-grey-blind" in out and f"{grey:,} parameters" in out
    assert "configs/bundled_grey_blind.toml" in out
    assert "4,375,680" not in out


def test_info_json_of_the_bundled_model(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "fdn-color-blind (bundled, the default)"
    assert info["parameters"] == _parameters(fdn.load_model("fdn-color-blind"))
    record = model_record("fdn-color-blind")
    assert info["training"]["cumulative"] == record["cumulative"]
    assert info["training"]["holdout_psnr_db"] == record["holdout"]["psnr_db"]
    assert info["training"]["recipe"] == "configs/bundled_color_blind.toml"
    assert info["also_bundled"]["fdn-grey-blind"]["parameters"] == _parameters(
        fdn.load_model("fdn-grey-blind")
    )


def test_info_paper_describes_the_paper_configuration(capsys):
    assert main(["info", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "paper" in out.splitlines()[0]
    assert "parameters       4,375,680" in out.splitlines()
    assert "2 DownScale Flow Blocks x 8 Steps of Flow, Dense Blocks gc=32" in out
    assert "fdn-color-blind" not in out


def test_info_of_a_named_bundled_model(capsys):
    assert main(["info", "--model", "fdn-grey-blind"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["model", "fdn-grey-blind"]
    grey = _parameters(fdn.load_model("fdn-grey-blind"))
    assert f"parameters       {grey:,}" in out.splitlines()
    assert "configs/bundled_grey_blind.toml" in out
    # The test-set PSNRs of the release in models.json, as recorded (each release changes them).
    bsd68 = model_record("fdn-grey-blind")["psnr_db"]["BSD68"]
    scores = " / ".join(f"{bsd68[f'sigma{s}']:.2f}" for s in (15, 25, 50))
    assert f"BSD68 sigma 15/25/50: {scores} dB" in out


def test_info_model_and_paper_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["info", "--paper", "--model", "fdn-grey-blind"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_info_says_at_which_batches_a_run_trained():
    # A run carried on by a GPU lending: most of its steps at the CPU's batch, the last ones
    # at the GPU's. Its record's batch_size alone (128) would misstate it.
    from fdn.info import _batches

    moved = {"batch_size": 128, "iterations": 6851, "batches": [[16, 5500], [128, 1351]]}
    assert _batches(moved) == "5,500 at batch 16, then 1,351 at batch 128"
    assert _batches({"batch_size": 16, "iterations": 100}) == "batch 16"  # older records
    assert _batches({**moved, "batches": [[16, 6851]]}) == "batch 16"


def test_info_says_whether_the_guard_and_the_noise_estimator_are_calibrated(monkeypatch):
    # A release drops both from the record until they are measured again.
    from fdn import info

    record = model_record("fdn-grey-blind")
    guard, curve = record["ood_guard"], record["noise_calibration"]
    lines = info.info_lines(info.describe("fdn-grey-blind"))
    threshold = guard["threshold_bits_per_dim"]
    assert (
        f"ood guard        warns above {threshold} bits/dim (calibrated on {guard['data']})"
        in (lines)
    )
    assert f"noise estimate   flow calibrated on {curve['images']} images of {curve['data']}" in (
        lines
    )
    released = {k: v for k, v in record.items() if k not in ("ood_guard", "noise_calibration")}
    monkeypatch.setattr(info, "model_record", lambda name: released)
    lines = info.info_lines(info.describe("fdn-grey-blind"))
    assert "ood guard        none (not calibrated for these weights: no warning)" in lines
    assert "noise estimate   flow uncalibrated for these weights (its raw residual)" in lines
    # The faces model is not one the noise estimator runs: no line about it.
    faces = info.info_lines(info.describe("fdn-faces-sigma50"))
    assert not any(line.startswith("noise estimate") for line in faces)
