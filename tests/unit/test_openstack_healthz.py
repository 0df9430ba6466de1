"""site-deploy's wait for the API endpoint's /healthz, against a TLS server on 127.0.0.1 signed by the site CA."""

from __future__ import annotations

import http.server
import ssl
import threading
from types import SimpleNamespace

import pytest

from nodekiln.config.site import load_site
from nodekiln.openstack import reach, wait
from nodekiln.openstack.errors import DeployError
from nodekiln.openstack.observe import Observed
from nodekiln.secrets import SecretStore
from tests.tls import serving_cert


def _server_cert(ca_pem: str, ca_key_pem: str, tmp_path):
    return serving_cert(ca_pem, ca_key_pem, tmp_path)


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else b"no"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_waits_for_healthz_through_the_floating_ip_with_the_site_ca(site_file, tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    port = server.server_address[1]
    site = load_site(site_file(lambda d: d["controlPlane"]["endpoint"].update(port=port)))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    cert, key = _server_cert(secrets.ca.cert, secrets.ca.key, tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state = Observed(fip=SimpleNamespace(floating_ip_address="127.0.0.1"))
        said = []
        assert wait.wait_healthz(site, secrets, state, 30, said.append) == f"https://127.0.0.1:{port}/healthz: ok"
        assert said == [f"waiting for https://127.0.0.1:{port}/healthz"]
    finally:
        server.shutdown()


def test_an_endpoint_not_reachable_from_here_is_not_waited_for(example_site, monkeypatch):
    site = load_site(example_site)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    monkeypatch.setattr(reach, "local_networks", lambda: [])
    result = wait.wait_healthz(site, secrets, Observed(), 30, print)
    assert result.startswith("not checked: 10.0.1.128 is not reachable from here")


def test_an_endpoint_that_never_answers_is_an_error(site_file, monkeypatch):
    site = load_site(site_file(lambda d: d["controlPlane"]["endpoint"].update(port=9)))  # discard: nothing listens
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    monkeypatch.setattr(wait.time, "sleep", lambda s: None)
    with pytest.raises(DeployError, match="did not answer within 1 s"):
        wait.wait_healthz(site, secrets, Observed(fip=SimpleNamespace(floating_ip_address="127.0.0.1")), 1, print)
