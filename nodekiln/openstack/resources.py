"""What a site needs on OpenStack, as data: resource names, the ownership tag, security-group rules.

Security groups mirror the nodes' own nftables firewall (nodekiln/bootstrap/firewall.py, and
bootstrap/edge/nftables.conf.j2 for the edge nodes): the cloud drops what the node would drop
anyway, and lets through what the node lets through — with one addition nftables cannot
express, the VIPs in the allowed address pairs (the control planes', the edge pair's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, summarize_address_range
from typing import Any

from nodekiln.bootstrap.firewall import CALICO, edge_ports, metrics_ports
from nodekiln.config import ports
from nodekiln.config.ports import NODE_PORTS
from nodekiln.config.site import Node, Site

ROLES = ("control-plane", "worker", "edge")  # every role a security group is named after
KUBELET = ports.KUBELET
ETCD = ports.ETCD
COMPONENTS = ports.COMPONENTS


@dataclass(frozen=True)
class Names:
    """Every OpenStack name nodekiln gives a site's resources."""

    site: Site

    @property
    def tag(self) -> str:
        return f"nodekiln:site={self.site.name}"

    @property
    def network(self) -> str:
        spec = self.site.openstack
        return (spec.network.name if spec and spec.network.name else None) or f"{self.site.name}-net"

    @property
    def subnet(self) -> str:
        spec = self.site.openstack
        return (spec.network.subnet if spec and spec.network.subnet else None) or f"{self.site.name}-subnet"

    @property
    def router(self) -> str:
        spec = self.site.openstack
        return (spec.router.name if spec and spec.router.name else None) or f"{self.site.name}-router"

    def security_group(self, role: str) -> str:
        return f"{self.site.name}-{role}"

    def port(self, node: str) -> str:
        return f"{self.site.name}-{node}"

    @property
    def vip_port(self) -> str:
        return f"{self.site.name}-vip"

    @property
    def edge_vip_port(self) -> str:
        return f"{self.site.name}-edge-vip"

    @property
    def edge_public_port(self) -> str | None:
        """The port holding the edge's public address (site.edge_address): the VIP's, or the single edge node's."""
        edge = self.site.edge
        if edge is None:
            return None
        return self.edge_vip_port if edge.vip is not None else self.port(edge.nodes[0].name)

    def fip_description(self, edge: bool) -> str:
        """What tells the site's floating IPs apart: the API endpoint's and the edge's."""
        return f"nodekiln: {'edge' if edge else 'API endpoint'} of site {self.site.name}"

    @property
    def server_group(self) -> str:
        return f"{self.site.name}-control-plane"

    def metadata(self, node: Node, user_data_hash: str) -> dict[str, str]:
        return {
            "nodekiln-site": self.site.name,
            "nodekiln-node": node.name,
            "nodekiln-role": node.role,
            "nodekiln-user-data": user_data_hash,
        }


def wants_edge_fip(site: Site) -> bool:
    """The edge's public address gets a floating IP: with an edge, externalNetwork and openstack.edgeFloatingIP."""
    spec = site.openstack
    return spec is not None and site.edge is not None and spec.edgeFloatingIP and spec.externalNetwork is not None


def flavor_of(site: Site, node: Node) -> str:
    """The flavor (name or id) the site gives a node: its own, else its role's."""
    spec = site.openstack
    assert spec is not None
    return spec.nodeFlavors.get(node.name) or spec.flavors[node.role]


@dataclass(frozen=True)
class Rule:
    """One security-group rule; `remote_group` is a role (its group's id is filled in on create)."""

    direction: str
    ethertype: str
    protocol: str | None
    port_min: int | None
    port_max: int | None
    remote_ip_prefix: str | None = None
    remote_group: str | None = None

    def describe(self) -> str:
        ports = (
            ""
            if self.port_min is None
            else (f":{self.port_min}" if self.port_min == self.port_max else f":{self.port_min}-{self.port_max}")
        )
        source = self.remote_ip_prefix or (f"group {self.remote_group}" if self.remote_group else "any")
        return f"{self.direction} {self.protocol or 'any'}{ports} {'from' if self.direction == 'ingress' else 'to'} {source}"


def _tcp(lo: int, hi: int | None = None, **remote: str) -> Rule:
    return Rule("ingress", "IPv4", "tcp", lo, hi if hi is not None else lo, **remote)


def _udp(lo: int, hi: int | None = None, **remote: str) -> Rule:
    return Rule("ingress", "IPv4", "udp", lo, hi if hi is not None else lo, **remote)


def site_roles(site: Site) -> tuple[str, ...]:
    """The roles the site has a security group for: edge only with an edge section."""
    return ROLES if site.edge is not None else ROLES[:2]


def rules(site: Site, role: str) -> set[Rule]:
    """The ingress rules of a role (and the default egress ones), as the node firewall has them."""
    nodes = str(site.network.cidr)
    pods = str(site.kubernetes.podSubnet)
    # what every node's ruleset has (bootstrap/nftables-input-base.j2): ICMP, SSH from firewall.sshFrom
    out: set[Rule] = {
        Rule("egress", "IPv4", None, None, None),
        Rule("egress", "IPv6", None, None, None),
        Rule("ingress", "IPv4", "icmp", None, None, remote_ip_prefix="0.0.0.0/0"),
        Rule("ingress", "IPv6", "ipv6-icmp", None, None, remote_ip_prefix="::/0"),
    }
    out |= {_tcp(22, remote_ip_prefix=str(net)) for net in site.firewall.sshFrom}
    if role == "edge":  # bootstrap/edge/nftables.conf.j2: no Kubernetes, no firewall.extraTCPPorts
        out |= {_tcp(ports.HTTP, remote_ip_prefix="0.0.0.0/0"), _tcp(ports.HTTPS, remote_ip_prefix="0.0.0.0/0")}
        if site.edge is not None and len(site.edge.nodes) == 2:
            out.add(Rule("ingress", "IPv4", "112", None, None, remote_group="edge"))  # VRRP between the pair
        return out
    out |= {
        # the kubelet: pods on the node, and every node (Calico's natOutgoing gives pod traffic to
        # another node its node's address, contract.CALICO_NAT_REF), the API servers among them
        _tcp(KUBELET, remote_ip_prefix=pods),
        _tcp(KUBELET, remote_ip_prefix=nodes),
    }
    # the monitoring addon's scrapes, from the same two networks as the kubelet's
    for port in metrics_ports(site, role):
        out |= {_tcp(port, remote_ip_prefix=pods), _tcp(port, remote_ip_prefix=nodes)}
    out |= {_tcp(port, remote_ip_prefix=nodes) for port in CALICO.tcp}
    out |= {_udp(port, remote_ip_prefix=nodes) for port in CALICO.udp}
    out |= {Rule("ingress", "IPv4", str(proto), None, None, remote_ip_prefix=nodes) for proto in CALICO.protocols}
    out |= {_tcp(port, remote_ip_prefix="0.0.0.0/0") for port in set(site.firewall.extraTCPPorts)}
    if role == "control-plane":
        for port in sorted({site.apiserver_port, site.endpoint_port}):
            out |= {_tcp(port, remote_ip_prefix=nodes), _tcp(port, remote_ip_prefix=pods)}
            out |= {_tcp(port, remote_ip_prefix=str(net)) for net in site.firewall.apiFrom}
        out |= {_tcp(*ETCD, remote_group="control-plane"), _tcp(*COMPONENTS, remote_group="control-plane")}
        if site.load_balanced:
            out.add(Rule("ingress", "IPv4", "112", None, None, remote_group="control-plane"))  # VRRP
    else:
        # the ingress's NodePorts, from the edge nodes only (their group: its ports' addresses and pairs)
        out |= {_tcp(port, remote_group="edge") for port in edge_ports(site)}
        if site.firewall.nodePorts:
            out |= {_tcp(*NODE_PORTS, remote_ip_prefix="0.0.0.0/0"), _udp(*NODE_PORTS, remote_ip_prefix="0.0.0.0/0")}
    return out


def observed_rule(rule: Mapping[str, Any] | object, group_roles: dict[str, str]) -> Rule:
    """A rule as Neutron returns it, in the same terms (remote group id -> role)."""
    # Neutron's JSON: a dict in a group's security_group_rules, an SDK resource when listed.
    get: Callable[[str], Any] = rule.get if isinstance(rule, Mapping) else (lambda key: getattr(rule, key, None))
    remote_group = get("remote_group_id")
    protocol = get("protocol")
    return Rule(
        get("direction"),
        get("ethertype"),
        str(protocol) if protocol is not None else None,
        get("port_range_min"),
        get("port_range_max"),
        get("remote_ip_prefix"),
        group_roles.get(remote_group, remote_group) if remote_group else None,
    )


def allocation_pool(site: Site) -> dict[str, str] | None:
    """The longest run of addresses the site does not use: Neutron hands out only those (DHCP ports...)."""
    cidr: IPv4Network = site.network.cidr
    used = {site.network.gateway, *(n.address for n in site.machines)}
    if site.controlPlane.endpoint.vip is not None:
        used.add(site.controlPlane.endpoint.vip)
    if site.edge is not None and site.edge.vip is not None:
        used.add(site.edge.vip)
    best: tuple[int, IPv4Address, IPv4Address] | None = None
    start: IPv4Address | None = None
    hosts = list(cidr.hosts()) if cidr.num_addresses <= 65536 else None
    if hosts is None:
        return None
    for addr in [*hosts, None]:
        if addr is not None and addr not in used:
            start = start or addr
            continue
        if start is not None:
            end = IPv4Address(int(addr) - 1) if addr is not None else hosts[-1]
            size = int(end) - int(start) + 1
            if best is None or size > best[0]:
                best = (size, start, end)
            start = None
    if best is None:
        return None
    assert list(summarize_address_range(best[1], best[2]))
    return {"start": str(best[1]), "end": str(best[2])}
