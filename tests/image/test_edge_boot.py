"""An edge node booted from the node image with its rendered user-data (legacy BIOS): HAProxy,
certbot and keepalived of the image run it, and nothing of Kubernetes starts.

No ACME server or worker is reachable from the VM (qemu user networking, no internet): the
certificate stays the placeholder, the issuance that the test starts fails, and the ingress
backend has no server up. The end-to-end issuance, renewal and fail-over are proven with the
same files in tests/netns/test_edge_netns.py.
"""

from __future__ import annotations

import pytest

from nodekiln.bootstrap.edge import MASKED, PATHS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def edge_vm(boots, test_site):
    """The first edge node, booted with legacy BIOS (SeaBIOS): this boot is also the suite's
    proof that BIOS firmware reaches a running node. Stopped after this module, so that no
    two emulated VMs share the two cores."""
    assert test_site.edge_nodes, "the example site has edge nodes"
    name = test_site.edge_nodes[0].name
    vm = boots("bios", name)
    yield vm
    from nodekiln.run import stop

    boots.vms.pop(f"bios:{name}")
    stop(vm.proc)


@pytest.fixture(scope="module")
def edge(edge_vm):
    return edge_vm.testinfra_host()


def test_bios_boot_reaches_a_running_node(edge, test_site):
    node = test_site.edge_nodes[0]
    assert edge.check_output("test -d /sys/firmware/efi && echo uefi || echo bios") == "bios"
    assert edge.check_output("hostname") == node.name
    assert str(node.address) in edge.interface("eth0").addresses
    assert edge.run("sudo touch /usr/x").rc != 0  # the read-only root, as under UEFI
    assert edge.run("cloud-init status --wait").stdout.split()[-1] == "done"


def test_nothing_of_kubernetes_runs(edge):
    for unit in MASKED:
        assert edge.run(f"systemctl is-enabled {unit}").stdout.strip() == "masked"
        assert not edge.service(unit.removesuffix(".service")).is_running
    assert not edge.exists("/etc/kubernetes/admin.conf")
    assert not edge.file("/etc/nodekiln/kubeadm.yaml").exists


def test_haproxy_starts_on_the_placeholder_and_redirects(edge, test_site):
    assert edge.service("haproxy").is_running and edge.service("haproxy").is_enabled
    pem = edge.file(PATHS["certificate"])
    assert pem.exists and pem.mode == 0o600
    domain = test_site.edge.domains[0]
    subject = edge.check_output(f"sudo openssl x509 -noout -subject -in {PATHS['certificate']}")
    assert domain in subject and "placeholder" in subject
    head = edge.check_output("curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1/naavre")
    assert head == "301 https://127.0.0.1/naavre" or head.startswith("301 https://"), head
    # the ACME path goes to certbot's backend (down: no certbot --standalone is running)
    acme = edge.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/.well-known/acme-challenge/x")
    assert acme == "503", acme
    unknown = edge.check_output("curl -sk -o /dev/null -w '%{http_code}' -H 'Host: other.example' https://127.0.0.1/")
    assert unknown == "404", unknown
    known = edge.check_output(f"curl -sk -o /dev/null -w '%{{http_code}}' -H 'Host: {domain}' https://127.0.0.1/")
    assert known == "503", known  # no worker answers here


def test_firewall_and_vip(edge, test_site):
    table = edge.check_output("sudo nft list table inet nodekiln")
    assert "tcp dport { 80, 443 } accept" in table and "policy drop" in table
    assert edge.service("keepalived").is_running
    # the only edge node up holds the pair's VIP
    vip = str(test_site.edge.vip)
    for _ in range(30):
        if vip in edge.check_output("ip -4 addr show eth0"):
            break
        edge.run("sleep 1")
    assert vip in edge.check_output("ip -4 addr show eth0")


def test_certbot_runs_from_the_timer_and_a_failure_keeps_the_certificate(edge):
    assert edge.check_output("certbot --version").startswith("certbot ")
    assert edge.service("nodekiln-edge-certificate.timer").is_enabled
    assert edge.run("systemctl is-active nodekiln-edge-certificate.timer").stdout.strip() == "active"
    assert edge.run("systemctl is-enabled certbot.timer").stdout.strip() == "disabled"
    before = edge.check_output(f"sudo sha256sum {PATHS['certificate']}")
    run = edge.run("sudo systemctl start nodekiln-edge-certificate.service")
    assert run.rc != 0  # no ACME server can be reached from here
    journal = edge.check_output("sudo journalctl -b -u nodekiln-edge-certificate.service --no-pager")
    assert "certbot" in journal.lower(), journal[-2000:]
    assert edge.check_output(f"sudo sha256sum {PATHS['certificate']}") == before
    assert edge.service("haproxy").is_running
    failed = edge.check_output("systemctl --failed --no-legend --plain").strip().splitlines()
    assert [line for line in failed if not line.startswith("nodekiln-edge-certificate.service")] == [], failed
