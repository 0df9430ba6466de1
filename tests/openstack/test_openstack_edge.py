"""site-deploy and site-destroy of a site's edge nodes against real OpenStack services (see conftest.py)."""

from __future__ import annotations

import base64

import pytest

from nodekiln.bootstrap.firewall import edge_ports
from nodekiln.openstack.deploy import site_deploy, site_destroy, tagged_leftovers
from nodekiln.openstack.resources import Names, Rule, observed_rule
from nodekiln.openstack.userdata import render_user_data
from tests.openstack.conftest import load_with_secrets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]  # openstacksdk 4.x deprecation notices


def _one_plus_one(doc: dict) -> None:
    """One control plane, one worker: the edge pair is what this test is about."""
    doc["controlPlane"] = {"loadBalancer": "none"}
    doc["nodes"] = [next(n for n in doc["nodes"] if n["role"] == r) for r in ("control-plane", "worker")]
    doc.setdefault("firewall", {})["sshFrom"] = ["192.0.2.0/24", "198.51.100.7/32"]


def _single_edge(doc: dict) -> None:
    _one_plus_one(doc)
    doc["edge"]["nodes"] = doc["edge"]["nodes"][:1]
    doc["edge"].pop("vip", None)


def test_a_site_with_two_edge_nodes(make_site, user, admin, boot_image):
    """Dry run, deploy, rerun (no writes), destroy (nothing tagged left) of a site with an edge pair."""
    path = make_site(_one_plus_one, image={"name": boot_image}, router={"create": True}, externalNetwork="public")
    site, secrets = load_with_secrets(path)
    names = Names(site)
    assert site.edge is not None and site.edge.vip is not None and len(site.edge_nodes) == 2
    vip = str(site.edge.vip)

    dry = site_deploy(site, secrets, dry_run=True, conn=user, progress=False)
    assert dry.calls.writes == 0
    planned = {(s.kind, s.name, s.action) for s in dry.plan.steps}
    assert {
        ("security-group", names.security_group("edge"), "create"),
        ("rules", names.security_group("edge"), "create"),
        ("port", names.edge_vip_port, "create"),
        *(("port", names.port(n.name), "create") for n in site.edge_nodes),
        *(("server", n.name, "create") for n in site.edge_nodes),
        ("floating-ip", f"edge {vip}", "create"),
    } <= planned
    assert tagged_leftovers(user, site) == []

    done = site_deploy(site, secrets, conn=user, progress=False)
    assert done.servers == {n.name: "ACTIVE" for n in site.machines}

    # Ports: the edge nodes' fixed addresses, the edge VIP allowed on both, in the edge group.
    groups = {g.name: g for g in user.network.security_groups(tags=names.tag)}
    edge = groups[names.security_group("edge")]
    worker = groups[names.security_group("worker")]
    cp = groups[names.security_group("control-plane")]
    ports = {p.name: p for p in user.network.ports(tags=names.tag)}
    for node in site.edge_nodes:
        port = ports[names.port(node.name)]
        assert [ip["ip_address"] for ip in port.fixed_ips] == [str(node.address)]
        assert [p["ip_address"] for p in port.allowed_address_pairs] == [vip]
        assert port.security_group_ids == [edge.id]
    vip_port = ports[names.edge_vip_port]
    assert [ip["ip_address"] for ip in vip_port.fixed_ips] == [vip] and vip_port.security_group_ids == [edge.id]
    for node in site.nodes:
        assert ports[names.port(node.name)].allowed_address_pairs == []

    # The edge group is the edge node's nftables ruleset, rule for rule (no duplicates either).
    roles = {edge.id: "edge", worker.id: "worker", cp.id: "control-plane"}
    listed = [observed_rule(r, roles) for r in edge.security_group_rules]
    assert len(listed) == len(set(listed))
    assert set(listed) == {
        Rule("egress", "IPv4", None, None, None),
        Rule("egress", "IPv6", None, None, None),
        Rule("ingress", "IPv4", "icmp", None, None, remote_ip_prefix="0.0.0.0/0"),
        Rule("ingress", "IPv6", "ipv6-icmp", None, None, remote_ip_prefix="::/0"),
        Rule("ingress", "IPv4", "tcp", 22, 22, remote_ip_prefix="192.0.2.0/24"),
        Rule("ingress", "IPv4", "tcp", 22, 22, remote_ip_prefix="198.51.100.7/32"),
        Rule("ingress", "IPv4", "tcp", 80, 80, remote_ip_prefix="0.0.0.0/0"),
        Rule("ingress", "IPv4", "tcp", 443, 443, remote_ip_prefix="0.0.0.0/0"),
        Rule("ingress", "IPv4", "112", None, None, remote_group="edge"),  # VRRP within the pair only
    }
    # The workers let the edge group (and only it) reach the ingress's NodePorts.
    assert edge_ports(site) == [32080, 32443]
    for port in edge_ports(site):
        reaching = [r for r in worker.security_group_rules if r["protocol"] == "tcp" and r["port_range_min"] == port]
        assert [(r["port_range_max"], r["remote_group_id"], r["remote_ip_prefix"]) for r in reaching] == [
            (port, edge.id, None)
        ]
        assert not any(r["port_range_min"] == port for r in cp.security_group_rules)

    # The floating IP on the edge VIP's port: the one floating IP of a site without openstack.floatingIP.
    (fip,) = list(user.network.ips(tags=names.tag))
    assert (fip.port_id, fip.fixed_ip_address) == (vip_port.id, vip)
    assert fip.description == names.fip_description(edge=True)

    # Servers with their rendered user-data; the edge nodes are not in the control planes' server group.
    servers = {
        s.name: s
        for s in admin.compute.servers(details=True, all_projects=True)
        if (s.metadata or {}).get("nodekiln-site") == site.name
    }
    assert sorted(servers) == sorted(n.name for n in site.machines)
    rendered = render_user_data(site, secrets)
    for node in site.edge_nodes:
        server = admin.compute.get_server(servers[node.name].id)
        assert server.status == "ACTIVE" and server.metadata["nodekiln-role"] == "edge"
        assert base64.b64decode(server.user_data) == rendered[node.name]
        assert (server.flavor.get("original_name") or server.flavor.get("name")) == "m1.small"
    group = next(g for g in user.compute.server_groups() if g.name == names.server_group)
    assert sorted(group.member_ids) == sorted(servers[n.name].id for n in site.control_planes)

    # Nothing changed: no write call at all.
    again = site_deploy(site, secrets, conn=user, progress=False)
    assert again.calls.writes == 0, again.calls.write_calls()
    assert again.plan.changes == []
    assert ("floating-ip", fip.floating_ip_address, "keep") in {(s.kind, s.name, s.action) for s in again.plan.steps}

    destroyed = site_destroy(site, conn=user)
    assert {f"server {n.name}" for n in site.edge_nodes} <= set(destroyed.deleted)
    assert {f"security group {names.security_group('edge')}", f"port {names.edge_vip_port}"} <= set(destroyed.deleted)
    assert f"floating IP {fip.floating_ip_address}" in destroyed.deleted
    assert tagged_leftovers(user, site) == []


def test_a_single_edge_node_gets_the_floating_ip_on_its_own_port(make_site, user, boot_image):
    path = make_site(_single_edge, image={"name": boot_image}, router={"create": True}, externalNetwork="public")
    site, secrets = load_with_secrets(path)
    names = Names(site)
    (node,) = site.edge_nodes
    done = site_deploy(site, secrets, conn=user, progress=False)
    assert done.servers == {n.name: "ACTIVE" for n in site.machines}
    ports = {p.name: p for p in user.network.ports(tags=names.tag)}
    assert names.edge_vip_port not in ports and ports[names.port(node.name)].allowed_address_pairs == []
    (fip,) = list(user.network.ips(tags=names.tag))
    assert (fip.port_id, fip.fixed_ip_address) == (ports[names.port(node.name)].id, str(node.address))
    edge = next(g for g in user.network.security_groups(tags=names.tag) if g.name == names.security_group("edge"))
    assert not any(r["protocol"] == "112" for r in edge.security_group_rules)  # no pair, no VRRP
    again = site_deploy(site, secrets, conn=user, progress=False)
    assert again.calls.writes == 0, again.calls.write_calls()
    site_destroy(site, conn=user)
    assert tagged_leftovers(user, site) == []
