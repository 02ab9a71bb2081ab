import json

import pytest

import fdn
from fdn.cli import main


def test_bench_times_the_bundled_model_by_default(capsys):
    assert main(["bench", "--sizes", "16", "--repeats", "1", "--no-bm3d"]) == 0
    out = capsys.readouterr().out
    assert "FDN model: fdn-color-blind (bundled, the default)" in out
    bundled = sum(p.numel() for p in fdn.load_model("fdn-color-blind").parameters())
    assert f"fdn    {bundled:>10,} parameters" in out
    rows = {tuple(line.split()[:2]) for line in out.splitlines()}
    assert {("fdn", "16"), ("dncnn", "16")} <= rows


def test_bench_json_names_the_model_it_timed(capsys):
    argv = ["bench", "--sizes", "16", "--repeats", "1", "--no-bm3d", "--json"]
    assert main([*argv, "--model", "fdn-grey-blind"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"]["fdn"]["model"] == "fdn-grey-blind (bundled)"
    grey = sum(p.numel() for p in fdn.load_model("fdn-grey-blind").parameters())
    assert report["models"]["fdn"]["parameters"] == grey
    assert report["channels"] == 1
    assert {row["method"] for row in report["results"]} == {"fdn", "dncnn"}


@pytest.mark.slow
def test_bench_json_has_every_field(capsys):
    assert main(["bench", "--sizes", "32", "--repeats", "1", "--json", "--paper"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {
        "device",
        "device_name",
        "threads",
        "allocator",
        "precision",
        "models",
        "results",
        "fdn_over_dncnn_time",
        "fdn_over_dncnn_macs",
    } <= set(report)
    assert report["models"]["fdn"]["model"] == "FDN() (the paper's configuration, untrained)"
    assert report["models"]["fdn"]["parameters"] == 4_375_680
    assert abs(report["models"]["fdn"]["gflops_256"] - 76.72) < 0.01
    assert report["models"]["dncnn"]["parameters"] == 558_336
    assert abs(report["fdn_over_dncnn_macs"] - 76.72 / 36.47) < 0.01
    methods = {(row["method"], row["size"]) for row in report["results"]}
    assert {("fdn", 32), ("dncnn", 32)} <= methods
    for row in report["results"]:
        assert row["seconds"] > 0 and row["peak_memory_mb"] >= 0
        assert row["allocator"] in ("tuned", "default")
        if row["method"] != "bm3d":
            assert row["gmacs_per_second"] > 0
    assert report["fdn_over_dncnn_time"]["32"] > 0
