"""The openstack section of the site file and the resources derived from it (no cloud needed)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from nodekiln.config.site import load_site
from nodekiln.errors import SiteError
from nodekiln.openstack.cloud import CallCounter
from nodekiln.openstack.resources import Names, Rule, allocation_pool, rules

SECTION = {"cloud": "lab", "flavors": {"control-plane": "m1.large", "worker": "m1.xlarge"}}


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
    assert pool == {"start": "10.0.1.129", "end": "10.0.1.254"}
    used = {site.network.gateway, site.controlPlane.endpoint.vip, *(n.address for n in site.nodes)}
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
