"""Join tokens for nodes added to a running cluster (nodekiln.bootstrap.jointoken) and site-deploy's use of them."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest

from nodekiln.bootstrap import jointoken
from nodekiln.bootstrap.jointoken import (
    APIUnreachableError,
    JoinTokenError,
    create_join_token,
    needs_fresh_token,
    parse_ttl,
    token_secret,
)
from nodekiln.config.site import Site, load_site
from nodekiln.openstack import join, reach
from nodekiln.openstack.actions import CreateServer, Plan, ReplaceServer
from nodekiln.openstack.cloud import cloud_of
from nodekiln.openstack.converge import converge
from nodekiln.openstack.observe import Observed
from nodekiln.openstack.plan import server_drift
from nodekiln.openstack.resources import ROLES, Names, flavor_of
from nodekiln.openstack.userdata import digest
from nodekiln.secrets import Secrets, generate
from tests.tls import serving_cert

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets"


# -- the Secret --------------------------------------------------------------------------------


def test_the_secret_is_a_bootstrap_token_as_cluster_bootstrap_defines_it():
    """Name, namespace, type and keys of kubernetes/cluster-bootstrap token/api/types.go; the
    extra group is kubeadm's NodeBootstrapTokenAuthGroup (cmd/kubeadm/app/constants), which
    kubeadm's join RBAC (phases/bootstraptoken/node/tlsbootstrap.go) is bound to."""
    manifest = token_secret("abcdef.0123456789abcdef", 24 * H, NOW + dt.timedelta(microseconds=1500), "vlic-lab")
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": "nodekiln: joins the nodes site-deploy adds to site vlic-lab",
            "token-id": "abcdef",
            "token-secret": "0123456789abcdef",
            "expiration": "2030-01-02T00:00:00Z",  # absolute, UTC, RFC 3339 without fractions
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
        },
    }


def test_expiration_is_utc_whatever_the_clock_zone():
    cet = dt.timezone(dt.timedelta(hours=1))
    manifest = token_secret("abcdef.0123456789abcdef", 2 * H, dt.datetime(2030, 1, 1, 12, tzinfo=cet), "s")
    assert manifest["stringData"]["expiration"] == "2030-01-01T13:00:00Z"  # type: ignore[index]


@pytest.mark.parametrize(
    "token", ["abcdef0123456789abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123456789abcde"]
)
def test_a_malformed_token_is_refused_without_quoting_it(token):
    with pytest.raises(ValueError) as refused:
        token_secret(token, H, NOW, "s")
    assert token not in str(refused.value)


def test_a_token_that_never_expires_is_not_minted():
    with pytest.raises(ValueError, match="positive lifetime"):
        token_secret("abcdef.0123456789abcdef", dt.timedelta(0), NOW, "s")


def test_new_tokens_have_the_bootstrap_token_format_and_differ():
    tokens = {jointoken.new_token() for _ in range(20)}
    assert len(tokens) == 20 and all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in tokens)


# -- lifetime ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hours"), [("24h", 24), ("2h30m", 2.5), ("90m", 1.5), ("45s", 45 / 3600), ("1h0m36s", 1.01), ("0s", 0)]
)
def test_ttl_parsing(text, hours):
    assert parse_ttl(text) == dt.timedelta(hours=hours)


@pytest.mark.parametrize("text", ["", "1d", "h", "24", "1.5h", "30m2h"])
def test_ttl_parsing_refuses_what_the_site_file_refuses(text):
    with pytest.raises(ValueError, match="duration like 24h"):
        parse_ttl(text)


@pytest.mark.parametrize(
    ("age", "ttl", "fresh"),
    [
        (0 * H, 24 * H, False),  # just made: the stored token serves
        (22 * H + dt.timedelta(minutes=59), 24 * H, False),
        (23 * H, 24 * H, True),  # less than the margin left for the join
        (25 * H, 24 * H, True),  # expired
        (400 * H, 24 * H, True),
        (30 * dt.timedelta(minutes=1), 1 * H, True),  # a TTL within the margin: always fresh
        (1000 * H, dt.timedelta(0), False),  # ttl 0: the token never expires
    ],
)
def test_a_fresh_token_is_needed_when_the_stored_one_may_be_gone(age, ttl, fresh):
    assert needs_fresh_token(NOW - age, NOW, ttl, H) is fresh


def test_an_init_server_of_unknown_age_gets_a_fresh_token():
    assert needs_fresh_token(None, NOW, 24 * H) is True


# -- a stand-in API server ---------------------------------------------------------------------


def _serving_cert(ca: Any, directory: Path) -> tuple[Path, Path]:
    return serving_cert(ca.cert, ca.key, directory, "apiserver")


def _rfc3339_future(value: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return False
    return dt.datetime.fromisoformat(value) > dt.datetime.now(dt.UTC)


def _secret_problems(body: dict[str, Any]) -> list[str]:
    """What would keep a node from joining with this Secret (cluster-bootstrap token/api/types.go)."""
    problems = []
    data = body.get("stringData") or {}
    token_id = data.get("token-id", "")
    if body.get("apiVersion") != "v1" or body.get("kind") != "Secret":
        problems.append("not a v1 Secret")
    if body.get("type") != "bootstrap.kubernetes.io/token":
        problems.append("type is not bootstrap.kubernetes.io/token")
    if (body.get("metadata") or {}).get("namespace", "kube-system") != "kube-system":
        problems.append("not in kube-system")
    if (body.get("metadata") or {}).get("name") != f"bootstrap-token-{token_id}":
        problems.append("name is not bootstrap-token-<token-id>")
    if not re.fullmatch(r"[a-z0-9]{6}", token_id):
        problems.append("token-id does not match ^[a-z0-9]{6}$")
    if not re.fullmatch(r"[a-z0-9]{16}", data.get("token-secret", "")):
        problems.append("token-secret does not match ^[a-z0-9]{16}$")
    if not _rfc3339_future(data.get("expiration", "")):
        problems.append("expiration is not an RFC 3339 time in the future")
    for usage in (
        "usage-bootstrap-authentication",
        "usage-bootstrap-signing",
    ):  # authentication for the CSR, signing for discovery
        if data.get(usage) != "true":
            problems.append(f'{usage} is not "true"')
    if "system:bootstrappers:kubeadm:default-node-token" not in data.get("auth-extra-groups", "").split(","):
        problems.append("auth-extra-groups lacks system:bootstrappers:kubeadm:default-node-token")
    return problems


class _StandInAPI(http.server.BaseHTTPRequestHandler):
    """A stand-in for kube-apiserver's Secret create endpoint (POST /api/v1/namespaces/kube-system/secrets).

    Like the API server it takes only client certificates signed by the cluster CA (the TLS
    handshake refuses others) and authorizes by the certificate's organization (the group):
    kubeadm:cluster-admins may create Secrets, others get 403 with a Status. The real API server
    stores any well-formed Secret; the bootstrap-token fields are checked later by the bootstrap
    authenticator and the bootstrapsigner (cluster-bootstrap token/api/types.go). The stand-in
    checks them at create (422), so a Secret a node could not join with fails here.
    """

    received: list[dict[str, Any]]
    answer_500 = False

    def _status(self, code: int, reason: str, message: str) -> None:
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }
        ).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item for rdn in peer["subject"] for item in rdn)
        user, groups = subject.get("commonName"), [subject.get("organizationName")]
        if self.path != SECRETS_PATH:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        if "kubeadm:cluster-admins" not in groups:
            return self._status(
                403,
                "Forbidden",
                f'secrets is forbidden: User "{user}" cannot create resource "secrets" in API group "" '
                f'in the namespace "kube-system"',
            )
        if self.answer_500:  # an error that quotes what it was sent
            return self._status(500, "InternalError", f"etcd: could not store {body['stringData']['token-secret']}")
        problems = _secret_problems(body)
        if problems:
            return self._status(
                422, "Invalid", f"Secret {body.get('metadata', {}).get('name')!r} is invalid: " + "; ".join(problems)
            )
        self.received.append(body)
        created = json.dumps({**body, "stringData": None, "metadata": {**body["metadata"], "uid": "x"}}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(created)))
        self.end_headers()
        self.wfile.write(created)

    def log_message(self, *args):
        pass


@pytest.fixture
def site_secrets(site_file) -> Iterator[tuple[Site, Secrets, type[_StandInAPI]]]:
    """A site whose endpoint is a stand-in API on 127.0.0.1, and its secrets (not stored anywhere)."""
    secrets = generate()
    handler = type("Handler", (_StandInAPI,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    site = load_site(site_file(lambda d: d["controlPlane"]["endpoint"].update(port=port)))
    cert, key = _serving_cert(secrets.ca, site.directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = (
        ssl.CERT_REQUIRED
    )  # client certificates of the cluster CA only, as kube-apiserver's --client-ca-file
    context.load_verify_locations(cadata=secrets.ca.cert)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield site, secrets, handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where tempfile puts things during the test, to see what is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(jointoken.tempfile, "tempdir", str(folder))
    return folder


def test_creates_the_token_through_the_api_with_the_admin_certificate(site_secrets, private_tmp, monkeypatch):
    site, secrets, handler = site_secrets
    loaded: list[tuple[int, bool]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self, certfile, *args, **kwargs):  # the client key's file while it exists
        path = Path(certfile)
        loaded.append((path.stat().st_mode & 0o777, "PRIVATE KEY" in path.read_text()))
        return original(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    token = create_join_token(site, secrets, "127.0.0.1", 24 * H, dt.datetime.now(dt.UTC), timeout=10)
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token) and token != secrets.bootstrapToken
    [secret] = handler.received
    assert f"{secret['stringData']['token-id']}.{secret['stringData']['token-secret']}" == token
    assert secret["metadata"]["name"] == f"bootstrap-token-{token.split('.')[0]}"
    expires = dt.datetime.fromisoformat(secret["stringData"]["expiration"])
    assert dt.timedelta(hours=23, minutes=59) < expires - dt.datetime.now(dt.UTC) <= 24 * H
    assert loaded == [(0o600, True)]
    assert list(private_tmp.iterdir()) == []  # the client key's file is gone


def test_a_certificate_without_the_admin_group_is_forbidden(site_secrets, private_tmp, monkeypatch):
    site, secrets, handler = site_secrets
    monkeypatch.setattr(jointoken, "ADMIN_GROUP", "developers")
    with pytest.raises(JoinTokenError) as refused:
        create_join_token(site, secrets, "127.0.0.1", 24 * H, dt.datetime.now(dt.UTC), timeout=10)
    message = str(refused.value)
    assert message.startswith(
        f"the API at https://127.0.0.1:{site.endpoint_port}{SECRETS_PATH} refused the join token's Secret: HTTP 403: "
    )
    assert 'User "nodekiln-join-token" cannot create resource "secrets"' in message
    assert not isinstance(refused.value, APIUnreachableError) and handler.received == []
    assert list(private_tmp.iterdir()) == []


def test_an_error_quoting_the_token_does_not_pass_it_on(site_secrets, monkeypatch):
    site, secrets, handler = site_secrets
    handler.answer_500 = True
    monkeypatch.setattr(jointoken, "new_token", lambda: "abcdef.0123456789abcdef")
    with pytest.raises(JoinTokenError, match="HTTP 500") as refused:
        create_join_token(site, secrets, "127.0.0.1", 24 * H, dt.datetime.now(dt.UTC), timeout=10)
    assert "0123456789abcdef" not in str(refused.value) and "etcd: could not store <token-secret>" in str(refused.value)


def test_an_api_signed_by_another_ca_is_refused(site_secrets):
    site, _, handler = site_secrets
    with pytest.raises(
        JoinTokenError, match="is not the site's: its certificate is not signed by the site CA"
    ) as refused:
        create_join_token(site, generate(), "127.0.0.1", 24 * H, dt.datetime.now(dt.UTC), timeout=10)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert handler.received == []


def test_an_unreachable_api_is_one_clear_line(site_file, monkeypatch):
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = load_site(site_file(lambda d: d["controlPlane"]["endpoint"].update(port=port)))
    monkeypatch.setattr(jointoken, "new_token", lambda: "abcdef.0123456789abcdef")
    with pytest.raises(APIUnreachableError) as failed:
        create_join_token(site, generate(), "127.0.0.1", 24 * H, dt.datetime.now(dt.UTC), timeout=5)
    message = str(failed.value)
    assert message.startswith(f"the API at https://127.0.0.1:{port}{SECRETS_PATH} could not be reached from here: ")
    assert "refused" in message.lower() and "\n" not in message
    assert "abcdef" not in message and "0123456789abcdef" not in message
    assert failed.value.__cause__ is None and failed.value.__suppress_context__  # no chained traceback


# -- site-deploy's decision --------------------------------------------------------------------


def _state(site: Site, init_age: dt.timedelta | None, **extra: Any) -> Observed:
    """Every node's server but worker03's, ACTIVE, made `init_age` ago (None: Nova does not say when)."""
    created = (NOW - init_age).strftime("%Y-%m-%dT%H:%M:%SZ") if init_age is not None else None
    servers = {n.name: SimpleNamespace(created_at=created, status="ACTIVE") for n in site.nodes if n.name != "worker03"}
    return Observed(servers=servers, **extra)


def _creating(site: Site, *names: str) -> Plan:
    """The plan that creates the servers of these nodes and changes nothing else."""
    return Plan(tuple(CreateServer(n, flavor_of(site, n)) for n in site.nodes if n.name in names))


def test_only_servers_joining_a_running_init_node_need_a_join_token(example_site):
    site = load_site(example_site)
    assert join.joining(site, _state(site, H), _creating(site, "worker03")) == [
        n for n in site.nodes if n.name == "worker03"
    ]
    assert join.joining(site, _state(site, H), _creating(site)) == []  # nothing created
    everything = _creating(site, *(n.name for n in site.nodes))
    assert join.joining(site, Observed(), everything) == []  # a new cluster: kubeadm init makes the token
    state = _state(site, 30 * H)
    init_replaced = Plan(
        tuple(ReplaceServer(n, flavor_of(site, n), state.servers[n.name]) for n in (site.init_node, site.workers[0]))
    )
    assert join.joining(site, state, init_replaced) == []


def test_a_young_init_node_keeps_the_stored_token(example_site):
    site = load_site(example_site)
    said: list[str] = []
    fresh, note = join.join_token(
        site, generate(), _state(site, 3 * H), _creating(site, "worker03"), NOW, False, said.append
    )
    assert (
        fresh is None
        and note == "the stored one for 1 new node (the init node's server is 3.0 h old, the token lives 24h)"
    )
    assert said == [f"join token: {note}"]


def test_an_old_init_node_and_no_way_to_the_api_fails_before_anything_is_made(example_site, monkeypatch):
    site = load_site(example_site)
    monkeypatch.setattr(reach, "local_networks", lambda: [IPv4Network("192.0.2.0/24")])
    monkeypatch.setattr(join, "create_join_token", lambda *a, **k: pytest.fail("no API to call"))
    for dry_run in (False, True):
        with pytest.raises(JoinTokenError) as failed:
            join.join_token(site, generate(), _state(site, 25 * H), _creating(site, "worker03"), NOW, dry_run, print)
        message = str(failed.value)
        assert message.startswith(
            "worker03 would join the running cluster, but the server of its init node master01 was created 25.0 h ago: "
        )
        assert "kubernetes.bootstrapTokenTTL (24h) and has expired" in message
        assert (
            "the API at https://10.0.1.128:7443 cannot be reached from here: the site has no floating IP and this host is not on 10.0.1.0/24"
            in message
        )
        assert message.endswith(
            "Nothing was created. Run site-deploy from a host on the site network (10.0.1.0/24), or give the site "
            "`openstack.floatingIP: true` with this host's network in `firewall.apiFrom`."
        )


def test_an_old_init_node_gets_a_fresh_token_through_the_floating_ip(example_site, monkeypatch):
    site = load_site(example_site)
    secrets = generate()
    calls: list[tuple[str, dt.timedelta]] = []

    def mint(site_, secrets_, address, ttl, now, timeout=15.0):
        calls.append((address, ttl))
        return "zyxwvu.0123456789abcdef"

    monkeypatch.setattr(join, "create_join_token", mint)
    state = _state(site, 25 * H, fip=SimpleNamespace(floating_ip_address="203.0.113.9"))
    said: list[str] = []
    dry = join.join_token(site, secrets, state, _creating(site, "worker03"), NOW, True, said.append)
    assert (
        dry == (None, "would create a fresh one (valid 24h) for 1 new node through https://203.0.113.9:7443")
        and calls == []
    )
    fresh, note = join.join_token(site, secrets, state, _creating(site, "worker03"), NOW, False, said.append)
    assert fresh == "zyxwvu.0123456789abcdef" and calls == [("203.0.113.9", 24 * H)]
    assert note == "a fresh one (valid 24h) for 1 new node, created through https://203.0.113.9:7443"
    assert not any("0123456789abcdef" in line for line in said)


def test_an_unreachable_floating_ip_names_the_reason_and_the_ways_out(site_file, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = load_site(site_file(lambda d: d["controlPlane"]["endpoint"].update(port=port)))
    state = _state(site, 25 * H, fip=SimpleNamespace(floating_ip_address="127.0.0.1"))
    with pytest.raises(JoinTokenError) as failed:
        join.join_token(site, generate(), state, _creating(site, "worker03"), NOW, False, print)
    message = str(failed.value)
    assert f"but the API at https://127.0.0.1:{port}{SECRETS_PATH} could not be reached from here: " in message
    assert "list this host's network in `firewall.apiFrom`" in message and message.count("Nothing was created") == 1


def test_new_servers_boot_with_the_fresh_token_and_record_the_stored_digest(example_site):
    """Only what Nova boots carries the fresh token; the metadata digest is the stored user-data's,
    so the next run's drift check (and its no-write promise) is unchanged by the token."""
    site = load_site(example_site)
    names = Names(site)
    worker = next(n for n in site.nodes if n.name == "worker03")
    flavor = site.openstack.flavors["worker"]  # type: ignore[union-attr]
    state = Observed(
        network=SimpleNamespace(id="net"),
        subnet=SimpleNamespace(id="subnet"),
        router=SimpleNamespace(id="router"),
        router_interface=True,
        groups={role: SimpleNamespace(id=role, security_group_rules=[]) for role in ROLES},
        ports={names.port("worker03"): SimpleNamespace(id="port-worker03")},
        server_group=SimpleNamespace(id="group"),
        flavors={flavor: SimpleNamespace(id="flavor", name=flavor)},
        image=SimpleNamespace(id="image", name="image"),
    )
    plan = Plan((CreateServer(worker, flavor),))  # the port, groups and rules exist: only the server is made
    stored, fresh = {"worker03": b"#cloud-config\n# stored token\n"}, {"worker03": b"#cloud-config\n# fresh token\n"}
    conn = MagicMock()
    assert converge(cloud_of(conn), site, names, state, plan, stored, print, fresh) == []  # no failures
    attrs = conn.compute.create_server.call_args.kwargs
    assert base64.b64decode(attrs["user_data"]) == fresh["worker03"]
    assert attrs["metadata"]["nodekiln-user-data"] == digest(stored["worker03"]) != digest(fresh["worker03"])
    booted = SimpleNamespace(flavor={"original_name": flavor}, image={"id": "image"}, metadata=attrs["metadata"])
    assert server_drift(site, worker, booted, state, digest(stored["worker03"])) == ""
