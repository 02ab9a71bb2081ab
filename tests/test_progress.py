import numpy as np
import pytest
import torch
from PIL import Image

import fdn.progress
from fdn import FDN, save_model
from fdn.cli import main
from fdn.progress import ProgressLines, progress, progress_mode

from helpers import randomize


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_wait_an_interval_then_report_count_percent_elapsed_and_remaining(capsys):
    clock = Clock()
    lines = ProgressLines(total=2000, unit="run", label="fdn eval", clock=clock, interval=60)
    lines.update(100)
    clock.now += 59
    lines.update(100)
    assert capsys.readouterr().err == ""  # nothing within the first minute
    clock.now += 8 * 60 - 59
    lines.update(140)
    expected = "fdn eval: 340/2000 runs (17%), 8 min elapsed, about 39 min left\n"
    assert capsys.readouterr().err == expected
    clock.now += 30
    lines.update(10)
    assert capsys.readouterr().err == ""  # at most one line an interval


def test_close_prints_the_final_state_only_after_an_earlier_line(capsys):
    clock = Clock()
    with ProgressLines(range(3), clock=clock, interval=60, label="x", unit="image") as lines:
        for _ in lines:
            clock.now += 10
    assert capsys.readouterr().err == ""  # work done within the first minute says nothing
    lines = ProgressLines(range(3), clock=clock, interval=60, label="x", unit="image")
    for _ in lines:
        clock.now += 50
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "x: 2/3 images (66%), 2 min elapsed, about 1 min left",
        "x: 3/3 images (100%), 2 min elapsed",
    ]


def test_modes():
    assert [progress_mode(m) for m in (True, False, "bar", "lines", "off")] == [
        "bar", "off", "bar", "lines", "off"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="progress must be"):
        progress_mode("loud")
    assert isinstance(progress(range(2), mode="lines", label="x"), ProgressLines)
    assert progress(range(2), mode=False, label="x").disable


def test_off_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(fdn.progress, "INTERVAL", 0.0)
    bar = progress(total=5, mode="off", label="x", unit="run")
    with bar:
        bar.update(5)
    assert capsys.readouterr().err == ""


@pytest.fixture
def small_model(tmp_path):
    torch.manual_seed(0)
    model = randomize(FDN(hidden_channels=4, steps_per_block=1), shape=(4, 3, 8, 8), scale=0.02)
    return save_model(model.float(), tmp_path / "small.safetensors")


def test_fdn_denoise_in_a_log_prints_progress_lines_unless_told_not_to(
    tmp_path, small_model, capsys, monkeypatch
):
    # stderr is not a terminal under pytest: a background run's log.
    monkeypatch.setattr(fdn.progress, "INTERVAL", 0.0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"{i}.png")
    argv = ["denoise", str(inputs), "--model", str(small_model)]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "fdn denoise: 1/3 images (33%)" in err
    assert "fdn denoise: 3/3 images (100%)" in err
    assert main([*argv, "-o", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "fdn denoise:" not in capsys.readouterr().err
