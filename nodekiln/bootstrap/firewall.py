"""The nftables ruleset of each node: default deny inbound, per role.

One file per role (`/etc/nftables.conf`), the same on every node of that role: addresses go in
named sets (control planes, the node network, the pod network), so the file does not grow with
the number of workers (1,000 nodes render the same few lines).

The rules live in their own table, `inet nodekiln`, replaced atomically by `nft -f` (the file
deletes and recreates it). Unlike `flush ruleset`, loading it again on a running node leaves
kube-proxy's and Calico's tables alone: they manage their own and would lose Service and pod
routing until their next resync.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodekiln import templates
from nodekiln.bootstrap.nodefiles import NodeFile
from nodekiln.config import ports
from nodekiln.config.site import Node, Site

PATH = "/etc/nftables.conf"
NODE_PORTS = ports.NODE_PORTS


@dataclass(frozen=True)
class CniPorts:
    """What the CNI needs between nodes (Calico: BGP, VXLAN, Typha, IP-in-IP)."""

    tcp: tuple[int, ...] = ports.CALICO_TCP
    udp: tuple[int, ...] = ports.CALICO_UDP
    protocols: tuple[int, ...] = ports.CALICO_PROTOCOLS


CALICO = CniPorts()


def firewall_files(site: Site, node: Node) -> list[NodeFile]:
    return [NodeFile(PATH, ruleset(site, node.role), 0o755)]


def edge_ports(site: Site) -> list[int]:
    """The ingress NodePorts the workers open to the edge nodes (and to no one else)."""
    if site.edge is None:
        return []
    found = {site.edge_backend_port}
    if site.addons.ingress.enabled and site.addons.ingress.serviceType == "NodePort":
        found.add(site.addons.ingress.nodePorts.http)
    return sorted(p for p in found if p is not None)


def metrics_ports(site: Site, role: str) -> list[int]:
    """What the monitoring addon's Prometheus scrapes on a node of `role` (nothing when it is off):
    the components kubeadm then binds to every address (contract.metrics_args), kube-proxy's
    metrics and the node exporter (host network) on every node."""
    if not site.metrics_exposed:
        return []
    found = [ports.KUBE_PROXY_METRICS, ports.NODE_EXPORTER]
    if role == "control-plane":
        found += [ports.ETCD_METRICS, ports.KUBE_CONTROLLER_MANAGER, ports.KUBE_SCHEDULER]
    return sorted(found)


def ruleset(site: Site, role: str) -> str:
    return templates.render(
        "bootstrap",
        "nftables.conf.j2",
        site=site,
        role=role,
        control_planes=[cp.address for cp in site.control_planes],
        api_ports=sorted({site.apiserver_port, site.endpoint_port}),
        kubelet_port=ports.KUBELET,
        metrics_ports=metrics_ports(site, role),
        cni=CALICO,
        node_ports=NODE_PORTS if role == "worker" and site.firewall.nodePorts else None,
        edge_ports=edge_ports(site) if role == "worker" else [],
        edge_nodes=[n.address for n in site.edge_nodes],
        extra_tcp=sorted(set(site.firewall.extraTCPPorts)),
        vrrp=site.load_balanced and role == "control-plane",
        etcd=ports.ETCD,
        components=ports.COMPONENTS,
    )
