"""Whether this host can reach the site's API endpoint, and at which address."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodekiln.config.site import Site
    from nodekiln.openstack.observe import Observed


def local_networks() -> list[IPv4Network]:
    """The IPv4 networks this host has an address on (none when `ip` cannot tell)."""
    from nodekiln import run

    try:
        out = run.output(["ip", "-o", "-4", "addr", "show"])
    except Exception:
        return []
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(IPv4Network(parts[parts.index("inet") + 1], strict=False))
    return nets


def api_address(site: Site, st: Observed) -> tuple[IPv4Address | None, str]:
    """The address this host reaches the API endpoint at, or (None, why not).

    The VIP's floating IP when there is one; else the endpoint address itself, when this host
    has an address on a network holding it (a /32 says nothing about routes, so it does not count).
    """
    if st.fip is not None:
        return IPv4Address(st.fip.floating_ip_address), ""
    address = site.endpoint_address
    if any(address in net for net in local_networks() if net.prefixlen < 32):
        return address, ""
    return None, f"{address} is not reachable from here (no floating IP, not on {site.network.cidr})"
