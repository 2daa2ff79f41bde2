"""``fedhet demo --method X`` and the direction of the cli -> deploy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedhet import cli


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
