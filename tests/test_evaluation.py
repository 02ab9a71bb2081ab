import csv
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fdn import FDN, save_model
from fdn.baselines import DnCNN, DnCNNDenoiser, FFDNet, FFDNetDenoiser, NonLocalMeans, save_dncnn
from fdn.cli import build_parser, command_options
from fdn.evaluation import (
    Denoiser,
    DenoiserSet,
    Evaluation,
    FDNDenoiser,
    Result,
    evaluate,
    find_dataset,
    markdown_table,
    read_image_tensor,
    run_eval,
    summarize,
    write_results,
)
from fdn.noise import add_gaussian_noise, noise_seed


class Recorder:
    """A denoiser that keeps what it was given and returns a fixed blend with the noisy input."""

    def __init__(self, name, blind=False, channels=(1, 3), weight=0.5, fail_on=()):
        self.name, self.blind, self.channels = name, blind, channels
        self.weight, self.fail_on = weight, set(fail_on)
        self.seen = []

    def supports(self, channels, sigma):
        return None if channels in self.channels else f"no {channels}-channel support"

    def denoise(self, noisy, sigma):
        self.seen.append((noisy.clone(), sigma))
        if len(self.seen) in self.fail_on:
            raise RuntimeError("boom")
        return (self.weight * noisy + (1 - self.weight) * noisy.mean()).clamp(0, 1)


def write_images(folder, count=3, mode="L", size=(16, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for k in range(count):
        shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
        pixels = generator.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{k}.png")
    return folder


def parse(*argv):
    """``fdn eval ARGV``'s options, as :func:`run_eval` takes them."""
    return command_options(build_parser().parse_args(["eval", *argv]))


# Noise


def test_noise_is_fixed_by_seed_image_and_sigma():
    clean = torch.full((1, 3, 64, 64), 0.5)
    seed = noise_seed("a.png", 25)
    first, again = add_gaussian_noise(clean, 25, seed), add_gaussian_noise(clean, 25, seed)
    assert torch.equal(first, again)
    assert not torch.equal(first, add_gaussian_noise(clean, 25, noise_seed("b.png", 25)))
    assert noise_seed("a.png", 25) != noise_seed("a.png", 25, seed=1)
    # Float, unclipped, with the requested standard deviation on the 0-255 scale.
    bright = add_gaussian_noise(torch.ones(1, 1, 128, 128), 50, seed)
    assert bright.max() > 1
    assert (bright - 1).std().item() == pytest.approx(50 / 255, rel=0.05)


def test_every_method_and_every_rerun_sees_the_same_noisy_image(tmp_path):
    dataset = find_dataset(write_images(tmp_path / "set"))
    runs = []
    for _ in range(2):
        methods = [Recorder("A"), Recorder("B", weight=0.7)]
        evaluation = evaluate(methods, [dataset], sigmas=[15, 50], progress=False)
        runs.append((methods, evaluation))
    (a, b), first = runs[0]
    (a2, _), second = runs[1]
    assert len(a.seen) == 6  # 3 images x 2 sigmas
    for (noisy_a, sigma_a), (noisy_b, sigma_b), (noisy_rerun, _) in zip(
        a.seen, b.seen, a2.seen, strict=True
    ):
        assert torch.equal(noisy_a, noisy_b) and sigma_a == sigma_b
        assert torch.equal(noisy_a, noisy_rerun)

    def scores(evaluation):
        return [(r.sigma, r.method, r.image, r.psnr, r.ssim) for r in evaluation.results]

    assert len(scores(first)) == 12 and scores(first) == scores(second)
    # An image's noise depends on its name, not on which other images are evaluated.
    alone = Recorder("A")
    evaluate([alone], [find_dataset(tmp_path / "set", limit=1)], [15], progress=False)
    assert torch.equal(alone.seen[0][0], a.seen[0][0])


def test_blind_methods_are_not_told_sigma(tmp_path):
    blind, informed = Recorder("blind", blind=True), Recorder("informed")
    evaluate([blind, informed], [find_dataset(write_images(tmp_path / "s", 1))], [25], 0, False)
    assert blind.seen[0][1] is None and informed.seen[0][1] == 25


# Failures and methods that do not apply


def test_a_failing_method_is_reported_and_the_rest_still_run(tmp_path, capsys):
    dataset = find_dataset(write_images(tmp_path / "grey"))
    flaky, steady = Recorder("flaky", fail_on={2}), Recorder("steady")
    evaluation = evaluate([flaky, steady], [dataset], [25], progress=False)
    assert [f.image for f in evaluation.failures] == ["img1.png"]
    assert "flaky failed on grey/img1.png: RuntimeError: boom" in capsys.readouterr().err
    assert sum(r.method == "steady" for r in evaluation.results) == 3
    means = {s.method: s for s in summarize(evaluation)}
    assert (means["flaky"].images, means["flaky"].expected) == (2, 3)
    assert "*" in markdown_table(evaluation).splitlines()[4]


def test_an_unreadable_image_is_reported_and_skipped(tmp_path):
    folder = write_images(tmp_path / "set", 2)
    (folder / "broken.png").write_bytes(b"not a png")
    evaluation = evaluate([Recorder("A")], [find_dataset(folder)], [25], progress=False)
    assert [(f.method, f.image) for f in evaluation.failures] == [(None, "broken.png")]
    assert len(evaluation.results) == 2


def test_a_method_that_does_not_apply_gets_a_dash(tmp_path):
    colour = find_dataset(write_images(tmp_path / "colour", 2, "RGB"))
    grey_only = Recorder("grey-only", channels=(1,))
    evaluation = evaluate([grey_only, Recorder("any")], [colour], [15, 25], progress=False)
    assert grey_only.seen == [] and not evaluation.failures
    table = markdown_table(evaluation)
    assert "| colour | 15 | - |" in table and "| colour | 25 | - |" in table
    assert "- grey-only on colour (sigma 15, 25): no 3-channel support\n" in table


# Table, CSV and JSON


def fake_evaluation():
    rows = [
        ("A", "x", 30.0, 0.80),
        ("B", "x", 31.0, 0.70),
        ("C", "x", 31.0, 0.60),
        ("A", "y", 24.0, 0.55),
        ("B", "y", 22.0, 0.60),
    ]
    evaluation = Evaluation(methods=["A", "B", "C"], conditions=[("set", 25.0), ("set", 50.0)])
    for method, image, p, q in rows:
        evaluation.results.append(Result("set", 25.0, method, image, p, q, 0.5))
    evaluation.results.append(Result("set", 50.0, "A", "x", 20.0, 0.4, 0.1))
    evaluation.images = {("set", 25.0): 2, ("set", 50.0): 2}
    return evaluation


def test_table_has_the_paper_layout_and_bolds_the_best():
    lines = markdown_table(fake_evaluation()).splitlines()
    assert lines[2] == "| Data set | sigma | A | B | C |"
    # Means at sigma 25: A 27.00 / 0.6750, B 26.50 / 0.6500, C 31.00 / 0.6000 over 1 of 2.
    assert lines[4] == "| set | 25 | **27.00** / **0.6750** | 26.50 / 0.6500 | 31.00 / 0.6000* |"
    assert lines[5] == "| set | 50 | **20.00** / **0.4000*** | failed | failed |"


def test_ties_are_all_bold():
    evaluation = Evaluation(methods=["A", "B"], conditions=[("set", 15.0)])
    evaluation.results += [
        Result("set", 15.0, "A", "x", 30.004, 0.9, 1.0),
        Result("set", 15.0, "B", "x", 29.996, 0.8, 1.0),
    ]
    row = markdown_table(evaluation).splitlines()[4]
    assert row == "| set | 15 | **30.00** / **0.9000** | **30.00** / 0.8000 |"


def test_csv_and_json_hold_every_image(tmp_path):
    evaluation = fake_evaluation()
    table, rows, results = write_results(evaluation, tmp_path / "out")
    assert table.read_text() == markdown_table(evaluation)
    with rows.open() as stream:
        records = list(csv.DictReader(stream))
    assert len(records) == len(evaluation.results) == 6
    assert records[1]["method"] == "B" and float(records[1]["psnr"]) == 31.0
    document = json.loads(results.read_text())
    assert len(document["images"]) == 6
    means = {(m["sigma"], m["method"]): m for m in document["means"]}
    assert means[25.0, "A"]["psnr"] == pytest.approx(27.0)
    assert means[25.0, "C"]["images"] == 1 and means[25.0, "C"]["expected"] == 2


# Data discovery


def test_find_dataset_sorts_recursively_and_limits(tmp_path):
    write_images(tmp_path / "set" / "b", 2)
    write_images(tmp_path / "set" / "a", 1)
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    names = [item.name for item in find_dataset(tmp_path / "set").items]
    assert names == ["a/img0.png", "b/img0.png", "b/img1.png"]
    assert len(find_dataset(tmp_path / "set", limit=2).items) == 2
    with pytest.raises(ValueError, match="found no images"):
        find_dataset(write_images(tmp_path / "empty", 0))


def test_a_split_folder_is_named_with_its_data_set(tmp_path):
    # faces/celeba/test and birds/test would both be "test" in one table.
    assert find_dataset(write_images(tmp_path / "celeba" / "test", 1)).name == "celeba/test"
    assert find_dataset(write_images(tmp_path / "birds" / "Val", 1)).name == "birds/Val"
    assert find_dataset(write_images(tmp_path / "CBSD68", 1)).name == "CBSD68"


def test_paired_layouts(tmp_path):
    write_images(tmp_path / "pairs" / "noisy", 2)
    write_images(tmp_path / "pairs" / "clean", 2)
    dataset = find_dataset(tmp_path / "pairs", paired=True)
    assert [item.name for item in dataset.items] == ["img0", "img1"]
    assert all(item.noisy.parent.name == "noisy" for item in dataset.items)
    # SIDD: Data/SCENE/NOISY_*.PNG next to GT_*.PNG, named after the folder above Data.
    for scene in ("0001_S6", "0002_S6"):
        folder = write_images(tmp_path / "SIDD_Small" / "Data" / scene, 1, "RGB")
        (folder / "img0.png").rename(folder / "NOISY_SRGB_010.PNG")
        write_images(folder, 1, "RGB")
        (folder / "img0.png").rename(folder / "GT_SRGB_010.PNG")
    sidd = find_dataset(tmp_path / "SIDD_Small" / "Data", paired=True)
    assert sidd.name == "SIDD_Small" and len(sidd.items) == 2
    assert sidd.items[0].clean.name == "GT_SRGB_010.PNG"
    (tmp_path / "pairs" / "clean" / "img1.png").unlink()
    with pytest.raises(ValueError, match="no clean image for 1 noisy ones"):
        find_dataset(tmp_path / "pairs", paired=True)


def test_paired_evaluation_uses_the_real_noisy_image(tmp_path):
    write_images(tmp_path / "pairs" / "noisy", 1)
    write_images(tmp_path / "pairs" / "clean", 1)
    dataset = find_dataset(tmp_path / "pairs", paired=True)
    blind, informed = Recorder("blind", blind=True), Recorder("informed")
    evaluation = evaluate([blind, informed], [dataset], sigmas=[], progress=False)
    assert torch.equal(blind.seen[0][0], read_image_tensor(dataset.items[0].noisy))
    assert evaluation.conditions == [("pairs", None)]
    # Paired images have no sigma: a non-blind method is told None, and may refuse.
    assert informed.seen[0][1] is None


def test_image_modes(tmp_path):
    write_images(tmp_path, 1, "L")
    assert read_image_tensor(tmp_path / "img0.png").shape == (1, 1, 20, 16)
    Image.new("RGBA", (5, 4)).save(tmp_path / "rgba.png")
    assert read_image_tensor(tmp_path / "rgba.png").shape == (1, 3, 4, 5)
    # 16-bit grey is read at its depth, as fdn denoise reads it (it was refused once).
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "deep.png")
    deep = read_image_tensor(tmp_path / "deep.png")
    assert deep.shape == (1, 1, 4, 5) and torch.all(deep == 1)


# Models from files and the command line


def test_denoiser_set_picks_by_channels_and_sigma():
    grey15, grey25, colour = Recorder("g15"), Recorder("g25"), Recorder("c", blind=True)
    column = DenoiserSet("M", {(1, 15.0): grey15, (1, 25.0): grey25, (3, None): colour})
    assert not column.blind
    assert column.supports(1, 25.0) is None and column.supports(3, 50.0) is None
    assert column.supports(1, 50.0) == "has 1-channel models for sigma 15, 25 only"
    assert DenoiserSet("G", {(1, None): grey15}).supports(3, 25.0) == (
        "has no 3-channel model (only 1-channel)"
    )
    column.denoise(torch.rand(1, 1, 4, 4), 25.0)
    column.denoise(torch.rand(1, 3, 4, 4), 50.0)
    assert (len(grey15.seen), len(grey25.seen)) == (0, 1)
    assert colour.seen[0][1] is None  # a blind member is not told sigma


def test_run_eval_end_to_end(tmp_path, capsys):
    data = write_images(tmp_path / "tiny", 2, "L")
    fdn_file = save_model(
        FDN(in_channels=1, hidden_channels=8, steps_per_block=1), tmp_path / "f.safetensors"
    )
    dncnn_file = save_dncnn(DnCNN(depth=3, features=4), tmp_path / "d.safetensors")
    out = tmp_path / "out"
    args = parse(
        "--model", f"FDN-S@15={fdn_file}", str(dncnn_file),
        "--baselines", "nlm",
        "--data", str(data),
        "--sigma", "15", "25",
        "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    assert run_eval(**args) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "table.md").read_text()
    assert "| Data set | sigma | NLM | FDN-S | d |" in printed
    assert "- FDN-S on tiny (sigma 25): has 1-channel models for sigma 15 only" in printed
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["sigmas"] == [15.0, 25.0]
    assert {r["method"] for r in document["images"]} == {"NLM", "FDN-S", "d"}
    assert len(document["images"]) == 2 * 2 + 2 + 2 * 2


def test_run_eval_skips_a_baseline_whose_extra_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    data = write_images(tmp_path / "tiny", 1)
    args = parse("--baselines", "bm3d,nlm", "--data", str(data), "--sigma", "25",
                 "--no-progress")  # fmt: skip
    assert run_eval(**args) == 0
    captured = capsys.readouterr()
    assert "skipping bm3d: BM3D needs the 'bm3d' package" in captured.err
    assert "pip install 'fdn-denoise[baselines]'" in captured.err
    assert "| Data set | sigma | NLM |" in captured.out


@pytest.mark.parametrize(
    ("baseline", "missing"),
    [("ffdnet", "ipol-ffdnet-pytorch/net_gray.pth"), ("dncnn-b", "DnCNN-B.net.pth")],
)
@pytest.mark.parametrize("given", ["--weights", "FDN_WEIGHTS"])
def test_fdn_eval_stops_on_a_missing_reference_file(
    tmp_path, capsys, monkeypatch, baseline, missing, given
):
    # A baseline asked for by name is never dropped from the table without a word: a
    # missing weight file is a one-line error naming it, the option and the variable.
    from fdn.cli import main

    data = write_images(tmp_path / "tiny", 1, "RGB")
    folder = tmp_path / "none"
    argv = ["eval", "--baselines", f"nlm,{baseline}", "--data", str(data), "--sigma", "25"]
    if given == "--weights":
        monkeypatch.delenv("FDN_WEIGHTS", raising=False)
        argv += ["--weights", str(folder)]
    else:
        monkeypatch.setenv("FDN_WEIGHTS", str(folder))
    assert main([*argv, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no table without the method asked for
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdn: error: ")
    assert str(folder) in lines[0] and missing in lines[0]
    assert "--weights" in lines[0] and "FDN_WEIGHTS" in lines[0]


def test_run_eval_errors(tmp_path):
    data = write_images(tmp_path / "tiny", 1)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_eval(**parse("--data", str(data), "--no-progress"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        run_eval(**parse("--model", str(tmp_path / "bad.safetensors"), "--data", str(data)))
    with pytest.raises(SystemExit):
        parse("--baselines", "bm3d,unknown", "--data", str(data))


def test_fdn_denoiser_runs_the_model():
    model = FDN(in_channels=3, hidden_channels=4, steps_per_block=1)
    denoiser = FDNDenoiser(model, "FDN")
    noisy = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(denoiser.denoise(noisy), model.denoise(noisy))
    assert denoiser.blind and denoiser.supports(1, None) is not None


def test_every_method_satisfies_the_denoiser_protocol():
    methods = [
        FDNDenoiser(FDN(hidden_channels=4, steps_per_block=1)),
        DnCNNDenoiser(DnCNN(depth=3, features=4)),
        FFDNetDenoiser(FFDNet(1, depth=3, features=4)),
        NonLocalMeans(),
        DenoiserSet("set", {(1, None): DnCNNDenoiser(DnCNN(depth=3, features=4))}),
    ]
    for method in methods:
        assert isinstance(method, Denoiser), method
        assert isinstance(method.name, str) and isinstance(method.blind, bool)


def _eval_bundled_colour_model(tmp_path, *flags):
    """Runs ``fdn eval --model fdn-color-blind FLAGS`` on two small generated images at
    sigma 25; returns the table it wrote."""
    import numpy as np
    from PIL import Image

    from fdn.cli import main

    data = tmp_path / "set"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        ramp = np.add.outer(np.arange(24), np.arange(20))[:, :, None] * [4, 3, 2]
        image = np.clip(ramp + rng.integers(0, 20, (24, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(data / f"{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "--model", "fdn-color-blind", *flags, "--data", str(data), "--sigma", "25"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    return (out / "table.md").read_text()


def test_fdn_eval_runs_from_the_command_line_with_a_bundled_model(tmp_path):
    table = _eval_bundled_colour_model(tmp_path)
    assert "fdn-color-blind" in table and "| set | 25 |" in table


def test_ensemble_flag_wraps_every_method(tmp_path):
    import torch

    from fdn.evaluation import EnsembleDenoiser

    class Blur:
        name, blind = "blur", True

        def supports(self, channels, sigma):
            return None

        def denoise(self, noisy, sigma):
            padded = torch.nn.functional.pad(noisy, (1, 1, 1, 1), mode="replicate")
            return torch.nn.functional.avg_pool2d(padded, 3, stride=1)

    x = torch.rand(1, 3, 9, 7)
    wrapped = EnsembleDenoiser(Blur())
    assert wrapped.name == "blur x8" and wrapped.blind
    assert torch.allclose(wrapped.denoise(x, None), Blur().denoise(x, None), atol=1e-6)

    assert "fdn-color-blind x8" in _eval_bundled_colour_model(tmp_path, "--ensemble")
    (tmp_path / "x2").mkdir()
    table = _eval_bundled_colour_model(tmp_path / "x2", "--ensemble-size", "2")
    assert "fdn-color-blind x2" in table and "x8" not in table


def test_precision_flag_is_recorded_with_the_results(tmp_path):
    import json

    _eval_bundled_colour_model(tmp_path, "--precision", "bf16")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["precision"] == "bf16"


def test_eval_strength_reaches_every_fdn_model(tmp_path, capsys):
    from helpers import mild_model

    data = write_images(tmp_path / "tiny", 2, "RGB")
    model_file = save_model(mild_model(), tmp_path / "m.safetensors")
    psnrs = {}
    for strength in ("auto", "1", "0.5"):
        out = tmp_path / strength
        argv = ["--model", str(model_file), "--data", str(data), "--sigma", "25"]
        args = parse(*argv, "--strength", strength, "--out", str(out), "--no-progress")
        assert run_eval(**args) == 0
        document = json.loads((out / "results.json").read_text())
        expected = {"auto": "auto", "1": 1.0, "0.5": 0.5}[strength]
        assert document["settings"]["strength"] == expected
        psnrs[strength] = [row["psnr"] for row in document["images"]]
    capsys.readouterr()
    # A model file has no strength curve: auto is strength 1; 0.5 is another denoise.
    assert psnrs["auto"] == psnrs["1"] and psnrs["0.5"] != psnrs["1"]


def test_the_fdn_adapter_passes_its_strength_to_the_model():
    import copy

    import torch

    from fdn.denoisers import FDNDenoiser
    from fdn.model import StrengthCurve

    from helpers import mild_model

    model = mild_model().double().eval()
    curved = copy.deepcopy(model)
    curved.strength_curve = StrengthCurve((0.0, 500.0), (0.4, 0.4))
    noisy = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0)).double()
    assert torch.equal(FDNDenoiser(curved).denoise(noisy), model.denoise(noisy, 0.4))
    assert torch.equal(FDNDenoiser(curved, strength=1.0).denoise(noisy), model.denoise(noisy))
