"""HA rendering: keepalived, check script, HAProxy, static pods or systemd drop-ins."""

from __future__ import annotations

import re

import pytest
import yaml

from nodekiln.bootstrap import ha
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore


def _load(path):
    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return site, secrets


@pytest.fixture
def example(example_site):
    return _load(example_site)


def test_static_pods_files_and_modes(example):
    site, secrets = example
    files = {f.path: f for f in ha.ha_files(site, secrets, site.init_node)}
    assert sorted(files) == [
        "/etc/haproxy/haproxy.cfg",
        "/etc/keepalived/check_apiserver.sh",
        "/etc/keepalived/keepalived.conf",
        "/etc/kubernetes/manifests/haproxy.yaml",
        "/etc/kubernetes/manifests/keepalived.yaml",
    ]
    assert files["/etc/keepalived/keepalived.conf"].mode == 0o600  # the VRRP password
    assert files["/etc/keepalived/check_apiserver.sh"].mode == 0o755
    assert files["/etc/keepalived/check_apiserver.sh"].content.startswith("#!/bin/sh\n")


def test_workers_and_unbalanced_sites_get_nothing(example, site_file):
    site, secrets = example
    assert ha.ha_files(site, secrets, site.workers[0]) == []

    def single(doc):
        doc["controlPlane"] = {"loadBalancer": "none"}
        doc["nodes"] = [doc["nodes"][0], doc["nodes"][3]]

    lone, lone_secrets = _load(site_file(single))
    assert ha.ha_files(lone, lone_secrets, lone.init_node) == []
    assert ha.ha_images(lone) == [] and ha.ha_services(lone) == []


def test_keepalived_conf(example):
    site, secrets = example
    conf = ha.keepalived_conf(site, secrets, site.control_planes[1])
    assert "interface eth0" in conf and "virtual_router_id 51" in conf
    assert f"auth_pass {secrets.vrrpPassword[:8]}\n" in conf and len(secrets.vrrpPassword[:8]) == 8
    assert "unicast_src_ip 10.0.1.27" in conf
    peers = re.search(r"unicast_peer \{\n(.*?)\n  \}", conf, re.S).group(1).split()
    assert peers == ["10.0.1.92", "10.0.1.35"]  # the others, not itself
    assert "10.0.1.128/32 dev eth0" in conf
    assert "nopreempt" in conf and "state BACKUP" in conf
    assert "track_script {\n    check_apiserver\n  }" in conf
    assert "advert_int 1\n" in conf and "down_timer_adverts 1\n" in conf


def test_priorities_prefer_the_init_node(example):
    site, _ = example
    prios = [ha.priority(site, cp) for cp in site.control_planes]
    assert prios == sorted(prios, reverse=True) and len(set(prios)) == len(prios)
    assert prios[0] == ha.priority(site, site.init_node) < 255  # 255 means "address owner"


def test_haproxy_cfg_backends_are_the_api_servers(example):
    site, secrets = example
    cfg = next(f.content for f in ha.ha_files(site, secrets, site.init_node) if f.path == "/etc/haproxy/haproxy.cfg")
    assert "bind *:7443" in cfg
    servers = re.findall(r"^  server (\S+) (\S+) check check-ssl verify none$", cfg, re.M)
    assert servers == [("master01", "10.0.1.92:6443"), ("master02", "10.0.1.27:6443"), ("master03", "10.0.1.35:6443")]
    assert "option httpchk GET /healthz" in cfg and "http-check expect status 200" in cfg
    assert ":7443 check" not in cfg  # the talk's bug: backends on the load balancer's port


def test_check_script_checks_apiserver_haproxy_and_held_vip(example):
    site, secrets = example
    script = next(
        f.content for f in ha.ha_files(site, secrets, site.init_node) if f.path.endswith("check_apiserver.sh")
    )
    assert 'get "https://127.0.0.1:6443/healthz"' in script
    assert 'get "https://127.0.0.1:7443/healthz"' in script
    assert 'get "https://10.0.1.128:7443/healthz"' in script
    assert "wget" not in script and " nc " not in script  # curl and ip only: Debian has no busybox


def test_static_pods_run_pinned_images_with_the_host_files(example):
    site, secrets = example
    files = {f.path: f.content for f in ha.ha_files(site, secrets, site.init_node)}
    keepalived = yaml.safe_load(files["/etc/kubernetes/manifests/keepalived.yaml"])
    haproxy = yaml.safe_load(files["/etc/kubernetes/manifests/haproxy.yaml"])
    for pod, image in ((keepalived, ha.KEEPALIVED_IMAGE), (haproxy, ha.HAPROXY_IMAGE)):
        assert pod["spec"]["hostNetwork"] is True
        container = pod["spec"]["containers"][0]
        assert container["image"] == image.reference in ha.ha_images(site)
        assert container["command"][0] == image.binary
    assert keepalived["spec"]["containers"][0]["command"][1:] == list(ha.KEEPALIVED_ARGS[1:])
    assert set(keepalived["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]) == {
        "NET_ADMIN",
        "NET_BROADCAST",
        "NET_RAW",
    }
    assert keepalived["spec"]["volumes"][0]["hostPath"]["path"] == "/etc/keepalived"
    assert haproxy["spec"]["volumes"][0]["hostPath"]["path"] == "/etc/haproxy"


def test_pinned_images_name_a_tag_and_a_digest():
    assert re.fullmatch(r"docker\.io/library/haproxy:[\w.-]+@sha256:[0-9a-f]{64}", ha.HAPROXY_IMAGE.reference)
    # The keepalived digest could not be resolved without registry access: it must be, before
    # static-pods mode is air-gap ready (see KEEPALIVED_IMAGE). Fails loudly once it is set wrong.
    if ha.KEEPALIVED_IMAGE.digest is not None:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", ha.KEEPALIVED_IMAGE.digest)


def test_host_services_share_the_configs(example, site_file):
    site, secrets = example

    def host(doc):
        doc["controlPlane"]["loadBalancerMode"] = "host-services"

    hs, _hs_secrets = _load(site_file(host))
    files = {f.path: f for f in ha.ha_files(hs, secrets, hs.init_node)}
    assert "/etc/kubernetes/manifests/keepalived.yaml" not in files
    dropin = files["/etc/systemd/system/keepalived.service.d/10-nodekiln.conf"].content
    assert "ExecStart=\nExecStart=/usr/sbin/keepalived " + " ".join(ha.KEEPALIVED_ARGS[1:]) + "\n" in dropin
    assert (
        "ExecStart=/usr/sbin/haproxy " + " ".join(ha.HAPROXY_ARGS[1:])
        in files["/etc/systemd/system/haproxy.service.d/10-nodekiln.conf"].content
    )
    static = {f.path: f.content for f in ha.ha_files(site, secrets, site.init_node)}
    for path in ("/etc/keepalived/keepalived.conf", "/etc/keepalived/check_apiserver.sh", "/etc/haproxy/haproxy.cfg"):
        assert files[path].content == static[path]  # one template, two ways to run it
    assert ha.ha_services(hs) == ["haproxy.service", "keepalived.service"]
    assert ha.ha_services(site) == [] and ha.ha_images(hs) == []


def test_rendering_is_deterministic(example):
    site, secrets = example
    assert ha.ha_files(site, secrets, site.init_node) == ha.ha_files(site, secrets, site.init_node)
