"""`invoke site-destroy`: delete exactly what nodekiln created for a site.

Its servers (by metadata) and server group (by name), then the Neutron resources carrying the
site's tag, in an order Neutron accepts. Nothing else: an existing network the site names is
not the site's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from nodekiln.openstack.cloud import CallCounter, OpenStackError, about, connect, count_calls
from nodekiln.openstack.resources import Names
from nodekiln.openstack.wait import POLL_SECONDS
from nodekiln.report import Reporter

if TYPE_CHECKING:
    from openstack.connection import Connection
    from openstack.resource import Resource

    from nodekiln.config.site import Site


@dataclass
class DestroyResult:
    deleted: list[str]
    calls: CallCounter


def site_destroy(site: Site, *, conn: Connection | None = None, report: Reporter | None = None) -> DestroyResult:
    """Delete exactly what nodekiln created for the site: tagged resources, its servers and server group."""
    spec = site.openstack
    if spec is None:
        raise OpenStackError(f"site {site.name} has no openstack section: add one to {site.file}")
    say = (report or Reporter.quiet()).say
    conn = conn or connect(spec)
    counter = count_calls(conn)
    mark = counter.mark()
    names = Names(site)
    tag = names.tag
    deleted: list[str] = []
    with about("reading the site's servers"):
        servers = [
            s for s in conn.compute.servers(details=True) if (s.metadata or {}).get("nodekiln-site") == site.name
        ]
    for server in servers:
        with about(f"server {server.name}: deleting"):
            conn.compute.delete_server(server, ignore_missing=True)
        deleted.append(f"server {server.name}")
    if servers:
        say(f"waiting for {len(servers)} servers to go")
    for server in servers:
        with about(f"server {server.name}: waiting for the delete"):
            conn.compute.wait_for_delete(server, interval=POLL_SECONDS, wait=spec.bootTimeout)
    with about(f"server group {names.server_group}: deleting"):
        for group in conn.compute.server_groups():
            if group.name == names.server_group:
                conn.compute.delete_server_group(group, ignore_missing=True)
                deleted.append(f"server group {group.name}")
    for kind, listing, delete in _owned_kinds(conn):
        with about(f"{kind}s: deleting"):
            for resource in listing(tags=tag):
                if kind == "router":  # its subnet interfaces first, or Neutron refuses
                    for port in conn.network.ports(device_id=resource.id, device_owner="network:router_interface"):
                        for ip in port.fixed_ips:
                            conn.network.remove_interface_from_router(resource.id, subnet=ip["subnet_id"])
                delete(resource, ignore_missing=True)
                deleted.append(f"{kind} {_label(resource)}")
    return DestroyResult(deleted, counter.since(mark))


class _Owned(NamedTuple):
    kind: str
    listing: Callable[..., Iterable[Resource]]  # takes tags=
    delete: Callable[..., object]  # takes the resource, ignore_missing=


def _owned_kinds(conn: Connection) -> list[_Owned]:
    """The Neutron resources a site owns (by tag): (kind, list, delete), in an order they can be deleted."""
    net = conn.network
    return [
        _Owned("floating IP", net.ips, net.delete_ip),
        _Owned("port", net.ports, net.delete_port),
        _Owned("router", net.routers, net.delete_router),
        _Owned("security group", net.security_groups, net.delete_security_group),
        _Owned("subnet", net.subnets, net.delete_subnet),
        _Owned("network", net.networks, net.delete_network),
    ]


def _label(resource: Resource) -> str:
    """A floating IP by its address, the rest by name (or id, when unnamed)."""
    return str(getattr(resource, "floating_ip_address", None) or getattr(resource, "name", None) or resource.id)


def tagged_leftovers(conn: Connection, site: Site) -> list[str]:
    """Everything still marked as the site's (for tests and a final check)."""
    tag = Names(site).tag
    left = [
        f"server {s.name}"
        for s in conn.compute.servers(details=True)
        if (s.metadata or {}).get("nodekiln-site") == site.name
    ]
    left += [f"server group {g.name}" for g in conn.compute.server_groups() if g.name == Names(site).server_group]
    for kind, listing, _ in _owned_kinds(conn):
        left += [f"{kind} {_label(r)}" for r in listing(tags=tag)]
    return left
