"""ONNX export: onnxruntime runs the same denoise as PyTorch, at any size, with no matrix
inverse in the graph."""

import contextlib
import io
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


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """A small random model exported by ``fdn export``: (model, ONNX path, stdout)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("export")
    fdn.save_model(small_model(), root / "small.safetensors")
    out = root / "out" / "small.onnx"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        assert main(["export", str(root / "small.safetensors"), str(out)]) == 0
    return fdn.load_model(root / "small.safetensors"), out, capture.getvalue()


# The tests that share the module's export run in one pytest-xdist worker, so it is made once.
SHARES_THE_EXPORT = pytest.mark.xdist_group("small_export")


@SHARES_THE_EXPORT
def test_export_command_writes_one_file_that_runs_at_any_size(small_export):
    model, path, stdout = small_export
    assert str(path) in stdout
    assert [p.name for p in path.parent.iterdir()] == ["small.onnx"]
    # Sizes that are and are not multiples of 4 (padded inside the graph), and a batch of 2.
    assert_matches_pytorch(model, path, [(1, 45, 38), (1, 64, 61), (2, 32, 28), (1, 3, 5)])


@SHARES_THE_EXPORT
def test_the_graph_has_dynamic_sizes_and_precomputed_inverses(small_export, onnx):
    model, path, _ = small_export
    graph = onnx.load(str(path)).graph
    noisy = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in noisy] == [True, False, True, True]
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Inverse", "Det", "Loop", "If"}
    # Every 1x1 convolution's inverse is a constant of the graph, computed at export.
    constants = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    square = [c.reshape(c.shape[0], -1) for c in constants if c.shape[2:] == (1, 1)]
    for layer in model.modules():
        if isinstance(layer, InvConv1x1):
            inverse = torch.linalg.inv(layer.weight.detach().double()).float().numpy()
            assert any(c.shape == inverse.shape and np.allclose(c, inverse) for c in square)


@pytest.mark.slow
def test_the_bundled_model_runs_the_same_in_onnxruntime(tmp_path, onnx):
    model = fdn.load_model("fdn-color-blind")
    path = export_onnx("fdn-color-blind", tmp_path / "color.onnx")
    assert_matches_pytorch(model, path, [(1, 256, 256), (1, 123, 201)])


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


@SHARES_THE_EXPORT
def test_bench_times_onnxruntime_beside_pytorch(small_export, capsys, monkeypatch):
    model_file = small_export[1].parent.parent / "small.safetensors"
    # The bench exports the model it times; the export of this very file is already made
    # (and checked above), so hand it over instead of spending a minute exporting it again.
    exported = []

    def reuse(model, path):
        exported.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return Path(shutil.copyfile(small_export[1], path))

    monkeypatch.setattr(fdn.export, "export_onnx", reuse)
    argv = ["bench", "--sizes", "16", "--repeats", "1", "--no-bm3d", "--onnx", "--json"]
    assert main([*argv, "--model", str(model_file)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["method"] for row in report["results"]} == {"fdn", "onnxruntime", "dncnn"}
    assert report["onnxruntime_over_fdn_time"]["16"] > 0
    # What the bench exported is the FDN it timed: the one in --model.
    (timed,) = exported
    expected = dict(fdn.load_model(model_file).named_parameters())
    assert timed.keys() == expected.keys()
    assert all(torch.equal(timed[name], p) for name, p in expected.items())
