"""deploy/compose: static checks (no engine needed) and the compose demo end to end.

Static: every service's command is a console script of this environment (or ``python -m
fedhet.deploy``), every ``--flag`` appears in that program's ``--help``, the files the Dockerfile
copies exist, the topology is what DESIGN.md and the trust-boundary issue promise (TLS, SuperNode
authentication, a SuperExec, >= 3 SuperNodes with different CPU / memory limits, the SuperLink
reachable by devices only through the nginx front door that passes /v1/fleet alone), and each
container mounts only the files it needs (never ``ca.key``).

End to end (marker ``compose``): ``deploy/compose/run-demo.sh demo`` on Docker or podman, skipped
with the reason where no engine can run; the run must finish ``completed`` with every node trained.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
SCRIPT = COMPOSE_DIR / "run-demo.sh"
NGINX_CONF = COMPOSE_DIR / "nginx.conf"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
BIN_DIR = Path(sys.executable).parent
#: Programs whose first argument is a subcommand with its own ``--help``.
SUBCOMMAND_PROGRAMS = {"flwr", "fedhet.deploy"}

pytestmark = pytest.mark.integration


def _load_compose() -> Any:
    """compose.yaml with ``${VAR:-default}`` interpolated to its default, as compose does."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", COMPOSE_FILE.read_text())
    assert "${" not in text, "every variable in compose.yaml needs a default"
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_compose()
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


def _script_list(name: str) -> list[str]:
    """A bash array ``NAME=(a b c)`` of run-demo.sh."""
    match = re.search(rf"^{name}=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert match, f"{name}=(...) not in {SCRIPT.name}"
    return match.group(1).split()


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host source} of a service's volumes."""
    out = {}
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


def test_keys_used_are_made_by_certs_and_registered(compose: dict[str, Any]) -> None:
    services = compose["services"]
    argvs = {name: _argv(svc) for name, svc in services.items()}
    names = _script_list("NODES")
    certs = re.search(r"fedhet\.deploy certs --out \S+ --hosts ([^\\\n]+)", SCRIPT.read_text())
    assert certs, "run-demo.sh must write the PKI with `python -m fedhet.deploy certs`"
    hosts = certs.group(1).split()
    register = next(a for a in argvs.values() if a[3:4] == ["register"])
    registered = {a for a in register if a.endswith(".pub")}
    assert registered == {f"/pki/nodes/{n}.pub" for n in names}
    used_keys = []
    for name, argv in argvs.items():
        if argv and argv[0] == "flower-supernode":
            key = argv[argv.index("--auth-supernode-private-key") + 1]
            source = _mounts(services[name])[key]
            used_keys.append(Path(source).name)
        if argv and (
            argv[0] in {"flower-supernode", "flower-superexec"} or argv[3:4] == ["register"]
        ):
            address = next(
                argv[i + 1]
                for i, a in enumerate(argv)
                if a in {"--superlink", "--runtime-api-address"}
            )
            assert address.split(":")[0] in hosts, "server certificate must name that host"
    assert sorted(used_keys) == sorted(f"{n}.key" for n in names), "one own key per SuperNode"


def test_devices_reach_only_the_front_door(compose: dict[str, Any]) -> None:
    services = compose["services"]
    argvs = {name: _argv(svc) for name, svc in services.items()}
    link = next(n for n, a in argvs.items() if a and a[0] == "flower-superlink")
    port = argvs[link][argvs[link].index("--port") + 1]
    networks = {name: set(svc.get("networks") or ["default"]) for name, svc in services.items()}
    assert compose["networks"]["backend"].get("internal") is True
    assert "devices" not in networks[link] and not services[link].get("ports")
    for name, argv in argvs.items():
        if argv and argv[0] == "flower-supernode":
            assert networks[name] == {"devices"}, f"{name} must see only the device network"
            door = argv[argv.index("--superlink") + 1].split(":")[0]
    assert networks[door] == {"backend", "devices"}
    published = [n for n, svc in services.items() if svc.get("ports")]
    assert published == [door], "only the front door publishes a port"
    conf = NGINX_CONF.read_text()
    locations = dict(re.findall(r"location\s+([^{]+?)\s*\{(.*?)\}", conf, re.S))
    assert set(locations) == {"/v1/fleet/", "= /health", "/"}
    assert f"proxy_pass https://{link}:{port};" in locations["/v1/fleet/"]
    assert "proxy_ssl_verify on;" in locations["/v1/fleet/"]
    assert "return 403;" in locations["/"]
    assert "proxy_pass" not in locations["/"] + locations["= /health"]
    mounted = {Path(p).name for p in _mounts(services[door]).values()}
    assert mounted == {"nginx.conf", "ca.pem", "server.pem", "server.key"}


def test_each_container_mounts_only_what_it_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        sources = [Path(s).name for s in _mounts(service).values()]
        assert "ca.key" not in sources, f"{name} mounts the CA key"
        assert all("pki:" not in str(v) for v in service.get("volumes") or []), (
            f"{name} mounts a whole PKI volume"
        )
        argv = _argv(service)
        if argv and argv[0] == "flower-supernode":
            keys = [s for s in sources if s.endswith(".key")]
            assert len(keys) == 1 and "ca.pem" in sources, f"{name}: ca.pem and its own key"
            assert set(sources) <= {"ca.pem", keys[0], "fashion-mnist"}
        elif name != "superlink" and name != "frontdoor":
            assert not [s for s in sources if s.endswith(".key")], f"{name} mounts a private key"


def test_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def _service_params() -> list[Any]:
    data = _load_compose()
    return [pytest.param(name, id=name) for name in data["services"]]


@pytest.mark.parametrize("service_name", _service_params())
def test_every_command_and_flag_exists(compose: dict[str, Any], service_name: str) -> None:
    argv = _argv(compose["services"][service_name])
    assert argv, f"{service_name} has no command"
    if argv[0] == "nginx":  # the front door: Debian's nginx in its own image stage
        assert argv[1:3] == ["-c", "/etc/fedhet/nginx.conf"]
        assert _mounts(compose["services"][service_name])[argv[2]] == "./nginx.conf"
        return
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
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ("FROM", "${BASE_IMAGE} AS base") in instructions
    stages = [rest.split()[-1] for kw, rest in instructions if kw == "FROM"]
    assert stages == ["base", "frontdoor", "torch", "requirements", "fedhet"]
    torch_arg = next(rest for kw, rest in instructions if kw == "ARG" and "TORCH_PIP_ARGS" in rest)
    assert "torch==2.13.0" in torch_arg and "download.pytorch.org/whl/cpu" in torch_arg
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "torch.version.cuda" in runs, "the build must fail on a CUDA torch"
    assert (
        runs.index("$TORCH_PIP_ARGS")
        < runs.index("pip install -r")
        < runs.index("pip install --no-deps .")
    )
    assert "nginx-light" in runs

    build = compose["x-fedhet-image"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    # COPY from the build context (not --from=<stage>)
    copies = [rest for kw, rest in instructions if kw == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (context / source).exists(), f"COPY source {source} missing"
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
    for rest in copies:
        source = next(p for p in shlex.split(rest) if not p.startswith("--"))
        assert f"!{source}" in ignore, f"{source} is excluded from the build context"


# ---------------------------------------------------------------------------------------------
# End to end on a real engine
# ---------------------------------------------------------------------------------------------


def _engine() -> tuple[str | None, str]:
    """(engine name, reason it cannot run) from ``run-demo.sh engine``."""
    try:
        result = subprocess.run(
            ["bash", str(SCRIPT), "engine"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["no engine"])[-1]
    return result.stdout.strip(), ""


@pytest.mark.compose
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_compose_demo_end_to_end(tmp_path: Path) -> None:
    engine, reason = _engine()
    if engine is None:
        pytest.skip(f"no container engine can run here: {reason}")
    rounds = 3
    env = {
        **os.environ,
        "FEDHET_COMPOSE_PROJECT": f"fedhet-test-{os.getpid()}",
        "FEDHET_COMPOSE_STATE": str(tmp_path / "state"),
        "FEDHET_COMPOSE_ROUNDS": str(rounds),
    }
    env.pop("FEDHET_COMPOSE_KEEP", None)
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), "demo"], capture_output=True, text=True, timeout=2300, env=env
    )
    elapsed = time.monotonic() - start
    output = f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
    assert result.returncode == 0, output
    state = tmp_path / "state" / "run"
    assert (state / "status").read_text().strip() == "finished:completed", output
    rows = [
        json.loads(line)
        for line in (state / "runs" / "compose-demo" / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1)), output
    for row in rows:
        trained = {n["device-id"] for n in row["nodes"] if n.get("status") == "trained"}
        assert trained == {"node-0", "node-1", "node-2"}, f"round {row['round']}: {row}"
    assert "weak" in result.stdout and "strong" in result.stdout, output
    # torn down: nothing of the project is left running
    ps = subprocess.run(
        [
            engine,
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={env['FEDHET_COMPOSE_PROJECT']}",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "CONTAINERS_CONF": str(COMPOSE_DIR / "containers.conf")},
    )
    assert ps.stdout.strip() == "", f"containers left: {ps.stdout}"
    print(f"compose demo ({engine}): {elapsed:.0f} s")
