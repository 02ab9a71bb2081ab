"""fdn train --fork: a branch of a run from its checkpoint, to compare variants (a patch size,
a loss weight) from one trained state rather than from a release with a fresh optimiser."""

import json

import pytest
import torch

from fdn import load_model
from fdn.cli import main
from fdn.config import load_config
from fdn.training import CHECKPOINT, TrainingError, train
from test_training import parameters, small_config

from helpers import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data"))


def quiet(config, run_dir, **kwargs):
    return train(config, run_dir, progress=False, log=lambda _: None, **kwargs)


@pytest.fixture()
def parent(images, tmp_path):
    """A run stopped at step 4 of 6 (its time used up), as a run is when it is forked."""
    config = small_config(images, tmp_path, "validation.every=2", "training.ema=0.9")
    short = small_config(images, tmp_path, "validation.every=2", "training.ema=0.9",
                         "training.iterations=4")  # fmt: skip
    quiet(short, tmp_path / "parent")
    # Give it back its full schedule, as if stopped at step 4 (the LR depends on iterations).
    checkpoint = torch.load(tmp_path / "parent" / CHECKPOINT, weights_only=True)
    checkpoint["config"] = config.to_dict()
    torch.save(checkpoint, tmp_path / "parent" / CHECKPOINT)
    return tmp_path / "parent"


def log_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def test_an_unchanged_fork_takes_its_parents_steps(parent, tmp_path):
    parent_id = torch.load(parent / CHECKPOINT, weights_only=True)["run_id"]
    quiet(None, tmp_path / "fork", fork=parent)
    quiet(None, parent, resume=True)
    resumed, forked = parameters(parent), parameters(tmp_path / "fork")
    for name in resumed:
        assert torch.equal(resumed[name], forked[name]), name
    state = torch.load(tmp_path / "fork" / CHECKPOINT, weights_only=True)
    assert state["step"] == 6 and state["run_id"] == parent_id
    # Its history is the parent's up to the branch, then its own, one line a step.
    assert log_steps(tmp_path / "fork") == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "fork" / "best.safetensors").is_file()


def test_a_fork_changes_the_data_and_batch_and_leaves_its_parent_alone(parent, tmp_path):
    # A parent whose log is from before patches_per_step was logged, as the bundled runs' are.
    log = parent / "log.jsonl"
    rows = [json.loads(line) for line in log.open()]
    for row in rows:
        row.pop("patches_per_step", None)
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = (parent / CHECKPOINT).read_bytes()
    changes = ["data.patch_size=24", "training.batch_size=3", "optim.lambda_nll=0.001"]
    quiet(None, tmp_path / "fork", fork=parent, changes=changes)
    saved = load_config(tmp_path / "fork" / "config.toml")
    assert saved.data.patch_size == 24 and saved.training.batch_size == 3
    assert saved.optim.lambda_nll == 0.001
    assert (parent / CHECKPOINT).read_bytes() == before
    quiet(None, parent, resume=True)
    resumed, forked = parameters(parent), parameters(tmp_path / "fork")
    assert any(not torch.equal(resumed[name], forked[name]) for name in resumed)
    # Its log counts each step's patches at the batch the step was taken with.
    rows = [json.loads(line) for line in (tmp_path / "fork" / "log.jsonl").open()]
    batches = {row["step"]: row["patches_per_step"] for row in rows if "loss" in row}
    assert batches == {1: 2, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3}
    # The fork is a run of its own: it resumes from its folder with its changes.
    state = torch.load(tmp_path / "fork" / CHECKPOINT, weights_only=True)
    assert state["config"]["data"]["patch_size"] == 24


def test_a_fork_branches_off_a_decay_to_the_floor(parent, tmp_path):
    # The parent's step schedule is at 1e-4 (gamma 0.5 past step 3); the branch holds 2e-4 and
    # decays to 1e-5 over its last 3 steps, to step 8 where the parent's schedule ends at 6.
    changes = ["optim.schedule=wsd", "training.iterations=8", "optim.decay_steps=3"]
    quiet(None, tmp_path / "fork", fork=parent, changes=[*changes, "optim.min_lr=1e-5"])
    rows = [json.loads(line) for line in (tmp_path / "fork" / "log.jsonl").open()]
    rates = {row["step"]: row["lr"] for row in rows if "loss" in row and row["step"] > 4}
    assert rates == pytest.approx({5: 2e-4, 6: 2e-4, 7: 1.05e-4, 8: 1e-5})
    assert torch.load(tmp_path / "fork" / CHECKPOINT, weights_only=True)["step"] == 8


def test_a_fork_may_turn_the_moving_average_on_or_off(images, tmp_path):
    short = small_config(images, tmp_path, "training.iterations=2")
    quiet(short, tmp_path / "plain")
    on = quiet(None, tmp_path / "on", fork=tmp_path / "plain",
               changes=["training.iterations=4", "training.ema=0.5"])  # fmt: skip
    assert "ema" in torch.load(tmp_path / "on" / CHECKPOINT, weights_only=True)
    off = quiet(None, tmp_path / "off", fork=tmp_path / "on",
                changes=["training.iterations=6", "training.ema=0"])  # fmt: skip
    assert on.model_file.is_file() and off.model_file.is_file()
    assert "ema" not in torch.load(tmp_path / "off" / CHECKPOINT, weights_only=True)


@pytest.mark.parametrize(
    "change", ["model.clean_fraction=0.5", "optim.warmup=3", "optim.betas=[0.8, 0.9]"]
)
def test_a_fork_keeps_the_network_and_the_optimiser(parent, tmp_path, change):
    with pytest.raises(TrainingError, match=change.partition("=")[0]):
        quiet(None, tmp_path / "fork", fork=parent, changes=[change])
    assert not (tmp_path / "fork" / CHECKPOINT).exists()


def test_a_fork_may_raise_the_learning_rate(parent, tmp_path):
    # A fork at twice the parent's base rate steps at twice its rate, on its schedule.
    same = quiet(None, tmp_path / "same", fork=parent)
    lr = torch.load(parent / CHECKPOINT, weights_only=True)["config"]["optim"]["lr"]
    quiet(None, tmp_path / "double", fork=parent, changes=[f"optim.lr={2 * lr}"])
    rates = {}
    for run in ("same", "double"):
        rows = [
            json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
        ]
        rates[run] = [row["lr"] for row in rows if "lr" in row and row["step"] > 4]
    assert len(rates["same"]) == 2  # steps 5 and 6
    assert rates["double"] == pytest.approx([2 * r for r in rates["same"]], rel=1e-12)
    checkpoint = torch.load(tmp_path / "double" / CHECKPOINT, weights_only=True)
    assert checkpoint["scheduler"]["base_lrs"] == [2 * lr]
    assert checkpoint["config"]["optim"]["lr"] == 2 * lr
    moved = load_model(same.model_file).state_dict()
    doubled = load_model(tmp_path / "double" / "model.safetensors").state_dict()
    assert any(not torch.equal(moved[n], v) for n, v in doubled.items())


def test_fdn_train_fork_end_to_end(parent, tmp_path, capsys):
    fork = tmp_path / "fork"
    code = main(["train", "--fork", str(parent), "--out", str(fork), "--no-progress",
                 "--set", "data.patch_size=24"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert torch.load(fork / CHECKPOINT, weights_only=True)["step"] == 6
    capsys.readouterr()
    # A second fork into the same folder, no --out, or a config alongside: one-line errors.
    for argv in (
        ["train", "--fork", str(parent), "--out", str(fork)],
        ["train", "--fork", str(parent)],
        ["train", str(parent / "config.toml"), "--fork", str(parent), "--out", str(fork) + "x"],
        ["train", "--fork", str(parent), "--out", str(tmp_path / "y"), "--set", "model.clamp=2"],
    ):
        assert main(argv) != 0, argv
        error = capsys.readouterr().err.strip()
        assert error and "\n" not in error, argv
    assert not (tmp_path / "forkx").exists()


def test_a_fork_may_add_steps_of_flow_and_takes_its_parents_steps_on_the_rest(parent, tmp_path):
    # The added steps start as the identity, so the deeper fork computes its parent's loss
    # and gradients: after one step, every weight the parent had is where the parent's own
    # next step puts it (Adam's moments carried by name), and only the added ones are new.
    one_more = ["training.iterations=5"]
    quiet(None, tmp_path / "deep", fork=parent,
          changes=["model.steps_per_block=2", *one_more])  # fmt: skip
    quiet(None, tmp_path / "same", fork=parent, changes=one_more)
    same, deep = parameters(tmp_path / "same"), parameters(tmp_path / "deep")
    assert set(same) < set(deep)
    for name in same:
        assert torch.allclose(deep[name], same[name], rtol=0, atol=1e-6), name
    added = [name for name in deep if name not in same]
    assert any(name.startswith("layers.0.layers.2.") for name in added)
    state = torch.load(tmp_path / "deep" / CHECKPOINT, weights_only=True)
    assert state["config"]["model"]["steps_per_block"] == 2 and state["step"] == 5
    # The moving average grew too, and the fork resumes as a deeper run of its own.
    assert set(state["ema"]["model"]) == set(deep)
    result = quiet(None, tmp_path / "deep", resume=True, changes=[])
    assert result.step == 5


def test_a_fork_may_widen_the_dense_blocks_and_takes_its_parents_steps_on_the_old_channels(
    parent, tmp_path
):
    # The added channels feed nothing the old ones compute, so the wider fork has its
    # parent's loss and, on every old weight, its gradients: after one step each old entry is
    # where the parent's own next step puts it (Adam's moments laid into the wider tensors).
    one_more = ["training.iterations=5"]
    quiet(None, tmp_path / "wide", fork=parent,
          changes=["model.hidden_channels=6", *one_more])  # fmt: skip
    quiet(None, tmp_path / "same", fork=parent, changes=one_more)
    same, wide = parameters(tmp_path / "same"), parameters(tmp_path / "wide")
    assert set(same) == set(wide)
    widened = [name for name in same if wide[name].shape != same[name].shape]
    assert widened and all(".g1." in n or ".g2." in n or ".g3." in n for n in widened)
    for name, old in same.items():
        new = wide[name][: old.shape[0]] if old.dim() else wide[name]  # added outputs: after
        if old.dim() == 4:
            # Of the inputs, the old: in_channels, then the first 4 of each feature's 6.
            features = (new.shape[1] - old.shape[1]) // 2
            inputs = old.shape[1] - 4 * features
            columns = list(range(inputs))
            columns += [inputs + j * 6 + r for j in range(features) for r in range(4)]
            new = new[:, columns]
        assert torch.allclose(new, old, rtol=0, atol=1e-6), name
    state = torch.load(tmp_path / "wide" / CHECKPOINT, weights_only=True)
    assert state["config"]["model"]["hidden_channels"] == 6 and state["step"] == 5
    assert all(state["ema"]["model"][n].shape == wide[n].shape for n in wide)
    assert quiet(None, tmp_path / "wide", resume=True, changes=[]).step == 5


def test_a_fork_may_not_take_steps_of_flow_away(images, tmp_path):
    config = small_config(images, tmp_path, "model.steps_per_block=2", "training.iterations=2")
    quiet(config, tmp_path / "two")
    with pytest.raises(TrainingError, match=r"may add Steps of Flow.*not take it away"):
        quiet(None, tmp_path / "fork", fork=tmp_path / "two",
              changes=["model.steps_per_block=1"])  # fmt: skip
    with pytest.raises(TrainingError, match=r"may add width.*has 4\), not take it away"):
        quiet(None, tmp_path / "fork", fork=tmp_path / "two",
              changes=["model.hidden_channels=3"])  # fmt: skip
