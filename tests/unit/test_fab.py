"""The app bundle (FAB) every device unpacks once per message holds what a device runs, no more."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tracked_copy(dest: Path) -> Path:
    """The repository's tracked files under ``dest`` (``flwr build`` takes the folder's name as
    the app's name and refuses a checkout folder such as ``tmp.X1r9MVgKv1``)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_fab_holds_the_package_and_the_apps_only(tmp_path: Path) -> None:
    flwr = Path(sys.executable).with_name("flwr")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "home")}
    app = _tracked_copy(tmp_path / "fedhet")
    assert (app / "benchmarks").is_dir() and (app / "tests").is_dir()  # there to be left out
    done = subprocess.run(
        [str(flwr), "build", "--app", str(app)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {".info", "pyproject.toml", "fedhet", "client_app", "server_app"}
    # what devices load at run time is in it: both apps, the cost tables CoCoFL plans with
    assert {"client_app/app.py", "server_app/app.py", "fedhet/methods/__init__.py"} <= set(names)
    assert "fedhet/models/costs/cnn_b-b32.json" in names
    # every Python file of the package travels
    package = {str(p.relative_to(app)) for p in (app / "fedhet").rglob("*.py")}
    assert package <= set(names)
