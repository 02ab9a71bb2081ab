"""The command line's options: declared in fdn.cli alone, one ``--device`` rule, one progress
flag, and ``--version``/``--help`` without importing torch (#21 item 5)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fdn import FDN, save_model
from fdn.cli import build_parser, main
from test_evaluation import write_images

COMMANDS = ("info", "denoise", "renoise", "eval", "compare", "demo", "train", "bench", "ablate")

# The least each command needs to parse, before the options under test.
REQUIRED = {
    "denoise": ["in.png", "-o", "out"],
    "renoise": ["in.png", "-o", "out"],
    "eval": ["--data", "set"],
    "compare": ["clean.png", "--out", "fig.png"],
    "demo": [],
    "bench": [],
    "train": ["c.toml"],
    "ablate": ["table1", "base.toml", "--out", "grid"],
}

_PROBE = """
import sys
from pathlib import Path
from fdn.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], *([name, "--help"] for name in COMMANDS)]
)
def test_version_and_help_do_not_import_torch(argv):
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "torch imported: False"
    assert "usage: fdn" in done.stdout or done.stdout.startswith("fdn ")


def test_import_fdn_is_lazy_and_still_exports_its_names():
    code = (
        "import sys, fdn; lazy = 'torch' not in sys.modules; "
        "from fdn import FDN, load_model; print(lazy, FDN.__name__, sorted(fdn.__all__) == "
        "sorted(n for n in fdn.__all__ if hasattr(fdn, n)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "FDN", "True"], done.stderr


@pytest.mark.parametrize("command", ["eval", "denoise", "renoise", "compare", "bench", "demo"])
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_every_command_takes_the_same_device_names(command, device):
    args = build_parser().parse_args([command, *REQUIRED[command], "--device", device])
    assert args.device == device


@pytest.mark.parametrize("command", ["eval", "denoise", "compare", "bench", "demo"])
@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_an_unknown_device_is_a_one_line_argparse_error(command, device, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *REQUIRED[command], "--device", device])
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert f"argument --device: {device!r} is not auto, cpu, cuda or cuda:N" in errors[0]


@pytest.mark.parametrize("command", ["denoise", "eval", "train", "ablate"])
def test_every_command_with_progress_bars_takes_no_progress(command):
    parser = build_parser()
    assert parser.parse_args([command, *REQUIRED[command]]).progress is True
    assert parser.parse_args([command, *REQUIRED[command], "--no-progress"]).progress is False


def _walk(parser, name="fdn"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _walk(subparser, f"{name} {command}")
        else:
            yield name, action


def test_every_option_of_every_command_has_a_help_text():
    walked = list(_walk(build_parser()))
    assert {name for name, _ in walked} >= {f"fdn {command}" for command in COMMANDS}
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, action in walked
        if not (action.help or "").strip()
    ]
    assert missing == []


def test_every_command_has_a_help_line_in_fdn_help():
    # argparse.SUPPRESS (a deliberate hidden entry) is a help text too.
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    listed = {action.dest: action.help for action in commands._choices_actions}
    assert set(listed) == set(commands.choices) >= set(COMMANDS)
    assert [name for name, text in listed.items() if not (text or "").strip()] == []


@pytest.mark.parametrize("command", ["eval", "compare"])
@pytest.mark.parametrize("sigma", ["-5", "nan", "inf", "x"])
def test_every_sigma_option_refuses_what_is_not_a_noise_level(command, sigma, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *REQUIRED[command], "--sigma", sigma])
    assert exited.value.code == 2
    assert "argument --sigma:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_every_weights_option_names_its_default_folder_and_fdn_weights(command, monkeypatch):
    # One default for every --weights: resolved when the command runs ($FDN_WEIGHTS, else
    # ../shared/peer-weights beside the repository), never relative to the working directory.
    parser = build_parser()
    monkeypatch.setenv("FDN_WEIGHTS", "/elsewhere")
    assert parser.parse_args([command, *REQUIRED[command]]).weights is None
    subparser = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[command]
    (weights,) = [a for a in subparser._actions if "--weights" in a.option_strings]
    assert "FDN_WEIGHTS" in weights.help and weights.metavar == "DIR"
    assert parser.parse_args([command, *REQUIRED[command], "--weights", "w"]).weights == Path("w")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_fdn_eval_device_auto_runs_on_the_cpu(tmp_path, capsys, no_cuda):
    data = write_images(tmp_path / "tiny", 1, "L")
    model = save_model(
        FDN(in_channels=1, hidden_channels=8, steps_per_block=1), tmp_path / "f.safetensors"
    )
    out = tmp_path / "out"
    argv = ["eval", "--model", str(model), "--data", str(data), "--sigma", "25"]
    assert main([*argv, "--device", "auto", "--out", str(out)]) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["device"] == "cpu"
    # stderr is not a terminal here, so no progress bar was drawn without --no-progress.
    assert "run/s" not in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_one_line_error(device, capsys, no_cuda):
    from fdn.runtime import resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=f"--device {device}: no CUDA device is available"):
        resolve_device(device)
    assert main(["demo", "--device", device]) == 1
    err = capsys.readouterr().err
    assert err == f"fdn: error: --device {device}: no CUDA device is available\n"


def test_a_cuda_index_beyond_the_gpus_is_a_one_line_error(monkeypatch):
    from fdn.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"--device cuda:2: there are 2 CUDA devices \(0-1\)"):
        resolve_device("cuda:2")
