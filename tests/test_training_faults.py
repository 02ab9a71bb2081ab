"""Training under faults (issue #16, items 1, 8, 10, 11, 13): garbage never exits 0, resume is
exact with validation on, damaged checkpoints and bad values are one-line errors, logs stay
strict JSON with one line per step."""

import json
import pickle

import pytest
import torch

import fdn.training as training
from fdn.cli import main
from fdn.training import CHECKPOINT, TrainingError, train
from test_training import parameters, small_config, straight_and_resumed

from helpers import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


def quiet(config, run_dir, **kwargs):
    return train(config, run_dir, progress=False, log=lambda _: None, **kwargs)


def log_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_run_whose_weights_turn_non_finite_fails_and_ships_nothing(images, tmp_path):
    config = small_config(images, tmp_path, "validation.every=0")
    config.optim.lr = float("inf")  # past the config check, as a bug elsewhere might do
    with pytest.raises(TrainingError, match="not finite"):
        quiet(config, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # the last checkpoint written, if any, holds finite weights
    if (tmp_path / "run" / CHECKPOINT).exists():
        state = parameters(tmp_path / "run")
        assert all(torch.isfinite(v.float()).all() for v in state.values())


@pytest.mark.filterwarnings("error::UserWarning")  # the schedule's step after a skipped one
def test_a_run_that_skipped_every_step_fails(images, tmp_path, capsys):
    config = small_config(images, tmp_path, "validation.every=0")
    config.data.sigma_range, config.data.sigma = None, float("nan")
    with pytest.raises(TrainingError, match="every step"):
        quiet(config, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_cli_exits_non_zero_on_garbage(images, tmp_path, monkeypatch, capsys):
    small_config(images, tmp_path)
    real = training.step_loss

    def nan_loss(model, cfg, noisy, clean, step):
        terms = real(model, cfg, noisy, clean, step)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(training, "step_loss", nan_loss)
    code = main(["train", str(tmp_path / "small.toml"), "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "every step" in error and "\n" not in error


def test_resume_is_bit_exact_with_validation_on(images, tmp_path, monkeypatch):
    # Validation in fp32 used to leave the weights channels-last; a resumed process rebuilt
    # them contiguous, and the convolutions then rounded differently.
    settings = ("validation.every=2", "training.checkpoint_every=100")
    straight, resumed = straight_and_resumed(images, tmp_path, monkeypatch, settings, 3)
    straight, resumed = parameters(straight), parameters(resumed)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_validation_leaves_the_model_as_it_was(images, tmp_path):
    from fdn.data import load_validation

    config = small_config(images, tmp_path)
    model = training.build_model(config).train()
    before = {name: (p.stride(), p.clone()) for name, p in model.named_parameters()}
    training.validate(model, load_validation(config), torch.device("cpu"))
    assert model.training
    for name, p in model.named_parameters():
        assert p.stride() == before[name][0] and torch.equal(p, before[name][1]), name


def test_resume_after_a_hard_kill_logs_each_step_once(images, tmp_path):
    config = small_config(images, tmp_path, "validation.every=0", "training.checkpoint_every=4")
    quiet(config, tmp_path / "run")
    run_dir = tmp_path / "run"
    # A kill -9 after step 6's log line but before its checkpoint: the checkpoint says 4.
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    early = small_config(images, tmp_path, "validation.every=0", "training.iterations=4")
    quiet(early, tmp_path / "early")
    early_checkpoint = torch.load(tmp_path / "early" / CHECKPOINT, weights_only=True)
    early_checkpoint["config"] = checkpoint["config"]
    torch.save(early_checkpoint, run_dir / CHECKPOINT)
    quiet(None, run_dir, resume=True)
    steps = [row["step"] for row in log_rows(run_dir) if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("minutes", "saved"),
    [
        (0, [4, 6]),  # off: every checkpoint_every steps, and at the end
        (30, [4, 6]),  # the default: nothing more in a run of seconds
        (1e-9, [1, 2, 3, 4, 5, 6]),  # due after every step
    ],
)
def test_checkpoint_minutes_adds_checkpoints_by_wall_time(
    images, tmp_path, monkeypatch, minutes, saved
):
    # What a kill -9 loses is what came after the last checkpoint: with slow steps,
    # checkpoint_every alone can leave an hour or more unsaved (the bundled CPU runs did).
    steps = []
    save = training._Run.save_checkpoint

    def recorded(run, step, seconds):
        steps.append(step)
        save(run, step, seconds)

    monkeypatch.setattr(training._Run, "save_checkpoint", recorded)
    overrides = ("validation.every=0", "training.checkpoint_every=4")
    config = small_config(images, tmp_path, *overrides, f"training.checkpoint_minutes={minutes}")
    quiet(config, tmp_path / "run")
    assert steps == saved
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 6


def test_a_new_run_in_a_folder_with_an_old_log_starts_a_new_log(images, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    quiet(small_config(images, tmp_path, "validation.every=0"), run_dir)
    assert 99 not in [row["step"] for row in log_rows(run_dir)]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty", "empty"),
        ("garbage", "not a checkpoint"),
        ("pickle", "not a checkpoint"),
        ("no_rng", "no 'rng'"),
        ("shapes", "does not match its config"),
    ],
)
# The "pickle" damage is a pickle that torch's weights-only loader refuses, and warns about.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_damaged_checkpoints_are_one_line_errors(images, tmp_path, capsys, damage, message):
    run_dir = tmp_path / "run"
    quiet(small_config(images, tmp_path, "validation.every=0", "training.iterations=2"), run_dir)
    path = run_dir / CHECKPOINT
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"config": {}}))
    else:
        checkpoint = torch.load(path, weights_only=True)
        if damage == "no_rng":
            del checkpoint["rng"]
        else:
            checkpoint["config"]["model"]["hidden_channels"] = 8
        torch.save(checkpoint, path)
    code = main(["train", "--resume", str(run_dir)])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error, error
    assert str(path) in error and message in error


def test_a_resumed_run_removes_temporary_files_of_a_killed_write(images, tmp_path):
    run_dir = tmp_path / "run"
    quiet(small_config(images, tmp_path, "validation.every=0", "training.iterations=2"), run_dir)
    stale = run_dir / ".checkpoint.pt.x1y2z3.tmp"
    stale.write_bytes(b"\0" * 1000)
    quiet(None, run_dir, resume=True)
    assert not stale.exists()


def test_a_training_image_corrupt_past_its_header_fails_before_step_one(images, tmp_path):
    import shutil

    from fdn.data import DataError, TrainingPatches

    data = tmp_path / "data"
    shutil.copytree(images, data)
    victim = sorted((data / "train").iterdir())[2]
    from PIL import Image

    Image.open(victim).convert("RGB").save(victim.with_suffix(".jpg"), quality=90)
    victim.unlink()
    jpeg = victim.with_suffix(".jpg").read_bytes()
    victim.with_suffix(".jpg").write_bytes(jpeg[: len(jpeg) // 2])  # header intact, data cut
    config = small_config(data, tmp_path)
    with pytest.raises(DataError, match=victim.with_suffix(".jpg").name):
        TrainingPatches(config, seed=0)


def test_cached_and_decoded_patches_are_the_same(images, tmp_path, monkeypatch):
    import fdn.data
    from fdn.data import TrainingPatches

    config = small_config(images, tmp_path)
    cached = TrainingPatches(config, seed=0)
    assert cached.cached_images == len(cached.items)
    monkeypatch.setattr(fdn.data, "CACHE_BYTES", 0)
    uncached = TrainingPatches(config, seed=0)
    assert uncached.cached_images == 0
    for index in (0, 5, 17):
        for a, b in zip(cached[index], uncached[index], strict=True):
            assert torch.equal(a, b)
