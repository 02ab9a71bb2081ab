import json
import subprocess
import sys

import pytest

from fdn import FDN, save_model
from fdn.cli import main


def test_info_json_reports_the_paper_model(capsys):
    assert main(["info", "--paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 4_375_680
    # The paper (Table V) reports 76.80 GFLOPs per 256x256 image.
    assert info["denoise_gflops"] == pytest.approx(76.7, rel=0.01)
    assert info["denoise_flops_counted"] == pytest.approx(2 * 76.72e9, rel=1e-3)
    assert info["latent_shape"] == [1, 48, 64, 64]
    assert info["z_c_channels"] == [0, 36] and info["z_n_channels"] == [36, 48]


def test_info_of_a_model_file(tmp_path, capsys):
    path = save_model(FDN(in_channels=1, hidden_channels=8), tmp_path / "grey.safetensors")
    assert main(["info", "--model", str(path), "--size", "250", "333"]) == 0
    out = capsys.readouterr().out
    assert "grey.safetensors" in out
    assert "z_N (noise)      channels 12-15" in out
    assert "latent           1x16x63x84" in out


def test_bad_model_file_is_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert main(["info", "--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fdn: error: ") and str(bad) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "info", "--model", str(tmp_path / "none.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelFileError" in err


def test_bad_flag_value_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["info", "--size", "0", "12"])
    assert exited.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "fdn", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("fdn ")
