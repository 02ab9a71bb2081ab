"""ONNX export: onnxruntime runs the same denoise as PyTorch, at any size, with no matrix
inverse in the graph."""

import json
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


def test_the_bundled_model_exports_to_one_file_that_runs_as_pytorch_does(
    tmp_path, onnx, capsys, monkeypatch
):
    out = tmp_path / "out" / "color.onnx"
    assert main(["export", "fdn-color-blind", str(out)]) == 0
    said = capsys.readouterr().out
    assert str(out) in said and "any H, W >= 3" in said
    assert [p.name for p in out.parent.iterdir()] == ["color.onnx"]
    model = fdn.load_model("fdn-color-blind")

    # Sizes that are and are not multiples of 4 (padded inside the graph), a batch of 2, the
    # smallest size, and photo-sized crops.
    sizes = [(1, 45, 38), (1, 64, 61), (2, 32, 28), (1, 3, 5), (1, 256, 256), (1, 123, 201)]
    assert_matches_pytorch(model, out, sizes)

    # Dynamic batch and sizes; no matrix inverse, loop or branch in the graph: every 1x1
    # convolution's inverse is a constant, computed at export.
    graph = onnx.load(str(out)).graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, False, True, True]
    assert not {node.op_type for node in graph.node} & {"Inverse", "Det", "Loop", "If"}
    assert_holds_the_inverses(onnx, graph, model)

    # `fdn bench --onnx` times onnxruntime beside PyTorch on the file it exports from the
    # model it times (--model): what it asks export_onnx to export is compared with --model.
    exported = []
    export = fdn.export.export_onnx

    def spy(model, path):
        exported.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return export(model, path)

    monkeypatch.setattr(fdn.export, "export_onnx", spy)
    argv = ["bench", "--sizes", "16", "--repeats", "1", "--no-bm3d", "--onnx", "--json"]
    assert main([*argv, "--model", "fdn-color-blind"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["method"] for row in report["results"]} == {"fdn", "onnxruntime", "dncnn"}
    assert report["onnxruntime_over_fdn_time"]["16"] > 0
    (timed,) = exported
    expected = dict(model.named_parameters())
    assert timed.keys() == expected.keys()
    assert all(torch.equal(timed[name], p) for name, p in expected.items())


def assert_holds_the_inverses(onnx, graph, model):
    """Each of ``model``'s 1x1 convolutions has its float64 inverse among the constants."""
    constants = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    square = [c.reshape(c.shape[0], -1) for c in constants if c.shape[2:] == (1, 1)]
    layers = [layer for layer in model.modules() if isinstance(layer, InvConv1x1)]
    assert layers
    for layer in layers:
        inverse = torch.linalg.inv(layer.weight.detach().double()).float().numpy()
        assert any(c.shape == inverse.shape and np.allclose(c, inverse) for c in square)


@pytest.mark.slow
def test_the_dynamo_exporter_writes_the_same_graph(tmp_path, onnx):
    # PyTorch's newer exporter, kept for a PyTorch without the TorchScript one. Its symbolic
    # sizes take it most of a minute on a small network of two blocks, 13 s on one block of
    # one Step of Flow: that, whose size multiple is 2, so that odd sizes are padded.
    model = fdn.FDN(hidden_channels=4, steps_per_block=1, num_blocks=1)
    model = randomize(model, seed=2, shape=(2, 3, 16, 16)).float().eval()
    out = export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    traced = export_onnx(model, tmp_path / "traced.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamo.onnx", "traced.onnx"]
    sizes = [(1, 45, 38), (2, 32, 28), (1, 3, 5)]
    assert_matches_pytorch(model, out, sizes)
    for batch, height, width in sizes:
        noisy = sample(height, width, batch)
        assert (run_onnx(out, noisy) - run_onnx(traced, noisy)).abs().max() < 1e-5
    graph = onnx.load(str(out)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]
    assert not {node.op_type for node in graph.node} & {"Inverse", "Det", "Loop", "If"}
    assert_holds_the_inverses(onnx, graph, model)


def test_fdn_export_of_a_model_file_writes_that_model_and_nothing_else(tmp_path, onnx):
    model = small_model()
    fdn.save_model(model, tmp_path / "small.safetensors")
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", str(tmp_path / "small.safetensors"), str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]
    loaded = fdn.load_model(tmp_path / "small.safetensors")
    assert_matches_pytorch(loaded, out, [(1, 45, 38), (2, 13, 8)])

    # From Python: the path back; an FDN object is exported as it is, and left as it was.
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert export_onnx(model, tmp_path / "obj.onnx") == tmp_path / "obj.onnx"
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert_matches_pytorch(model, tmp_path / "obj.onnx", [(1, 9, 10)])


def test_a_deeper_model_says_its_smallest_size_and_takes_it(tmp_path, onnx, capsys):
    # Three blocks: a size multiple of 8, so a side of 4 would need a reflection of 4 pixels,
    # more than a side of 4 has; 5 is the smallest the graph takes (and says it takes).
    model = fdn.FDN(hidden_channels=4, steps_per_block=1, num_blocks=3)
    fdn.save_model(randomize(model, seed=3, shape=(2, 3, 16, 16)), tmp_path / "deep.safetensors")
    out = tmp_path / "deep.onnx"
    assert main(["export", str(tmp_path / "deep.safetensors"), str(out)]) == 0
    assert "any H, W >= 5" in capsys.readouterr().out
    loaded = fdn.load_model(tmp_path / "deep.safetensors")
    assert_matches_pytorch(loaded, out, [(1, 5, 5), (1, 5, 12), (2, 9, 17)])
    with pytest.raises(Exception, match="Pad"):
        run_onnx(out, sample(4, 9))


def test_a_failed_export_leaves_the_previous_file_and_no_temporary_one(
    tmp_path, onnx, monkeypatch
):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")

    def fail(graph, args, f, **options):
        Path(f).write_bytes(b"half a file")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(small_model(), out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert out.read_bytes() == b"previous"


def test_an_unknown_exporter_is_refused(tmp_path, capsys):
    with pytest.raises(
        ValueError, match="unknown ONNX exporter 'jit': one of torchscript, dynamo"
    ):
        export_onnx(small_model(), tmp_path / "m.onnx", exporter="jit")
    with pytest.raises(SystemExit) as stop:
        main(["export", "fdn-color-blind", str(tmp_path / "m.onnx"), "--exporter", "jit"])
    assert stop.value.code == 2 and "invalid choice: 'jit'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


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
    fdn.save_model(small_model(), tmp_path / "small.safetensors")
    model_file, out = str(tmp_path / "small.safetensors"), str(tmp_path / "m.onnx")
    # Both exporters need onnx; only the dynamo one needs onnxscript.
    for package, argv in [("onnx", []), ("onnxscript", ["--exporter", "dynamo"])]:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, package, None)
            with pytest.raises(
                ImportError, match=rf"{package}: pip install '{DISTRIBUTION}\[onnx\]'"
            ):
                export_onnx(small_model(), out, *argv[1:])
            assert main(["export", model_file, out, *argv]) == 1
            err = capsys.readouterr().err
            assert f"pip install '{DISTRIBUTION}[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
