"""The least of Keystone that `packer validate` of the openstack builder needs: it
authenticates while preparing the builder (POST /v3/auth/tokens) and reads nothing else."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class _Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # version discovery
        self.requests.append(f"GET {self.path}")
        base = f"http://{self.headers['Host']}"
        self._send(
            200, {"version": {"id": "v3.14", "status": "stable", "links": [{"rel": "self", "href": f"{base}/v3/"}]}}
        )

    def do_POST(self) -> None:
        self.requests.append(f"POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/v3/auth/tokens"):
            self._send(404, {"error": {"code": 404, "message": "not in the stub"}})
            return
        base = f"http://{self.headers['Host']}"
        token = {
            "token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": "2026-01-01T00:00:00.000000Z",
                "user": {"id": "u1", "name": "nodekiln", "domain": {"id": "default", "name": "Default"}},
                "project": {"id": "p1", "name": "nodekiln", "domain": {"id": "default", "name": "Default"}},
                "roles": [{"id": "r1", "name": "member"}],
                "catalog": [
                    {
                        "type": service,
                        "name": service,
                        "id": service,
                        "endpoints": [
                            {
                                "id": f"{service}-public",
                                "interface": "public",
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": f"{base}/{service}",
                            }
                        ],
                    }
                    for service in ("identity", "compute", "image", "network")
                ],
            }
        }
        self._send(201, token, {"X-Subject-Token": "stub-token"})


@contextmanager
def keystone_stub() -> Iterator[dict[str, str]]:
    """Run the stub on a free loopback port; yield the OS_* environment pointing at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "OS_AUTH_URL": f"http://127.0.0.1:{server.server_port}/v3",
            "OS_USERNAME": "nodekiln",
            "OS_PASSWORD": "stub",
            "OS_PROJECT_NAME": "nodekiln",
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "RegionOne",
        }
    finally:
        server.shutdown()
        server.server_close()
