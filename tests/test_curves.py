"""``fdn curves``: the points read from run logs, the SVG drawn from them, and its errors."""

import json
import xml.etree.ElementTree as ET

import pytest

from fdn.cli import main
from fdn.curves import CurveError, parse_line, parse_run, plot_curves, read_curve

SVG = "{http://www.w3.org/2000/svg}"


def write_log(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def fdn_run(run_dir, timed=True):
    """A log as fdn train writes it: the noisy input's PSNR, then training and validation."""
    rows = [{"step": 0, "val_psnr_noisy": 20.07}]
    for step in (50, 100, 150, 200):
        row = {"step": step, "loss": 0.1 / step, "nll": -0.89, "l1": 0.02, "lr": 2e-4}
        if timed:
            row.update(wall_s=step * 36.0, cpu_s=step * 72.0)
        if step % 100 == 0:
            row["val_psnr"] = 25.0 + step / 100
        rows.append(row)
    return write_log(run_dir, rows)


def dncnn_run(run_dir):
    rows = [
        {"step": s, "loss": 0.01, "mse": 0.01, "wall_s": s * 1.8, "cpu_s": s * 3.6}
        for s in (100, 200)
    ]
    rows[-1]["val_psnr"] = 26.5
    return write_log(run_dir, rows)


def test_the_points_are_the_rows_with_the_key_in_steps_or_hours(tmp_path):
    run = fdn_run(tmp_path / "faces-fdn")
    by_step = read_curve(run)
    assert by_step.label == "faces-fdn"
    assert by_step.points == ((100, 26.0), (200, 27.0))
    assert by_step.noisy_psnr == pytest.approx(20.07)
    assert read_curve(run, x="wall").points == ((1.0, 26.0), (2.0, 27.0))  # hours
    assert read_curve(run, x="cpu").points == ((2.0, 26.0), (4.0, 27.0))
    losses = read_curve(run / "log.jsonl", y="loss", label="mine")
    assert losses.label == "mine"
    assert [x for x, _ in losses.points] == [50, 100, 150, 200]


def test_since_keeps_a_forks_own_stretch_and_counts_its_hours_from_the_fork(tmp_path):
    # Forks of one run (a GPU lending's two networks) compared from the step they share: the
    # parent's history left out, and time from that step, so that equal x is equal time.
    run = fdn_run(tmp_path / "fork")
    assert read_curve(run, since=100).points == ((100, 26.0), (200, 27.0))
    assert read_curve(run, x="wall", since=100).points == ((0.0, 26.0), (1.0, 27.0))
    # Between logged rows, hours from the last timed row at or before the step.
    assert read_curve(run, x="cpu", since=150).points == ((1.0, 27.0),)
    with pytest.raises(CurveError, match="from step 250 on"):
        read_curve(run, since=250)


def test_a_line_cut_short_and_null_values_are_skipped(tmp_path):
    run = fdn_run(tmp_path / "run")
    with (run / "log.jsonl").open("a") as log:
        log.write('{"step": 250, "val_psnr": null}\n{"step": 300, "val_ps')
    assert read_curve(run).points == ((100, 26.0), (200, 27.0))


@pytest.mark.parametrize(
    ("text", "label", "path"),
    [
        ("fdn=runs/faces-fdn", "fdn", "runs/faces-fdn"),
        ("runs/faces-dncnn", "faces-dncnn", "runs/faces-dncnn"),
        ("runs/faces-dncnn/log.jsonl", "faces-dncnn", "runs/faces-dncnn/log.jsonl"),
    ],
)
def test_a_run_is_named_by_its_label_or_its_folder(text, label, path):
    assert parse_run(text) == (label, parse_run(path)[1])
    assert str(parse_run(text)[1]) == path


def test_a_folder_with_an_equals_sign_is_a_path_when_it_exists(tmp_path):
    run = fdn_run(tmp_path / "lr=1e-4")
    assert parse_run(str(run)) == ("lr=1e-4", run)


def test_the_svg_has_one_line_per_run_a_legend_and_the_noisy_input(tmp_path):
    runs = [
        ("FDN <ours> & co", fdn_run(tmp_path / "fdn")),
        ("dncnn", dncnn_run(tmp_path / "dncnn")),
    ]
    out = plot_curves(runs, tmp_path / "figs" / "psnr.svg", x="cpu", title="faces, sigma 50")
    assert out == tmp_path / "figs" / "psnr.svg"
    root = ET.parse(out).getroot()  # well-formed, with the label's < and & escaped
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f".//{SVG}polyline")) == 2
    texts = [element.text for element in root.iter(f"{SVG}text")]
    assert {"FDN <ours> & co", "dncnn", "noisy input", "faces, sigma 50"} <= set(texts)
    assert {"training time (CPU hours)", "validation PSNR (dB)"} <= set(texts)
    dashed = [line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")]
    assert len(dashed) == 1
    assert [p.name for p in out.parent.iterdir()] == ["psnr.svg"]  # no temporary file left


def test_the_ticks_are_round_numbers(tmp_path):
    out = plot_curves([("a", fdn_run(tmp_path / "a"))], tmp_path / "a.svg", y="loss")
    texts = [element.text for element in ET.parse(out).getroot().iter(f"{SVG}text")]
    assert {"0", "50", "100", "150", "200"} <= set(texts)  # steps from 0
    assert {"0.0005", "0.0010", "0.0015", "0.0020"} <= set(texts)  # losses 0.0005..0.002
    assert "training loss" in texts and "noisy input" not in texts


def test_one_point_and_a_constant_value_still_draw(tmp_path):
    run = write_log(tmp_path / "short", [{"step": 100, "val_psnr": 26.5, "lr": 2e-4}])
    for y in ("val_psnr", "lr"):
        out = plot_curves([("short", run)], tmp_path / f"{y}.svg", y=y)
        assert len(ET.parse(out).getroot().findall(f".//{SVG}circle")) == 2  # point, legend


def test_a_missing_log_names_its_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurveError, match=r"empty/log\.jsonl: no training log"):
        read_curve(tmp_path / "empty")
    with pytest.raises(CurveError, match="nowhere: no such run folder"):
        plot_curves([("x", tmp_path / "nowhere")], tmp_path / "x.svg")
    assert not (tmp_path / "x.svg").exists()


def test_a_log_without_the_key_says_what_it_has(tmp_path):
    run = dncnn_run(tmp_path / "dncnn")
    with pytest.raises(CurveError, match=r"no rows with a value of 'nll' \(the log has .*mse"):
        read_curve(run, y="nll")


@pytest.mark.parametrize("x", ["wall", "cpu"])
def test_a_log_without_times_predates_time_logging(tmp_path, x):
    run = fdn_run(tmp_path / "old", timed=False)
    assert read_curve(run).points  # by steps it draws
    with pytest.raises(CurveError, match="predates time logging"):
        read_curve(run, x=x)


def test_cli_writes_the_svg(tmp_path, capsys):
    fdn, dncnn = fdn_run(tmp_path / "faces-fdn"), dncnn_run(tmp_path / "faces-dncnn")
    out = tmp_path / "psnr-time.svg"
    argv = ["curves", f"fdn={fdn}", str(dncnn), "--x", "cpu", "--out", str(out)]
    assert main([*argv, "--title", "faces"]) == 0
    texts = [element.text for element in ET.parse(out).getroot().iter(f"{SVG}text")]
    assert {"fdn", "faces-dncnn", "faces"} <= set(texts)
    printed = capsys.readouterr().out
    assert "fdn: 2 points, last val_psnr 27" in printed and f"curves: {out}" in printed
    assert main([*argv, "--since", "150"]) == 0
    assert "fdn: 1 points, last val_psnr 27" in capsys.readouterr().out


def test_cli_a_missing_run_folder_is_one_line_and_nonzero(tmp_path, capsys):
    out = tmp_path / "c.svg"
    assert main(["curves", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fdn: error: ") and str(tmp_path / "nowhere") in err
    assert err.count("\n") == 1 and not out.exists()


def test_reference_lines_are_drawn_named_and_the_noisy_line_can_go(tmp_path, capsys):
    fdn = fdn_run(tmp_path / "fdn")
    out = tmp_path / "ref.svg"
    argv = ["curves", str(fdn), "--out", str(out), "--hline", "BM3D=27.45", "--no-noisy"]
    assert main(argv) == 0
    root = ET.parse(out).getroot()
    texts = [element.text for element in root.iter(f"{SVG}text")]
    assert "BM3D 27.45" in texts and "noisy input" not in texts
    dotted = [line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")]
    assert len(dotted) == 1
    # The line is inside the axis range even though no run comes near it (they end at 27).
    y_ticks = [
        float(element.text)
        for element in root.iter(f"{SVG}text")
        if element.get("text-anchor") == "end" and element.text != "BM3D 27.45"
    ]
    assert max(y_ticks) >= 27.45 > 27 >= min(y_ticks)
    capsys.readouterr()
    assert main(["curves", str(fdn), "--out", str(out), "--hline", "BM3D"]) == 1
    assert "NAME=VALUE" in capsys.readouterr().err


def test_parse_line_rejects_what_is_not_a_number():
    assert parse_line("CBM3D=27.5") == ("CBM3D", 27.5)
    for text in ("27.5", "=27.5", "BM3D=fast", "BM3D=nan"):
        with pytest.raises(CurveError, match="NAME=VALUE"):
            parse_line(text)


def test_a_run_keeping_averages_beside_its_own_draws_a_line_for_each(tmp_path, capsys):
    # training.ema_extra logs val_psnr_ema<decay> at each validation beside val_psnr.
    rows = [{"step": 0, "val_psnr_noisy": 20.07}]
    for step in (1000, 2000):
        averages = {"val_psnr_ema0.9995": 28.1, "val_psnr_ema0.9998": 28.05}
        rows.append({"step": step, "val_psnr": 28.0 + step / 1e4, "loss": -0.1, **averages})
    run = write_log(tmp_path / "grey", rows)
    plain = fdn_run(tmp_path / "plain")
    out = tmp_path / "averages.svg"
    assert main(["curves", f"grey={run}", str(plain), "--out", str(out)]) == 0
    texts = [element.text for element in ET.parse(out).getroot().iter(f"{SVG}text")]
    assert {"grey", "grey, average 0.9995", "grey, average 0.9998", "plain"} <= set(texts)
    assert not any("average" in (t or "") and "noisy" in (t or "") for t in texts)
    assert "grey, average 0.9998: 2 points" in capsys.readouterr().out
    # Other keys draw the runs alone.
    assert main(["curves", f"grey={run}", "--y", "loss", "--out", str(out)]) == 0
    texts = [element.text for element in ET.parse(out).getroot().iter(f"{SVG}text")]
    assert "grey, average 0.9995" not in texts
