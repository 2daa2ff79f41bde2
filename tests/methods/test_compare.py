"""``fedhet compare`` on digits with tiny settings: report, resume, failure exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhet import compare as cmp
from fedhet.cli import main

TINY = (
    "dataset=digits local-steps=2 batch-size=16 max-train-per-client=80 local-test-size=30 "
    "profile-bench=false dirichlet-alpha=1.0"
)


def test_report_written_then_resume_skips_finished(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "fedavg,fedavg-drop", "--rounds", "2", "--nodes", "3"]
    argv += ["--out", str(out), "--config", TINY]
    assert main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    assert set(data["methods"]) == {"fedavg", "fedavg-drop"}
    for name, r in data["methods"].items():
        assert r["status"] == "finished", name
        assert r["rounds"] == 2 and len(r["curve"]) == 2
        assert r["cum-bytes-up"] > 0 and r["cum-bytes-down"] > 0
        assert 0.0 <= r["global-accuracy"] <= 1.0
        assert r["mean-round-seconds"] > 0
    # three-tier fleet of 3: one strong, one medium, one weak; fedavg-drop trains only the strong one
    drop = data["methods"]["fedavg-drop"]["class-shares"]
    assert drop["strong"]["trained"] == 1.0 and drop["weak"]["trained"] == 0.0
    full = data["methods"]["fedavg"]["class-shares"]
    assert full["weak"]["trained"] == 1.0
    # fedavg uploads the dense fp32 model from every trained device
    assert data["methods"]["fedavg"]["bytes-up-per-param"] == pytest.approx(4.0, rel=0.01)
    md = (out / "compare.md").read_text()
    assert "fedavg-drop" in md and "acc weak" in md
    for png in ("accuracy_vs_upload.png", "accuracy_per_class.png", "round_seconds.png"):
        assert (out / png).stat().st_size > 1000

    calls: list[str] = []
    real = cmp.run_method
    monkeypatch.setattr(cmp, "run_method", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    argv2 = argv.copy()
    argv2[2] = "fedavg,fedavg-drop,heterofl"
    assert main(argv2) == 0
    assert calls == ["heterofl"]  # the two finished methods were not rerun
    assert set(json.loads((out / "compare.json").read_text())["methods"]) == {
        "fedavg",
        "fedavg-drop",
        "heterofl",
    }
    # changed settings: the finished methods are rerun
    calls.clear()
    assert main([*argv[:3], "--rounds", "1", *argv[5:]]) == 0
    assert calls == ["fedavg", "fedavg-drop"]


def test_failing_method_exits_nonzero(tmp_path: Path, monkeypatch) -> None:
    real = cmp.run_method

    def flaky(method: str, *args, **kwargs):
        if method == "fedavg-drop":
            raise RuntimeError("device fleet on fire")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(cmp, "run_method", flaky)
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "fedavg-drop,fedavg", "--rounds", "1", "--nodes", "2"]
    assert main([*argv, "--out", str(out), "--config", TINY]) == 1
    data = json.loads((out / "compare.json").read_text())["methods"]
    assert data["fedavg-drop"]["status"] == "failed"
    assert "fleet on fire" in data["fedavg-drop"]["error"]
    assert data["fedavg"]["status"] == "finished"  # the others still ran
    assert "fleet on fire" in (out / "compare.md").read_text()


def test_fleet_table_of_devices(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.json"
    fleet.write_text(
        json.dumps({"devices": [{"device-class": "weak"}, {"device-class": "strong"}]})
    )
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "fedavg-drop", "--rounds", "1", "--fleet", str(fleet)]
    assert main([*argv, "--out", str(out), "--config", TINY]) == 0
    shares = json.loads((out / "compare.json").read_text())["methods"]["fedavg-drop"]
    assert shares["class-shares"]["weak"] == {
        "devices": 1,
        "trained": 0.0,
        "infeasible": 0.0,
        "not-trained": 1.0,
    }
    assert shares["class-shares"]["strong"]["trained"] == 1.0


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.json"
    bad.write_text(json.dumps({"devices": [{"device-class": "huge"}]}))
    assert main(["compare", "--fleet", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(["compare", "--methods", "nope", "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(Exception, match="not key=value"):
        cmp.parse_overrides("rounds")
    assert cmp.default_methods("synthetic-text") == ["fltac", "fedit"]
    assert "fltac" not in cmp.default_methods(None)
    assert cmp.common_model(["fedavg", "cocofl", "heterofl"]) == "cnn_b"


def test_flwr_overrides_parse_back_as_flower_reads_them() -> None:
    from flwr.common.config import parse_config_args

    raw = {"fleet": '["strong", "weak"]', "lr": 0.05, "seed": 3, "server-eval": False, "x.y": "a b"}
    text = " ".join(f"{k}={cmp.toml_value(v)}" for k, v in raw.items())
    assert parse_config_args([text]) == raw
    with pytest.raises(Exception, match="cannot be passed"):
        cmp.toml_value("it's")
