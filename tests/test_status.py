"""``fdn status``: a run folder read for its step, pace, validations and what comes next."""

import json
import os
from importlib.resources import files

import pytest

from fdn.cli import main
from fdn.status import StatusError, format_status, run_status
from fdn.training import train
from test_training import small_config

from helpers import make_images

CONFIG = """
[training]
iterations = 40000
checkpoint_every = 250
ema = 0.999
ema_extra = [0.9995, 0.9998]

[validation]
every = 1000
"""


def run_folder(tmp_path, rows, config=CONFIG):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.toml").write_text(config)
    (folder / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def background_run(tmp_path):
    """A grey run on a CPU: 50 steps every 900 s of training, validated at 1,000 and 2,000
    (the second time with the averages kept beside it), stopped and resumed in between."""
    rows = [{"step": 0, "val_psnr_noisy": 20.1}]
    for step in range(50, 2301, 50):
        row = {"step": step, "loss": -0.14, "lr": 2e-4, "grad_norm": 0.05, "wall_s": step * 18.0}
        if step == 1000:
            row["val_psnr"] = 28.25
        if step == 2000:
            row.update(val_psnr=28.265, **{"val_psnr_ema0.9995": 28.27})
        rows.append(row)
    return run_folder(tmp_path, rows)


def test_the_status_of_a_run_in_the_background(tmp_path):
    folder = background_run(tmp_path)
    (folder / "checkpoint.pt").write_bytes(b"")
    now = os.path.getmtime(folder / "log.jsonl") + 600
    status = run_status(folder, now=now)
    assert (status.step, status.iterations) == (2300, 40000)
    assert status.steps_per_hour == pytest.approx(200)  # 50 steps per 900 s
    assert status.validations == ((1000, 28.25), (2000, 28.265))
    assert status.best == (2000, 28.265)
    assert status.averages == {"0.9995": 28.27, "0.9998": None}  # 0.9998 added after 2,000
    assert status.hours_to(3000) == pytest.approx(3.5) and not status.finished
    text = format_status(status)
    assert "step 2,300 of 40,000 (5.8%), 200 steps/hour; last logged 10 min ago" in text
    assert "validation: 28.265 dB at step 2,000 (best 28.265 at 2,000)" in text
    assert "0.9995 28.270, 0.9998 -" in text
    assert "next validation: step 3,000, in about 3.5 h of training" in text
    assert "next at step 2,500, in about 1.0 h of training" in text
    assert "min after the last" not in text  # a config older than training.checkpoint_minutes
    # (1 + n) / (10 + n) at n = 2,300: 0.99610, 257 steps; 0.999 from update 8,990 on.
    assert (
        "the run's own average: decay 0.999 from step 8,990; at step 2,300 its ramp holds it"
        " at 0.9961, about the last 257 steps" in text
    )


def test_an_average_past_its_ramp_is_not_mentioned(tmp_path):
    rows = [{"step": s, "loss": 0.1} for s in (8989, 8990)]
    status = run_status(run_folder(tmp_path, rows[:1]))
    assert "ramp holds it at 0.9990, about the last 1,000 steps" in format_status(status)
    (tmp_path / "b").mkdir()
    assert "own average" not in format_status(run_status(run_folder(tmp_path / "b", rows)))
    # From trained weights it takes its decay from the first update: no ramp to speak of.
    (tmp_path / "c").mkdir()
    config = CONFIG.replace("ema = 0.999", 'ema = 0.999\ninit = "fdn-grey-blind"')
    status = run_status(run_folder(tmp_path / "c", rows[:1], config))
    assert not status.ramps and "own average" not in format_status(status)


def test_the_pace_is_the_last_hour_of_training_time(tmp_path):
    # The run moved to a machine twice as fast at step 1,000: the pace is the new one.
    rows = [{"step": s, "loss": 0.1, "wall_s": 36.0 * s} for s in range(100, 1001, 100)]
    faster = range(1100, 2001, 100)
    rows += [{"step": s, "loss": 0.1, "wall_s": 36000 + 18.0 * (s - 1000)} for s in faster]
    assert run_status(run_folder(tmp_path, rows)).steps_per_hour == pytest.approx(200)


def test_the_cpu_line_says_when_a_run_shares_the_machine(tmp_path):
    # One thread, 18 s of training time per step of which 9 s on the CPU: half its time went
    # to other work (a release scored beside it at a higher priority, say).
    config = CONFIG.replace("checkpoint_every = 250", "checkpoint_every = 250\nthreads = 1")
    rows = [{"step": s, "loss": 0.1, "wall_s": 18.0 * s, "cpu_s": 9.0 * s} for s in (50, 100)]
    status = run_status(run_folder(tmp_path, rows, config))
    assert status.cpu_per_step == pytest.approx(9) and status.cores == pytest.approx(0.5)
    text = format_status(status)
    assert "CPU: 9.00 s per step, 0.50 cores busy of its 1 thread: it shares the machine" in text
    # The same pace with its thread busy throughout: nothing to say but the figures.
    (tmp_path / "b").mkdir()
    rows = [{**row, "cpu_s": row["wall_s"] * 0.97} for row in rows]
    text = format_status(run_status(run_folder(tmp_path / "b", rows, config)))
    assert "CPU: 17.46 s per step, 0.97 cores busy\n" in text


def test_an_average_dropped_on_a_resume_is_not_shown_as_kept(tmp_path):
    # Resumed with --set training.ema_extra=[0.99]: the last validation scored 0.9995, which
    # the run no longer updates; the line lists what it keeps, 0.99 not yet scored.
    config = CONFIG.replace("ema_extra = [0.9995, 0.9998]", "ema_extra = [0.99]")
    rows = [{"step": 1000, "loss": 0.1, "val_psnr": 28.2, "val_psnr_ema0.9995": 28.1}]
    status = run_status(run_folder(tmp_path, rows, config))
    assert status.averages == {"0.99": None}
    assert "averages beside the run's own (last validation): 0.99 -" in format_status(status)
    assert "0.9995" not in format_status(status)


def test_the_models_kept_between_validations(tmp_path):
    # training.keep_every = 250, added on a resume at step 1,750: the steps in kept/ in order
    # (other files there are not steps), the last named, and when the next comes.
    folder = background_run(tmp_path)
    config = (folder / "config.toml").read_text()
    (folder / "config.toml").write_text(
        config.replace("ema = 0.999", "ema = 0.999\nkeep_every = 250")
    )
    (folder / "kept").mkdir()
    for name in (
        "step-2250.safetensors",
        "step-2000.safetensors",
        "notes.txt",
        "step-x.safetensors",
    ):
        (folder / "kept" / name).write_bytes(b"")
    status = run_status(folder)
    assert (status.kept, status.keep_every) == ((2000, 2250), 250)
    assert (
        "  models kept (every 250 steps): 2, the last kept/step-2250.safetensors; next at step "
        "2,500, in about 1.0 h of training" in format_status(status)
    )
    (tmp_path / "b").mkdir()
    assert "models kept" not in format_status(run_status(background_run(tmp_path / "b")))


def test_a_run_without_times_or_validations_still_says_where_it_is(tmp_path):
    status = run_status(run_folder(tmp_path, [{"step": 50, "loss": 0.1}], "[training]\n"))
    assert status.steps_per_hour is None and status.hours_to(100) is None
    text = format_status(status)
    assert "step 50 of 0" in text and "validation: none yet" in text


def test_a_real_run_folder_end_to_end(tmp_path, capsys):
    images = make_images(tmp_path / "data", counts=(("train", 6), ("val", 1)))
    settings = ("training.ema=0.9", "training.ema_extra=[0.5]", "training.keep_every=2")
    train(small_config(images, tmp_path, *settings), tmp_path / "run", progress=False, log=print)
    capsys.readouterr()
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "step 6 of 6 (100.0%)" in out and "finished" in out
    assert "averages beside the run's own (last validation): 0.5 " in out
    assert "next validation" not in out  # a finished run has none
    assert "  CPU: " in out and " s per step, " in out
    assert "models kept (every 2 steps): 3, the last kept/step-6.safetensors\n" in out


@pytest.mark.parametrize("missing", ["config.toml", "log.jsonl"])
def test_a_folder_that_is_not_a_run_is_one_line_naming_it(tmp_path, capsys, missing):
    folder = background_run(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(StatusError, match=missing):
        run_status(folder)
    assert main(["status", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err and "fdn: error:" in err


def test_the_runs_among_other_folders_are_shown_and_the_others_named(tmp_path, capsys):
    run = background_run(tmp_path)
    (tmp_path / "scripts").mkdir()
    assert main(["status", str(tmp_path / "scripts"), str(run)]) == 1
    captured = capsys.readouterr()
    assert "step 2,300 of 40,000" in captured.out
    assert captured.err.count("\n") == 1 and "scripts/config.toml: missing" in captured.err


def test_a_log_without_steps_is_an_error(tmp_path):
    with pytest.raises(StatusError, match="no training steps logged yet"):
        run_status(run_folder(tmp_path, [{"step": 0, "val_psnr_noisy": 20.0}]))


def test_the_status_names_a_timed_checkpoint(tmp_path):
    config = CONFIG.replace(
        "checkpoint_every = 250", "checkpoint_every = 250\ncheckpoint_minutes = 10"
    )
    folder = run_folder(tmp_path, [{"step": 50, "loss": -0.1, "wall_s": 900.0}], config)
    text = format_status(run_status(folder))
    assert (
        "checkpoint: none yet; next at step 250" in text and ", or 10 min after the last" in text
    )


def test_a_run_from_a_bundled_model_is_shown_the_release_it_must_beat(tmp_path):
    record = json.loads((files("fdn") / "weights" / "models.json").read_text())["fdn-grey-blind"]
    held_back = record["holdout"]
    # The release's stage drew its held-back images so; a run from it validating alike.
    data, validation = record["stage_config"]["data"], record["stage_config"]["validation"]
    count = data["holdout"]
    config = (
        f'[training]\ninit = "fdn-grey-blind"\niterations = 4000\n\n[data]\ntrain = '
        f'"{data["train"]}"\nholdout = {count}\n\n[validation]\nevery = 500\n'
        f'folder = "{validation["folder"]}"\nmax_images = {validation["max_images"]}\n'
        f"crop = {validation['crop']}\nseed = {validation['seed']}\n"
        f"sigmas = {held_back['sigmas']}\n"
    )
    rows = [{"step": 500, "loss": -0.14, "val_psnr": held_back["psnr_db"] + 0.0123}]
    status = run_status(run_folder(tmp_path, rows, config))
    assert status.release == ("fdn-grey-blind", held_back["psnr_db"])
    (tmp_path / "hair").mkdir()
    text = format_status(status)
    assert (
        f"to beat: fdn-grey-blind {held_back['psnr_db']:.3f} dB on the same held-back images; "
        "best validation +0.012" in text
    )
    # A validation a hair under the record's three decimals leads by nothing, not by -0.000.
    rows = [{"step": 500, "loss": -0.14, "val_psnr": held_back["psnr_db"] - 0.0002}]
    text = format_status(run_status(run_folder(tmp_path / "hair", rows, config)))
    assert "best validation +0.000" in text
    # Other held-back images, crops, sigmas or a model file: nothing to compare with.
    others = (
        config.replace(f"holdout = {count}", "holdout = 7"),
        config.replace(f"crop = {validation['crop']}", f"crop = {validation['crop'] + 64}"),
        config.replace(f"sigmas = {held_back['sigmas']}", "sigmas = [10.0]"),
        config.replace('"fdn-grey-blind"', '"runs/model.safetensors"'),
    )
    for k, other in enumerate(others):
        assert other != config
        (tmp_path / str(k)).mkdir()
        status = run_status(run_folder(tmp_path / str(k), rows, other))
        assert status.release is None and "to beat" not in format_status(status)
