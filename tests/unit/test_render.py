"""Rendering: pure, deterministic, complete, and nothing secret where it does not belong."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodekiln.bootstrap.render import USER_DATA_LIMIT, RenderError, render_site, user_data, write_site
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore
from testing.synthetic import site_yaml

REPO = Path(__file__).resolve().parents[2]


def cloud_config(data: bytes) -> dict:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def files_of(config: dict) -> dict[str, dict]:
    return {f["path"]: f for f in config["write_files"]}


def documents(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


@pytest.fixture
def example(example_site):
    site = load_site(example_site)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return site, secrets


def test_deterministic(example):
    site, secrets = example
    first = render_site(site, secrets)
    again = render_site(load_site(site.file), SecretStore(site.directory, site.name).load())
    assert first == again


def test_init_node_gets_pki_and_init_configuration(example):
    site, secrets = example
    config = cloud_config(render_site(site, secrets)["master01"].user_data)
    files = files_of(config)
    for name in (
        "ca.crt",
        "ca.key",
        "etcd/ca.crt",
        "etcd/ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "sa.key",
        "sa.pub",
    ):
        assert f"/etc/kubernetes/pki/{name}" in files
    assert files["/etc/kubernetes/pki/ca.key"]["permissions"] == "0600"
    assert files["/etc/kubernetes/pki/ca.crt"]["content"] == secrets.ca.cert
    docs = documents(files["/etc/nodekiln/kubeadm.yaml"]["content"])
    init, cluster, kubelet = docs["InitConfiguration"], docs["ClusterConfiguration"], docs["KubeletConfiguration"]
    assert init["bootstrapTokens"][0]["token"] == secrets.bootstrapToken
    assert init["bootstrapTokens"][0]["ttl"] == "24h"
    assert init["nodeRegistration"]["name"] == "master01"
    assert {"name": "node-ip", "value": "10.0.1.92"} in init["nodeRegistration"]["kubeletExtraArgs"]
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.0.1.92", "bindPort": 6443}
    assert cluster["controlPlaneEndpoint"] == "10.0.1.128:7443"
    assert cluster["kubernetesVersion"] == "v1.31.4"
    assert cluster["networking"] == {
        "podSubnet": "192.168.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    }
    sans = cluster["apiServer"]["certSANs"]
    for name in ("10.0.1.128", "api.vlic-lab.example.org", "10.0.1.92", "10.0.1.27", "10.0.1.35"):
        assert name in sans
    assert kubelet["cgroupDriver"] == "systemd"
    assert init["nodeRegistration"]["taints"] == [
        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    ]


def test_other_control_planes_join_with_pki_and_no_certificate_key(example):
    site, secrets = example
    config = cloud_config(render_site(site, secrets)["master02"].user_data)
    files = files_of(config)
    assert "/etc/kubernetes/pki/ca.key" in files
    join = documents(files["/etc/nodekiln/kubeadm.yaml"]["content"])["JoinConfiguration"]
    assert join["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "10.0.1.27", "bindPort": 6443}}
    assert "certificateKey" not in str(join)
    assert join["discovery"]["bootstrapToken"]["caCertHashes"] == [secrets.ca_cert_hash]
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "10.0.1.128:7443"
    for path in (
        "/etc/keepalived/keepalived.conf",
        "/etc/keepalived/check_apiserver.sh",
        "/etc/haproxy/haproxy.cfg",
        "/etc/kubernetes/manifests/keepalived.yaml",
        "/etc/kubernetes/manifests/haproxy.yaml",
    ):
        assert path in files, path


def test_workers_get_token_and_hash_but_no_ca_keys(example):
    site, secrets = example
    rendered = render_site(site, secrets)["worker03"]
    config = cloud_config(rendered.user_data)
    files = files_of(config)
    assert not [p for p in files if p.startswith("/etc/kubernetes/pki")]
    assert not [p for p in files if "keepalived" in p or "haproxy" in p]
    text = rendered.user_data.decode()
    for secret in (secrets.ca.key, secrets.etcdCA.key, secrets.serviceAccount.key, secrets.vrrpPassword):
        assert secret not in text
    join = documents(files["/etc/nodekiln/kubeadm.yaml"]["content"])["JoinConfiguration"]
    assert join["discovery"]["bootstrapToken"]["token"] == secrets.bootstrapToken
    assert "controlPlane" not in join
    registration = join["nodeRegistration"]
    assert {"name": "node-labels", "value": "tier=storage"} in registration["kubeletExtraArgs"]
    assert registration["taints"] == [{"key": "dedicated", "value": "storage", "effect": "NoSchedule"}]
    worker01 = documents(
        files_of(cloud_config(render_site(site, secrets)["worker01"].user_data))["/etc/nodekiln/kubeadm.yaml"][
            "content"
        ]
    )
    assert worker01["JoinConfiguration"]["nodeRegistration"]["taints"] == []


def test_every_node_gets_firewall_bootstrap_and_ssh(example):
    site, secrets = example
    kubernetes_nodes = {n.name for n in site.nodes}
    for name, rendered in render_site(site, secrets).items():
        if name not in kubernetes_nodes:
            continue  # the edge nodes: tests/unit/test_edge.py
        config = cloud_config(rendered.user_data)
        files = files_of(config)
        assert "/etc/nftables.conf" in files
        assert files["/etc/nodekiln/bootstrap.sh"]["permissions"] == "0755"
        assert "/etc/systemd/system/nodekiln-bootstrap.service" in files
        assert config["hostname"] == name
        assert config["ssh_pwauth"] is False
        assert config["users"][0]["ssh_authorized_keys"] == site.ssh.authorizedKeys
        assert ["systemctl", "enable", "--now", "--no-block", "nodekiln-bootstrap.service"] in config["runcmd"]
        env = files["/etc/nodekiln/bootstrap.env"]["content"]
        assert ("ROLE=init" in env) == (name == "master01")
        assert "ENDPOINT=10.0.1.128:7443" in env


def test_network_config_is_static_v2(example):
    site, secrets = example
    net = yaml.safe_load(render_site(site, secrets)["worker01"].network_config)
    assert net == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "dhcp4": False,
                "dhcp6": False,
                "addresses": ["10.0.1.46/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.0.1.1"}],
                "nameservers": {"addresses": ["10.0.1.1"]},
            }
        },
    }


def test_network_config_matches_by_mac_when_given(site_file):
    site = load_site(site_file(lambda d: d["nodes"][3].update(mac="52:54:00:aa:bb:cc")))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    eth = yaml.safe_load(render_site(site, secrets)["worker01"].network_config)["ethernets"]["eth0"]
    assert eth["match"] == {"macaddress": "52:54:00:aa:bb:cc"} and eth["set-name"] == "eth0"


def test_meta_data(example):
    site, secrets = example
    meta = yaml.safe_load(render_site(site, secrets)["master02"].meta_data)
    assert meta == {"instance-id": "nodekiln-vlic-lab-master02", "local-hostname": "master02"}


def test_single_node_site_has_no_load_balancer(site_file):
    def single(doc):
        doc["controlPlane"] = {"loadBalancer": "none"}
        doc["nodes"] = doc["nodes"][:1]
        doc.pop("edge")  # it balances over workers, and this site has none
        doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"

    site = load_site(site_file(single))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    files = files_of(cloud_config(render_site(site, secrets)["master01"].user_data))
    assert not [p for p in files if "keepalived" in p or "haproxy" in p]
    cluster = documents(files["/etc/nodekiln/kubeadm.yaml"]["content"])["ClusterConfiguration"]
    assert cluster["controlPlaneEndpoint"] == "10.0.1.92:6443"


def test_write_site_writes_every_node_atomically(example, tmp_path):
    site, secrets = example
    out = tmp_path / "out"
    write_site(site, secrets, out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(n.name for n in site.machines)
    for node in site.machines:
        assert sorted(p.name for p in (out / node.name).iterdir()) == ["meta-data", "network-config", "user-data"]
        assert (out / node.name / "user-data").stat().st_mode & 0o777 == 0o600
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_site(site, secrets, out)
    assert first == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_write_site_refuses_a_folder_it_did_not_write(example, tmp_path):
    site, secrets = example
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RenderError, match="not empty"):
        write_site(site, secrets, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_render_task_bad_site_same_error_and_nothing_written(site_file, tmp_path):
    path = site_file(lambda d: d["nodes"][1].update(address="10.0.1.92"))
    out = tmp_path / "rendered"
    validate = subprocess.run(
        [sys.executable, "-m", "invoke", "validate", "--site", str(path)], cwd=REPO, capture_output=True, text=True
    )
    render = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--site", str(path), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert render.returncode == validate.returncode == 2
    assert render.stderr == validate.stderr
    assert not out.exists()
    assert not (path.parent / ".nodekiln").exists()


def test_render_task_writes_nodes(example_site, tmp_path):
    out = tmp_path / "rendered"
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--site", str(example_site), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "master01" / "user-data").read_bytes().startswith(b"#cloud-config\n")


def test_large_user_data_is_gzipped_and_too_large_fails(example, monkeypatch):
    site, secrets = example
    from nodekiln.bootstrap import render
    from nodekiln.bootstrap.nodefiles import NodeFile

    real = render.node_files
    import random

    noise = random.Random(1)
    compressible = "x" * 80_000
    monkeypatch.setattr(render, "node_files", lambda *a: [*real(*a), NodeFile("/etc/big", compressible)])
    data = user_data(site, secrets, site.nodes[0])
    assert data[:2] == b"\x1f\x8b" and len(data) <= USER_DATA_LIMIT
    assert gzip.decompress(data).startswith(b"#cloud-config")
    incompressible = "".join(noise.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(120_000))
    monkeypatch.setattr(render, "node_files", lambda *a: [*real(*a), NodeFile("/etc/big", incompressible)])
    with pytest.raises(RenderError, match="64 KiB"):
        user_data(site, secrets, site.nodes[0])


def test_control_plane_user_data_fits_uncompressed(variant_site):
    site, secrets = variant_site
    for rendered in render_site(site, secrets).values():
        assert len(rendered.user_data) <= USER_DATA_LIMIT


def test_thousand_node_site_renders(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(1000))
    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    rendered = render_site(site, secrets)
    assert len(rendered) == 1000
    assert all(len(r.user_data) <= USER_DATA_LIMIT for r in rendered.values())
