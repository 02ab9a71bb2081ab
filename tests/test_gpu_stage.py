"""scripts/gpu_stage.sh's second call of a GPU lending (RESUME=1), run on the CPU: both runs
go on from their checkpoints to the end of their schedule and come back in OUT."""

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fdn.training as training
from fdn.config import load_config
from fdn.training import CHECKPOINT, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_second_call_resumes_both_runs_to_the_end_of_their_schedule(tmp_path, monkeypatch):
    # The first call: its time limit ends both runs mid-schedule (a clock 30 s per reading).
    clock = itertools.count(0, 30)
    monkeypatch.setattr(training.time, "monotonic", lambda: float(next(clock)))
    runs = tmp_path / "runs"
    for name in ("color", "grey"):
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
            ],
        )
        train(config, runs / name, progress=False, log=lambda _: None)
        assert 0 < torch.load(runs / name / CHECKPOINT, weights_only=True)["step"] < 4
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "DATA": str(tmp_path),
        "DEVICE": "cpu",
        "WORKERS": "0",
        "RESUME": "1",
        "RUNS": str(runs),
        "PY": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_stage.sh"), "100"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "color exit 0" in done.stdout and "grey exit 0" in done.stdout
    for name in ("color", "grey"):
        back = tmp_path / "out" / name
        assert {p.name for p in back.iterdir()} == {"checkpoint.pt", "log.jsonl", "config.toml"}
        checkpoint = torch.load(back / CHECKPOINT, weights_only=True)
        assert checkpoint["step"] == 4  # the same schedule, continued: not a new stage
        assert checkpoint["config"]["training"]["time_limit"] > 1.5  # the budget, extended
