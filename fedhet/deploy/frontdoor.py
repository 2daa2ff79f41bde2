"""The front door: an nginx TLS proxy that lets devices reach the Fleet API and nothing else.

Flower 1.41 serves its Fleet API (``/v1/fleet/*``, SuperNodes), Control API (``/v1/control/*``,
the ``flwr`` CLI) and Runtime API (``/v1/runtime/*``, SuperExec and ServerApp) on **one** port.
Anyone who can reach that port with the public ``ca.pem`` could register a node key, list runs
and start a run whose code executes on the server and on every device. So the SuperLink listens
on ``127.0.0.1`` only, and devices connect to this front door, which

* terminates TLS for the devices with the deployment's server certificate,
* forwards ``POST /v1/fleet/<call>`` and ``GET /health`` to the SuperLink, re-encrypting with
  the CA as trusted certificate and ``localhost`` as verified name (a SuperLink with node
  authentication needs TLS itself),
* answers 403 to everything else (Control and Runtime APIs, ``/docs``, other methods).

SuperNode authentication is end to end (signed requests), so it survives the proxy. Two traps
(checked with Debian's nginx 1.22): nginx's worker user must be able to write its temp folders
(a large ``push-object`` fails with 500 otherwise), and request buffering is off with a body
limit above the largest model message.

:func:`render_site` writes the ``server`` block used both by the local fleet (through
:class:`FrontDoor`, a non-daemon nginx started and stopped by PID with a config generated into
the fleet's state folder) and by a plant's nginx (``deploy/systemd/fedhet-frontdoor.conf``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedhet.deploy.processes import (
    FleetError,
    ProcessRecord,
    spawn,
    terminate,
    wait_for_port,
    wait_until,
)

#: Debian package that provides the front door (``make data`` installs it).
NGINX_PACKAGE = "nginx-light"
#: Request paths devices may use: the Fleet API calls (lowercase, hyphenated).
FLEET_PATH_REGEX = r"^/v1/fleet/[a-z][a-z0-9-]*$"
#: Largest request body accepted, MB: above the largest model message fedhet sends.
DEFAULT_MAX_BODY_MB = 512


def find_nginx() -> str | None:
    """Path of the ``nginx`` binary (``PATH``, then ``/usr/sbin``), or None if not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass(frozen=True)
class FrontDoorSite:
    """What one front door listens on and forwards to.

    Attributes
    ----------
    listen_host : str
        Address devices connect to (``0.0.0.0`` on a plant server).
    listen_port : int
        Port devices connect to.
    upstream_port : int
        Port of the SuperLink on ``127.0.0.1``.
    certificate : Path | None
        Server certificate shown to devices (None: plain HTTP on both sides, test fleets only).
    certificate_key : Path | None
        Its private key.
    ca_certificate : Path | None
        CA the SuperLink's certificate is verified with.
    max_body_mb : int
        ``client_max_body_size`` in MB.
    """

    listen_host: str
    listen_port: int
    upstream_port: int
    certificate: Path | None = None
    certificate_key: Path | None = None
    ca_certificate: Path | None = None
    max_body_mb: int = DEFAULT_MAX_BODY_MB

    @property
    def tls(self) -> bool:
        """Whether devices and the SuperLink speak TLS."""
        return self.certificate is not None


def render_site(site: FrontDoorSite) -> str:
    """The nginx ``server`` block of a front door.

    Parameters
    ----------
    site : FrontDoorSite
        Addresses and certificates.

    Returns
    -------
    str
        nginx configuration text (a ``server { ... }`` block for the ``http`` context).
    """
    if site.tls and (site.certificate_key is None or site.ca_certificate is None):
        raise ValueError("a TLS front door needs certificate, certificate_key and ca_certificate")
    scheme = "https" if site.tls else "http"
    upstream = f"{scheme}://127.0.0.1:{site.upstream_port}"
    listen = f"{site.listen_host}:{site.listen_port}" + (" ssl" if site.tls else "")
    upstream_tls = ""
    tls = ""
    if site.tls:
        tls = (
            f"    ssl_certificate {site.certificate};\n"
            f"    ssl_certificate_key {site.certificate_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
        upstream_tls = (
            "        # The SuperLink's certificate carries localhost; verify it with the CA.\n"
            f"        proxy_ssl_trusted_certificate {site.ca_certificate};\n"
            "        proxy_ssl_verify on;\n"
            "        proxy_ssl_name localhost;\n"
            "        proxy_ssl_server_name on;\n"
        )
    return (
        "# fedhet front door (fedhet/deploy/frontdoor.py): devices reach the Fleet API only.\n"
        "server {\n"
        f"    listen {listen};\n"
        f"{tls}"
        f"    client_max_body_size {site.max_body_mb}m;\n"
        "    proxy_request_buffering off;\n"
        "    proxy_http_version 1.1;\n"
        "    proxy_read_timeout 300s;\n"
        "    proxy_send_timeout 300s;\n"
        "\n"
        "    # SuperNodes: POST /v1/fleet/<call>. The normalised path is forwarded ($uri).\n"
        f"    location ~ {FLEET_PATH_REGEX} {{\n"
        "        limit_except POST { deny all; }\n"
        f"        proxy_pass {upstream}$uri;\n"
        f"{upstream_tls}"
        "    }\n"
        "    location = /health {\n"
        "        limit_except GET { deny all; }\n"
        f"        proxy_pass {upstream}/health;\n"
        f"{upstream_tls}"
        "    }\n"
        "    # Control API (flwr CLI), Runtime API (SuperExec, ServerApp), docs: not for devices.\n"
        "    location / {\n"
        "        return 403;\n"
        "    }\n"
        "}\n"
    )


def _worker_user() -> str:
    """``user`` directive: nginx's workers run as whoever starts the fleet (only set as root)."""
    if os.geteuid() != 0:
        return ""  # not root: nginx cannot switch users and workers run as this user anyway
    entry = pwd.getpwuid(os.geteuid())
    return f"user {entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name};\n"


def render_main_config(site: FrontDoorSite, state_dir: Path) -> str:
    """A complete ``nginx.conf`` for a non-daemon nginx whose files all live in ``state_dir``.

    The temp folders are inside ``state_dir`` and the workers run as the user who starts the
    fleet (the same user as the SuperLink), so they can always write them.
    """
    tmp = state_dir / "tmp"
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    site_text = "".join(
        f"    {line}\n" if line else "\n" for line in render_site(site).splitlines()
    )
    return (
        "# Generated by fedhet (fedhet/deploy/frontdoor.py) for a local fleet; rewritten on start.\n"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"{_worker_user()}"
        f"pid {state_dir / 'nginx.pid'};\n"
        f"error_log {state_dir / 'error.log'} warn;\n"
        "events {\n    worker_connections 256;\n}\n"
        "http {\n"
        f"    access_log {state_dir / 'access.log'};\n"
        f"{temp_paths}"
        f"{site_text}"
        "}\n"
    )


class FrontDoor:
    """A non-daemon nginx front door, its config generated into ``state_dir``.

    Parameters
    ----------
    state_dir : Path
        Holds ``nginx.conf``, the temp folders, ``nginx.pid`` and the error/access logs.
    site : FrontDoorSite
        What to listen on and forward to.
    """

    def __init__(self, state_dir: Path, site: FrontDoorSite) -> None:
        self.state_dir = state_dir
        self.site = site

    @property
    def config_path(self) -> Path:
        """The generated ``nginx.conf``."""
        return self.state_dir / "nginx.conf"

    def command(self) -> list[str]:
        """The nginx command line (foreground; prefix, error log and config in ``state_dir``)."""
        nginx = find_nginx()
        if nginx is None:
            raise FleetError(
                f"nginx is not installed: the front door needs Debian's {NGINX_PACKAGE} "
                f"(`apt-get install {NGINX_PACKAGE}`, or `make data` as root)"
            )
        return [
            nginx,
            "-p",
            str(self.state_dir),
            "-e",
            str(self.state_dir / "error.log"),
            "-c",
            str(self.config_path),
        ]

    def write_config(self) -> Path:
        """Write ``nginx.conf`` and create the temp folders; check the config with ``nginx -t``.

        Raises
        ------
        FleetError
            nginx rejects the configuration (its message is included).
        """
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.state_dir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_main_config(self.site, self.state_dir))
        check = subprocess.run(
            [*self.command(), "-t", "-q"], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise FleetError(f"nginx rejects {self.config_path}:\n{check.stderr}")
        return self.config_path

    def start(self, log_path: Path, env: Mapping[str, str], timeout: float = 20.0) -> ProcessRecord:
        """Write the config and start nginx; wait until the device-facing port accepts.

        Returns
        -------
        ProcessRecord
            The nginx master process (stop it with :func:`terminate`).
        """
        self.write_config()
        record = spawn(self.command(), log_path, env, self.state_dir)
        host = "127.0.0.1" if self.site.listen_host in ("0.0.0.0", "") else self.site.listen_host
        try:
            wait_until(
                record,
                lambda: wait_for_port(host, self.site.listen_port, timeout=0.3),
                timeout,
                f"front door on {self.site.listen_host}:{self.site.listen_port}",
            )
        except FleetError:
            terminate([record])
            raise
        return record
