"""``fdn eval --reuse DIR``: an earlier run's columns join a new table only on the same noisy
images, and then give what running everything at once gives."""

import json

import pytest

from fdn import FDN, save_model
from fdn.baselines import DnCNN, save_dncnn
from fdn.cli import main
from fdn.evaluation import run_eval
from fdn.reuse import ReuseError
from test_evaluation import parse, write_images


@pytest.fixture
def setup(tmp_path):
    data = write_images(tmp_path / "tiny", 2, "L")
    model = FDN(in_channels=1, hidden_channels=8, steps_per_block=1)
    fdn_file = save_model(model, tmp_path / "f.safetensors")
    dncnn_file = save_dncnn(DnCNN(depth=3, features=4), tmp_path / "d.safetensors")
    return data, fdn_file, dncnn_file


def _eval(*argv):
    return run_eval(**parse(*argv, "--no-progress"))


def _scores(out):
    document = json.loads((out / "results.json").read_text())
    rows = {
        (r["method"], r["image"], r["sigma"]): (r["psnr"], r["ssim"]) for r in document["images"]
    }
    return document, rows


def _earlier(tmp_path, data, fdn_file):
    """The earlier run: FDN-S at sigma 25, written to tmp_path/first."""
    first = tmp_path / "first"
    assert _eval("--model", f"FDN-S={fdn_file}", "--data", str(data), "--sigma", "25",
                 "--out", str(first)) == 0  # fmt: skip
    return first


def _edit(first, change):
    """Rewrites the earlier run's results.json through ``change(document)``."""
    path = first / "results.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _quality(table):
    return table.split("Seconds per image")[0]


def test_reused_columns_give_the_table_of_one_run(tmp_path, setup, capsys):
    data, fdn_file, dncnn_file = setup
    first, second, together = tmp_path / "first", tmp_path / "second", tmp_path / "together"
    common = ["--data", str(data), "--sigma", "15", "25"]
    assert (
        _eval("--baselines", "nlm", "--model", f"FDN-S={fdn_file}", *common, "--out", str(first))
        == 0
    )
    assert (
        _eval("--model", str(dncnn_file), "--reuse", str(first), *common, "--out", str(second))
        == 0
    )
    assert _eval("--baselines", "nlm", "--model", f"FDN-S={fdn_file}", str(dncnn_file), *common,
                 "--out", str(together)) == 0  # fmt: skip
    capsys.readouterr()
    reused, reused_rows = _scores(second)
    single, single_rows = _scores(together)
    assert reused["methods"] == single["methods"] == ["NLM", "FDN-S", "d"]
    assert reused_rows == single_rows
    assert reused["noisy_digests"] == single["noisy_digests"]
    assert reused["settings"]["reused"] == [{"from": str(first), "methods": ["NLM", "FDN-S"]}]
    table = (second / "table.md").read_text()
    assert _quality(table) == _quality((together / "table.md").read_text())
    assert f"Reused from {first} (same noisy images, not run again" in table
    assert "NLM, FDN-S." in table


def test_reuse_alone_and_twice(tmp_path, setup, capsys):
    data, fdn_file, dncnn_file = setup
    common = ["--data", str(data), "--sigma", "25"]
    a, b, both = tmp_path / "a", tmp_path / "b", tmp_path / "both"
    assert _eval("--model", f"FDN-S={fdn_file}", *common, "--out", str(a)) == 0
    assert _eval("--model", str(dncnn_file), *common, "--out", str(b)) == 0
    # Nothing new to run: the table is the two earlier runs side by side, in --reuse order.
    assert _eval("--reuse", str(a), str(b), *common, "--out", str(both)) == 0
    capsys.readouterr()
    document, rows = _scores(both)
    assert document["methods"] == ["FDN-S", "d"]
    assert rows == {**_scores(a)[1], **_scores(b)[1]}


def test_a_sigma_the_earlier_run_lacks_is_a_dash(tmp_path, setup, capsys):
    data, fdn_file, dncnn_file = setup
    first, second = tmp_path / "first", tmp_path / "second"
    assert _eval("--model", f"FDN-S={fdn_file}", "--data", str(data), "--sigma", "25",
                 "--out", str(first)) == 0  # fmt: skip
    assert _eval("--model", str(dncnn_file), "--reuse", str(first), "--data", str(data),
                 "--sigma", "15", "25", "--out", str(second)) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "| tiny | 15 | - |" in table
    assert f"- FDN-S on tiny (sigma 15): not in {first}" in table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--seed", "1"], "noise seed was 0 there, 1 now"),
        (["--sigma", "25", "auto"], "sigma told to non-blind methods"),
        (["--limit", "1"], "tiny had 2 images there, 1 now"),
    ],
)
def test_other_noisy_images_are_refused_before_anything_runs(
    tmp_path, setup, capsys, change, message
):
    data, fdn_file, dncnn_file = setup
    first = _earlier(tmp_path, data, fdn_file)
    capsys.readouterr()
    argv = ["eval", "--model", str(dncnn_file), "--reuse", str(first), "--data", str(data)]
    if "--sigma" not in change:
        argv += ["--sigma", "25"]
    assert main([*argv, *change, "--out", str(tmp_path / "second"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert not (tmp_path / "second").exists()  # refused before running, nothing written


def test_a_method_in_both_and_other_data_are_refused(tmp_path, setup):
    data, fdn_file, _ = setup
    first = _earlier(tmp_path, data, fdn_file)
    with pytest.raises(ReuseError, match="FDN-S already in this table"):
        _eval("--model", f"FDN-S={fdn_file}", "--reuse", str(first), "--data", str(data),
              "--sigma", "25")  # fmt: skip
    other = write_images(tmp_path / "other", 2, "L")
    with pytest.raises(ReuseError, match=r"evaluated other data sets \(tiny\)"):
        _eval("--reuse", str(first), "--data", str(other), "--sigma", "25")
    with pytest.raises(ReuseError, match="no such file"):
        _eval("--reuse", str(tmp_path), "--data", str(data), "--sigma", "25")


def test_different_noisy_pixels_are_caught_by_the_digest(tmp_path, setup):
    data, fdn_file, dncnn_file = setup
    first = _earlier(tmp_path, data, fdn_file)
    # As if the earlier run's noise had been drawn by other code: same seed, names and count.
    _edit(first, lambda document: document["noisy_digests"][0].update(sha256="0" * 64))
    with pytest.raises(ReuseError, match="the noisy images differ from this run's"):
        _eval("--model", str(dncnn_file), "--reuse", str(first), "--data", str(data),
              "--sigma", "25")  # fmt: skip


def test_an_older_file_without_digests_is_reused_with_a_warning(tmp_path, setup, capsys):
    data, fdn_file, dncnn_file = setup
    first = _earlier(tmp_path, data, fdn_file)
    _edit(first, lambda document: document.pop("noisy_digests"))
    capsys.readouterr()
    assert _eval("--model", str(dncnn_file), "--reuse", str(first), "--data", str(data),
                 "--sigma", "25") == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "has no digest of the noisy images for tiny at sigma 25" in captured.err
    assert "| Data set | sigma | FDN-S | d |" in captured.out


def test_cli_reuse_error_is_one_line(tmp_path, setup, capsys):
    data, _, dncnn_file = setup
    argv = ["eval", "--model", str(dncnn_file), "--data", str(data), "--sigma", "25"]
    assert main([*argv, "--reuse", str(tmp_path / "missing"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "missing/results.json: no such file" in lines[0]
