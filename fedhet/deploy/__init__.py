"""Real Flower deployments of fedhet: certificates, the front door, processes, a local fleet.

Modules, one concern each:

* :mod:`~fedhet.deploy.pki`: CA, SuperLink / front-door certificate, SuperNode key pairs;
* :mod:`~fedhet.deploy.processes`: the one toolkit for the processes fedhet starts (own
  process group and log, PID + start time recorded, wait for a port or a log line, stop by
  recorded PID, never by name);
* :mod:`~fedhet.deploy.flwr_cli`: ``flwr run``, ``flwr ls`` status, ``flwr supernode register``;
* :mod:`~fedhet.deploy.frontdoor`: the nginx TLS front door (devices reach ``/v1/fleet`` only);
* :mod:`~fedhet.deploy.fleet` / :mod:`~fedhet.deploy.local`: a local fleet's state
  (``fleet.json``) and its lifecycle (SuperLink on loopback, front door, SuperNodes);
* :mod:`~fedhet.deploy.simlink`: the simulation SuperLink of ``fedhet demo`` / ``flwr run``;
* :mod:`~fedhet.deploy.cli`: ``python -m fedhet.deploy`` (``start``, ``stop``, ``status``,
  ``add-node``, ``kill-node``, ``restart-node``, ``restart-superlink``, ``certs``, ``keygen``,
  ``register``, ``frontdoor-config``).

This package imports nothing from the rest of fedhet; ``fedhet.cli`` imports from it.
"""

from fedhet.deploy.cli import main
from fedhet.deploy.fleet import FleetState, NodeRecord, default_state_dir, node_config_string
from fedhet.deploy.local import LocalFleet, local_fleet
from fedhet.deploy.pki import PkiPaths, write_node_key, write_pki
from fedhet.deploy.processes import (
    FleetError,
    ProcessRecord,
    console_script,
    spawn,
    terminate,
)

__all__ = [
    "FleetError",
    "FleetState",
    "LocalFleet",
    "NodeRecord",
    "PkiPaths",
    "ProcessRecord",
    "console_script",
    "default_state_dir",
    "local_fleet",
    "main",
    "node_config_string",
    "spawn",
    "terminate",
    "write_node_key",
    "write_pki",
]
