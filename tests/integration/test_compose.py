"""Static checks of deploy/compose (no Docker engine needed).

Every service's command must be a console script of this environment (or ``python -m
fedhet.deploy``), every ``--flag`` must appear in that program's ``--help``, the files the
Dockerfile copies must exist, and the topology must be what DESIGN.md promises: TLS,
SuperNode authentication, a SuperExec for the ServerApp and >= 3 SuperNodes with different
CPU / memory limits whose keys the certs step produces.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
BIN_DIR = Path(sys.executable).parent
#: Programs whose first argument is a subcommand with its own ``--help``.
SUBCOMMAND_PROGRAMS = {"flwr", "fedhet.deploy"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint") or []
    command = service.get("command") or []
    if isinstance(entrypoint, str):
        entrypoint = shlex.split(entrypoint)
    if isinstance(command, str):
        command = shlex.split(command)
    return [str(x) for x in [*entrypoint, *command]]


def _program(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(command to run for --help, program name, arguments after the program)."""
    if argv[0] == "python" and argv[1] == "-m":
        return [sys.executable, "-m", argv[2]], argv[2], argv[3:]
    return [str(BIN_DIR / argv[0])], argv[0], argv[1:]


@functools.cache
def _help(command: tuple[str, ...]) -> str:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(REPO / ".flwr-home" / "test-compose"),
        "COLUMNS": "250",
    }
    result = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_compose_parses_and_has_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    argvs = {name: _argv(svc) for name, svc in services.items()}
    superlinks = [n for n, a in argvs.items() if a and a[0] == "flower-superlink"]
    supernodes = [n for n, a in argvs.items() if a and a[0] == "flower-supernode"]
    superexecs = [n for n, a in argvs.items() if a and a[0] == "flower-superexec"]
    assert len(superlinks) == 1 and len(superexecs) >= 1 and len(supernodes) >= 3

    link = argvs[superlinks[0]]
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in link
    assert "--insecure" not in link
    # process isolation on the SuperLink needs the separate SuperExec service
    assert link[link.index("--isolation") + 1] == "process"

    limits = {(services[n].get("cpus"), services[n].get("mem_limit")) for n in supernodes}
    assert len(limits) == len(supernodes), "SuperNodes need different cpus / mem_limit"
    assert all(cpus and mem for cpus, mem in limits)

    for name in supernodes:
        argv = argvs[name]
        assert "--insecure" not in argv
        assert "--root-certificates" in argv and "--auth-supernode-private-key" in argv
        assert "device-class=" in argv[argv.index("--node-config") + 1]


def test_keys_used_are_made_by_certs_and_registered(compose: dict[str, Any]) -> None:
    argvs = {name: _argv(svc) for name, svc in compose["services"].items()}
    certs = next(a for a in argvs.values() if a[:4] == ["python", "-m", "fedhet.deploy", "certs"])
    out = certs[certs.index("--out") + 1]
    hosts = certs[certs.index("--hosts") + 1 : certs.index("--nodes")]
    names = certs[certs.index("--nodes") + 1 :]
    register = next(a for a in argvs.values() if a[3:4] == ["register"])
    registered = {a for a in register if a.endswith(".pub")}
    assert registered == {f"{out}/nodes/{n}.pub" for n in names}
    for argv in argvs.values():
        if argv[0] == "flower-supernode":
            key = argv[argv.index("--auth-supernode-private-key") + 1]
            assert key in {f"{out}/nodes/{n}.key" for n in names}
        if argv[0] in {"flower-supernode", "flower-superexec"} or argv[3:4] == ["register"]:
            address = next(
                argv[i + 1]
                for i, a in enumerate(argv)
                if a in {"--superlink", "--runtime-api-address"}
            )
            assert address.split(":")[0] in hosts, "server certificate must name that host"


def test_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def _service_params() -> list[Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    return [pytest.param(name, id=name) for name in data["services"]]


@pytest.mark.parametrize("service_name", _service_params())
def test_every_command_and_flag_exists(compose: dict[str, Any], service_name: str) -> None:
    argv = _argv(compose["services"][service_name])
    assert argv, f"{service_name} has no command"
    command, program, args = _program(argv)
    if command[0] != sys.executable:
        assert Path(command[0]).exists(), f"{argv[0]} is not a console script in {BIN_DIR}"
    if program in SUBCOMMAND_PROGRAMS:
        command, args = [*command, args[0]], args[1:]
    help_text = _help(tuple(command))
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"{service_name}: {flag} not in `{' '.join(command)} --help`"
        )


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_dockerfile_base_torch_and_copies(compose: dict[str, Any]) -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "torch==2.13.0" in runs and "download.pytorch.org/whl/cpu" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install .")

    build = compose["x-fedhet-image"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    copies = [rest for kw, rest in instructions if kw == "COPY"]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (context / source).exists(), f"COPY source {source} missing"
