"""site-deploy's plan is typed actions: what the printed plan shows is what converge creates, and a dry run writes nothing.

Against a stand-in connection (unittest.mock) that answers the reads of an empty project; the
real-cloud behaviour is tests/openstack/test_openstack_deploy.py's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest

from nodekiln.config.site import Site, load_site
from nodekiln.openstack.actions import (
    CreateFloatingIP,
    CreateNetwork,
    CreatePort,
    CreateRouter,
    CreateRules,
    CreateSecurityGroup,
    CreateServer,
    CreateServerGroup,
    CreateSubnet,
    Keep,
    Plan,
)
from nodekiln.openstack.deploy import site_deploy
from nodekiln.openstack.resources import Names, rules
from nodekiln.secrets import generate

WRITES = ("create_", "update_", "delete_", "add_", "remove_", "set_")


@pytest.fixture
def site(site_file) -> Site:
    def change(doc: dict[str, Any]) -> None:
        doc["openstack"]["image"]["name"] = "nodekiln-test"
        doc["openstack"]["waitHealthz"] = False

    return load_site(site_file(change))


def _empty_project(site: Site) -> MagicMock:
    """A connection to a project holding nothing of the site, with the flavors, image and networks it names."""
    spec = site.openstack
    assert spec is not None
    conn = MagicMock(name="conn")
    flavors = sorted({*spec.flavors.values(), *spec.nodeFlavors.values()})
    conn.compute.flavors.return_value = [SimpleNamespace(name=f, id=f"id-{f}", vcpus=2, ram=4096) for f in flavors]
    conn.image.find_image.return_value = SimpleNamespace(id="image-id", name="nodekiln-test", status="active")
    conn.network.find_network.return_value = SimpleNamespace(id="public-id", is_router_external=True)
    unlimited = {"instances": -1, "total_cores": -1, "total_ram": -1}
    used = {"instances_used": 0, "total_cores_used": 0, "total_ram_used": 0}
    conn.compute.get_limits.return_value = SimpleNamespace(absolute=SimpleNamespace(**unlimited, **used))
    conn.network.get_quota.return_value = SimpleNamespace(ports={"limit": -1})
    conn.network.create_ports.side_effect = lambda bodies: [
        SimpleNamespace(id=f"port-{b['name']}", name=b["name"], tags=[]) for b in bodies
    ]
    conn.compute.create_server.side_effect = lambda **attrs: SimpleNamespace(status="ACTIVE", **attrs)
    return conn


def _writes(conn: MagicMock) -> list[str]:
    return [name for name, _args, _kwargs in conn.mock_calls if name.split(".")[-1].startswith(WRITES)]


def _renderer(site: Site, _secrets: Any) -> dict[str, bytes]:
    return {n.name: f"#cloud-config\n# {n.name}\n".encode() for n in site.machines}


def test_a_dry_run_makes_no_write_call_and_plans_every_resource(site):
    conn = _empty_project(site)
    dry = site_deploy(site, generate(), dry_run=True, conn=conn, renderer=_renderer, progress=False)
    assert _writes(conn) == []
    kinds = {type(s) for s in dry.plan.steps}
    assert {CreateNetwork, CreateSubnet, CreateRouter, CreateSecurityGroup, CreateRules, CreatePort} <= kinds
    assert [s.name for s in dry.plan.of(CreateServer)] == [n.name for n in site.machines]


def test_the_printed_plan_and_converge_read_the_same_actions(site):
    """Every line of the table is a step, and what converge sends is made from those steps' fields."""
    secrets = generate()
    dry = site_deploy(site, secrets, dry_run=True, conn=_empty_project(site), renderer=_renderer, progress=False)
    conn = _empty_project(site)
    done = site_deploy(site, secrets, conn=conn, renderer=_renderer, progress=False)
    assert done.plan == dry.plan  # the same actions, whether printed only or carried out

    table = done.plan.table()
    cells = [list(column._cells) for column in table.columns]
    assert cells[0] == [s.kind for s in done.plan.steps]
    assert cells[1] == [s.name for s in done.plan.steps]
    assert cells[3] == [s.detail for s in done.plan.steps]

    (network,) = done.plan.of(CreateNetwork)
    assert conn.network.create_network.call_args.kwargs["name"] == network.name
    (subnet,) = done.plan.of(CreateSubnet)
    sent = conn.network.create_subnet.call_args.kwargs
    assert (sent["name"], sent["cidr"], sent["gateway_ip"]) == (subnet.name, subnet.cidr, subnet.gateway)
    (bodies,) = conn.network.create_ports.call_args.args
    ports = done.plan.of(CreatePort)
    assert [(b["name"], b["fixed_ips"][0]["ip_address"]) for b in bodies] == [
        (p.spec.name, p.spec.fixed_ip) for p in ports
    ]
    assert [len(b["allowed_address_pairs"]) for b in bodies] == [len(p.spec.pairs) for p in ports]
    rule_posts = [len(c.args[0]) for c in conn.network.create_security_group_rules.call_args_list]
    assert rule_posts == [len(r.rules) for r in done.plan.of(CreateRules)]  # a new group here has no default rules
    (group,) = done.plan.of(CreateServerGroup)
    assert conn.compute.create_server_group.call_args.kwargs == {"name": group.name, "policy": group.policy}
    booted = [c.kwargs for c in conn.compute.create_server.call_args_list]
    assert sorted((a["name"], a["flavor_id"]) for a in booted) == sorted(
        (s.name, f"id-{s.flavor}") for s in done.plan.booting
    )
    assert done.servers == {n.name: "ACTIVE" for n in site.machines}


def test_changes_summary_and_counts_come_from_the_actions():
    plan = Plan((Keep("network", "n"), Keep("subnet", "s", "10.0.0.0/24")))
    assert plan.changes == [] and plan.summary() == "nothing to change"


def test_the_edge_nodes_are_planned_and_created_like_the_others(site):
    """Their group, the edge VIP's port, their ports with the VIP pair, their servers (outside the
    control planes' server group) and the floating IP on the edge VIP's port."""
    assert site.edge is not None and site.edge.vip is not None
    names = Names(site)
    conn = _empty_project(site)
    done = site_deploy(site, generate(), conn=conn, renderer=_renderer, progress=False)
    plan = done.plan

    (edge_group,) = plan.of(CreateSecurityGroup, lambda g: g.role == "edge")
    assert edge_group.name == f"{site.name}-edge"
    (edge_rules,) = plan.of(CreateRules, lambda r: r.role == "edge")
    assert set(edge_rules.rules) == rules(site, "edge")
    ports = {p.spec.name: p.spec for p in plan.of(CreatePort)}
    vip = str(site.edge.vip)
    assert ports[names.edge_vip_port].fixed_ip == vip and ports[names.edge_vip_port].roles == {"edge"}
    for node in site.edge_nodes:
        spec = ports[names.port(node.name)]
        assert (spec.fixed_ip, spec.roles, spec.pairs) == (str(node.address), {"edge"}, {vip})
    for node in site.nodes:
        assert vip not in ports[names.port(node.name)].pairs
    edge_servers = plan.of(CreateServer, lambda s: s.node.role == "edge")
    assert [(s.name, s.flavor) for s in edge_servers] == [(n.name, "m1.small") for n in site.edge_nodes]

    booted = {c.kwargs["name"]: c.kwargs for c in conn.compute.create_server.call_args_list}
    for node in site.edge_nodes:
        assert "scheduler_hints" not in booted[node.name]
        assert booted[node.name]["networks"] == [{"port": f"port-{names.port(node.name)}"}]
        assert booted[node.name]["metadata"]["nodekiln-role"] == "edge"
    assert all("scheduler_hints" in booted[n.name] for n in site.control_planes)

    (fip,) = plan.of(CreateFloatingIP)  # the example has no floatingIP for the API endpoint
    assert (fip.edge, fip.vip, fip.port, fip.name) == (True, vip, names.edge_vip_port, f"edge {vip}")
    sent = conn.network.create_ip.call_args.kwargs
    assert (sent["port_id"], sent["fixed_ip_address"], sent["description"]) == (
        f"port-{names.edge_vip_port}",
        vip,
        names.fip_description(edge=True),
    )


def test_no_edge_floating_ip_when_the_site_says_so(site_file):
    def change(doc: dict[str, Any]) -> None:
        doc["openstack"]["image"]["name"] = "nodekiln-test"
        doc["openstack"]["edgeFloatingIP"] = False

    site = load_site(site_file(change))
    dry = site_deploy(site, generate(), dry_run=True, conn=_empty_project(site), renderer=_renderer, progress=False)
    assert dry.plan.of(CreateFloatingIP) == []
