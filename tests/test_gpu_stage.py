"""scripts/gpu_stage.sh run on the CPU: the second call of a GPU lending (RESUME=1), where both
runs go on from their checkpoints to the end of their schedule and come back in OUT, and a
lending that carries on the CPU runs themselves (FORK_DIR)."""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fdn.training as training
from fdn.config import load_config
from fdn.serialization import load_model
from fdn.training import CHECKPOINT, train

ROOT = Path(__file__).resolve().parents[1]


def stopped_runs(tmp_path, monkeypatch, names=("color", "grey")):
    """Small runs (by default two, "color" and "grey") that a time limit ended mid-schedule (a
    clock 30 s per reading), as a first call or the CPU leaves them."""
    clock = itertools.count(0, 30)
    monkeypatch.setattr(training.time, "monotonic", lambda: float(next(clock)))
    runs = tmp_path / "runs"
    for name in names:
        config = load_config(
            ROOT / "configs" / "smoke.toml",
            [
                f"data.root={tmp_path}",
                "model.hidden_channels=4",
                "model.steps_per_block=1",
                "data.holdout=2",
                "training.iterations=4",
                "training.batch_size=2",
                "training.log_every=1",
                "validation.every=0",
                "training.time_limit=1.5",
                "training.precision=fp32",  # what "auto" resolves to on a CPU like this one
            ],
        )
        train(config, runs / name, progress=False, log=lambda _: None)
        assert 0 < torch.load(runs / name / CHECKPOINT, weights_only=True)["step"] < 4
    monkeypatch.undo()
    return runs


def gpu_stage(tmp_path, budget, batch=None, names=("color", "grey"), **settings):
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "DATA": str(tmp_path),
        "DEVICE": "cpu",
        "WORKERS": "0",
        "PY": sys.executable,
        **settings,
    }
    command = ["bash", str(ROOT / "scripts" / "gpu_stage.sh"), str(budget)]
    done = subprocess.run(
        command + ([str(batch)] if batch else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(f"{name} exit 0" in done.stdout for name in names), done.stdout
    return done


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_second_call_resumes_both_runs_to_the_end_of_their_schedule(tmp_path, monkeypatch):
    runs = stopped_runs(tmp_path, monkeypatch)
    # With a probe of another network kept for after the runs (here the smoke config's, on
    # its synthetic data; on the GPU, the paper's network).
    done = gpu_stage(
        tmp_path,
        100,
        RESUME="1",
        RUNS=str(runs),
        PAPER_PROBE_S="35",
        PAPER_CONFIG=str(ROOT / "configs" / "smoke.toml"),
    )
    probe = [line for line in done.stdout.splitlines() if line.startswith("paper network")]
    assert probe and "images/s" in probe[0] and float(probe[0].split()[-4]) > 0, done.stdout
    for name in ("color", "grey"):
        back = tmp_path / "out" / name
        assert {p.name for p in back.iterdir()} == {"checkpoint.pt", "log.jsonl", "config.toml"}
        checkpoint = torch.load(back / CHECKPOINT, weights_only=True)
        assert checkpoint["step"] == 4  # the same schedule, continued: not a new stage
        assert checkpoint["config"]["training"]["time_limit"] > 1.5  # the budget, extended


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_fork_call_carries_the_cpu_runs_on_at_the_gpu_batch(tmp_path, monkeypatch):
    runs = stopped_runs(tmp_path, monkeypatch)
    parents = {n: torch.load(runs / n / CHECKPOINT, weights_only=True) for n in ("color", "grey")}
    if shutil.which("xz"):  # carried compressed, to fit the device's carry limit
        subprocess.run(["xz", str(runs / "color" / CHECKPOINT)], check=True)
    gpu_stage(tmp_path, 100, batch=3, FORK_DIR=str(runs), RUNS=str(tmp_path / "gpu"))
    for name, parent in parents.items():
        back = tmp_path / "out" / name
        checkpoint = torch.load(back / CHECKPOINT, weights_only=True)
        # The run's own schedule and identity, on from its step at the new batch.
        assert checkpoint["step"] == 4 and checkpoint["run_id"] == parent["run_id"]
        assert checkpoint["config"]["training"]["batch_size"] == 3
        assert checkpoint["config"]["optim"] == parent["config"]["optim"]
        # In the call's precision (bf16 on a GPU), not the one the CPU run resolved.
        assert parent["config"]["training"]["precision"] == "fp32"
        assert checkpoint["config"]["training"]["precision"] == "bf16"
        assert checkpoint["train_seconds"]["wall"] > parent["train_seconds"]["wall"]
        rows = [json.loads(line) for line in (back / "log.jsonl").read_text().splitlines()]
        batches = [row["patches_per_step"] for row in rows if "loss" in row]
        assert batches[0] == 2 and batches[-1] == 3  # the parent's history, then the fork's


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_fork_that_fails_compiled_trains_eager(tmp_path, monkeypatch):
    # COMPILE is each fork's training.compile; one that fails before its first checkpoint (here
    # a choice the config refuses, which also shows that COMPILE reaches the fork; on a GPU, a
    # step that does not compile) trains eager for the time left.
    runs = stopped_runs(tmp_path, monkeypatch, names=("color",))
    settings = {"NAMES": "color", "COMPILE": "nonsense"}
    done = gpu_stage(
        tmp_path, 150, 3, ("color",), FORK_DIR=str(runs), RUNS=str(tmp_path / "gpu"), **settings
    )
    assert "failed with training.compile=nonsense" in done.stdout and "again eager" in done.stdout
    checkpoint = torch.load(tmp_path / "out" / "color" / CHECKPOINT, weights_only=True)
    assert checkpoint["step"] == 4 and checkpoint["config"]["training"]["compile"] == "off"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_fork_call_may_carry_one_run_on_and_grow_it_into_the_paper_network(
    tmp_path, monkeypatch
):
    runs = stopped_runs(tmp_path, monkeypatch, names=("color",))
    parent = torch.load(runs / "color" / CHECKPOINT, weights_only=True)
    if shutil.which("xz"):  # unpacked once, before the two forks of it read it
        subprocess.run(["xz", str(runs / "color" / CHECKPOINT)], check=True)
    settings = {"NAMES": "color", "GROW": "color", "GROW_VAL_EVERY": "1"}
    names = ("color", "color-paper")
    gpu_stage(tmp_path, 100, 3, names, FORK_DIR=str(runs), RUNS=str(tmp_path / "gpu"), **settings)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"color", "color-paper"}
    assert torch.load(out / "color" / CHECKPOINT, weights_only=True)["step"] == 4
    grown = out / "color-paper"
    assert {p.name for p in grown.iterdir()} == {"model.safetensors", "log.jsonl", "config.toml"}
    model = load_model(grown / "model.safetensors")
    assert (model.config.steps_per_block, model.config.hidden_channels) == (8, 32)  # the paper's
    rows = [json.loads(line) for line in (grown / "log.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "val_psnr" in row and row["step"] > parent["step"]]
    assert steps  # validated along the way: the grown network's PSNR curve
