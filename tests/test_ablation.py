from pathlib import Path

import pytest

from fdn.ablation import GRIDS
from fdn.cli import main

from helpers import make_images

BASE = str(Path(__file__).resolve().parents[1] / "configs" / "celeba_sigma50.toml")


def test_grids_are_the_papers_tables():
    table1 = [sets for _, sets in GRIDS["table1"]]
    assert len(table1) == 9
    assert ["model.num_blocks=3", "model.steps_per_block=8"] in table1
    fractions = [float(sets[0].split("=")[1]) for _, sets in GRIDS["table2"]]
    assert fractions == [k / 8 for k in range(1, 8)]


def test_dry_run_prints_one_training_command_per_cell(tmp_path, capsys):
    assert (
        main(
            [
                "ablate",
                "table1",
                BASE,
                "--out",
                "grid",
                "--dry-run",
                "--set",
                "training.iterations=100",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    assert lines[0].startswith(f"fdn train {BASE} --out grid/blocks1_steps2")
    assert "--set training.iterations=100" in lines[0]


def test_a_grid_runs_every_cell_into_one_table_and_skips_finished_cells(tmp_path, capsys):
    root = make_images(tmp_path / "data", size=(32, 32))
    base = tmp_path / "base.toml"
    base.write_text(f"""
[model]
hidden_channels = 2
steps_per_block = 1
[data]
root = "{root}"
train = "train"
patch_size = 16
workers = 0
[training]
iterations = 1
batch_size = 2
device = "cpu"
[validation]
folder = "val"
every = 1
""")
    out = tmp_path / "grid"
    assert main(["ablate", "table2", str(base), "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table.count("| zc") == 7 and table.count("**") == 2  # one best cell, in bold
    for eighths in range(1, 8):
        assert (out / f"zc{eighths}of8" / "model.safetensors").is_file()
    before = (out / "zc1of8" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["ablate", "table2", str(base), "--out", str(out)]) == 0
    assert (out / "zc1of8" / "model.safetensors").stat().st_mtime_ns == before
    assert "[1/7]" not in capsys.readouterr().out


def test_unknown_grid_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "table9", BASE, "--out", "x"])
