"""Command line of ``python -m fedhet.deploy``: certificates, keys, front door, a local fleet.

Examples
--------
Local fleet (TLS, node authentication, SuperLink on loopback behind the nginx front door)::

    python -m fedhet.deploy start --nodes 3
    FLWR_HOME=deploy/local/.certs/flwr-home flwr run . fedhet-local
    python -m fedhet.deploy stop

Certificates and keys for a plant, and the front door's nginx site::

    python -m fedhet.deploy certs --out pki --hosts superlink.plant.lan 10.0.0.5 --nodes 12
    python -m fedhet.deploy frontdoor-config --listen 0.0.0.0:9091 --superlink-port 9092
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fedhet.deploy.fleet import default_state_dir
from fedhet.deploy.flwr_cli import register_public_keys, write_flower_config
from fedhet.deploy.frontdoor import DEFAULT_MAX_BODY_MB, FrontDoorSite, render_site
from fedhet.deploy.local import LocalFleet
from fedhet.deploy.pki import write_node_key, write_pki
from fedhet.deploy.processes import FleetError

logger = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedhet.deploy",
        description=(
            "Certificates, node keys, the front door and a local SuperLink + SuperNodes fleet."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help="certificates, keys, logs, database and fleet.json (default: %(default)s)",
        )
        return p

    start = with_state_dir(
        sub.add_parser(
            "start", help="start a SuperLink (loopback), its front door and N SuperNodes"
        )
    )
    start.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (default 3)")
    start.add_argument(
        "--num-partitions",
        type=int,
        default=None,
        help="num-partitions node-config value (default: --nodes); more leaves room for add-node",
    )
    start.add_argument("--insecure", action="store_true", help="no TLS (implies --no-auth)")
    start.add_argument("--no-auth", action="store_true", help="no SuperNode authentication")
    start.add_argument(
        "--host",
        default="127.0.0.1",
        help="address devices connect to: the front door (default 127.0.0.1)",
    )
    start.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="front door port P; SuperLink on 127.0.0.1:P+1, node i's Runtime API on P+2+i "
        "(default: free ports)",
    )
    start.add_argument(
        "--no-front-door",
        action="store_true",
        help="no nginx front door: the SuperLink listens on --host with every API exposed "
        "(development only)",
    )
    start.add_argument(
        "--max-body-mb",
        type=int,
        default=DEFAULT_MAX_BODY_MB,
        help="largest request the front door accepts, MB (default %(default)s)",
    )
    start.add_argument(
        "--warm-start",
        action="store_true",
        help="one fork server per SuperNode keeps torch/NumPy/Flower imported and forks each "
        "ClientApp (fedhet.deploy.forkserver; pinned to Flower 1.41's flwr-clientapp entry)",
    )
    start.add_argument(
        "--node-config",
        default="",
        help="extra node config for every node, e.g. 'data-path=\"/d\"'",
    )

    with_state_dir(sub.add_parser("stop", help="stop exactly the processes the fleet started"))
    with_state_dir(sub.add_parser("status", help="show processes and connection"))
    add = with_state_dir(
        sub.add_parser("add-node", help="register a new key and start a SuperNode")
    )
    add.add_argument("--unregistered", action="store_true", help="do not register the key (test)")
    kill = with_state_dir(sub.add_parser("kill-node", help="SIGKILL SuperNode i"))
    kill.add_argument("index", type=int)
    restart = with_state_dir(sub.add_parser("restart-node", help="start a killed SuperNode again"))
    restart.add_argument("index", type=int)
    with_state_dir(
        sub.add_parser("restart-superlink", help="restart the SuperLink on its database")
    )

    certs = sub.add_parser("certs", help="CA, SuperLink certificate and node keys for a plant")
    certs.add_argument("--out", type=Path, required=True, help="output folder")
    certs.add_argument(
        "--hosts", nargs="+", required=True, help="SuperLink host names / IPs (for the certificate)"
    )
    certs.add_argument(
        "--nodes",
        nargs="+",
        default=[],
        help="node names, or one integer N for node-0..node-N-1",
    )
    certs.add_argument("--overwrite", action="store_true", help="regenerate CA and server cert")

    door = sub.add_parser(
        "frontdoor-config",
        help="print the nginx site of a plant's front door (devices: Fleet API only)",
    )
    door.add_argument(
        "--listen", default="0.0.0.0:9091", help="address:port devices use (default %(default)s)"
    )
    door.add_argument(
        "--superlink-port",
        type=int,
        default=9092,
        help="port of the SuperLink on 127.0.0.1 (default %(default)s)",
    )
    door.add_argument(
        "--pki",
        type=Path,
        default=Path("/etc/fedhet"),
        help="folder with ca.pem, server.pem, server.key (default %(default)s)",
    )
    door.add_argument("--max-body-mb", type=int, default=DEFAULT_MAX_BODY_MB)

    register = sub.add_parser(
        "register",
        help="register SuperNode public keys on a running SuperLink (waits for it to start)",
    )
    register.add_argument(
        "--superlink",
        required=True,
        help="the SuperLink's Control API host:port (on the server host: 127.0.0.1:9092)",
    )
    trust = register.add_mutually_exclusive_group(required=True)
    trust.add_argument("--root-certificates", type=Path, help="CA certificate (PEM)")
    trust.add_argument("--insecure", action="store_true", help="SuperLink without TLS")
    register.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    register.add_argument("public_keys", nargs="+", type=Path, help="<name>.pub files")

    keygen = sub.add_parser(
        "keygen", help="one more SuperNode key pair (then `flwr supernode register`)"
    )
    keygen.add_argument(
        "--out", type=Path, required=True, help="folder for <name>.key / <name>.pub"
    )
    keygen.add_argument("name", help="node name, e.g. press-07")
    return parser


def plant_site(
    host: str, port: int, superlink_port: int, pki: Path, max_body_mb: int = DEFAULT_MAX_BODY_MB
) -> FrontDoorSite:
    """The front door of a plant server: TLS with ``<pki>/server.pem``, SuperLink on loopback."""
    return FrontDoorSite(
        listen_host=host,
        listen_port=port,
        upstream_port=superlink_port,
        certificate=pki / "server.pem",
        certificate_key=pki / "server.key",
        ca_certificate=pki / "ca.pem",
        max_body_mb=max_body_mb,
    )


def _node_names(values: Sequence[str]) -> list[str]:
    if len(values) == 1 and values[0].isdigit():
        return [f"node-{i}" for i in range(int(values[0]))]
    return list(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fedhet.deploy``.

    Returns
    -------
    int
        Process exit status.
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "certs":
            paths = write_pki(
                args.out, args.hosts, _node_names(args.nodes), overwrite=args.overwrite
            )
            print(
                f"CA certificate      {paths.ca_cert}  (copy to every SuperNode and the operator)"
            )
            print(f"CA key              {paths.ca_key}  (keep offline)")
            print(
                f"server cert/key     {paths.server_cert}  {paths.server_key}  (SuperLink, front door)"
            )
            for name, (private, public) in paths.node_keys.items():
                print(f"{name:<19} {private}  {public}")
            return 0
        if args.command == "keygen":
            private, public = write_node_key(args.out, args.name)
            print(f"private key (copy to the device only): {private}")
            print(f"public key: {public}")
            print(f"register it: flwr supernode register {public} <connection> --name {args.name}")
            return 0
        if args.command == "frontdoor-config":
            host, _, port = args.listen.rpartition(":")
            print(
                render_site(
                    plant_site(host, int(port), args.superlink_port, args.pki, args.max_body_mb)
                ),
                end="",
            )
            return 0
        if args.command == "register":
            with tempfile.TemporaryDirectory(prefix="fedhet-register-") as tmp:
                home = Path(tmp)
                ca = None if args.insecure else args.root_certificates
                write_flower_config(home, "fedhet-register", args.superlink, ca)
                ids = register_public_keys(
                    args.public_keys, "fedhet-register", home, home, timeout=args.timeout
                )
            for key, node_id in ids.items():
                print(f"{key}: {'already registered' if node_id is None else node_id}")
            return 0
        if args.command == "start":
            fleet = LocalFleet(
                args.state_dir,
                insecure=args.insecure,
                auth=not args.no_auth,
                host=args.host,
                base_port=args.base_port,
                extra_node_config=args.node_config,
                front_door=not args.no_front_door,
                max_body_mb=args.max_body_mb,
                warm_start=args.warm_start,
            )
            try:
                fleet.start(args.nodes, num_partitions=args.num_partitions)
            except BaseException:
                fleet.stop()
                raise
            print(fleet.describe())
            return 0
        fleet = LocalFleet.load(args.state_dir)
        if args.command == "stop":
            fleet.stop()
            print(f"stopped fleet in {fleet.state_dir}")
        elif args.command == "status":
            print(fleet.describe())
        elif args.command == "add-node":
            node = fleet.add_node(register=not args.unregistered)
            print(f"started {node.name} (pid {node.process.pid if node.process else '-'})")
        elif args.command == "kill-node":
            fleet.kill_node(args.index)
            print(f"killed node-{args.index}")
        elif args.command == "restart-node":
            fleet.restart_node(args.index)
            print(f"restarted node-{args.index}")
        elif args.command == "restart-superlink":
            record = fleet.restart_superlink()
            print(f"SuperLink restarted (pid {record.pid}) on {fleet.database}")
        return 0
    except FleetError as err:
        logger.error("%s", err)
        return 1
