import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import fdn.training as training
from fdn import load_model
from fdn.cli import main
from fdn.config import ConfigError, load_config
from fdn.data import DataError, StepSampler, TrainingPatches
from fdn.training import CHECKPOINT, TrainingStopped, train

from helpers import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


def small_config(images, tmp_path, *overrides):
    text = f"""
[model]
hidden_channels = 4
steps_per_block = 1

[data]
root = "{images}"
train = "train"
sigma_range = [0, 55]
patch_size = 16
augment = "flip_rot"
workers = 0

[optim]
milestones = [3]

[training]
iterations = 6
batch_size = 2
log_every = 1
checkpoint_every = 2
device = "cpu"

[validation]
folder = "val"
every = 3
sigma = 25
"""
    path = tmp_path / "small.toml"
    path.write_text(text)
    return load_config(path, list(overrides))


def straight_and_resumed(images, tmp_path, monkeypatch, settings, stop_at, changes=()):
    """Trains ``settings`` once straight through, and once stopped by SIGTERM in step
    ``stop_at`` (0-based) and resumed (with ``changes``, ``--set`` overrides), as a real
    interruption is; returns both run folders."""
    quiet = {"progress": False, "log": lambda _: None}
    train(small_config(images, tmp_path, *settings), tmp_path / "straight", **quiet)
    real = training.step_loss

    def interrupt(model, cfg, noisy, clean, step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, cfg, noisy, clean, step)

    with monkeypatch.context() as patch:
        patch.setattr(training, "step_loss", interrupt)
        with pytest.raises(TrainingStopped):
            train(small_config(images, tmp_path, *settings), tmp_path / "resumed", **quiet)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == stop_at + 1
    train(None, tmp_path / "resumed", resume=True, changes=changes, **quiet)
    return tmp_path / "straight", tmp_path / "resumed"


def parameters(run_dir):
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]
    return {k: v for k, v in state.items()}


def test_a_short_run_trains_logs_validates_and_writes_a_model(images, tmp_path):
    config = small_config(images, tmp_path)
    final = train(config, tmp_path / "run", progress=False, log=lambda _: None).model_file
    model = load_model(final)
    assert model.config.hidden_channels == 4
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "log.jsonl").read_text().split("\n")
        if line
    ]
    assert records[0]["step"] == 0 and records[0]["val_psnr_noisy"] > 15
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for record in steps:
        assert {"loss", "nll", "nll_bits_per_dim", "l1", "lr", "images_per_s", "skipped"} <= set(
            record
        )
        assert record["device"] == "cpu"  # what the step ran on, for release_models.py
    assert steps[2]["lr"] == pytest.approx(2e-4) and steps[3]["lr"] == pytest.approx(1e-4)
    assert [r["step"] for r in records if "val_psnr" in r] == [3, 6]
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert load_config(tmp_path / "run" / "config.toml") == config


def test_stop_and_resume_equals_an_uninterrupted_run(images, tmp_path):
    config = small_config(images, tmp_path, "data.workers=2")
    train(config, tmp_path / "straight", progress=False, log=lambda _: None)
    interrupted = small_config(images, tmp_path, "data.workers=2", "training.iterations=3")
    train(interrupted, tmp_path / "resumed", progress=False, log=lambda _: None)
    # Resuming reads the config saved in the run; lengthen it as a user would with --set.
    checkpoint = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    checkpoint["config"]["training"]["iterations"] = 6
    torch.save(checkpoint, tmp_path / "resumed" / CHECKPOINT)
    train(None, tmp_path / "resumed", resume=True, progress=False, log=lambda _: None)
    straight, resumed = parameters(tmp_path / "straight"), parameters(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name].float(), resumed[name].float(), atol=1e-6), name
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == 6


def test_non_finite_loss_is_skipped_and_counted(images, tmp_path, monkeypatch):
    real = training.step_loss

    def sometimes_nan(model, config, noisy, clean, step):
        terms = real(model, config, noisy, clean, step)
        if step == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(training, "step_loss", sometimes_nan)
    config = small_config(images, tmp_path, "validation.every=0")
    train(config, tmp_path / "run", progress=False, log=lambda _: None)
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "log.jsonl").read_text().split("\n")
        if line
    ]
    assert [r["skipped"] for r in records] == [0, 0, 1, 1, 1, 1]
    state = parameters(tmp_path / "run")
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    # The log stays strict JSON: the skipped step's NaN loss is null (issue #16, item 11).
    text = (tmp_path / "run" / "log.jsonl").read_text()
    assert "NaN" not in text and records[2]["loss"] is None


def test_a_checkpoint_write_killed_midway_keeps_the_last_good_one(images, tmp_path, monkeypatch):
    config = small_config(images, tmp_path, "validation.every=0", "training.iterations=2")
    train(config, tmp_path / "run", progress=False, log=lambda _: None)
    good = (tmp_path / "run" / CHECKPOINT).read_bytes()

    def dies_midway(payload, path):
        with open(path, "wb") as stream:
            stream.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    config = small_config(images, tmp_path, "validation.every=0", "training.iterations=4")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == good
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrate=1e-3", "unknown key 'optim.lrate' (did you mean 'optim.lr'?)"),
        ("trainig.seed=1", "unknown section '[trainig]' (did you mean 'training'?)"),
        ("training.batch_size=2.5", "training.batch_size: expected int"),
        ("data.augment=rotate", "data.augment: expected one of none, flip, flip_rot"),
        ("data.patch_size=18", "data.patch_size: must be a multiple of 4"),
        ("optim.milestones=5", "optim.milestones: expected a list"),
        # issue #16, items 1 and 13
        ("optim.lr=inf", "optim.lr: must be a finite number"),
        ("data.sigma=nan", "data.sigma: must be a finite number"),
        ("optim.grad_clip=-1", "optim.grad_clip: must be positive"),
        ("validation.crop=-5", "validation.crop: must be >= 0"),
        ("training.seed=-1", "training.seed: must be >= 0"),
        ("training.threads=-1", "training.threads: must be >= 0"),
        ("optim.betas=[0.9]", "optim.betas: expected [beta1, beta2] in [0, 1)"),
        ("optim.betas=[0.9, 1.5]", "optim.betas: expected [beta1, beta2] in [0, 1)"),
        ("data.sigma_range=[0, inf]", "data.sigma_range[1]: must be a finite number"),
        ("validation.sigmas=[25, -1]", "validation.sigmas[1]: must be >= 0"),
        # issue #21 item 2: FDNConfig's own checks, when the config is loaded
        ("model.clean_fraction=0.7", "model: clean_fraction 0.7 of 48 latent channels"),
        ("model.hidden_channels=0", "model: hidden_channels must be a positive integer"),
    ],
)
def test_config_errors_name_the_key(images, tmp_path, override, message):
    with pytest.raises(ConfigError) as caught:
        small_config(images, tmp_path, override)
    assert message in str(caught.value)


def test_malformed_toml_is_a_config_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nkind = 'fdn'")
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "not valid TOML" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda root: "data.train=missing", "no such folder"),
        (lambda root: (root / "empty").mkdir() or "data.train=empty", "no images found"),
        (lambda root: "data.patch_size=64", "smaller than the 64x64 patch"),
        (
            lambda root: (
                (root / "bad").mkdir()
                or ((root / "bad" / "x.png").write_text("no") and "data.train=bad")
            ),
            "not a readable image",
        ),
    ],
)
def test_data_errors_come_before_any_step(images, tmp_path, change, message):
    data_root = tmp_path / "extra"
    data_root.mkdir()
    for name in ("train", "val"):
        (data_root / name).symlink_to(images / name)
    override = change(data_root)
    config = small_config(images, tmp_path, f"data.root={data_root}", override)
    with pytest.raises(DataError, match=message):
        train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_patches_are_a_pure_function_of_seed_and_index(images, tmp_path):
    config = small_config(images, tmp_path)
    first, second = TrainingPatches(config, seed=3), TrainingPatches(config, seed=3)
    for index in (0, 5, 17):
        a, b = first[index], second[index]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    noisy, clean = first[0]
    assert noisy.shape == clean.shape == (3, 16, 16)
    assert (noisy - clean).abs().max() > 0  # noise added
    assert not torch.equal(TrainingPatches(config, seed=4)[0][1], clean)


def test_sampler_splits_the_combined_batch_across_ranks():
    single = list(StepSampler(2, 4, batch=4))
    ranks = [list(StepSampler(2, 4, batch=2, rank=r, world=2)) for r in range(2)]
    assert single == [8, 9, 10, 11, 12, 13, 14, 15]
    assert ranks[0][:2] + ranks[1][:2] + ranks[0][2:] + ranks[1][2:] == single


def test_a_dncnn_trains_on_the_same_data(images, tmp_path):
    from fdn.baselines.dncnn import load_dncnn

    config = small_config(
        images, tmp_path, "model.kind=dncnn", "model.dncnn_depth=3", "model.dncnn_features=8"
    )
    final = train(config, tmp_path / "run", progress=False, log=lambda _: None).model_file
    assert load_dncnn(final).config.depth == 3


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(images, tmp_path):
    config = tmp_path / "long.toml"
    small_config(images, tmp_path)  # writes small.toml
    config.write_text(
        (tmp_path / "small.toml").read_text().replace("iterations = 6", "iterations = 100000")
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fdn",
            "train",
            str(config),
            "--out",
            str(run_dir),
            "--set",
            "validation.every=0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "checkpoint saved" in err and "Traceback" not in err
    step = torch.load(run_dir / CHECKPOINT, weights_only=True)["step"]
    assert step >= 2
    checkpoint = torch.load(run_dir / CHECKPOINT, weights_only=True)
    checkpoint["config"]["training"]["iterations"] = step + 1
    torch.save(checkpoint, run_dir / CHECKPOINT)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == step + 1


def test_training_stopped_is_raised_on_a_signal(images, tmp_path, monkeypatch):
    config = small_config(images, tmp_path, "validation.every=0")
    real = training.step_loss

    def signal_at_step_one(model, cfg, noisy, clean, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, cfg, noisy, clean, step)

    monkeypatch.setattr(training, "step_loss", signal_at_step_one)
    with pytest.raises(TrainingStopped) as stopped:
        train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert stopped.value.step == 2
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 2


def test_cli_refuses_to_overwrite_a_run(images, tmp_path, capsys):
    config = small_config(images, tmp_path, "training.iterations=1", "validation.every=0")
    assert config.training.iterations == 1
    argv = [
        "train",
        str(tmp_path / "small.toml"),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "training.iterations=1",
        "--set",
        "validation.every=0",
    ]
    assert main(argv) == 0
    assert main(argv) == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["sidd", "folders"])
def test_paired_data_crops_and_augments_both_images_alike(tmp_path, layout):
    from fdn.config import config_from_dict

    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for i in range(2):
        clean = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
        noisy = (255 - clean).astype(np.uint8)  # a known, invertible relation between the two
        if layout == "sidd":
            scene = root / "Data" / f"000{i}_scene"
            scene.mkdir(parents=True)
            Image.fromarray(noisy).save(scene / "NOISY_SRGB_010.PNG")
            Image.fromarray(clean).save(scene / "GT_SRGB_010.PNG")
        else:
            for kind, image in (("noisy", noisy), ("clean", clean)):
                (root / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / kind / f"{i}.png")
    config = config_from_dict(
        {
            "data": {
                "root": str(root),
                "train": ".",
                "kind": "paired",
                "patch_size": 8,
                "augment": "flip_rot",
            }
        }
    )
    patches = TrainingPatches(config, seed=0)
    assert len(patches) == 2
    for index in range(16):
        noisy, clean = patches[index]
        assert torch.allclose(noisy, 1 - clean, atol=1e-6)


def test_paired_data_errors(tmp_path):
    from fdn.data import find_pairs

    (tmp_path / "Data" / "scene").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "Data" / "scene" / "NOISY_SRGB_010.PNG")
    with pytest.raises(DataError, match=r"no ground truth GT_SRGB_010\.PNG"):
        find_pairs(tmp_path)
    # SIDD's Data folder is a data set too (fdn eval took it): the same missing image.
    with pytest.raises(DataError, match=r"no ground truth GT_SRGB_010\.PNG"):
        find_pairs(tmp_path / "Data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected Data/SCENE"):
        find_pairs(tmp_path / "empty")


def test_the_model_section_is_fdns_own_config_and_its_lattice_is_fdns_alone(images, tmp_path):
    import dataclasses

    from fdn.config import ModelConfig
    from fdn.model import FDNConfig

    fdn_fields = {f.name: f.default for f in dataclasses.fields(FDNConfig)}
    ours = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert fdn_fields.items() <= ours.items()  # same names, same defaults: one definition
    config = small_config(images, tmp_path, "model.hidden_channels=6")
    assert training.build_model(config).config == config.model.fdn_config()
    # A DnCNN has no size lattice: any patch size is fine.
    dncnn = small_config(images, tmp_path, "model.kind='dncnn'", "data.patch_size=18")
    assert dncnn.data.patch_size == 18
