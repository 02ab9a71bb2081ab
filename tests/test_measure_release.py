import json
import sys

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def measure_release():
    return load_script("measure_release")


def fake_table(tmp_path, name="fdn-grey-blind", tests=("BSD68", "Set12")):
    """A models.json with one record and a data root holding its folders."""
    root = tmp_path / "data"
    (root / "train" / "Train400").mkdir(parents=True)
    for test in tests:
        (root / "test" / test).mkdir(parents=True)
    record = {"training": {"data": "train/Train400"}, "psnr_db": {t: {} for t in tests}}
    table = tmp_path / "models.json"
    table.write_text(json.dumps({name: record}))
    return root, table


def dry_run(measure_release, capsys, name, root, table, out):
    argv = [name, "--data-root", str(root), "--out", str(out), "--models-json", str(table)]
    assert measure_release.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_steps_follow_the_record(tmp_path, capsys, measure_release):
    root, table = fake_table(tmp_path)
    lines = dry_run(measure_release, capsys, "fdn-grey-blind", root, table, tmp_path / "out")
    lane1 = [line for line in lines if line.startswith("lane1: ")]
    lane2 = [line for line in lines if line.startswith("lane2: ")]
    assert len(lane1) == 7 and len(lane2) == 2
    assert f"fit_strength.py fdn-grey-blind --data-root {root}" in lane1[0]
    # Strength 1 on every test set the record was scored on, then into the record.
    assert f"--data {root / 'test' / 'BSD68'} {root / 'test' / 'Set12'}" in lane1[1]
    assert lane1[1].endswith("--strength 1") and "--psnr fdn-grey-blind=" in lane1[2]
    # The default strength only where the curve can change the scores.
    assert all(
        line.endswith("(if a strength curve below 1 at the test sigmas)") for line in lane1[3:5]
    )
    # Then what the model card shows of the releases: its figure drawn again, and the table.
    figure = measure_release.ROOT / "docs" / "figures" / "releases-grey.svg"
    assert lane1[5].endswith(f"release_models.py --figure fdn-grey-blind {figure}")
    assert lane1[6].endswith("release_models.py --table fdn-grey-blind")
    assert (
        f"ood_calibration.py --write --data fdn-grey-blind={root / 'train' / 'Train400'}"
        in (lane2[0])
    )
    assert f"--measure fdn-grey-blind={root / 'test' / 'BSD68'}" in lane2[0]  # reported only
    assert "noise_estimation.py --fit --write" in lane2[1]


def test_a_record_just_released_takes_the_test_sets_of_the_last_release_scored(
    tmp_path, capsys, measure_release
):
    # release_models.py writes a new record without scores: the next command, this one, must
    # find its test sets all the same (it stopped with "names no test set" before).
    root, table = fake_table(tmp_path)
    records = json.loads(table.read_text())
    record = records["fdn-grey-blind"]
    record["releases"] = [
        {"holdout_psnr_db": 28.2, "psnr_db": {"BSD68": {}, "Set12": {}}},
        {"holdout_psnr_db": 28.3},  # the release just made
    ]
    del record["psnr_db"]
    table.write_text(json.dumps(records))
    lines = dry_run(measure_release, capsys, "fdn-grey-blind", root, table, tmp_path / "out")
    assert any(f"--data {root / 'test' / 'BSD68'} {root / 'test' / 'Set12'}" in x for x in lines)
    record["releases"] = record["releases"][1:]
    table.write_text(json.dumps(records))
    with pytest.raises(SystemExit, match="names no test set"):
        dry_run(measure_release, capsys, "fdn-grey-blind", root, table, tmp_path / "out")


def test_the_ensemble_is_scored_only_when_asked_and_goes_to_its_own_key(
    tmp_path, capsys, measure_release
):
    root, table = fake_table(tmp_path)
    argv = ["fdn-grey-blind", "--data-root", str(root), "--out", str(tmp_path / "out")]
    argv += ["--models-json", str(table), "--dry-run"]
    assert measure_release.main(argv) == 0
    assert "--ensemble" not in capsys.readouterr().out
    assert measure_release.main([*argv, "--ensemble"]) == 0
    lane2 = [x for x in capsys.readouterr().out.splitlines() if x.startswith("lane2: ")]
    # After the guard and the noise fit; the default strength (no --strength), then the record
    # and the table of releases again, its new row now with the ensemble's scores.
    assert len(lane2) == 5 and "ood_calibration" in lane2[0]
    assert " eval --model fdn-grey-blind " in lane2[2] and lane2[2].endswith("--ensemble")
    assert "--strength" not in lane2[2]
    ensemble = tmp_path / "out" / "ensemble" / "results.json"
    assert lane2[3].endswith(f"--psnr-ensemble fdn-grey-blind={ensemble}")
    assert lane2[4].endswith("release_models.py --table fdn-grey-blind")


def test_only_the_noise_estimators_models_get_a_noise_fit(tmp_path, capsys, measure_release):
    root, table = fake_table(tmp_path, name="my-faces", tests=("faces",))
    lines = dry_run(measure_release, capsys, "my-faces", root, table, tmp_path / "out")
    assert not any("noise_estimation" in line for line in lines)
    assert sum(line.startswith("lane2: ") for line in lines) == 1
    # Nor a figure of releases (the model card has none for it); its table all the same.
    assert not any("--figure" in line for line in lines)
    lane1 = [line for line in lines if line.startswith("lane1: ")]
    assert lane1[-1].endswith("release_models.py --table my-faces")


def test_a_missing_folder_is_named(tmp_path, capsys, measure_release):
    root, table = fake_table(tmp_path)
    (root / "test" / "Set12").rmdir()
    with pytest.raises(SystemExit, match="Set12: no such folder"):
        dry_run(measure_release, capsys, "fdn-grey-blind", root, table, tmp_path / "out")
    with pytest.raises(SystemExit, match="no bundled model 'nope'"):
        dry_run(measure_release, capsys, "nope", root, table, tmp_path / "out")


def test_a_lane_skips_what_the_record_lacks_and_stops_at_a_failure(tmp_path, measure_release):
    _, table = fake_table(tmp_path)

    def writes(name):
        return [sys.executable, "-c", f"open({str(tmp_path / name)!r}, 'w')"]

    steps = [
        (writes("first"), None),
        (writes("curve"), measure_release.DEFAULT_DIFFERS),  # the record has no curve: skipped
        ([sys.executable, "-c", "raise SystemExit(3)"], None),
        (writes("after"), None),
    ]
    failures = []
    log = tmp_path / "lane.log"
    measure_release.run_lane(steps, "fdn-grey-blind", log, table, failures)
    assert (tmp_path / "first").exists()
    assert not (tmp_path / "curve").exists() and not (tmp_path / "after").exists()
    assert len(failures) == 1 and "exited 3" in failures[0]
    assert "skipped (needs a strength curve below 1 at the test sigmas)" in log.read_text()


def curve(strengths):
    """A strength curve at fit_strength's grid of sigmas."""
    sigmas = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0]
    return {"strength_curve": {"awgn_sigmas": sigmas, "strengths": strengths}}


@pytest.mark.parametrize(
    ("strengths", "differs"),
    [
        ([0.9, 1, 1, 1, 1, 1, 1, 1], False),  # the colour curve of 2026-11-27: sigma 5 only
        ([0.45, 0.7, 0.8, 0.85, 1, 1, 1, 1], True),  # the grey one
        ([0.5, 0.9, 1, 1, 1, 1, 1, 1], True),  # sigma 15's images read between 10 and 15
        ([1, 1, 1, 1, 1, 1, 1, 0.95], True),  # at sigma 50 itself
        ([1, 1, 1, 1, 1, 1, 0.9, 1], True),  # between 25 and 50
    ],
)
def test_the_default_eval_runs_only_where_the_curve_can_change_the_scores(
    measure_release, strengths, differs
):
    assert measure_release.default_strength_differs(curve(strengths)) is differs
    assert measure_release.default_strength_differs({}) is False  # no curve: strength 1
