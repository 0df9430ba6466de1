"""Benchmarks of the edge node in the netns edge test bed (testing.edgebed; needs root): the
rendered issue.sh, deploy hook and haproxy.cfg with the real certbot, pebble and HAProxy."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.figures import Figure
from nodekiln.errors import NodekilnError
from testing.edgebed import BACKUP_NAME, EdgeBed, fingerprint, make_site

LOAD_WINDOW_S = 2.0  # the load goes on this long after the reload / the fail-over


@contextmanager
def _bed() -> Iterator[EdgeBed]:
    with tempfile.TemporaryDirectory(prefix="nodekiln-bench-edge-") as tmp:
        base = Path(tmp)
        with EdgeBed(make_site(base / "site"), base / "nodes") as bed:
            bed.wait_states({name: "UP" for name in bed.server_names()})
            yield bed


def _issue(bed: EdgeBed, *args: str) -> float:
    """issue.sh run; seconds from its start to HAProxy serving the new certificate."""
    t0 = time.monotonic()
    result = bed.issue(*args)
    if result.returncode != 0:
        raise NodekilnError(f"issue.sh {' '.join(args)} failed: {result.output[-2000:]}")
    return bed.wait_served(bed.live_cert()) - t0


def edge_cert_issue_s() -> Figure:
    """The first issuance: the rendered issue.sh (certbot certonly, HTTP-01 from pebble through
    HAProxy's port 80 to certbot's standalone server, the deploy hook's PEM, `haproxy -c`, the
    reload) until a client sees the issued certificate."""
    with _bed() as bed:
        seconds = _issue(bed)
    return Figure(
        "edge_cert_issue_s",
        round(seconds, 2),
        "s",
        "<= 30",
        "issue.sh start to the issued certificate served by HAProxy (openssl s_client from the client "
        "namespace); pebble with PEBBLE_VA_NOSLEEP=1, so Let's Encrypt's own validation delay is not in it",
    )


def edge_reload_failed_requests() -> Figure:
    """Failed requests of a steady load (4 loops, new TLS connection each, chain verified) across
    a renewal (`issue.sh --force-renewal`) and the deploy hook's reload (SIGUSR2 to the master)."""
    with _bed() as bed:
        _issue(bed)
        old = bed.live_cert()
        with bed.steady_load() as summary:
            _issue(bed, "--force-renewal")
            new = bed.live_cert()
            time.sleep(LOAD_WINDOW_S)
        if set(summary["certs"]) != {fingerprint(old), fingerprint(new)}:
            raise NodekilnError(f"the load did not see the old then the new certificate: {summary['certs']}")
    failed = len(summary["failures"])
    return Figure(
        "edge_reload_failed_requests",
        failed,
        "requests",
        "== 0",
        f"{failed} of {summary['requests']} HTTPS requests failed during a renewal and reload under load "
        f"(4 client loops, {LOAD_WINDOW_S:g} s past the reload; both certificates seen and verified)",
    )


def edge_backend_failover_s() -> Figure:
    """Seconds from stopping every worker's ingress stand-in until the backup cluster answers
    a request through the edge (fall 3 at fastinter 500 ms, then `option allbackups`)."""
    with _bed() as bed:
        _issue(bed)
        with bed.steady_load() as summary:
            t0 = time.monotonic()
            for worker in bed.workers:
                bed.stop(worker.name, "standin")
            bed.wait_states({w.name: "DOWN" for w in bed.workers}, timeout=15)
            time.sleep(LOAD_WINDOW_S)
        backup = summary["servers"].get(f"ok {BACKUP_NAME}")
        if backup is None:
            raise NodekilnError(f"the backup never answered: {summary['servers']}")
    failed = [f for f in summary["failures"] if f[0] >= t0]
    return Figure(
        "edge_backend_failover_s",
        round(backup[1] - t0, 2),
        "s",
        "<= 10",
        f"every worker's stand-in stopped to the first answer of the backup cluster under load; "
        f"{len(failed)} of {summary['requests']} requests failed meanwhile (503: no server left until fall 3)",
    )
