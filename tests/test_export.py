"""ONNX export: onnxruntime runs the same denoise as PyTorch, at any size, with no matrix
inverse in the graph."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fdn
from fdn._version import DISTRIBUTION
from fdn.cli import main
from fdn.export import export_onnx
from fdn.layers import InvConv1x1
from fdn.pretrained import sample_image_paths

from helpers import randomize


@pytest.fixture
def onnx():
    """The onnx package, with onnxscript (the exporter) and onnxruntime; else the test skips."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    return pytest.importorskip("onnx")


def small_model():
    model = fdn.FDN(hidden_channels=4, steps_per_block=2)
    return randomize(model, seed=1, shape=(2, 3, 16, 16)).float()


def sample(height, width, batch=1):
    """A crop of the bundled noisy sample photo, as a (batch, 3, H, W) float32 batch (the
    second image of a batch is the first flipped)."""
    with Image.open(sample_image_paths()[0]) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)[:height, :width] / 255
    photo = torch.from_numpy(array).permute(2, 0, 1)[None]
    return torch.cat([photo, photo.flip(-1)][:batch]).contiguous()


def run_onnx(path, noisy):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"noisy": noisy.numpy()})[0])


def assert_matches_pytorch(model, path, shapes):
    """onnxruntime's output equals ``model.denoise``'s within 1e-4 at every (B, H, W)."""
    for batch, height, width in shapes:
        noisy = sample(height, width, batch)
        with torch.no_grad():
            expected = model.denoise(noisy)
        denoised = run_onnx(path, noisy)
        assert denoised.shape == noisy.shape
        assert (denoised - expected).abs().max() < 1e-4, (batch, height, width)


@pytest.mark.slow
def test_the_bundled_model_exports_to_one_file_that_runs_as_pytorch_does(
    tmp_path, onnx, capsys, monkeypatch
):
    # One test for every check of a real export: the exporter traces the graph on symbolic
    # sizes, a minute or more on a 2-core CPU (a small random network takes half of it), and
    # a module fixture shared by several tests was made once per pytest-xdist worker, since
    # xdist_group no longer groups under pytest 9.2 (xdist 3.8 renames item._nodeid, which
    # pytest no longer reads).
    out = tmp_path / "out" / "color.onnx"
    assert main(["export", "fdn-color-blind", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["color.onnx"]
    model = fdn.load_model("fdn-color-blind")

    # Sizes that are and are not multiples of 4 (padded inside the graph), a batch of 2, the
    # smallest size, and photo-sized crops.
    sizes = [(1, 45, 38), (1, 64, 61), (2, 32, 28), (1, 3, 5), (1, 256, 256), (1, 123, 201)]
    assert_matches_pytorch(model, out, sizes)

    # Dynamic batch and sizes; no matrix inverse, loop or branch in the graph: every 1x1
    # convolution's inverse is a constant, computed at export.
    graph = onnx.load(str(out)).graph
    noisy = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in noisy] == [True, False, True, True]
    assert not {node.op_type for node in graph.node} & {"Inverse", "Det", "Loop", "If"}
    constants = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    square = [c.reshape(c.shape[0], -1) for c in constants if c.shape[2:] == (1, 1)]
    layers = [layer for layer in model.modules() if isinstance(layer, InvConv1x1)]
    assert layers
    for layer in layers:
        inverse = torch.linalg.inv(layer.weight.detach().double()).float().numpy()
        assert any(c.shape == inverse.shape and np.allclose(c, inverse) for c in square)

    # `fdn bench --onnx` times onnxruntime beside PyTorch on the file it exports from the
    # model it times (--model); this export of that very model is handed over instead of a
    # second minute of exporting, and what it was asked to export is compared with --model.
    exported = []

    def reuse(model, path):
        exported.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return Path(shutil.copyfile(out, path))

    monkeypatch.setattr(fdn.export, "export_onnx", reuse)
    argv = ["bench", "--sizes", "16", "--repeats", "1", "--no-bm3d", "--onnx", "--json"]
    assert main([*argv, "--model", "fdn-color-blind"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["method"] for row in report["results"]} == {"fdn", "onnxruntime", "dncnn"}
    assert report["onnxruntime_over_fdn_time"]["16"] > 0
    (timed,) = exported
    expected = dict(model.named_parameters())
    assert timed.keys() == expected.keys()
    assert all(torch.equal(timed[name], p) for name, p in expected.items())


def test_export_onnx_writes_the_file_it_names(tmp_path, onnx, monkeypatch):
    # export_onnx's own contract, without the exporter's minute: the program it is handed is
    # saved at the path, whole, and the path is returned; `fdn export FILE` hands it the
    # denoise of the model in that file.
    calls, graphs = [], []

    class Program:
        def save(self, path, external_data):
            calls.append(external_data)
            Path(path).write_bytes(b"onnx")

    def fake_export(graph, args, **options):
        graphs.append(graph)
        calls.append((type(graph).__name__, tuple(args[0].shape[:2]), options["dynamo"]))
        return Program()

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    path = export_onnx(small_model(), tmp_path / "sub" / "m.onnx")
    assert path == tmp_path / "sub" / "m.onnx" and path.read_bytes() == b"onnx"
    assert calls == [("DenoiseGraph", (2, 3), True), False]
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]

    fdn.save_model(small_model(), tmp_path / "small.safetensors")
    assert main(["export", str(tmp_path / "small.safetensors"), str(tmp_path / "f.onnx")]) == 0
    assert (tmp_path / "f.onnx").read_bytes() == b"onnx"
    noisy = sample(45, 38)
    with torch.no_grad():
        expected = fdn.load_model(tmp_path / "small.safetensors").denoise(noisy)
        assert (graphs[-1](noisy) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("spec", ["fdn-no-such-model", "missing.safetensors", "not-a-model"])
def test_a_bad_model_is_a_one_line_error(tmp_path, capsys, spec):
    if spec == "not-a-model":
        spec = str(tmp_path / "bad.safetensors")
        (tmp_path / "bad.safetensors").write_text("not a model")
    out = tmp_path / "m.onnx"
    assert main(["export", spec, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fdn: error: ") and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.glob("*.onnx*")) == []


def test_missing_onnx_packages_name_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=rf"pip install '{DISTRIBUTION}\[onnx\]'"):
        export_onnx(small_model(), tmp_path / "m.onnx")
    fdn.save_model(small_model(), tmp_path / "small.safetensors")
    assert main(["export", str(tmp_path / "small.safetensors"), str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert f"pip install '{DISTRIBUTION}[onnx]'" in err and err.count("\n") == 1
