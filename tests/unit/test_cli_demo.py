"""``fedhet demo --method X`` and the direction of the cli -> deploy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedhet import cli
from fedhet.deploy import simlink
from fedhet.deploy.processes import find_free_port


def test_demo_passes_the_method_and_leaves_dataset_and_model_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_run_simulation(overrides: str, **kwargs: Any) -> tuple[str, int | None]:
        seen.update(overrides=overrides, **kwargs)
        return "finished:failed", 7

    monkeypatch.setattr(cli, "run_simulation", fake_run_simulation)
    status = cli.main(
        [
            "demo",
            "--method",
            "fltac",
            "--nodes",
            "4",
            "--rounds",
            "2",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 1  # a run that did not complete is a failure of the command
    assert "method='fltac'" in seen["overrides"] and "num-server-rounds=2" in seen["overrides"]
    assert "dataset=" not in seen["overrides"] and "model=" not in seen["overrides"]
    assert seen["nodes"] == 4 and seen["rounds"] == 2


def test_deploy_package_imports_nothing_else_of_fedhet() -> None:
    """fedhet.cli imports fedhet.deploy, never the reverse (the old cli <-> simlink circle)."""
    import ast

    import fedhet.deploy

    folder = Path(fedhet.deploy.__file__).parent
    for module in folder.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name == "fedhet" or name.startswith("fedhet."):
                    assert name.startswith("fedhet.deploy"), (module.name, name)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:6380", ("127.0.0.1", 6380)), ("head.plant:6379", ("head.plant", 6379))],
)
def test_ray_address_is_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert simlink.parse_ray_address(address) == expected


@pytest.mark.parametrize("address", ["6380", "127.0.0.1", "ray://127.0.0.1:10001", "h:0", "h:x"])
def test_demo_rejects_a_malformed_ray_address_before_starting_anything(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    status = cli.main(["demo", "--ray-address", address, "--output-dir", str(tmp_path)])
    assert status == 2
    assert "host:port" in capsys.readouterr().out
    assert not (tmp_path / "flwr-home" / "fedhet-sim.json").exists()


def test_demo_fails_at_once_when_no_ray_cluster_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A closed port: a clear error, no SuperLink (it would wait in ``ray.init`` inside the run)."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setattr(simlink, "RAY_CONNECT_TIMEOUT_S", 0.3)
    address = f"127.0.0.1:{find_free_port()}"
    status = cli.main(["demo", "--ray-address", address, "--output-dir", str(tmp_path)])
    assert status == 2
    assert f"no Ray cluster answers at {address}" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "flwr-home" / "fedhet-sim.json").exists()


def test_ray_address_reaches_the_simulation_superlink_as_ray_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    link = simlink.SimSuperLink(tmp_path, ray_address="127.0.0.1:6380")
    assert link.env()["RAY_ADDRESS"] == "127.0.0.1:6380"
    assert "RAY_ADDRESS" not in simlink.SimSuperLink(tmp_path).env()
