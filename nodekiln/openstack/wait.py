"""Waiting after converge: for every server to be ACTIVE (or failed), then for the API endpoint's /healthz."""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

from nodekiln.openstack.cloud import OpenStackError, one_line
from nodekiln.openstack.errors import DeployError
from nodekiln.openstack.reach import api_address
from nodekiln.openstack.resources import flavor_of

if TYPE_CHECKING:
    from openstack.compute.v2.server import Server
    from openstack.connection import Connection
    from rich.console import Console

    from nodekiln.config.site import Site
    from nodekiln.openstack.observe import Observed
    from nodekiln.secrets import Secrets

POLL_SECONDS = 2.0
# Server statuses that end by themselves; others (SHUTOFF, PAUSED...) are an operator's doing: reported, not waited for.
TRANSITIONAL = frozenset(
    {"BUILD", "REBUILD", "REBOOT", "HARD_REBOOT", "MIGRATING", "RESIZE", "REVERT_RESIZE", "PASSWORD", "UNKNOWN", None}
)
POLL_MISSES = 5  # polls in a row that may fail (a dropped keep-alive connection) before giving up


def wait_active(
    conn: Connection, site: Site, st: Observed, timeout: float, console: Console | None
) -> tuple[dict[str, str], list[str]]:
    """Poll the project's servers (one call per round) until every machine's (edge nodes too) is ACTIVE or failed."""
    wanted = [n.name for n in site.machines if n.name in st.servers]
    status = {name: st.servers[name].status for name in wanted}
    failures: dict[str, str] = {}
    display = _Display(len(wanted), console) if console is not None and wanted else None
    deadline = time.monotonic() + timeout
    misses = 0
    try:
        while True:
            pending = [n for n in wanted if status.get(n) in TRANSITIONAL and n not in failures]
            if display:
                display.update(sum(1 for n in wanted if status.get(n) == "ACTIVE"), pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                for n in pending:
                    failures[n] = f"server {n}: still {status.get(n)} after {timeout:.0f} s"
                break
            time.sleep(POLL_SECONDS)
            try:
                current: dict[str | None, Server] = {}
                for server in conn.compute.servers(details=True):
                    meta = server.metadata or {}
                    if meta.get("nodekiln-site") == site.name:
                        current[meta.get("nodekiln-node")] = server
                misses = 0
            except Exception as exc:
                misses += 1
                if misses >= POLL_MISSES:
                    raise OpenStackError(
                        f"waiting for servers: {misses} polls failed in a row, the last with: {one_line(exc)}"
                    ) from None
                continue
            for n in pending:
                found = current.get(n)
                if found is None:
                    failures[n] = f"server {n}: disappeared while booting"
                    continue
                status[n] = found.status
                st.servers[n] = found
                if found.status == "ERROR":
                    fault = (found.fault or {}).get("message") or "no reason given"
                    node = next(x for x in site.machines if x.name == n)
                    failures[n] = f"server {n}: ERROR: {fault} (flavor {flavor_of(site, node)})"
    finally:
        if display:
            display.stop()
    return status, list(failures.values())


class _Display:
    """A rich progress bar of servers ACTIVE, naming those still booting."""

    def __init__(self, total: int, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("servers ACTIVE"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._task = self._progress.add_task("", total=total)
        self._progress.start()

    def update(self, done: int, pending: list[str]) -> None:
        waiting = ", ".join(pending[:4]) + (f" +{len(pending) - 4}" if len(pending) > 4 else "")
        self._progress.update(self._task, completed=done, description=f"booting: {waiting}" if pending else "")

    def stop(self) -> None:
        self._progress.stop()


def wait_healthz(site: Site, secrets: Secrets, st: Observed, timeout: float, echo: Callable[[str], None]) -> str:
    """Wait for the API endpoint's /healthz, when this host can reach it (floating IP, or on the site network)."""
    address, why = api_address(site, st)
    if address is None:
        return f"not checked: {why}"
    url = f"https://{address}:{site.endpoint_port}/healthz"
    context = ssl.create_default_context(cadata=secrets.ca.cert)
    context.check_hostname = False
    echo(f"waiting for {url}")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                if response.status == 200:
                    return f"{url}: ok"
        except (TimeoutError, OSError) as exc:
            last = str(exc)
        time.sleep(5)
    raise DeployError(
        f"the API endpoint {url} did not answer within {timeout:.0f} s (last: {last}); the servers are ACTIVE: look at their consoles"
    )
