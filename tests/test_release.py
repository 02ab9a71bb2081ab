"""scripts/release_models.py: a run replaces a bundled model only when it beats it on held-back
images, and the record sums the iterations and hours of every stage."""

import json
import re

import pytest
import torch

from fdn import load_model
from fdn.training import train
from test_training import small_config

from helpers import load_script, make_images


@pytest.fixture(scope="module")
def release_models():
    return load_script("release_models")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), counts=(("train", 8), ("val", 1)))


def run(images, tmp_path, name, *overrides):
    config = small_config(
        images, tmp_path, "data.holdout=2", "validation.folder=''", "training.ema=0.9", *overrides
    )
    train(config, tmp_path / name, progress=False, log=lambda _: None)
    return tmp_path / name


def scores(monkeypatch, module, values):
    # Each value as two images' PSNRs of that mean (differences between two runs' constant),
    # or a list: the images' PSNRs.
    queue = list(values)

    def validation_psnrs(model, images, device):
        value = queue.pop(0)
        return value if isinstance(value, list) else [value - 0.1, value + 0.1]

    monkeypatch.setattr(module, "validation_psnrs", validation_psnrs)


def test_release_then_refuse_then_continue(images, tmp_path, monkeypatch, capsys, release_models):
    weights = tmp_path / "weights"
    first = run(images, tmp_path, "first")
    # No release yet: the run is scored (model, then its float16 copy) and released.
    scores(monkeypatch, release_models, [21.0, 21.0])
    assert release_models.main(["tiny=" + str(first), "--weights", str(weights)]) == 0
    record = json.loads((weights / "models.json").read_text())["tiny"]
    stored = weights / "tiny.safetensors"
    assert record["sha256"] == release_models.sha256(stored)
    assert record["storage"] == "float16" and record["cumulative"]["iterations"] == 6
    assert record["holdout"]["psnr_db"] == 21.0 and len(record["releases"]) == 1
    assert load_model(stored).config.hidden_channels == 4

    # A run no better than the release on the held-back images leaves everything as it was.
    # Short by 0.0004 dB, it is told so: three decimals would show the two scores equal.
    second = run(images, tmp_path, "second", f"training.init='{stored}'")
    before = stored.read_bytes(), (weights / "models.json").read_text()
    capsys.readouterr()
    scores(monkeypatch, release_models, [20.9996, 21.0])
    release_models.main(["tiny=" + str(second), "--weights", str(weights)])
    assert (stored.read_bytes(), (weights / "models.json").read_text()) == before
    told = "20.9996 dB, release 21.0000 dB (-0.0004, standard error 0.0000 over 2 images; better"
    told += " on 0)"
    assert told in capsys.readouterr().out

    # A better one that continued the release adds its iterations to the record's.
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(second), "--weights", str(weights)])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert record["cumulative"]["iterations"] == 12
    assert [r["holdout_psnr_db"] for r in record["releases"]] == [21.0, 21.5]
    assert record["training"]["init"] == str(stored)


def test_a_gain_within_the_images_noise_is_not_released(
    images, tmp_path, monkeypatch, capsys, release_models
):
    weights = tmp_path / "weights"
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main([f"tiny={run(images, tmp_path, 'first')}", "--weights", str(weights)])
    second = run(images, tmp_path, "second", f"training.init='{weights / 'tiny.safetensors'}'")
    before = (weights / "models.json").read_text()
    # +0.3 on one image, -0.2 on the other: +0.05, standard error 0.25, 0.2 of one.
    run_scores, release_scores = [21.3, 20.8], [21.0, 21.0]
    capsys.readouterr()
    scores(monkeypatch, release_models, [run_scores, release_scores])
    release_models.main([f"tiny={second}", "--weights", str(weights)])
    assert (weights / "models.json").read_text() == before
    out = capsys.readouterr().out
    assert "(+0.0500, standard error 0.2500 over 2 images; better on 1)" in out
    assert "not released (the gain is 0.2 standard errors, under --min-standard-errors 2)" in out
    # Asked to release any gain, it does.
    scores(monkeypatch, release_models, [run_scores, release_scores, run_scores])
    arguments = [f"tiny={second}", "--weights", str(weights), "--min-standard-errors", "0"]
    assert release_models.main(arguments) == 0
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert [r["holdout_psnr_db"] for r in record["releases"]] == [21.0, 21.05]
    with pytest.raises(SystemExit):
        release_models.main([f"tiny={second}", "--min-standard-errors", "-1"])


def test_a_run_or_release_off_l1_must_also_win_at_the_best_strength(
    images, tmp_path, monkeypatch, release_models
):
    # Strength 1 flatters the PSNR loss; each release between L1 models is judged there alone.
    weights = tmp_path / "weights"
    stored = weights / "tiny.safetensors"
    compared, best = [], {}

    def best_strength_scores(models, config, sigmas):
        assert sigmas == tuple(config.validation.sigmas or [config.validation.sigma])
        compared.append(sorted(models))
        return {key: {"best": [best[key], best[key]]} for key in models}

    monkeypatch.setattr(release_models, "best_strength_scores", best_strength_scores)

    def releases():
        return len(json.loads((weights / "models.json").read_text())["tiny"]["releases"])

    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(run(images, tmp_path, "first")), "--weights", str(weights)])
    l1 = run(images, tmp_path, "l1", f"training.init='{stored}'")
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(l1), "--weights", str(weights)])
    assert releases() == 2 and compared == []

    psnr = run(
        images, tmp_path, "psnr", f"training.init='{stored}'", "optim.reconstruction='psnr'"
    )
    # Better at strength 1, worse at the best strength: refused.
    scores(monkeypatch, release_models, [21.9, 21.5])
    best.update(run=22.0, release=22.1)
    release_models.main(["tiny=" + str(psnr), "--weights", str(weights)])
    assert releases() == 2 and compared == [["release", "run"]]
    # Better at both: released.
    scores(monkeypatch, release_models, [21.9, 21.5, 21.9])
    best.update(run=22.2)
    release_models.main(["tiny=" + str(psnr), "--weights", str(weights)])
    assert releases() == 3 and len(compared) == 2
    # Now the release was trained with the PSNR loss: an L1 run is judged at both too.
    l1_again = run(images, tmp_path, "l1-again", f"training.init='{stored}'")
    scores(monkeypatch, release_models, [22.0, 21.9])
    best.update(run=22.1, release=22.2)
    release_models.main(["tiny=" + str(l1_again), "--weights", str(weights)])
    assert releases() == 3 and len(compared) == 3
    # Records from before optim.reconstruction existed were trained with L1.
    assert release_models.stage_reconstruction({"stage_config": {"optim": {}}}) == "l1"


def test_a_release_drops_what_was_calibrated_for_the_old_file_and_says_how_to_measure_it(
    images, tmp_path, monkeypatch, capsys, release_models
):
    # The strength curve, the OOD guard and the noise estimator's curve hold for the weights
    # they were measured on: the new record has none until each is measured again.
    weights = tmp_path / "weights"
    first = run(images, tmp_path, "first")
    scores(monkeypatch, release_models, [21.0, 21.0])
    assert release_models.main([f"tiny={first}", "--weights", str(weights)]) == 0
    assert "measure its" not in capsys.readouterr().out  # nothing was calibrated yet
    calibrated = {
        "strength_curve": {"sigmas": [5.0], "strengths": [0.5]},
        "ood_guard": {"threshold_bits_per_dim": 10.0},
        "noise_calibration": {"sigmas": [0.0, 50.0], "raw": [1.0, 49.0]},
    }
    table = json.loads((weights / "models.json").read_text())
    table["tiny"].update(calibrated)
    (weights / "models.json").write_text(json.dumps(table))
    second = run(images, tmp_path, "second", f"training.init='{weights / 'tiny.safetensors'}'")
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    assert release_models.main([f"tiny={second}", "--weights", str(weights)]) == 0
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert len(record["releases"]) == 2 and not set(calibrated) & set(record)
    out = capsys.readouterr().out
    assert "scripts/fit_strength.py tiny" in out
    assert "benchmarks/ood_calibration.py --write --data tiny=" in out
    assert "benchmarks/noise_estimation.py --fit --write" in out


def test_a_release_keeps_what_others_wrote_while_it_scored(
    images, tmp_path, monkeypatch, release_models
):
    # Releasing colour and grey from two shells, or a strength fit ending meanwhile.
    weights = tmp_path / "weights"
    weights.mkdir()
    path = weights / "models.json"
    path.write_text(json.dumps({"other": {"file": "other.safetensors"}}))
    first = run(images, tmp_path, "first")

    def score_and_a_write_meanwhile(model, images, device):
        table = json.loads(path.read_text())
        table["other"]["strength_curve"] = {"sigmas": [1.0], "strengths": [0.5]}
        path.write_text(json.dumps(table))
        return [21.0]

    monkeypatch.setattr(release_models, "validation_psnrs", score_and_a_write_meanwhile)
    assert release_models.main([f"tiny={first}", "--weights", str(weights)]) == 0
    table = json.loads(path.read_text())
    assert table["tiny"]["holdout"]["psnr_db"] == 21.0
    assert table["other"]["strength_curve"]["strengths"] == [0.5]


def test_a_run_without_held_back_images_is_refused(images, tmp_path, release_models):
    config = small_config(images, tmp_path, "training.iterations=1")
    train(config, tmp_path / "run", progress=False, log=lambda _: None)
    with pytest.raises(SystemExit, match=r"data\.holdout"):
        release_models.main(["tiny=" + str(tmp_path / "run"), "--weights", str(tmp_path)])


def test_test_set_scores_go_to_the_record_and_its_last_release(tmp_path, release_models):
    table = {"m": {"releases": [{"holdout_psnr_db": 1.0}]}}
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps({"means": [{"method": "m", "dataset": "CBSD68", "sigma": 25, "psnr": 30.123}]})
    )
    release_models.add_psnr(table, "m", results)
    assert table["m"]["psnr_db"] == {"CBSD68": {"sigma25": 30.12}}
    assert table["m"]["releases"][-1]["psnr_db"] == {"CBSD68": {"sigma25": 30.12}}
    # At the default strength: the record only; the release lines stay at strength 1.
    release_models.add_psnr(table, "m", results, "psnr_db_default")
    assert table["m"]["psnr_db_default"] == {"CBSD68": {"sigma25": 30.12}}
    assert "psnr_db_default" not in table["m"]["releases"][-1]
    # The x8 self-ensemble: the record, and the line, for the table's column.
    results.write_text(
        json.dumps({"means": [{"method": "m x8", "dataset": "CBSD68", "sigma": 25, "psnr": 30.3}]})
    )
    release_models.add_psnr(table, "m", results, "psnr_db_ensemble")
    assert table["m"]["releases"][-1]["psnr_db_ensemble"] == {"CBSD68": {"sigma25": 30.3}}


def test_the_command_line_puts_each_kind_of_score_under_its_key(tmp_path, release_models):
    (tmp_path / "models.json").write_text(json.dumps({"m": {"releases": [{}]}}))
    for kind, psnr in (("one", 30.0), ("default", 30.1), ("ensemble", 30.3)):
        # fdn eval --ensemble names the column "NAME x8"; the one-pass file has no such row.
        method = "m x8" if kind == "ensemble" else "m"
        means = [{"method": method, "dataset": "CBSD68", "sigma": 15, "psnr": psnr}]
        (tmp_path / f"{kind}.json").write_text(json.dumps({"means": means}))
    argv = ["--weights", str(tmp_path), "--psnr", f"m={tmp_path / 'one.json'}"]
    argv += ["--psnr-default", f"m={tmp_path / 'default.json'}"]
    argv += ["--psnr-ensemble", f"m={tmp_path / 'ensemble.json'}"]
    assert release_models.main(argv) == 0
    record = json.loads((tmp_path / "models.json").read_text())["m"]
    assert record["psnr_db"] == {"CBSD68": {"sigma15": 30.0}}
    assert record["psnr_db_default"] == {"CBSD68": {"sigma15": 30.1}}
    assert record["psnr_db_ensemble"] == {"CBSD68": {"sigma15": 30.3}}
    # Strength 1, the protocol releases are compared by, and the ensemble go to the release
    # line; the default strength does not (the table's gaps are at strength 1).
    assert record["releases"][-1] == {
        "psnr_db": {"CBSD68": {"sigma15": 30.0}},
        "psnr_db_ensemble": {"CBSD68": {"sigma15": 30.3}},
    }
    # A results file without the model's column is refused, not added as nothing.
    with pytest.raises(SystemExit, match="no scores of 'm x8'"):
        release_models.main([*argv[:2], "--psnr-ensemble", f"m={tmp_path / 'one.json'}"])


def test_the_release_table_shows_the_gap_to_the_references(release_models):
    record = {
        "psnr_db": {"CBSD68": {}},
        "releases": [
            {
                "date": "2026-11-25",
                "iterations": 6000,
                "cpu_hours": 2.5,
                "holdout_psnr_db": 29.341,
                "psnr_db": {"CBSD68": {"sigma15": 32.10, "sigma25": 29.81, "sigma50": 26.85}},
            }
        ],
    }
    table = release_models.release_table(record)
    assert "| 2026-11-25 | 6,000 | 96,000 | 2.50 | 29.341 | 32.10 / 29.81 / 26.85 |" in table
    assert "-1.46 / -0.99 / -0.61" in table  # against CBM3D
    assert "-1.69 / -1.37 / -1.14" in table  # against FFDNet
    assert "ensemble" not in table  # no release has one: no column
    # A second release with its x8 self-ensemble measured: a column, "-" for the first.
    second = dict(record["releases"][0], date="2026-11-26")
    second["psnr_db_ensemble"] = {"CBSD68": {"sigma15": 32.31, "sigma25": 30.0, "sigma50": 27.0}}
    record["releases"].append(second)
    rows = release_models.release_table(record).splitlines()
    assert rows[0].endswith("| CBSD68 x8 ensemble |") and rows[1].count("---") == 9
    assert rows[2].endswith("| -1.69 / -1.37 / -1.14 | - / - / - |")
    assert rows[3].endswith("| -1.69 / -1.37 / -1.14 | 32.31 / 30.00 / 27.00 |")


def test_the_release_figure_draws_each_sigmas_gap_after_each_scored_release(
    tmp_path, release_models
):
    scored = {"CBSD68": {"sigma15": 32.56, "sigma25": 30.30, "sigma50": 27.46}}
    record = {
        "psnr_db": scored,
        "releases": [
            {"iterations": 6000, "holdout_psnr_db": 29.3, "psnr_db": scored},
            {"iterations": 7000, "holdout_psnr_db": 29.4},  # no test-set scores: not drawn
            {"iterations": 8000, "patches": 200_000, "holdout_psnr_db": 29.5, "psnr_db": scored},
        ],
    }
    out = release_models.release_figure(record, tmp_path / "gaps.svg", "m")
    svg = out.read_text()
    assert svg.count("<polyline") == 3 and "CBM3D" in svg and "sigma 50" in svg
    # Gap -1.00 at sigma 15 and 0.00 at sigma 50, the latter on the reference line (y of 0).
    curves = [
        [tuple(map(float, p.split(","))) for p in line.split('points="')[1].split('"')[0].split()]
        for line in svg.splitlines()
        if line.startswith("<polyline")
    ]
    assert [len(c) for c in curves] == [2, 2, 2]
    assert curves[0][0][0] < curves[0][1][0]  # 96 then 200 thousand patches
    zero = float(svg.split('stroke-dasharray="2 3"')[0].rsplit('y1="', 1)[1].split('"')[0])
    assert curves[2][0][1] == pytest.approx(zero) and curves[0][0][1] > zero
    with pytest.raises(SystemExit, match="no test-set scores"):
        release_models.release_figure({"releases": []}, tmp_path / "none.svg", "m")


def test_a_gpu_stage_counts_gpu_hours_and_patches(images, tmp_path, monkeypatch, release_models):
    import torch

    weights = tmp_path / "weights"
    first = run(images, tmp_path, "first")
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(first), "--weights", str(weights)])

    # A stage trained on a GPU machine from its own copy of the release: its init names a
    # file that is not here, so only --continues adds it to the record.
    gpu = run(images, tmp_path, "gpu", "training.batch_size=3")
    checkpoint = torch.load(gpu / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["training"].update(device="cuda", init="/elsewhere/tiny.safetensors")
    torch.save(checkpoint, gpu / "checkpoint.pt")
    on_gpu(gpu / "log.jsonl")
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(gpu), "--weights", str(weights), "--continues"])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    cumulative, stage = record["cumulative"], record["releases"][-1]
    assert cumulative["iterations"] == 12
    assert cumulative["patches"] == 6 * 2 + 6 * 3  # small_config's batch of 2, then 3
    assert cumulative["gpu_hours"] == stage["stage_gpu_hours"]
    assert cumulative["cpu_hours"] == record["releases"][0]["cpu_hours"]
    assert "stage_cpu_hours" not in stage and stage["stage_batch_size"] == 3
    table = release_models.release_table(record)
    assert f"{12:,}" in table and " GPU" in table.splitlines()[-1]


def on_gpu(log, after=0):
    """Rewrites a CPU run's log as the GPU machine would have written its steps after ``after``."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    for row in rows:
        if "device" in row and row["step"] > after:
            row["device"] = "cuda"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))


def ticking_clocks(monkeypatch):
    """Training's clocks (wall and CPU) tick 3 minutes a reading, so that a tiny run's hours
    show at two decimals."""
    import itertools

    import fdn.training as training

    for clock in ("monotonic", "process_time"):
        ticks = itertools.count(0, 180)
        monkeypatch.setattr(training.time, clock, lambda ticks=ticks: float(next(ticks)))


def timed_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [row for row in rows if "wall_s" in row]


def train_on(run_dir, iterations):
    """The run resumed and trained on to ``iterations`` (its schedule lengthened)."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["training"]["iterations"] = iterations
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    train(None, run_dir, resume=True, progress=False, log=lambda _: None)


def test_a_run_moved_between_cpu_and_gpu_counts_each_part_on_its_own_clock(
    images, tmp_path, monkeypatch, release_models
):
    # A GPU lending carries a CPU run on (gpu_stage.sh FORK_DIR): its steps since the last
    # release ran on both, and each logged stretch counts on its device's clock (CPU time on
    # the CPU, wall on the GPU). Once, this was refused.
    ticking_clocks(monkeypatch)
    moved = run(images, tmp_path, "moved")
    on_gpu(moved / "log.jsonl", after=3)
    timed = timed_rows(moved)
    cpu = [row for row in timed if row["device"] == "cpu"][-1]["cpu_s"]
    gpu = timed[-1]["wall_s"] - [row for row in timed if row["step"] <= 3][-1]["wall_s"]
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(moved), "--weights", str(tmp_path / "weights")])
    record = json.loads((tmp_path / "weights" / "models.json").read_text())["tiny"]
    stage = record["releases"][-1]
    assert cpu > 0 and gpu > 0
    assert stage["stage_cpu_hours"] == round(cpu / 3600, 2)
    assert stage["stage_gpu_hours"] == round(gpu / 3600, 2)
    assert record["training"]["run"]["cpu_hours"] == timed[-1]["cpu_s"] / 3600
    # The run's hours as shown: each device's own, not the wall clock of all of it.
    assert record["training"]["gpu_hours"] == round(gpu / 3600, 2)
    assert record["training"]["cpu_hours"] == round(cpu / 3600, 2)

    # The CPU carries the run on from there (as from a GPU lending) and it is released again:
    # that stage is CPU time since the release only, and the GPU hours stay as they were.
    train_on(moved, 9)
    timed = timed_rows(moved)
    since = timed[-1]["cpu_s"] - [row for row in timed if row["step"] <= 6][-1]["cpu_s"]
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(moved), "--weights", str(tmp_path / "weights")])
    record = json.loads((tmp_path / "weights" / "models.json").read_text())["tiny"]
    stage = record["releases"][-1]
    assert since > 0 and stage["stage_cpu_hours"] == round(since / 3600, 2)
    assert "stage_gpu_hours" not in stage
    assert record["cumulative"]["gpu_hours"] == round(gpu / 3600, 2)
    assert record["training"]["batches"] == [[2, 9]]
    assert record["training"]["cpu_hours"] == round((cpu + since) / 3600, 2)


def test_a_run_released_on_the_cpu_then_carried_on_by_a_gpu_counts_the_gpu_stretch_alone(
    images, tmp_path, monkeypatch, release_models
):
    # The fourth lending: the colour run, released at a CPU step, went on alone on a GPU and
    # was released again. Its wall clock holds the CPU stretch before too, and all of it was
    # once counted as GPU hours (1.59 for the 0.14 the GPU trained).
    ticking_clocks(monkeypatch)
    stage = run(images, tmp_path, "stage")
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(stage), "--weights", str(tmp_path / "weights")])
    released = torch.load(stage / "checkpoint.pt", weights_only=True)["step"]
    train_on(stage, released + 3)
    on_gpu(stage / "log.jsonl", after=released)
    timed = timed_rows(stage)
    gpu = timed[-1]["wall_s"] - [row for row in timed if row["step"] <= released][-1]["wall_s"]
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(stage), "--weights", str(tmp_path / "weights")])
    record = json.loads((tmp_path / "weights" / "models.json").read_text())["tiny"]
    assert round(gpu / 3600, 2) < round(timed[-1]["wall_s"] / 3600, 2)
    assert record["releases"][-1]["stage_gpu_hours"] == round(gpu / 3600, 2)
    assert record["cumulative"]["gpu_hours"] == round(gpu / 3600, 2)
    assert record["training"]["gpu_hours"] == round(gpu / 3600, 2)


# A run's log that moved from the CPU to a GPU and back (its clocks at each row).
MOVED_LOG = (
    {"step": 0, "val_psnr_noisy": 20.0},
    {"step": 50, "device": "cpu", "wall_s": 1000.0, "cpu_s": 400.0},
    {"step": 100, "device": "cpu", "wall_s": 2000.0, "cpu_s": 900.0},
    {"step": 150, "device": "cuda", "wall_s": 2100.0, "cpu_s": 1000.0},
    {"step": 200, "device": "cuda", "wall_s": 2160.0, "cpu_s": 1090.0},
    {"step": 250, "device": "cpu", "wall_s": 3160.0, "cpu_s": 1590.0},
)


def test_split_hours_takes_each_rows_time_on_its_devices_clock(tmp_path, release_models):
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(row) for row in MOVED_LOG))
    hours = release_models.split_hours(tmp_path, since=50)
    assert hours == pytest.approx({"cpu_hours": 1000.0 / 3600, "gpu_hours": 160.0 / 3600})
    hours = release_models.split_hours(tmp_path, since=100)
    assert hours == pytest.approx({"cpu_hours": 500.0 / 3600, "gpu_hours": 160.0 / 3600})


def test_the_hours_are_the_logged_cpu_time_of_the_run(tmp_path, release_models):
    # The log's cpu_s is the run's own CPU time across resumes; a run that shared the machine
    # (niced, half the wall clock) must not count the wall clock as CPU hours.
    (tmp_path / "log.jsonl").write_text(
        "\n".join(
            json.dumps(row)
            for row in (
                {"step": 0, "val_psnr_noisy": 20.0},
                {"step": 50, "images_per_s": 1.0, "wall_s": 1000.0, "cpu_s": 400.0},
                {"step": 100, "images_per_s": 1.0, "wall_s": 2000.0, "cpu_s": 900.0},
            )
        )
    )
    assert release_models.training_seconds(tmp_path, 16) == 900.0
    # A line cut short by a kill is skipped (fdn.curves.read_log), not a crash.
    with (tmp_path / "log.jsonl").open("a") as log:
        log.write('\n{"step": 150, "images_per_s": 1.0, "wall_s": 30')
    assert release_models.training_seconds(tmp_path, 16) == 900.0
    assert release_models.training_seconds(tmp_path, 16, "wall") == 2000.0
    # A log from before the times were kept: the steps' time from their throughput.
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 50, "images_per_s": 2.0}))
    assert release_models.training_seconds(tmp_path, 16) == 400.0


def test_the_record_says_how_many_held_back_images_scored_the_model(
    images, tmp_path, release_models
):
    config = small_config(images, tmp_path, "data.holdout=4", "validation.max_images=2")
    assert release_models.held_back(config) == "2 of the 4 held back of train"
    config = small_config(images, tmp_path, "data.holdout=4")
    assert release_models.held_back(config) == "4 of train"


def test_a_run_released_again_adds_only_its_steps_since(
    images, tmp_path, monkeypatch, release_models
):
    import torch

    weights = tmp_path / "weights"
    stage = run(images, tmp_path, "stage")
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(stage), "--weights", str(weights)])
    first = json.loads((weights / "models.json").read_text())["tiny"]
    run_id = torch.load(stage / "checkpoint.pt", weights_only=True)["run_id"]
    assert first["training"]["run"]["id"] == run_id

    # The run goes on after its release (its schedule unbroken) and keeps its id on resume.
    checkpoint = torch.load(stage / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["training"]["iterations"] = 10
    torch.save(checkpoint, stage / "checkpoint.pt")
    train(None, stage, resume=True, progress=False, log=lambda _: None)
    assert torch.load(stage / "checkpoint.pt", weights_only=True)["run_id"] == run_id
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(stage), "--weights", str(weights)])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert record["cumulative"]["iterations"] == 10  # 6, then 4 more: not 6 + 10
    assert [line["stage_iterations"] for line in record["releases"]] == [6, 4]
    hours = [line["stage_cpu_hours"] for line in record["releases"]]
    assert record["cumulative"]["cpu_hours"] == pytest.approx(sum(hours), abs=0.011)
    assert record["training"]["iterations"] == 10

    # Nothing trained since the last release: refused, before anything is scored.
    with pytest.raises(SystemExit, match="released at step 10 already"):
        release_models.main(["tiny=" + str(stage), "--weights", str(weights)])


def test_the_other_branch_of_a_released_fork_counts_its_own_history(
    images, tmp_path, monkeypatch, release_models
):
    # A pilot: the run (batch 2) forked at step 6 to batch 4; the fork is released at its step
    # 10, then the run itself at 12. Both keep the run id, so the record takes the run for the
    # fork trained on; the fork's 4 steps at batch 4 are not in the run's history, and the
    # run's patches must not be counted on top of them (they were, before: 6x2 + 4x4 + 2x2).
    weights = tmp_path / "weights"
    parent = run(images, tmp_path, "parent")
    fork = tmp_path / "fork"
    changes = ["training.batch_size=4", "training.iterations=10"]
    train(None, fork, progress=False, log=lambda _: None, changes=changes, fork=parent)
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(fork), "--weights", str(weights)])
    first = json.loads((weights / "models.json").read_text())["tiny"]
    assert first["cumulative"]["patches"] == 6 * 2 + 4 * 4
    assert first["training"]["batches"] == [[2, 6], [4, 4]]

    checkpoint = torch.load(parent / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["training"]["iterations"] = 12
    torch.save(checkpoint, parent / "checkpoint.pt")
    train(None, parent, resume=True, progress=False, log=lambda _: None)
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(parent), "--weights", str(weights)])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert record["cumulative"]["iterations"] == 12
    assert record["cumulative"]["patches"] == 12 * 2
    assert record["training"]["batches"] == [[2, 12]]
    # The steps and the hours were right before: the fork's cancel against its own record.
    own = record["training"]["run"]["cpu_hours"]
    assert record["cumulative"]["cpu_hours"] == pytest.approx(own, abs=0.011)


def test_a_checkpoint_from_before_run_ids_gets_one_on_resume(images, tmp_path):
    import torch

    stage = run(images, tmp_path, "old")
    checkpoint = torch.load(stage / "checkpoint.pt", weights_only=True)
    del checkpoint["run_id"]
    checkpoint["config"]["training"]["iterations"] = 8
    torch.save(checkpoint, stage / "checkpoint.pt")
    train(None, stage, resume=True, progress=False, log=lambda _: None)
    assert len(torch.load(stage / "checkpoint.pt", weights_only=True)["run_id"]) == 32


@pytest.mark.parametrize("name", ["fdn-color-blind", "fdn-grey-blind"])
def test_the_model_card_shows_each_blind_models_releases_as_models_json_has_them(
    name, release_models
):
    # A release changes models.json; the model card's table of releases (where the gap to the
    # references is read) must be pasted anew from `release_models.py --table NAME`.
    from fdn.pretrained import model_record

    card = (release_models.WEIGHTS.parents[2] / "docs" / "model-card.md").read_text()
    assert release_models.release_table(model_record(name)) in card


@pytest.mark.parametrize("name", ["fdn-color-blind", "fdn-grey-blind"])
def test_the_model_cards_release_figures_are_drawn_from_models_json(
    name, tmp_path, release_models
):
    # Drawn again after each release by scripts/measure_release.py (`release_models.py
    # --figure NAME docs/figures/...`), which names each figure.
    from fdn.pretrained import model_record

    figure = load_script("measure_release").RELEASE_FIGURES[name]
    drawn = release_models.release_figure(model_record(name), tmp_path / "f.svg", name)
    root = release_models.WEIGHTS.parents[2]
    assert drawn.read_text() == (root / figure).read_text()
    assert figure.removeprefix("docs/") in (root / "docs" / "model-card.md").read_text()


@pytest.mark.parametrize(
    ("name", "dataset"),
    [("fdn-color-blind", "CBSD68"), ("fdn-grey-blind", "BSD68"), ("fdn-grey-blind", "Set12")],
)
def test_the_model_cards_results_table_has_the_released_psnrs(name, dataset, release_models):
    from fdn.pretrained import model_record

    card = (release_models.WEIGHTS.parents[2] / "docs" / "model-card.md").read_text()
    # What fdn denoise gives: at the default strength where it was measured so.
    record = model_record(name)
    scores = record.get("psnr_db_default", record["psnr_db"])[dataset]
    for sigma in (15, 25, 50):
        row = next(
            line for line in card.splitlines() if line.startswith(f"| {dataset} | {sigma} |")
        )
        fdn_cell = row.strip(" |").split("|")[-1]  # the last column: "PSNR / SSIM"
        assert fdn_cell.split("/")[0].strip(" *") == f"{scores[f'sigma{sigma}']:.2f}", row


@pytest.mark.parametrize(
    ("name", "dataset"), [("fdn-color-blind", "CBSD68"), ("fdn-grey-blind", "BSD68")]
)
def test_the_model_cards_self_ensemble_scores_are_the_records(name, dataset, release_models):
    # `measure_release.py --ensemble` keeps them in the record; a release drops them with
    # the old weights, and the card then names the release they were measured on.
    from fdn.pretrained import model_record

    record = model_record(name)
    if "psnr_db_ensemble" not in record:
        pytest.skip(f"{name}: its self-ensemble was not measured since its release")
    card = (release_models.WEIGHTS.parents[2] / "docs" / "model-card.md").read_text()
    paragraph = card[card.index("**With the x8 self-ensemble**") :].split("\n\n")[0]
    scores = record["psnr_db_ensemble"][dataset]
    quoted = " / ".join(f"{scores[f'sigma{sigma}']:.2f}" for sigma in (15, 25, 50))
    assert f"`{name}`" in paragraph and quoted in paragraph
    held_back = f"{record['holdout']['psnr_db']:.3f}"
    assert f"release at held-back {held_back}" in " ".join(paragraph.split())


@pytest.mark.parametrize(
    ("name", "dataset", "references"),
    [("fdn-color-blind", "CBSD68", ("CBM3D", "FFDNet")), ("fdn-grey-blind", "BSD68", ("BM3D",))],
)
def test_the_readme_first_screen_quotes_the_records_gaps(
    name, dataset, references, release_models
):
    # What a newcomer reads first: how far each bundled model is from the denoisers they could
    # pick instead, at the default strength (and with --ensemble where measured since release).
    # A release that changes the scores changes these sentences too.
    from fdn.pretrained import model_record

    readme = (release_models.WEIGHTS.parents[2] / "README.md").read_text()
    start = readme.index("Then denoise your own photos")
    first_screen = " ".join(readme[start:].split("\n\n")[0].split())
    record = model_record(name)
    measured = {"one pass": record.get("psnr_db_default", record["psnr_db"])}
    if "psnr_db_ensemble" in record:  # the --ensemble sentence, against the first reference
        measured["--ensemble"] = record["psnr_db_ensemble"]
    for kind, table in measured.items():
        scores = [table[dataset][f"sigma{sigma}"] for sigma in (15, 25, 50)]
        for reference in references[: 1 if kind == "--ensemble" else None]:
            values = release_models.REFERENCES[dataset][reference]
            for score, value in zip(scores, values, strict=True):
                gap = f"{abs(score - value):.2f}"
                quoted = re.search(rf"(?<![\d.]){re.escape(gap)}(?!\d)", first_screen)
                assert quoted, f"{name} {kind}: {gap} dB to {reference}"


@pytest.mark.parametrize("name", ["fdn-color-blind", "fdn-grey-blind"])
def test_the_model_cards_gap_paragraph_quotes_the_cumulative_training(name, release_models):
    # The paragraph under the results table says how much training each model has had so far;
    # the release table has it per release, this is the sum a reader takes away.
    from fdn.pretrained import model_record

    card = (release_models.WEIGHTS.parents[2] / "docs" / "model-card.md").read_text()
    start = card.index("**The bundled models do not beat BM3D yet")
    paragraph = " ".join(card[start:].split("\n\n")[0].split())
    total = model_record(name)["cumulative"]
    quoted = f"{total['iterations']:,} iterations ({round(total['patches'] / 1000)}K patches)"
    assert quoted in paragraph, quoted
    assert (
        f"{total['cpu_hours']:.1f}" in paragraph and f"{total['gpu_hours']:.2f} GPU" in paragraph
    )


@pytest.mark.parametrize("name", ["fdn-color-blind", "fdn-grey-blind"])
def test_the_docs_quote_the_out_of_distribution_guard_as_measured(name, release_models):
    # benchmarks/ood_calibration.py --write after each release; README and model card say
    # what it measured: the threshold, and the checkerboard's score and denoised mean.
    from fdn.pretrained import model_record

    root = release_models.WEIGHTS.parents[2]
    readme = (root / "README.md").read_text()
    start = readme.index("**Out-of-distribution guard.**")
    bullet = " ".join(readme[start:].split("\n- ")[0].split("\n\n")[0].split())
    card = (root / "docs" / "model-card.md").read_text()
    start = card.index("## Inputs unlike the training images")
    section = " ".join(card[start:].split("\n## ")[0].split())
    guard = model_record(name).get("ood_guard")
    if guard is None:
        pytest.skip(f"{name}: its guard was not measured since its release")
    threshold = f"{guard['threshold_bits_per_dim']:.2f}"
    assert threshold in bullet and threshold in section
    board = guard["checkerboard_bits_per_dim"]
    assert f"{board:.1f} bits/dim" in bullet or f"{board:.1f} under" in bullet
    assert f"mean {guard['checkerboard_denoised_mean']:.0f}" in bullet


def test_a_stage_counts_the_patches_of_each_steps_batch(tmp_path, release_models):
    # A fork at step 100 from a batch-16 parent, at batch 9 since (fdn train --fork gives the
    # parent's rows its batch); rows come every 50 steps.
    rows = [{"step": 0, "val_psnr_noisy": 20.0}]
    rows += [{"step": step, "loss": 0.1, "patches_per_step": 16} for step in (50, 100)]
    rows += [{"step": step, "loss": 0.1, "patches_per_step": 9} for step in (150, 200)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    count = release_models.stage_patches
    assert count(tmp_path, 0, 200, 9) == 100 * 16 + 100 * 9
    assert count(tmp_path, 50, 200, 9) == 50 * 16 + 100 * 9  # since a release at step 50
    assert count(tmp_path, 100, 230, 9) == 100 * 9 + 30 * 9  # steps past the last row
    # The same as stretches, what the record keeps and fdn info shows.
    assert release_models.step_batches(tmp_path, 0, 230, 9) == [[16, 100], [9, 130]]
    # A log from before patches_per_step was kept: the config's batch for every step.
    old = [{key: value for key, value in row.items() if key != "patches_per_step"} for row in rows]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old))
    assert count(tmp_path, 0, 200, 16) == 200 * 16


def test_release_of_an_average_kept_beside_the_runs_own(
    images, tmp_path, monkeypatch, release_models
):
    # A run that compared averaging horizons (training.ema_extra) releases the one that
    # scored best on the held-back images; the record says which decay the model is.
    weights = tmp_path / "weights"
    beside = run(images, tmp_path, "beside", "training.ema_extra=[0.1]", "optim.lr=1e-2")
    with pytest.raises(SystemExit, match=r"decay 0\.5 .*training\.ema_extra: 0\.1"):
        release_models.main(["tiny=" + str(beside), "--weights", str(weights), "--average", "0.5"])
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(beside), "--weights", str(weights), "--average", "0.1"])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert record["training"]["ema"] == 0.1
    released = load_model(weights / "tiny.safetensors").state_dict()
    kept = load_model(beside / "ema0.1.safetensors").state_dict()  # its last validation's
    weights_of = {n: v for n, v in kept.items() if v.is_floating_point()}
    for name, value in weights_of.items():
        assert torch.allclose(released[name].float(), value, atol=1e-3), name  # float16
    own = load_model(beside / "model.safetensors").state_dict()  # the run's own, 0.9

    def distance(state):
        return sum((released[n].float() - state[n]).abs().sum().item() for n in weights_of)

    assert distance(kept) < 0.1 * distance(own)


def test_a_model_kept_between_validations_is_released_with_the_runs_history_to_its_step(
    images, tmp_path, monkeypatch, release_models
):
    # The model a run kept at step 4 (training.keep_every) scored best on the held-back
    # images, but the run trained on to 6: --kept 4 releases that file, counting the run's
    # steps, patches and hours up to step 4 only; a later release of the run adds the rest.
    ticking_clocks(monkeypatch)
    weights = tmp_path / "weights"
    kept = run(images, tmp_path, "kept", "training.keep_every=2", "optim.lr=1e-2")
    scores(monkeypatch, release_models, [21.0, 21.0])
    release_models.main(["tiny=" + str(kept), "--weights", str(weights), "--kept", "4"])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert record["training"]["iterations"] == 4 and record["cumulative"]["iterations"] == 4
    assert record["cumulative"]["patches"] == 4 * 2  # small_config's batch of 2
    at_4 = next(row for row in timed_rows(kept) if row["step"] == 4)
    assert record["training"]["run"]["cpu_hours"] == pytest.approx(at_4["cpu_s"] / 3600)
    assert record["releases"][-1]["stage_cpu_hours"] == round(at_4["cpu_s"] / 3600, 2)
    released = load_model(weights / "tiny.safetensors").state_dict()
    step_4 = load_model(kept / "kept" / "step-4.safetensors").state_dict()
    step_6 = load_model(kept / "kept" / "step-6.safetensors").state_dict()
    floats = [name for name, value in step_4.items() if value.is_floating_point()]

    def distance(state):
        return sum((released[n].float() - state[n]).abs().sum().item() for n in floats)

    assert distance(step_4) < 0.01 * distance(step_6)  # float16 storage aside, step 4's

    # The run's checkpoint (step 6) released after it: only steps 5 and 6 are new.
    scores(monkeypatch, release_models, [21.5, 21.0, 21.5])
    release_models.main(["tiny=" + str(kept), "--weights", str(weights)])
    record = json.loads((weights / "models.json").read_text())["tiny"]
    assert [line["stage_iterations"] for line in record["releases"]] == [4, 2]
    assert record["cumulative"]["iterations"] == 6 and record["cumulative"]["patches"] == 12


def test_a_kept_release_is_refused_clearly_when_it_cannot_be_one(
    images, tmp_path, release_models, capsys
):
    weights = tmp_path / "weights"
    kept = run(images, tmp_path, "kept", "training.keep_every=3")

    def refused(*extra):
        with pytest.raises(SystemExit) as stop:
            release_models.main(["tiny=" + str(kept), "--weights", str(weights), *extra])
        return str(stop.value)

    assert re.search(
        r"step-4\.safetensors: no model kept at step 4 \(kept: 3, 6\)", refused("--kept", "4")
    )
    assert "--average" in refused("--kept", "3", "--average", "0.5")
    # A kept file past the checkpoint (a kill between the two): the log may not reach it.
    torch.save({**torch.load(kept / "checkpoint.pt", weights_only=True), "step": 2}, kept / "x.pt")
    (kept / "x.pt").replace(kept / "checkpoint.pt")
    assert "checkpoint is at step 2, before the kept model" in refused("--kept", "3")
    with pytest.raises(SystemExit):
        release_models.main(["a=" + str(kept), "b=" + str(kept), "--kept", "3"])
    assert "exactly one NAME=RUN_DIR" in capsys.readouterr().err
    assert not (weights / "models.json").exists()


def test_the_hours_to_a_step_between_log_rows_are_in_proportion(tmp_path, release_models):
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(row) for row in MOVED_LOG))
    assert release_models.training_seconds(tmp_path, 16, until=75) == 650.0
    assert release_models.training_seconds(tmp_path, 16, "wall", until=100) == 2000.0
    assert release_models.training_seconds(tmp_path, 16, until=20) == 160.0  # from 0
    assert release_models.training_seconds(tmp_path, 16, until=500) == 1590.0  # the last
    hours = release_models.split_hours(tmp_path, since=50, until=125)
    assert hours == pytest.approx({"cpu_hours": 500.0 / 3600, "gpu_hours": 50.0 / 3600})
    config = type("Config", (), {})  # a log that names its devices needs no config
    assert release_models.run_devices(tmp_path, config, 50, until=100) == ["cpu"]
    assert release_models.run_devices(tmp_path, config, 50, until=101) == ["cpu", "cuda"]
