"""The nginx front door (fedhet/deploy/frontdoor.py): rules, generated config, shipped site."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedhet.deploy.cli import main, plant_site
from fedhet.deploy.frontdoor import FrontDoor, FrontDoorSite, find_nginx, render_site
from fedhet.deploy.pki import write_pki
from fedhet.deploy.processes import find_free_port, terminate

REPO = Path(__file__).resolve().parents[2]
needs_nginx = pytest.mark.skipif(
    find_nginx() is None, reason="nginx not installed (Debian nginx-light; `make data` installs it)"
)


def test_site_forwards_fleet_and_health_only() -> None:
    text = render_site(plant_site("0.0.0.0", 9091, 9092, Path("/etc/fedhet")))
    assert "listen 0.0.0.0:9091 ssl;" in text
    assert "proxy_pass https://127.0.0.1:9092$uri;" in text
    assert "proxy_pass https://127.0.0.1:9092/health;" in text
    assert text.count("proxy_pass") == 2  # nothing else reaches the SuperLink
    assert "return 403;" in text
    # The two traps: no request buffering, a body limit above the largest model message.
    assert "proxy_request_buffering off;" in text and "client_max_body_size 512m;" in text
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_name localhost;" in text


def test_tls_site_needs_key_and_ca() -> None:
    with pytest.raises(ValueError, match="certificate_key and ca_certificate"):
        render_site(FrontDoorSite("127.0.0.1", 1, 2, certificate=Path("/x.pem")))


def test_shipped_systemd_site_is_what_frontdoor_config_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["frontdoor-config"]) == 0
    shipped = (REPO / "deploy" / "systemd" / "fedhet-frontdoor.conf").read_text()
    assert shipped == capsys.readouterr().out


@needs_nginx
def test_nginx_accepts_the_generated_tls_config(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", ["127.0.0.1"])
    site = FrontDoorSite(
        "127.0.0.1", 1, 2, pki.server_cert, pki.server_key, pki.ca_cert, max_body_mb=64
    )
    conf = FrontDoor(tmp_path / "door", site).write_config()  # runs `nginx -t`
    assert (tmp_path / "door" / "tmp" / "client_body").is_dir()
    assert "client_max_body_size 64m;" in conf.read_text()


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for the SuperLink: answers 200 with the path it was asked for."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        reply = f"{self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        return


@contextlib.contextmanager
def _upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@needs_nginx
@pytest.mark.integration
@pytest.mark.timeout(60)
def test_front_door_forwards_fleet_calls_and_refuses_the_rest(tmp_path: Path) -> None:
    with _upstream() as upstream_port:
        port = find_free_port()
        door = FrontDoor(tmp_path / "door", FrontDoorSite("127.0.0.1", port, upstream_port))
        record = door.start(tmp_path / "door.log", {"PATH": "/usr/sbin:/usr/bin:/bin"})
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=10) as client:
                big = b"x" * (3 * 1024 * 1024)  # above nginx's in-memory body buffer
                reply = client.post("/v1/fleet/push-object", content=big)
                assert (
                    reply.status_code == 200
                    and reply.text == f"POST /v1/fleet/push-object {len(big)}"
                )
                assert client.get("/health").text.startswith("GET /health")
                # The SuperLink only ever sees the normalised path, never the raw one.
                sneaky = "/v1/control/../fleet/get-run"
                raw = httpx.Request("POST", base + sneaky)
                raw.url = httpx.URL(base, raw_path=sneaky.encode())
                assert client.send(raw).text == "POST /v1/fleet/get-run 0"
                for method, path in [
                    ("POST", "/v1/control/list-runs"),
                    ("POST", "/v1/control/register-node"),
                    ("POST", "/v1/runtime/acquire-task"),
                    ("GET", "/docs"),
                    ("GET", "/v1/fleet/get-run"),  # Fleet calls are POST only
                    ("POST", "/v1/fleet/../control/list-runs"),
                    ("POST", "/v1/fleet/%2e%2e/control/list-runs"),
                    ("POST", "/v1/fleet/get-run/../../control/list-runs"),
                    ("POST", "/health"),
                ]:
                    raw = httpx.Request(method, base + path)
                    raw.url = httpx.URL(base, raw_path=path.encode())  # no client-side cleanup
                    assert client.send(raw).status_code == 403, (method, path)
        finally:
            terminate([record])
        assert not record.is_alive()
