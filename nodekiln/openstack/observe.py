"""What exists of a site in the cloud: one pass of reads, before anything is planned.

Owned resources carry the tag `nodekiln:site=<name>`; servers carry the site in their
metadata, the server group is found by name. The result is a plain object handed on
explicitly: the checks add what they read (flavors, image, external network), and converge
records what it makes, so the wait and the health check see this run's servers and floating IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodekiln.openstack.cloud import about
from nodekiln.openstack.resources import ROLES, Names, wants_edge_fip

if TYPE_CHECKING:
    from openstack.compute.v2.flavor import Flavor
    from openstack.compute.v2.server import Server
    from openstack.compute.v2.server_group import ServerGroup
    from openstack.connection import Connection
    from openstack.image.v1.image import Image as ImageV1
    from openstack.image.v2.image import Image
    from openstack.network.v2.floating_ip import FloatingIP
    from openstack.network.v2.network import Network
    from openstack.network.v2.port import Port
    from openstack.network.v2.router import Router
    from openstack.network.v2.security_group import SecurityGroup
    from openstack.network.v2.subnet import Subnet

    from nodekiln.config.site import Site


@dataclass
class Observed:
    """What exists (and, as the run goes on, what was made)."""

    network: Network | None = None
    subnet: Subnet | None = None
    router: Router | None = None
    router_interface: bool = False
    external: Network | None = None
    groups: dict[str, SecurityGroup] = field(default_factory=dict)  # role -> security group
    ports: dict[str, Port] = field(default_factory=dict)  # port name -> port
    server_group: ServerGroup | None = None
    servers: dict[str, Server] = field(default_factory=dict)  # node name -> server
    fip: FloatingIP | None = None  # the API endpoint's (openstack.floatingIP)
    edge_fip: FloatingIP | None = None  # the edge's public address's (openstack.edgeFloatingIP)
    flavors: dict[str, Flavor] = field(default_factory=dict)  # flavor name and id -> flavor
    image: Image | ImageV1 | None = None


def observe(conn: Connection, site: Site, names: Names) -> Observed:
    spec = site.openstack
    assert spec is not None
    tag = names.tag
    st = Observed()
    with about("reading the site's network"):
        if spec.network.existing:
            st.network = conn.network.find_network(names.network)
            if st.network is not None:
                subnets = list(conn.network.subnets(network_id=st.network.id))
                wanted = [
                    s
                    for s in subnets
                    if (s.name == names.subnet if spec.network.subnet else s.cidr == str(site.network.cidr))
                ]
                st.subnet = wanted[0] if wanted else None
        else:
            st.network = next((n for n in conn.network.networks(tags=tag) if n.name == names.network), None)
            if st.network is not None:
                st.subnet = next((s for s in conn.network.subnets(tags=tag) if s.name == names.subnet), None)
    if spec.router.create:
        with about(f"router {names.router}: reading"):
            st.router = next((r for r in conn.network.routers(tags=tag) if r.name == names.router), None)
            if st.router is not None and st.subnet is not None:
                subnet_id = st.subnet.id
                st.router_interface = any(
                    any(ip.get("subnet_id") == subnet_id for ip in p.fixed_ips)
                    for p in conn.network.ports(device_id=st.router.id, device_owner="network:router_interface")
                )
    with about("reading the site's security groups and ports"):
        by_name = {sg.name: sg for sg in conn.network.security_groups(tags=tag)}
        st.groups = {
            role: by_name[names.security_group(role)] for role in ROLES if names.security_group(role) in by_name
        }
        st.ports = {p.name: p for p in conn.network.ports(tags=tag)}
    with about("reading the site's servers"):
        if spec.serverGroupPolicy != "none":
            st.server_group = next((g for g in conn.compute.server_groups() if g.name == names.server_group), None)
        for server in conn.compute.servers(details=True):
            meta = server.metadata or {}
            if meta.get("nodekiln-site") == site.name and meta.get("nodekiln-node"):
                st.servers[meta["nodekiln-node"]] = server
    edge_fip = wants_edge_fip(site)
    if spec.floatingIP or edge_fip:
        with about("reading the site's floating IPs"):
            # Told apart by their description; one made before the edge existed is the API endpoint's.
            edge_description = names.fip_description(edge=True)
            ips = list(conn.network.ips(tags=tag))
        if spec.floatingIP:
            st.fip = next((ip for ip in ips if ip.description != edge_description), None)
        if edge_fip:
            st.edge_fip = next((ip for ip in ips if ip.description == edge_description), None)
    return st
