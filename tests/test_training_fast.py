"""Training on the fast path and from trained weights: bf16, EMA, schedules, --init, hold-out."""

import itertools
import json
import math
import os
import signal

import pytest
import torch

import fdn.runtime as runtime
import fdn.training as training
from fdn import FDN, load_model, save_model
from fdn.cli import main
from fdn.config import ConfigError, config_for_resume, load_config
from fdn.data import TrainingPatches, holdout_split, load_validation
from fdn.optim import WeightAverage, lr_factor
from fdn.training import CHECKPOINT, TrainingStopped, build_model, init_from, train
from test_training import parameters, small_config, straight_and_resumed

from helpers import make_images, randomize


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"), counts=(("train", 10), ("val", 2)))


def quiet(config, run_dir, **kwargs):
    return train(config, run_dir, progress=False, log=lambda _: None, **kwargs)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_bf16_training_follows_fp32(images, tmp_path):
    # Same data, seed and init: the two paths differ only by bfloat16 rounding in the Dense
    # Blocks, so the losses of the first steps agree closely; a path that dropped a term or
    # rounded the flow's main path to bfloat16 would be off by far more than 2%.
    base = ("validation.every=0", "training.iterations=8", "optim.lr=1e-3")
    quiet(small_config(images, tmp_path, *base), tmp_path / "fp32")
    quiet(small_config(images, tmp_path, *base, "training.precision='bf16'"), tmp_path / "bf16")
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 8
    scale = max(abs(v) for v in fp32)
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.02 * scale
    # and it learns: the last loss is below the first
    assert bf16[-1] < bf16[0]


@pytest.mark.parametrize(
    "overrides",
    [
        ("training.precision='bf16'",),
        ("training.precision='bf16'", "training.ema=0.9", "optim.schedule='cosine'"),
    ],
)
def test_resume_is_exact_on_the_fast_path(images, tmp_path, monkeypatch, overrides):
    # Interrupted by a signal, as a real run is: the cosine schedule depends on the run's
    # length, so shortening the run instead would change it.
    settings = ("optim.warmup=2", *overrides)
    straight_and_resumed(images, tmp_path, monkeypatch, settings, 2)
    straight, resumed = parameters(tmp_path / "straight"), parameters(tmp_path / "resumed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert losses(tmp_path / "straight")[3:] == losses(tmp_path / "resumed")[3:]
    final = [load_model(tmp_path / run / "model.safetensors") for run in ("straight", "resumed")]
    for a, b in zip(final[0].state_dict().values(), final[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_model_files_hold_the_moving_average(images, tmp_path):
    config = small_config(images, tmp_path, "training.ema=0.5", "validation.every=0")
    result = quiet(config, tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    raw, average = checkpoint["model"], checkpoint["ema"]["model"]
    assert checkpoint["ema"]["updates"] == 6
    shipped = load_model(result.model_file).state_dict()
    moved = 0
    for name, value in average.items():
        assert torch.equal(shipped[name], value), name
        moved += not torch.equal(value, raw[name])
    assert moved > 0  # the average lags the raw weights


def _checkpoint(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_an_average_beside_the_runs_own_is_what_a_run_with_that_decay_ships(images, tmp_path):
    # The averages only watch the steps: the run that keeps a second one takes the same steps
    # as the run whose own average has that decay, and its second average, scores and file
    # are that run's.
    # (Over 6 updates the ramp, min(decay, (1 + n) / (10 + n)), holds 0.9 at 0.18-0.44, so
    # 0.1 is what differs from it.)
    settings = ("training.ema=0.9", "training.ema_extra=[0.1]")
    quiet(small_config(images, tmp_path, *settings), tmp_path / "beside")
    alone = quiet(small_config(images, tmp_path, "training.ema=0.1"), tmp_path / "alone")
    both, single = _checkpoint(tmp_path / "beside"), _checkpoint(tmp_path / "alone")
    for name, value in single["model"].items():
        assert torch.equal(both["model"][name], value), name
    extra = both["ema_extra"]["0.1"]
    assert extra["updates"] == single["ema"]["updates"] == 6
    moved = 0
    for name, value in single["ema"]["model"].items():
        assert torch.equal(extra["model"][name], value), name
        moved += not torch.equal(both["ema"]["model"][name], value)
    assert moved > 0  # the run's own average (0.9) is another
    shipped = load_model(alone.model_file).state_dict()
    saved = load_model(tmp_path / "beside" / "ema0.1.safetensors").state_dict()
    for name, value in shipped.items():
        assert torch.equal(saved[name], value), name
    scores = [row["val_psnr_ema0.1"] for row in _rows(tmp_path / "beside") if "val_psnr" in row]
    assert scores == [row["val_psnr"] for row in _rows(tmp_path / "alone") if "val_psnr" in row]
    assert len(scores) == 2  # steps 3 and 6


def test_kept_steps_are_what_validation_scored_and_change_no_step(images, tmp_path):
    # training.keep_every only watches: the run that keeps every third step's model ships
    # the very model of the run that does not, and each kept file is the average that step's
    # validation scored (the small config validates every 3 steps).
    settings = ("training.ema=0.9",)
    plain = quiet(small_config(images, tmp_path, *settings), tmp_path / "plain")
    config = small_config(images, tmp_path, *settings, "training.keep_every=3")
    keeps = quiet(config, tmp_path / "keeps")
    kept = tmp_path / "keeps" / training.KEPT
    assert sorted(p.name for p in kept.iterdir()) == ["step-3.safetensors", "step-6.safetensors"]
    shipped = load_model(plain.model_file).state_dict()
    for name, value in load_model(keeps.model_file).state_dict().items():
        assert torch.equal(shipped[name], value), name
    last, first = (load_model(kept / f"step-{n}.safetensors").state_dict() for n in (6, 3))
    assert all(torch.equal(last[name], value) for name, value in shipped.items())
    assert not all(torch.equal(first[name], value) for name, value in shipped.items())
    rows = _rows(tmp_path / "keeps")
    scores = {row["step"]: row["val_psnr"] for row in rows if "val_psnr" in row}
    validation = load_validation(config)
    for step in (3, 6):
        model = load_model(kept / f"step-{step}.safetensors")
        assert training.validate(model, validation, torch.device("cpu")) == scores[step]
    assert config_for_resume(config, ["training.keep_every=5"]).training.keep_every == 5


def test_an_average_added_to_a_resumed_run_starts_from_the_runs_own(images, tmp_path, monkeypatch):
    # Stopped after step 3 and resumed with a second average of the run's own decay: it starts
    # from the run's average, then takes its decay from its first update (updates 4-6), where
    # the run's own is still on the ramp min(decay, (1 + n) / (10 + n)) at 0.36-0.44.
    updates = []  # (decay, ramp, the average before, the weights it takes in)
    real = WeightAverage.update

    def recorded(self, model):
        before = [p.detach().clone() for p in self.model.parameters()]
        taken = [p.detach().clone() for p in model.parameters()]
        updates.append((self.decay, self.ramp, before, taken))
        real(self, model)

    monkeypatch.setattr(WeightAverage, "update", recorded)
    straight, resumed = straight_and_resumed(
        images, tmp_path, monkeypatch, ("training.ema=0.9",), 2,
        changes=["training.ema_extra=[0.9]"],
    )  # fmt: skip
    plain, added = _checkpoint(straight), _checkpoint(resumed)
    assert added["config"]["training"]["ema_extra"] == [0.9]
    for name, value in plain["model"].items():
        assert torch.equal(added["model"][name], value), name  # the same steps
        assert torch.equal(added["ema"]["model"][name], plain["ema"]["model"][name]), name
    beside = [update for update in updates if not update[1]]
    own = [update for update in updates if update[1]][-3:]  # the resumed process's
    assert len(beside) == 3 and all(update[0] == 0.9 for update in beside)
    for mine, its in zip(beside[0][2], own[0][2], strict=True):
        assert torch.equal(mine, its)  # from the run's own average
    expected = beside[0][2]
    for _, _, _, weights in beside:
        expected = [torch.lerp(a, w, 1 - 0.9) for a, w in zip(expected, weights, strict=True)]
    model = build_model(load_config(resumed / "config.toml"))
    names = [name for name, _ in model.named_parameters()]
    kept = added["ema_extra"]["0.9"]["model"]
    for name, value in zip(names, expected, strict=True):
        torch.testing.assert_close(kept[name], value, rtol=0, atol=1e-6)
    assert any(not torch.equal(kept[name], added["ema"]["model"][name]) for name in names)


@pytest.mark.parametrize(
    "overrides",
    [
        ("training.ema_extra=[0.99]",),  # nothing to be beside
        ("training.ema=0.9", "training.ema_extra=[0.99, 0.99]"),
        ("training.ema=0.9", "training.ema_extra=[1.0]"),
    ],
)
def test_averages_beside_are_checked(images, tmp_path, overrides):
    with pytest.raises(ConfigError, match=r"training\.ema_extra"):
        small_config(images, tmp_path, *overrides)


def test_the_average_is_the_ramped_exponential_mean(images, tmp_path):
    model = torch.nn.Linear(2, 1, bias=False)
    average = WeightAverage(model, decay=0.99)
    start = model.weight.detach().clone()
    values = [start]
    for step in range(1, 4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        average.update(model)
        decay = min(0.99, (1 + step) / (10 + step))
        values.append(decay * values[-1] + (1 - decay) * model.weight.detach())
    assert torch.allclose(average.model.weight, values[-1])


def test_an_average_without_the_ramp_takes_its_decay_from_the_first_update():
    model = torch.nn.Linear(2, 1, bias=False)
    ramped, plain = WeightAverage(model, decay=0.99), WeightAverage(model, 0.99, ramp=False)
    expected = model.weight.detach().clone()
    for step in range(1, 4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ramped.update(model)
        plain.update(model)
        expected = 0.99 * expected + 0.01 * model.weight.detach()
    assert torch.allclose(plain.model.weight, expected)
    assert not torch.allclose(ramped.model.weight, expected)


def test_cosine_schedule_warms_up_then_decays_to_the_floor(images, tmp_path):
    config = small_config(
        images,
        tmp_path,
        "optim.schedule='cosine'",
        "optim.warmup=10",
        "optim.min_lr=1e-5",
        "optim.lr=1e-3",
        "training.iterations=111",
    )
    rates = [config.optim.lr * lr_factor(config, step) for step in range(111)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[60] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert rates[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))


def test_wsd_schedule_holds_the_rate_then_decays_over_the_last_steps(images, tmp_path):
    settings = ("optim.schedule='wsd'", "optim.warmup=10", "optim.min_lr=1e-5", "optim.lr=1e-3")
    config = small_config(
        images, tmp_path, *settings, "training.iterations=111", "optim.decay_steps=41"
    )
    rates = [config.optim.lr * lr_factor(config, step) for step in range(111)]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[9:71] == pytest.approx([1e-3] * 62)
    assert rates[90] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(rates[70:]))
    for bad in ("optim.decay_steps=0", "optim.decay_steps=112"):
        with pytest.raises(ConfigError, match=r"optim\.decay_steps"):
            small_config(images, tmp_path, *settings, "training.iterations=111", bad)


def test_step_schedule_is_the_papers(images, tmp_path):
    config = small_config(images, tmp_path, "optim.milestones=[3, 5]", "optim.gamma=0.5")
    assert [lr_factor(config, s) for s in range(6)] == [1, 1, 1, 0.5, 0.5, 0.25]
    warm = small_config(images, tmp_path, "optim.warmup=4")
    assert [lr_factor(warm, s) for s in range(4)] == [0.25, 0.5, 0.75, 0.5]


def test_init_starts_from_the_models_weights(images, tmp_path):
    config = small_config(images, tmp_path)
    source = randomize(build_model(config), seed=3, shape=(2, 3, 8, 8)).float()
    save_model(source, tmp_path / "start.safetensors")
    config.training.init = str(tmp_path / "start.safetensors")
    model = build_model(config)
    init_from(model, config)
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_an_average_from_trained_weights_does_not_ramp(images, tmp_path, monkeypatch):
    # From --init, the run's own average takes its decay from its first update: it is the
    # average beside it of the same decay, which never ramps, bit for bit. (With the ramp,
    # min(0.9, (1 + n) / (10 + n)) = 0.18-0.44 over these 6 updates, the init's weights
    # would be nearly gone from it.) The choice is saved: resumed, it goes on the same way,
    # and a checkpoint from before it was saved resumes ramping, as it began.
    config = small_config(images, tmp_path, "training.ema=0.9", "training.ema_extra=[0.9]")
    save_model(randomize(build_model(config), seed=3, shape=(2, 3, 8, 8)).float(),
               tmp_path / "start.safetensors")  # fmt: skip
    settings = ("training.ema=0.9", "training.ema_extra=[0.9]",
                f"training.init='{tmp_path / 'start.safetensors'}'")  # fmt: skip
    straight, resumed = straight_and_resumed(images, tmp_path, monkeypatch, settings, 2)
    for run in (straight, resumed):
        saved = _checkpoint(run)
        assert saved["ema"]["ramp"] is False and saved["ema"]["updates"] == 6
        for name, value in saved["ema_extra"]["0.9"]["model"].items():
            assert torch.equal(saved["ema"]["model"][name], value), name
    ramps = []
    real = WeightAverage.update

    def recorded(self, model):
        ramps.append(self.ramp)
        real(self, model)

    real_step = training.step_loss

    def interrupt(model, cfg, noisy, clean, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(model, cfg, noisy, clean, step)

    old = tmp_path / "old"
    with monkeypatch.context() as patch:
        patch.setattr(training, "step_loss", interrupt)
        with pytest.raises(TrainingStopped):
            quiet(small_config(images, tmp_path, *settings), old)
    checkpoint = _checkpoint(old)
    del checkpoint["ema"]["ramp"]
    torch.save(checkpoint, old / CHECKPOINT)
    monkeypatch.setattr(WeightAverage, "update", recorded)
    quiet(None, old, resume=True)
    # Updates 4-6: the run's own, ramping as before 2026-11-28, then the one beside it.
    assert ramps == [True, False] * 3


def test_cli_init_trains_on_from_a_model_file(images, tmp_path, capsys):
    config = small_config(images, tmp_path, "optim.lr=1e-12", "validation.every=0")
    source = randomize(build_model(config), seed=3, shape=(2, 3, 8, 8)).float()
    save_model(source, tmp_path / "start.safetensors")
    path = tmp_path / "small.toml"
    code = main(
        [
            "train",
            str(path),
            "--set",
            "optim.lr=1e-12",
            "--set",
            "validation.every=0",
            "--out",
            str(tmp_path / "run"),
            "--init",
            str(tmp_path / "start.safetensors"),
        ]
    )
    assert code == 0
    trained = load_model(tmp_path / "run" / "model.safetensors")
    # with a negligible rate the result is the start, not a fresh network
    for name, value in source.state_dict().items():
        assert torch.allclose(trained.state_dict()[name], value, atol=1e-6), name
    assert "init" in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize(
    "changes",
    [("model.steps_per_block=3",), ("model.steps_per_block=2", "model.hidden_channels=6")],
)
def test_init_may_start_a_deeper_or_wider_network_from_a_model(images, tmp_path, changes):
    # The file's Steps of Flow load into the first steps of each block and the rest start as
    # the identity; the Dense Blocks' added channels feed nothing yet: the larger network
    # denoises as the file does, and trains on from there.
    source = randomize(FDN(hidden_channels=4, steps_per_block=1), seed=3, shape=(2, 3, 8, 8))
    save_model(source.float(), tmp_path / "start.safetensors")
    config = small_config(images, tmp_path, *changes)
    config.training.init = str(tmp_path / "start.safetensors")
    model = build_model(config)
    init_from(model, config)
    y = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.eval().denoise(y), source.float().eval().denoise(y), atol=1e-5)
    # A smaller network than the file's would throw trained weights away: the one-line error.
    save_model(model, tmp_path / "big.safetensors")
    config = small_config(images, tmp_path)
    config.training.init = str(tmp_path / "big.safetensors")
    with pytest.raises(ConfigError, match=r"steps_per_block \d \(config: 1\)"):
        init_from(build_model(config), config)


def test_init_with_another_architecture_is_a_one_line_error(images, tmp_path, capsys):
    small_config(images, tmp_path)  # writes small.toml (hidden_channels 4, 1 step)
    save_model(FDN(hidden_channels=8, steps_per_block=1), tmp_path / "wide.safetensors")
    code = main(
        [
            "train",
            str(tmp_path / "small.toml"),
            "--out",
            str(tmp_path / "run"),
            "--init",
            str(tmp_path / "wide.safetensors"),
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error
    assert "wide.safetensors" in error and "hidden_channels 8 (config: 4)" in error
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_init_refuses_resume_and_a_missing_file(images, tmp_path, capsys):
    small_config(images, tmp_path)
    missing = tmp_path / "missing.safetensors"
    assert main(["train", str(tmp_path / "small.toml"), "--init", str(missing)]) != 0
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--init", "fdn-color-blind"]) != 0
    assert "--init" in capsys.readouterr().err


def test_holdout_is_fixed_disjoint_and_validates(images, tmp_path):
    config = small_config(images, tmp_path, "data.holdout=3", "validation.folder=''")
    config.validation.sigmas = [15.0, 50.0]
    kept = {noisy for noisy, _ in TrainingPatches(config, seed=1).items}
    again = {noisy for noisy, _ in TrainingPatches(config, seed=99).items}
    assert kept == again and len(kept) == 7
    validation = load_validation(config)
    held = {name for name, _, _ in validation}
    assert len(held) == 3 and not held & {p.name for p in kept}
    assert len(validation) == 6  # each held image at both sigmas
    by_sigma = [v for v in validation if v[0] == validation[0][0]]
    noise = [(noisy - clean).std().item() * 255 for _, noisy, clean in by_sigma]
    assert noise[0] == pytest.approx(15, rel=0.3) and noise[1] == pytest.approx(50, rel=0.3)


def test_holdout_of_everything_is_an_error():
    with pytest.raises(ValueError, match=r"data\.holdout: 5 of 5"):
        holdout_split(list(range(5)), 5)
    assert holdout_split(list(range(5)), 0) == (list(range(5)), [])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.precision='fp8'", "training.precision"),
        ("optim.schedule='linear'", "optim.schedule"),
        ("training.ema=1.0", "training.ema"),
        ("data.holdout=-1", "data.holdout"),
        ("optim.reconstruction='l3'", "optim.reconstruction"),
        ("training.checkpoint_minutes=-1", "training.checkpoint_minutes: must be >= 0"),
        ("training.checkpoint_minutes=nan", "training.checkpoint_minutes: must be a finite"),
    ],
)
def test_new_keys_are_checked(images, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        small_config(images, tmp_path, override)


def test_flow_arithmetic_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=8, steps_per_block=2), shape=(2, 3, 16, 16)).float()
    y = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = model.encode(y)
        back = model.decode(z)
    assert z.dtype == logdet.dtype == back.dtype == torch.float32
    # The main path is float32, so the inverse is still exact to float32 rounding; the
    # Dense Blocks' bfloat16 only changes what the flow computes, not its invertibility.
    assert (back - y).abs().max() < 1e-4
    z32, logdet32 = model.encode(y)
    assert torch.allclose(logdet, logdet32, rtol=1e-2)
    assert not math.isclose((z - z32).abs().max().item(), 0)


def test_a_time_limit_ends_the_run_validated_saved_and_resumable(images, tmp_path, monkeypatch):
    clock = itertools.count(0, 30)  # each call to the clock is 30 s later
    monkeypatch.setattr(training.time, "monotonic", lambda: float(next(clock)))
    config = small_config(images, tmp_path, "training.time_limit=1.5", "validation.every=100")
    result = quiet(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert 0 < result.step < 6
    assert rows[-1]["step"] == result.step and "val_psnr" in rows[-1]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == result.step
    checkpoint["config"]["training"]["time_limit"] = 0.0
    torch.save(checkpoint, tmp_path / "run" / CHECKPOINT)
    assert quiet(None, tmp_path / "run", resume=True).step == 6


def test_a_cpu_time_limit_counts_the_process_cpu_time_not_the_wall(images, tmp_path, monkeypatch):
    # Equal compute for pilots that share a busy machine: the wall clock races ahead, the
    # process's CPU time does not.
    wall = itertools.count(0, 3600)
    cpu = itertools.count(0, 30)
    monkeypatch.setattr(training.time, "monotonic", lambda: float(next(wall)))
    monkeypatch.setattr(training.time, "process_time", lambda: float(next(cpu)))
    config = small_config(
        images, tmp_path, "training.time_limit=1.5", "training.time_limit_clock='cpu'"
    )
    result = quiet(config, tmp_path / "run")
    assert 0 < result.step < 6
    with pytest.raises(ConfigError, match="time_limit_clock"):
        small_config(images, tmp_path, "training.time_limit_clock='gpu'")


def test_training_time_counts_across_resumes(images, tmp_path):
    # The time limit is the run's budget, not each process's: a run stopped and resumed
    # gets no more time than one left alone, and its log gives PSNR against training time.
    config = small_config(images, tmp_path, "training.iterations=3", "training.log_every=1")
    quiet(config, tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    first = checkpoint["train_seconds"]
    assert first["wall"] > 0 and first["cpu"] > 0
    # Pretend the first process had used an hour of CPU; the run may continue to step 6
    # within 90 CPU minutes, and it logs the hour it inherited.
    checkpoint["train_seconds"] = {"wall": 10.0, "cpu": 3600.0}
    checkpoint["config"]["training"].update(iterations=6, time_limit=90.0, time_limit_clock="cpu")
    torch.save(checkpoint, tmp_path / "run" / CHECKPOINT)
    assert quiet(None, tmp_path / "run", resume=True).step == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    times = [row for row in rows if "cpu_s" in row]
    assert [row["step"] for row in times] == [1, 2, 3, 4, 5, 6]
    assert times[2]["cpu_s"] < 3600 < times[3]["cpu_s"]
    assert all(a["wall_s"] < b["wall_s"] for a, b in itertools.pairwise(times[3:]))

    # With the budget spent before the resume, the resumed run takes no step at all (it used
    # to start a fresh budget and run up to the full limit again).
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    checkpoint["train_seconds"]["cpu"] = 90 * 60 + 1.0
    checkpoint["config"]["training"]["iterations"] = 9
    torch.save(checkpoint, tmp_path / "run" / CHECKPOINT)
    assert quiet(None, tmp_path / "run", resume=True).step == 6


def _bn_input_mean(model, batches):
    """The mean over ``batches`` of what ``model``'s first batch norm layer is given."""
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = norm.register_forward_pre_hook(lambda _, args: seen.append(args[0].mean((0, 2, 3))))
    with torch.no_grad():
        for batch in batches:
            model.eval()(batch)
    hook.remove()
    return torch.stack(seen).mean(0), norm.running_mean


def test_the_average_of_a_batch_norm_model_carries_statistics_of_its_own_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    calibration = [torch.rand(8, 1, 6, 6) for _ in range(3)]
    with pytest.raises(ValueError, match="calibration batches"):
        WeightAverage(model, decay=0.9)
    average = WeightAverage(model, decay=0.9, calibration=calibration)
    for _ in range(5):  # training moves the weights and the live running statistics
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.rand(8, 1, 6, 6))
        average.update(model)
    # Copied from the live model, the statistics describe other weights than the average's.
    wanted, copied = _bn_input_mean(average.model, calibration)
    assert not torch.allclose(wanted, copied, atol=1e-3)
    shipped = average.calibrated()
    wanted, running = _bn_input_mean(shipped, calibration)
    assert torch.allclose(wanted, running, atol=1e-6)
    assert not shipped.training and average.calibrated() is shipped


def test_a_dncnn_run_ships_an_average_whose_batch_norm_fits_its_weights(images, tmp_path):
    # Before, the shipped average of a DnCNN kept the live model's statistics: on held-back
    # faces that cost 4.7 dB (docs/reproduction.md).
    from fdn.baselines.dncnn import load_dncnn

    overrides = ("model.kind=dncnn", "model.dncnn_depth=3", "model.dncnn_features=8")
    config = small_config(images, tmp_path, *overrides, "training.ema=0.5", "optim.lr=1e-2")
    result = quiet(config, tmp_path / "run")
    shipped = load_dncnn(result.model_file)
    patches = TrainingPatches(config, config.training.seed)
    inputs = training.first_samples(patches, training.BN_CALIBRATION_SAMPLES)
    wanted, running = _bn_input_mean(shipped, inputs.split(config.training.batch_size))
    assert torch.allclose(wanted, running, atol=1e-4)


def test_a_run_resumes_exactly_on_another_data_root_and_device_setting(
    images, tmp_path, monkeypatch
):
    # A run moved to another machine: its data under another root, its device and threads
    # given anew. The steps are those of the run left alone, and the move is saved with it.
    import shutil

    settings = ("training.precision='bf16'", "optim.schedule='cosine'", "training.ema=0.9")
    first, moved = tmp_path / "first", tmp_path / "moved"
    shutil.copytree(images, first)
    shutil.copytree(images, moved)
    config = small_config(first, tmp_path, *settings)
    quiet(config, tmp_path / "full")
    second = tmp_path / "second"

    def stop_at_3(model, cfg, noisy, clean, step, real=training.step_loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, cfg, noisy, clean, step)

    with monkeypatch.context() as patch:
        patch.setattr(training, "step_loss", stop_at_3)
        with pytest.raises(training.TrainingStopped):
            quiet(config, second)
    checkpoint = torch.load(second / CHECKPOINT, weights_only=True)
    checkpoint["config"]["training"]["device"] = "cuda"  # as a GPU machine saved it
    torch.save(checkpoint, second / CHECKPOINT)
    shutil.rmtree(first)  # the data is no longer where the run was started
    changes = [f"data.root={moved}", "training.device=cpu", "training.threads=1"]
    assert quiet(None, second, resume=True, changes=changes).step == 6
    full, moved_run = parameters(tmp_path / "full"), parameters(second)
    for name in full:
        assert torch.equal(full[name], moved_run[name]), name
    saved = torch.load(second / CHECKPOINT, weights_only=True)["config"]
    assert saved["data"]["root"] == str(moved) and saved["training"]["threads"] == 1


def test_a_resumed_run_refuses_changes_to_what_it_computes(images, tmp_path, capsys):
    config = small_config(images, tmp_path, "training.iterations=2")
    quiet(config, tmp_path / "run")
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    code = main(["train", "--resume", str(tmp_path / "run"), "--set", "optim.lr=1e-2"])
    error = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in error
    assert "optim.lr" in error and "data.root" in error and str(tmp_path / "run") in error
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before
    # A key it may change is taken, from the command line too.
    code = main(["train", "--resume", str(tmp_path / "run"), "--set", "training.log_every=5"])
    assert code == 0
    assert load_config(tmp_path / "run" / "config.toml").training.log_every == 5


class StrictBoard:
    """TensorBoard's add_scalar as far as it matters here: it takes numbers, and fails on a
    string (SummaryWriter raises converting "cuda" to an array of floats)."""

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, float(value)))


def test_tensorboard_gets_the_numbers_of_a_log_row_and_not_its_device(
    images, tmp_path, monkeypatch
):
    # A run with tensorboard installed died at its first log row once rows said what they ran
    # on ("device": "cuda"): every value went to add_scalar.
    board = StrictBoard()
    monkeypatch.setattr(training, "tensorboard", lambda run_dir: board)
    config = small_config(images, tmp_path, "training.log_every=2")
    assert quiet(config, tmp_path / "run").step == 6
    assert [step for step, _ in board.scalars["loss"]] == [2, 4, 6]
    assert "val_psnr" in board.scalars and "device" not in board.scalars


def test_the_log_gives_the_gradient_norm_before_clipping(images, tmp_path):
    # A loss spike is read off the log: the window's median and largest gradient norm, as
    # computed before clipping (with a clip far below them, a norm after clipping would be
    # the clip itself).
    config = small_config(
        images, tmp_path, "training.iterations=4", "training.log_every=2", "optim.grad_clip=1e-6"
    )
    quiet(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "loss" in row]
    assert [row["step"] for row in logged] == [2, 4]
    for row in logged:
        assert 1e-3 < row["grad_norm"] <= row["grad_norm_max"] < 1e6
    assert logged[0]["grad_norm_max"] != logged[1]["grad_norm_max"]  # one window each


def test_a_psnr_run_logs_its_batches_psnr_and_a_fork_may_switch_to_it(images, tmp_path):
    # optim.reconstruction = "psnr" optimises minus the batches' mean PSNR; the log gives the
    # PSNR itself. A fork of an L1 run may change the measure: a pilot of it from one state.
    config = small_config(
        images, tmp_path, "training.iterations=2", "training.log_every=1", "optim.lambda_nll=0"
    )
    quiet(config, tmp_path / "l1")
    code = main(
        ["train", "--fork", str(tmp_path / "l1"), "--out", str(tmp_path / "psnr"),
         "--set", "optim.reconstruction=psnr", "--set", "training.iterations=4", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    rows = [
        json.loads(line) for line in (tmp_path / "psnr" / "log.jsonl").read_text().splitlines()
    ]
    logged = [row for row in rows if "loss" in row]
    assert [row["step"] for row in logged] == [1, 2, 3, 4]  # the parent's rows come along
    assert all("l1" in row and "psnr" not in row for row in logged[:2])
    for row in logged[2:]:
        assert "l1" not in row and 5 < row["psnr"] < 60
        assert row["loss"] == pytest.approx(-row["psnr"])  # lambda_nll = 0: the loss is the term


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_computes_it(
    images, tmp_path, monkeypatch, native
):
    # "auto" is resolved when the run starts and saved so, so that its resume (here, on a
    # machine that says the opposite) runs the very same steps.
    monkeypatch.setattr(training, "bf16_is_native", lambda device: native)
    monkeypatch.setattr(runtime, "bf16_is_native", lambda device: native)
    lines: list[str] = []
    config = small_config(images, tmp_path, "training.precision='auto'", "training.iterations=2")
    train(config, tmp_path / "run", progress=False, log=lines.append)
    chosen = "bf16" if native else "fp32"
    assert load_config(tmp_path / "run" / "config.toml").training.precision == chosen
    assert f"training.precision = 'auto': {chosen} on this cpu" in lines
    monkeypatch.setattr(runtime, "bf16_is_native", lambda device: not native)
    resumed = load_config(tmp_path / "run" / "config.toml")
    resumed.training.iterations = 3
    quiet(resumed, tmp_path / "run", resume=True)
    assert load_config(tmp_path / "run" / "config.toml").training.precision == chosen


def test_bf16_where_it_is_emulated_warns(images, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "bf16_is_native", lambda device: False)
    lines: list[str] = []
    config = small_config(images, tmp_path, "training.precision='bf16'", "training.iterations=1")
    train(config, tmp_path / "run", progress=False, log=lines.append)
    assert any(line.startswith("warning: training.precision = 'bf16'") for line in lines)
    assert load_config(tmp_path / "run" / "config.toml").training.precision == "bf16"
    monkeypatch.setattr(training, "bf16_is_native", lambda device: True)
    lines.clear()
    train(config, tmp_path / "again", progress=False, log=lines.append)
    assert not any("warning" in line for line in lines)


def test_bf16_is_native_asks_the_device():
    cpu = torch.device("cpu")
    assert runtime.bf16_is_native(cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.resolve_precision("auto", cpu) == (
        "bf16" if runtime.bf16_is_native(cpu) else "fp32"
    )
