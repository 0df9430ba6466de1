"""The edge node, proven in network namespaces with the real HAProxy, certbot, nftables and pebble.

One edge node of the example site (no VIP), its three workers, a backup cluster, an ACME server
(pebble, with pebble-challtestsrv as its DNS) and a client run as network namespaces on a bridge
(testing.edgebed). On the edge node the rendered files run byte for byte: the nftables ruleset,
the placeholder script, HAProxy with Debian's haproxy.service command line, issue.sh with the
rendered certbot cli.ini and deploy hook.

The ingress controller is NOT running: no Kubernetes, no container registry here. On every
worker a stand-in answers every GET on the ingress's HTTPS NodePort with "ok <worker>", with a
certificate of the site's CA (what HAProxy's `ssl verify required ca-file` checks); the backup
cluster's stand-in does the same on 443 with its own CA (edge.backupCAFile).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from nodekiln.bootstrap import edge
from testing.edgebed import BACKUP_NAME, EdgeBed, fingerprint, haproxy_check, make_site, render_edge, server_cert

pytestmark = pytest.mark.slow

BACKUP_BODY = f"ok {BACKUP_NAME}"
LOAD_WINDOW_S = 2.0  # the load goes on this long after the event it watches (a measuring window, not a wait)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the edge test bed needs root (ip netns, nft, mount)", pytrace=False)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    need_root()
    base = tmp_path_factory.mktemp("edge")
    with EdgeBed(make_site(base / "site"), base / "nodes") as b:
        b.wait_states({name: "UP" for name in b.server_names()})
        yield b


@pytest.fixture
def tb(bed):
    """The bed, healed after each test: every stand-in running and UP, the DNS at the edge."""
    bed.heal()
    yield bed
    bed.heal()


@pytest.fixture
def issued(tb):
    """A certificate from pebble served (the first issuance, if test 2 did not run before)."""
    if not tb.live.exists():
        result = tb.issue()
        assert result.returncode == 0, result.output
    tb.wait_served(tb.live_cert())
    return tb


def code(tb, url: str, *args: str) -> str:
    result = tb.curl(url, "--output", "/dev/null", "--write-out", "%{http_code} %{redirect_url}", *args)
    assert result.returncode == 0, result.output
    return result.output.strip()


def san(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def reloads(tb) -> int:
    return tb.log(tb.edge.name, "haproxy").count("Reloading HAProxy")


def worker_bodies(tb) -> set[str]:
    return {f"ok {w.name}" for w in tb.workers}


def failures_after(summary: dict[str, Any], stamp: float) -> list[Any]:
    return [f for f in summary["failures"] if f[0] >= stamp]


# (1) ------------------------------------------------------------------------------------------
def test_placeholder_before_any_certificate_and_http_redirects(tb):
    assert not tb.live.exists(), "this test must run before any issuance (module order)"
    cert = tb.served_cert()
    assert cert.issuer == cert.subject  # self-signed
    assert "placeholder" in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert san(cert) == [tb.domain]
    assert x509.load_pem_x509_certificates(tb.pem.read_bytes())[0] == cert  # the placeholder script's PEM
    # every path but the ACME one goes to HTTPS, with the path kept
    assert code(tb, f"http://{tb.domain}/lab/tree?x=1") == f"301 https://{tb.domain}/lab/tree?x=1"
    assert code(tb, f"http://{tb.domain}/") == f"301 https://{tb.domain}/"
    assert code(tb, f"http://{tb.domain}/.well-known/other") == f"301 https://{tb.domain}/.well-known/other"
    # between issuances certbot's server is in maintenance and the ACME path goes to the workers'
    # HTTP NodePort, where cert-manager's solver answers the cluster's own challenges
    assert tb.acme_port is not None  # the example site turns the certificates addon on
    assert tb.server_states("acme")["certbot"] == "MAINT"
    result = tb.curl(f"http://{tb.domain}/.well-known/acme-challenge/token", "--fail")
    assert result.output.strip() in worker_bodies(tb), result.output
    assert any(f"acme/{w.name}" in tb.log(tb.edge.name, "haproxy") for w in tb.workers)
    # HTTPS already works with the placeholder (not trusted, so -k): a worker answers
    result = tb.curl(f"https://{tb.domain}/", "--insecure", "--fail")
    assert result.output.strip() in worker_bodies(tb), result.output


# (2) ------------------------------------------------------------------------------------------
def test_first_issuance_through_http01_end_to_end(tb):
    before, master = reloads(tb), tb.haproxy_master
    result = tb.issue()
    assert result.returncode == 0, result.output
    assert "Successfully received certificate" in result.output
    live = tb.live_cert()
    # pebble's validation came in on port 80 through HAProxy to certbot's standalone server
    challenge_lines = [
        line for line in tb.log(tb.edge.name, "haproxy").splitlines() if "/.well-known/acme-challenge/" in line
    ]
    assert any(
        line.startswith(f"{tb.es.pebble}:") and "acme/certbot" in line and " 200 " in line for line in challenge_lines
    )
    # certbot's post-hook put its server back in maintenance: the workers answer the path again
    assert tb.server_states("acme")["certbot"] == "MAINT"
    # the deploy hook: fullchain + key joined into HAProxy's PEM, HAProxy reloaded by its master
    lineage = tb.live
    assert tb.pem.read_text() == (lineage / "fullchain.pem").read_text() + (lineage / "privkey.pem").read_text()
    assert (tb.pem.stat().st_mode & 0o777) == 0o600
    assert reloads(tb) == before + 1 and tb.haproxy_master == master and tb.haproxy_alive()
    tb.wait_served(live)
    print(f"first issuance: {result.seconds:.2f} s")


# (3) ------------------------------------------------------------------------------------------
def test_https_answered_by_a_worker_with_the_issued_certificate(issued):
    tb = issued
    cert = tb.served_cert()
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert issuer.startswith("Pebble Intermediate CA"), issuer
    assert san(cert) == [tb.domain]
    assert cert == tb.live_cert()
    root = tb.pebble_root_file()
    seen = set()
    deadline = time.monotonic() + 20
    while seen != worker_bodies(tb) and time.monotonic() < deadline:
        result = tb.curl(f"https://{tb.domain}/", "--cacert", str(root), "--fail")  # chain and name verified
        assert result.returncode == 0, result.output
        seen.add(result.output.strip())
    assert seen == worker_bodies(tb)  # round robin over every worker
    # the check is real: the same request against another CA fails
    wrong = tb.dir("client") / "acme-ca.pem"
    assert tb.curl(f"https://{tb.domain}/", "--cacert", str(wrong), "--fail").returncode == 60


# (4) ------------------------------------------------------------------------------------------
def test_renewal_and_reload_under_load_drop_no_request(issued):
    tb = issued
    old = tb.live_cert()
    before = reloads(tb)
    with tb.steady_load() as summary:
        result = tb.issue("--force-renewal")
        assert result.returncode == 0, result.output
        new = tb.live_cert()
        seen_at = tb.wait_served(new)
        time.sleep(LOAD_WINDOW_S)
    assert new != old and reloads(tb) == before + 1 and tb.haproxy_alive()
    assert summary["failures"] == [], summary["failures"][:5]
    certs = summary["certs"]
    assert set(certs) == {fingerprint(old), fingerprint(new)}, certs  # old, then new, both verified
    assert certs[fingerprint(new)][1] <= seen_at and certs[fingerprint(old)][2] < certs[fingerprint(new)][2]
    assert summary["requests"] >= 50, summary["requests"]
    assert tb.served_cert() == new
    print(f"renewal under load: {summary['requests']} requests, {len(summary['failures'])} failed")


# (5) ------------------------------------------------------------------------------------------
def test_one_worker_stopped_no_failed_request(issued):
    tb = issued
    gone = tb.workers[0].name
    with tb.steady_load() as summary:
        t0 = time.monotonic()
        tb.stop(gone, "standin")
        tb.wait_states({gone: "DOWN"}, timeout=15)
        t_down = time.monotonic()
        time.sleep(LOAD_WINDOW_S)
    servers = summary["servers"]
    during = [f for f in summary["failures"] if f[0] < t_down]
    print(
        f"worker stopped: DOWN after {t_down - t0:.2f} s; {summary['requests']} requests, {len(during)} failed before DOWN"
    )
    assert f"Server ingress/{gone} is DOWN" in tb.log(tb.edge.name, "haproxy")
    assert failures_after(summary, t_down) == []  # fall 3 passed: the stopped worker gets nothing
    assert during == [], during[:5]  # and before: a refused connection is redispatched (retries 3)
    assert servers[f"ok {gone}"][2] < t_down  # it answered before, never after
    assert all(servers[f"ok {w.name}"][2] > t_down for w in tb.workers[1:])
    assert BACKUP_BODY not in servers


# (6) ------------------------------------------------------------------------------------------
def test_all_workers_stopped_the_backup_cluster_answers(issued):
    tb = issued
    with tb.steady_load() as summary:
        t0 = time.monotonic()
        for worker in tb.workers:
            tb.stop(worker.name, "standin")
        tb.wait_states({w.name: "DOWN" for w in tb.workers}, timeout=15)
        t_down = time.monotonic()
        time.sleep(LOAD_WINDOW_S)
    servers = summary["servers"]
    assert BACKUP_BODY in servers, servers
    first_backup = servers[BACKUP_BODY][1]
    print(f"backup answered {first_backup - t0:.2f} s after the workers stopped")
    assert first_backup > t0  # never before: a backup server takes no traffic while a worker is up
    assert failures_after(summary, t_down) == []
    assert all(servers[body][2] < t_down for body in worker_bodies(tb) if body in servers)
    result = tb.curl(f"https://{tb.domain}/", "--cacert", str(tb.pebble_root_file()), "--fail")
    assert result.output.strip() == BACKUP_BODY


# (7) ------------------------------------------------------------------------------------------
def test_unknown_host_gets_404_from_unknown_host(issued):
    tb = issued
    other = "unknown.example.org"
    result = tb.curl(
        f"https://{other}/", "--insecure", "--resolve", f"{other}:443:{tb.address}", "--write-out", " %{http_code}"
    )
    assert result.output.split() == ["unknown", "host", "404"], result.output
    # the domain's SNI with another Host header: routed by Host, still 404
    result = tb.curl(
        f"https://{tb.domain}/",
        "--cacert",
        str(tb.pebble_root_file()),
        "-H",
        f"Host: {other}",
        "--write-out",
        " %{http_code}",
    )
    assert result.output.split() == ["unknown", "host", "404"], result.output
    assert "https-in~ unknown_host/<NOSRV>" in tb.log(tb.edge.name, "haproxy")
    # the domain itself, upper case and with the port: the ingress
    for host in (tb.domain.upper(), f"{tb.domain}:443"):
        result = tb.curl(
            f"https://{tb.domain}/", "--cacert", str(tb.pebble_root_file()), "-H", f"Host: {host}", "--fail"
        )
        assert result.output.strip() in worker_bodies(tb), (host, result.output)


# (8) ------------------------------------------------------------------------------------------
def test_failed_issuance_keeps_the_last_good_certificate(issued):
    tb = issued
    good, pem, master, before = tb.served_cert(), tb.pem.read_bytes(), tb.haproxy_master, reloads(tb)
    # the domain resolves elsewhere (the client, where nothing listens on 80): validation fails
    tb.set_dns(str(tb.machines["client"]))
    result = tb.issue("--force-renewal")
    assert result.returncode != 0, result.output
    assert "Some challenges have failed" in result.output or "Connection refused" in result.output, result.output
    assert tb.pem.read_bytes() == pem and tb.served_cert() == good
    assert tb.haproxy_alive() and tb.haproxy_master == master and reloads(tb) == before
    assert tb.curl(f"https://{tb.domain}/", "--cacert", str(tb.pebble_root_file()), "--fail").returncode == 0
    tb.set_dns(tb.address)
    # the ACME server down
    tb.stop("pebble", "pebble")
    try:
        result = tb.issue("--force-renewal", timeout=120)
        assert result.returncode != 0, result.output
        assert tb.pem.read_bytes() == pem and tb.served_cert() == good
        assert tb.haproxy_alive() and tb.haproxy_master == master and reloads(tb) == before
    finally:
        tb.stop("pebble", "challtestsrv")
        tb.start_pebble()  # a new pebble: a new root; the next issuance chains to it


# (9) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edges", [1, 2])
@pytest.mark.parametrize("backups", [True, False], ids=["backups", "no-backups"])
def test_rendered_haproxy_cfg_accepted_by_haproxy(tmp_path: Path, edges: int, backups: bool):
    need_root()
    es = make_site(tmp_path / "site", edges=edges, backups=backups)
    for node in es.site.edge_nodes:
        root = tmp_path / node.name
        render_edge(es, node, root)
        cfg = (root / edge.HAPROXY_CFG.lstrip("/")).read_text()
        assert (" backup\n" in cfg) == backups
        result = haproxy_check(root)
        assert result.returncode == 0 and "Configuration file is valid" in result.output, result.output
        assert (root / "etc/keepalived/keepalived.conf").exists() == (edges == 2)
    # not vacuous: without the backend CA file the same check fails and names it
    (root / edge.PATHS["backend_ca"].lstrip("/")).unlink()
    result = haproxy_check(root)
    assert result.returncode != 0 and "backend-ca.pem" in result.output, result.output


# (10) -----------------------------------------------------------------------------------------
def test_worker_with_a_foreign_certificate_is_taken_out(issued):
    """`ssl verify required ca-file`: a server whose certificate is not of the cluster's CA is
    DOWN (its stand-in still accepts TLS: only the verification fails)."""
    from nodekiln.secrets import make_ca

    tb = issued
    worker = tb.workers[-1]
    tls = tb.dir(worker.name) / "tls"
    saved = (tls / "tls.crt").read_text(), (tls / "tls.key").read_text()
    foreign = server_cert(make_ca("not the cluster's CA"), "impostor", ips=(str(worker.address),))
    tb.stop(worker.name, "standin")
    tb.wait_states({worker.name: "DOWN"}, timeout=15)
    (tls / "tls.crt").write_text(foreign.cert)
    (tls / "tls.key").write_text(foreign.key)
    try:
        tb.start_standin(worker.name)
        deadline = time.monotonic() + 8  # rise 2 at inter 2 s would be UP by now
        while time.monotonic() < deadline:
            assert tb.server_states()[worker.name] == "DOWN"
            time.sleep(0.2)
        row = tb.server_stats()[worker.name]
        assert row["check_status"] == "L6RSP", row  # a layer-6 (TLS) failure, not a refused connection
    finally:
        tb.stop(worker.name, "standin")
        (tls / "tls.crt").write_text(saved[0])
        (tls / "tls.key").write_text(saved[1])
