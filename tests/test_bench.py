import json

import pytest

from fdn.cli import main


@pytest.mark.slow
def test_bench_json_has_every_field(capsys):
    assert main(["bench", "--sizes", "32", "--repeats", "1", "--json"]) == 0
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
