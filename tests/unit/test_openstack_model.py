"""The openstack section of the site file and the resources derived from it (no cloud needed)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from nodekiln.bootstrap.firewall import edge_ports
from nodekiln.config.openstack import check_openstack
from nodekiln.config.site import load_site
from nodekiln.errors import SiteError
from nodekiln.openstack.cloud import CallCounter
from nodekiln.openstack.resources import Names, Rule, allocation_pool, rules

SECTION = {"cloud": "lab", "flavors": {"control-plane": "m1.large", "worker": "m1.xlarge", "edge": "m1.small"}}


def test_the_example_site_has_an_openstack_section(example_site):
    site = load_site(example_site)
    assert site.openstack is not None and site.openstack.serverGroupPolicy == "soft-anti-affinity"
    assert site.openstack.flavors["control-plane"] == "m1.large"


def test_openstack_section_is_optional(site_file):
    assert load_site(site_file(lambda d: d.pop("openstack", None))).openstack is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(flavors={"worker": "m1.small"}), "flavors needs an entry for control-plane"),
        (lambda s: s.update(floatingIP=True), "floatingIP needs externalNetwork"),
        (lambda s: s.update(router={"create": True}), "router.create needs externalNetwork"),
        (lambda s: s.update(serverGroupPolicy="affinity"), "soft-anti-affinity"),
        (lambda s: s.update(parallelism=0), "parallelism"),
        (lambda s: s.update(flavour={}), "unknown field"),
    ],
)
def test_invalid_sections_are_reported_with_their_line(site_file, change, message):
    def edit(doc):
        doc["openstack"] = dict(SECTION)
        change(doc["openstack"])

    with pytest.raises(SiteError) as failed:
        load_site(site_file(edit))
    assert message in str(failed.value) and "openstack" in str(failed.value)


def test_names_and_tag(example_site):
    site = load_site(example_site)
    names = Names(site)
    assert names.tag == "nodekiln:site=vlic-lab"
    assert (
        names.network == "vlic-lab-net"
        and names.port("worker01") == "vlic-lab-worker01"
        and names.vip_port == "vlic-lab-vip"
    )


def test_security_groups_mirror_the_node_firewall(example_site):
    site = load_site(example_site)
    cp, worker = rules(site, "control-plane"), rules(site, "worker")
    vrrp = Rule("ingress", "IPv4", "112", None, None, remote_group="control-plane")
    assert vrrp in cp and vrrp not in worker
    assert Rule("ingress", "IPv4", "tcp", 2379, 2380, remote_group="control-plane") in cp
    assert Rule("ingress", "IPv4", "tcp", 10250, 10259, remote_group="control-plane") in cp
    # 10250 from every node: Calico's natOutgoing (nodekiln.contract.CALICO_NAT_REF)
    for role_rules in (cp, worker):
        assert Rule("ingress", "IPv4", "tcp", 10250, 10250, remote_ip_prefix="10.0.1.0/24") in role_rules
    for port in (6443, site.endpoint_port):
        assert Rule("ingress", "IPv4", "tcp", port, port, remote_ip_prefix=str(site.network.cidr)) in cp
        assert not any(r.port_min == port for r in worker)
    for role in (cp, worker):
        assert Rule("ingress", "IPv4", "tcp", 22, 22, remote_ip_prefix="0.0.0.0/0") in role
        assert (
            Rule("ingress", "IPv4", "4", None, None, remote_ip_prefix=str(site.network.cidr)) in role
        )  # Calico IP-in-IP
        assert Rule("ingress", "IPv4", "udp", 4789, 4789, remote_ip_prefix=str(site.network.cidr)) in role


def test_api_from_opens_the_api_ports_on_control_planes(site_file):
    site = load_site(site_file(lambda d: d.setdefault("firewall", {}).update(apiFrom=["192.0.2.0/24"])))
    for port in (6443, site.endpoint_port):
        assert Rule("ingress", "IPv4", "tcp", port, port, remote_ip_prefix="192.0.2.0/24") in rules(
            site, "control-plane"
        )
    assert not any(r.remote_ip_prefix == "192.0.2.0/24" for r in rules(site, "worker"))


def test_a_floating_ip_needs_its_clients_in_api_from(site_file):
    def edit(doc):
        doc["openstack"] = {**SECTION, "externalNetwork": "public", "router": {"create": True}, "floatingIP": True}

    with pytest.raises(SiteError) as failed:
        load_site(site_file(edit))
    message = str(failed.value)
    assert "openstack.floatingIP" in message and "firewall.apiFrom" in message
    assert re.search(r"site\.yaml:\d+:", message), message  # the line of floatingIP
    site = load_site(site_file(lambda d: (edit(d), d.setdefault("firewall", {}).update(apiFrom=["0.0.0.0/0"]))))
    assert site.openstack.floatingIP


def test_node_ports_open_on_workers_only_when_asked(site_file):
    site = load_site(site_file(lambda d: d.setdefault("firewall", {}).update(nodePorts=True)))
    assert Rule("ingress", "IPv4", "tcp", 30000, 32767, remote_ip_prefix="0.0.0.0/0") in rules(site, "worker")
    assert not any(r.port_min == 30000 for r in rules(site, "control-plane"))


def test_allocation_pool_avoids_every_site_address(example_site):
    site = load_site(example_site)
    pool = allocation_pool(site)
    assert pool == {"start": "10.0.1.130", "end": "10.0.1.254"}  # 10.0.1.129 is edge.vip
    assert site.edge is not None
    used = {site.network.gateway, site.controlPlane.endpoint.vip, site.edge.vip, *(n.address for n in site.machines)}
    assert not any(IPv4Address(pool["start"]) <= a <= IPv4Address(pool["end"]) for a in used)


def test_call_counter_counts_writes_apart_from_logins():
    calls = CallCounter()
    for method in ("GET", "POST", "auth", "DELETE", "GET"):
        calls.add(method, "/x")
    mark = calls.mark()
    calls.add("PUT", "/y")
    assert (calls.writes, calls.total) == (3, 5)
    assert (calls.since(mark).writes, calls.since(mark).write_calls()) == (1, [("PUT", "/y")])


def test_required_secure_boot_needs_uefi_firmware_on_the_cloud(site_file):
    def edit(doc, firmware):
        doc["image"]["secureBoot"] = "required"
        doc["openstack"] = {**SECTION, "image": {"firmware": firmware}}

    with pytest.raises(SiteError) as failed:
        load_site(site_file(lambda d: edit(d, "bios")))
    message = str(failed.value)
    assert "openstack.image.firmware" in message and "set firmware: uefi" in message
    assert load_site(site_file(lambda d: edit(d, "uefi"))).image.secureBoot == "required"


def test_secure_boot_takes_only_its_three_values(site_file):
    with pytest.raises(SiteError) as failed:
        load_site(site_file(lambda d: d["image"].update(secureBoot="yes")))
    assert "image.secureBoot" in str(failed.value) and "'required', 'supported' or 'off'" in str(failed.value)


# -- the edge nodes ------------------------------------------------------------------------------


def _no_edge(doc):
    doc.pop("edge")
    doc.setdefault("firewall", {})["nodePorts"] = True  # the ingress's NodePorts need someone let in


def _tcp(port: int, **remote: str) -> Rule:
    return Rule("ingress", "IPv4", "tcp", port, port, **remote)


BASE = {
    Rule("egress", "IPv4", None, None, None),
    Rule("egress", "IPv6", None, None, None),
    Rule("ingress", "IPv4", "icmp", None, None, remote_ip_prefix="0.0.0.0/0"),
    Rule("ingress", "IPv6", "ipv6-icmp", None, None, remote_ip_prefix="::/0"),
}


def test_the_edge_group_is_the_edge_ruleset_exactly(site_file):
    """bootstrap/edge/nftables.conf.j2: ICMP, SSH from sshFrom, HTTP and HTTPS from anywhere, VRRP from the pair."""

    def ssh_from(doc):
        doc.setdefault("firewall", {}).update(sshFrom=["192.0.2.0/24", "198.51.100.7/32"], extraTCPPorts=[8080])

    site = load_site(site_file(ssh_from))
    assert site.edge is not None and len(site.edge.nodes) == 2
    assert rules(site, "edge") == BASE | {
        _tcp(22, remote_ip_prefix="192.0.2.0/24"),
        _tcp(22, remote_ip_prefix="198.51.100.7/32"),
        _tcp(80, remote_ip_prefix="0.0.0.0/0"),
        _tcp(443, remote_ip_prefix="0.0.0.0/0"),
        Rule("ingress", "IPv4", "112", None, None, remote_group="edge"),
    }  # no kubelet, no Calico, no extraTCPPorts: the edge node's ruleset has none of them


def test_a_single_edge_node_has_no_vrrp(site_file):
    def single(doc):
        doc["edge"]["nodes"] = doc["edge"]["nodes"][:1]
        doc["edge"].pop("vip")

    site = load_site(site_file(single))
    assert not any(r.protocol == "112" for r in rules(site, "edge"))
    assert _tcp(443, remote_ip_prefix="0.0.0.0/0") in rules(site, "edge")


def test_workers_open_the_ingress_node_ports_to_the_edge_group_only(site_file, example_site):
    site = load_site(example_site)
    assert edge_ports(site) == [32080, 32443]
    from_edge = {_tcp(port, remote_group="edge") for port in edge_ports(site)}
    assert from_edge <= rules(site, "worker")
    assert not from_edge & rules(site, "control-plane")
    assert not any(r.port_min in (32080, 32443) and r.remote_group != "edge" for r in rules(site, "worker"))
    without = load_site(site_file(_no_edge))
    assert not any(r.remote_group == "edge" for r in rules(without, "worker"))


def test_an_edge_needs_an_edge_flavor(site_file, example_site):
    def no_edge_flavor(doc):
        doc["openstack"]["flavors"].pop("edge")

    path = site_file(no_edge_flavor)
    with pytest.raises(SiteError) as info:  # load_site reports it with the line
        load_site(path)
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{path}:") and " openstack.flavors: needs an entry for edge" in str(problem)
    assert check_openstack(load_site(example_site)) == []
    assert check_openstack(load_site(site_file(lambda d: (no_edge_flavor(d), _no_edge(d))))) == []


def test_edge_names(example_site):
    names = Names(load_site(example_site))
    assert (names.security_group("edge"), names.edge_vip_port, names.edge_public_port) == (
        "vlic-lab-edge",
        "vlic-lab-edge-vip",
        "vlic-lab-edge-vip",
    )
    assert names.fip_description(edge=True) != names.fip_description(edge=False)
