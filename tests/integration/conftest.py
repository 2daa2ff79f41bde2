"""Fixtures for the real deployments on 127.0.0.1 (``deployment`` tests).

``fleet`` is module-scoped: each test module that uses it gets its own SuperLink (TLS, SuperNode
authentication, SQLite database) listening on loopback behind the nginx front door, and three
SuperNodes connected through the door, on free ports, started with
``num-partitions=4`` so that a fourth node added with :meth:`LocalFleet.add_node` gets partition
3. Every process the fleet started is stopped by PID at teardown, also when a test fails, and
the teardown fails the module if one is still alive.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedhet.deploy.frontdoor import NGINX_PACKAGE, find_nginx
from fedhet.deploy.local import LocalFleet
from fedhet.deploy.processes import console_script

#: SuperNodes the ``fleet`` fixture starts.
NUM_NODES = 3
#: ``num-partitions`` of their node config: one partition left for a node that joins later.
NUM_PARTITIONS = 4


def have_flower_binaries() -> bool:  # the fixture skips without them
    """Whether the Flower console scripts a deployment needs are installed."""
    try:
        for name in ("flower-superlink", "flower-supernode", "flwr", "flower-superexec"):
            console_script(name)
    except FileNotFoundError:
        return False
    return True


def running_fleet(
    tmp_path_factory: pytest.TempPathFactory, warm_start: bool = False
) -> Iterator[LocalFleet]:
    """Start the module's fleet (see :func:`fleet`), yield it, stop it and check nothing is left."""
    if not have_flower_binaries():
        pytest.skip("flwr CLIs not installed")
    if find_nginx() is None:
        pytest.skip(
            f"nginx not installed: the fleet's front door needs Debian's {NGINX_PACKAGE} "
            "(`make data` installs it as root)"
        )
    base = tmp_path_factory.getbasetemp()
    state_dir = tmp_path_factory.mktemp("fleet")
    local = LocalFleet(state_dir, warm_start=warm_start)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CACHE_HOME", str(base / "cache"))
        env.setenv("HOME", str(base / "home"))
        try:
            local.start(NUM_NODES, num_partitions=NUM_PARTITIONS)
            yield local
        finally:
            local.stop()
            leftovers = [r for r in local.processes() if r.is_alive()]
            assert not leftovers, f"processes left running: {leftovers}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """SuperLink (TLS, node auth, database, loopback), front door + 3 SuperNodes, free ports.

    The processes inherit a ``HOME`` and ``XDG_CACHE_HOME`` inside pytest's base temp folder
    (the same ones the autouse ``_isolated_cache`` fixture sets), so ClientApp caches never
    touch the user's home.
    """
    yield from running_fleet(tmp_path_factory)


@pytest.fixture(scope="module")
def warm_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """The same fleet started with the warm start (fedhet/deploy/forkserver.py)."""
    yield from running_fleet(tmp_path_factory, warm_start=True)
