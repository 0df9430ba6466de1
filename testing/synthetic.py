"""Synthetic sites of any size, for benchmarks and scale tests."""

from __future__ import annotations

from ipaddress import IPv4Network

import yaml

NETWORK = IPv4Network("10.20.0.0/16")


def site_document(nodes: int, control_planes: int = 3, ssh_key: str | None = None, name: str = "scale") -> dict:
    hosts = NETWORK.hosts()
    gateway = next(hosts)
    vip = next(hosts)
    key = ssh_key or "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMLH+mYBC2Ns6HLlrBG9iwhhV7I5HEMfxxbNN7R7PaHt ops@example"
    members = []
    for i in range(nodes):
        role = "control-plane" if i < control_planes else "worker"
        prefix = "cp" if role == "control-plane" else "w"
        members.append(
            {"name": f"{prefix}{i:04d}", "role": role, "address": str(next(hosts)), "labels": {"rack": f"r{i % 20}"}}
        )
    return {
        "apiVersion": "nodekiln/v1alpha1",
        "kind": "Site",
        "metadata": {"name": name},
        "kubernetes": {"version": "1.31.4", "podSubnet": "192.168.0.0/16", "serviceSubnet": "10.96.0.0/12"},
        "controlPlane": {
            "endpoint": {"vip": str(vip), "port": 7443},
            "loadBalancer": "keepalived-haproxy" if control_planes > 1 else "none",
        }
        if control_planes > 1
        else {"loadBalancer": "none"},
        "network": {"cidr": str(NETWORK), "gateway": str(gateway), "dns": [str(gateway)]},
        "ssh": {"authorizedKeys": [key]},
        "nodes": members,
        "image": {"kubernetesSource": "none"},
    }


def site_yaml(nodes: int, control_planes: int = 3, **kwargs) -> str:
    return yaml.safe_dump(site_document(nodes, control_planes, **kwargs), sort_keys=False)
