"""The nftables ruleset per role."""

from __future__ import annotations

import pytest

from nodekiln.bootstrap.firewall import firewall_files, ruleset
from nodekiln.config.site import load_site
from testing.synthetic import site_yaml


@pytest.fixture
def site(example_site):
    return load_site(example_site)


def test_one_file_per_node_same_per_role(site):
    [cp] = firewall_files(site, site.control_planes[0])
    assert cp.path == "/etc/nftables.conf"
    assert [f.content for f in firewall_files(site, site.control_planes[2])] == [cp.content]
    assert firewall_files(site, site.workers[0])[0].content == ruleset(site, "worker") != cp.content


def test_control_plane_rules(site):
    text = ruleset(site, "control-plane")
    assert "policy drop;" in text and "ct state established,related accept" in text and "iif lo accept" in text
    assert "elements = { 10.0.1.92, 10.0.1.27, 10.0.1.35 }" in text
    assert "tcp dport { 6443, 7443 } ip saddr @node_network accept" in text
    assert "tcp dport { 6443, 7443 } ip saddr @pod_network accept" in text
    assert "tcp dport { 2379-2380, 10250-10259 } ip saddr @control_planes accept" in text
    assert "ip protocol 112 ip saddr @control_planes accept" in text
    assert "tcp dport 22 ip saddr @ssh_from accept" in text
    assert "30000-32767" not in text
    assert "flush ruleset" not in text  # kube-proxy's and Calico's tables survive a reload


def test_worker_rules(site, site_file):
    text = ruleset(site, "worker")
    assert "ip saddr @control_planes" not in text.split("chain input")[1]  # workers: no control-plane-only port
    assert "ip protocol 112" not in text and "2379" not in text and "7443" not in text
    for cni in (
        "tcp dport { 179, 5473 } ip saddr @node_network accept",
        "udp dport { 4789 } ip saddr @node_network accept",
        "ip protocol 4 ip saddr @node_network accept",
    ):
        assert cni in text

    def open_up(doc):
        doc["firewall"] = {"nodePorts": True, "extraTCPPorts": [443, 80, 443], "sshFrom": ["192.0.2.0/24"]}

    opened = load_site(site_file(open_up))
    text = ruleset(opened, "worker")
    assert "tcp dport 30000-32767 accept" in text and "udp dport 30000-32767 accept" in text
    assert "tcp dport { 80, 443 } accept" in text
    assert "elements = { 192.0.2.0/24 }" in text
    assert "30000-32767" not in ruleset(opened, "control-plane")


@pytest.mark.parametrize("role", ["control-plane", "worker"])
def test_kubelet_open_to_every_node(site, role):
    """Pods reach another node's kubelet from their own node's address: Calico's natOutgoing
    masquerades pool traffic to anything outside the IP pools (projectcalico/calico
    felix/rules/nat.go, RuleRenderer.NATOutgoingChain; nodekiln.contract.CALICO_NAT_REF), so
    metrics-server and Prometheus need 10250 open from the node network, not only from pods."""
    text = ruleset(site, role)
    assert "tcp dport 10250 ip saddr @node_network accept" in text
    assert "tcp dport 10250 ip saddr @pod_network accept" in text


def test_size_does_not_grow_with_workers(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(1000))
    big = load_site(path)
    assert len(ruleset(big, "worker").splitlines()) < 80
    assert "10.20.0.100" not in ruleset(big, "worker")  # workers are covered by the node network set


def test_single_node_site_has_no_vrrp(site_file):
    def single(doc):
        doc["controlPlane"] = {"loadBalancer": "none"}
        doc["nodes"] = [doc["nodes"][0], doc["nodes"][3]]

    lone = load_site(site_file(single))
    text = ruleset(lone, "control-plane")
    assert "ip protocol 112" not in text and "tcp dport { 6443 } ip saddr @node_network accept" in text


def test_api_from_opens_the_api_on_control_planes_only(site_file):
    site = load_site(site_file(lambda d: d.setdefault("firewall", {}).update(apiFrom=["192.0.2.0/24"])))
    cp, worker = ruleset(site, "control-plane"), ruleset(site, "worker")
    assert "set api_from {" in cp and "elements = { 192.0.2.0/24 }" in cp
    assert "tcp dport { 6443, 7443 } ip saddr @api_from accept" in cp
    assert "api_from" not in worker
    assert "api_from" not in ruleset(load_site(site_file()), "control-plane")
