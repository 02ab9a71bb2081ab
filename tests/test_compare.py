import numpy as np
import pytest
import torch
from PIL import Image

from fdn import FDN, save_model
from fdn.cli import main
from fdn.compare import pick_inset


def test_compare_writes_one_panel_per_method(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(40), np.arange(52))[:, :, None] * [3, 2, 1]
    clean = np.clip(ramp + rng.integers(0, 30, (40, 52, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(tmp_path / "clean.png")
    model = FDN(hidden_channels=4, steps_per_block=1).train()
    model(torch.rand(2, 3, 8, 8))
    path = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "figure.png"
    argv = [
        "compare",
        str(tmp_path / "clean.png"),
        "--methods",
        f"fdn:{path},nlm",
        "--sigma",
        "25",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "NLM" in printed and "figure:" in printed
    with Image.open(out) as figure:
        panels = 4  # clean, noisy, and the two methods
        assert figure.size[0] == panels * 52 + (panels - 1) * 8
        assert figure.size[1] > 40


def test_inset_goes_where_the_methods_differ_most():
    a = torch.zeros(1, 1, 64, 64)
    b = a.clone()
    b[..., 40:56, 8:24] = 1  # the methods disagree only here
    top, left = pick_inset([a, b], 16)
    assert 40 - 4 <= top <= 40 + 4 and 8 - 4 <= left <= 8 + 4


@pytest.mark.parametrize("given", ["--weights", "FDN_WEIGHTS"])
def test_compare_names_a_missing_reference_file(tmp_path, capsys, monkeypatch, given):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "clean.png")
    folder = tmp_path / "none"
    argv = ["compare", str(tmp_path / "clean.png"), "--methods", "nlm,ffdnet"]
    if given == "--weights":
        monkeypatch.delenv("FDN_WEIGHTS", raising=False)
        argv += ["--weights", str(folder)]
    else:
        monkeypatch.setenv("FDN_WEIGHTS", str(folder))
    assert main([*argv, "--out", str(tmp_path / "figure.png")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdn: error: ")
    assert str(folder / "ipol-ffdnet-pytorch" / "net_gray.pth") in lines[0]
    assert "--weights" in lines[0] and "FDN_WEIGHTS" in lines[0]
    assert not (tmp_path / "figure.png").exists()
