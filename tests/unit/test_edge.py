"""The edge section: its rules (each with the message a person reads) and what it renders."""

from __future__ import annotations

from typing import Any

import pytest

from nodekiln.bootstrap.edge import MASKED, PATHS, edge_files, haproxy_cfg
from nodekiln.bootstrap.firewall import ruleset
from nodekiln.bootstrap.render import render_site
from nodekiln.config.edge import ACME_DIRECTORIES
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore
from tests.unit.test_render import cloud_config, files_of
from tests.unit.test_site import one_problem, problems


def site_and_secrets(path):
    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return site, secrets


def edge(change):
    def apply(doc: dict[str, Any]) -> None:
        change(doc["edge"])

    return apply


# --- the rules -------------------------------------------------------------------------------


def test_example_edge_is_the_talks_pair(example_site):
    site = load_site(example_site)
    assert [n.name for n in site.edge_nodes] == ["edge01", "edge02"]
    assert all(n.role == "edge" for n in site.edge_nodes)
    assert [n.name for n in site.machines][-2:] == ["edge01", "edge02"]
    assert str(site.edge_address) == "10.0.1.129"
    assert site.edge_backend_port == 32443  # the ingress's, as in the talk
    assert site.edge.acme.url == ACME_DIRECTORIES["letsencrypt"] == "https://acme-v02.api.letsencrypt.org/directory"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda e: e.update(domains=["*.example.org"]), "edge.domains", "DNS-01"),
        (lambda e: e.update(domains=["Example.org."]), "edge.domains", "not a DNS name"),
        (lambda e: e.update(domains=["a.example.org", "a.example.org"]), "edge.domains", "more than once"),
        (lambda e: e.update(domains=[]), "edge.domains", "at least 1"),
        (lambda e: e["acme"].update(directory="http://acme.example.org/dir"), "edge.acme.directory", "https://"),
        (lambda e: e["acme"].update(email="ops"), "edge.acme.email", "e-mail address"),
        (lambda e: e["acme"].pop("email"), "edge.acme.email", "required"),
        (lambda e: e["nodes"].append({"name": "edge03", "address": "10.0.1.22"}), "edge.nodes", "at most 2"),
        (lambda e: e.pop("vip"), "edge.vip", "required with two edge nodes"),
        (lambda e: e.update(vip="10.0.1.128"), "edge.vip", "the API endpoint's VIP"),
        (lambda e: e.update(vip="10.0.9.1"), "edge.vip", "not a host address"),
        (lambda e: e.update(virtualRouterId=51), "edge.virtualRouterId", "different ids"),
        (lambda e: e["nodes"][0].update(name="worker01"), "edge.nodes[0].name", "repeats nodes[3].name"),
        (lambda e: e["nodes"][1].update(address="10.0.1.46"), "edge.nodes[1].address", "nodes[3] (worker01)'s"),
        (lambda e: e["nodes"][1].update(address="10.0.1.20"), "edge.nodes[1].address", "edge.nodes[0] (edge01)'s"),
        (lambda e: e["nodes"][0].update(address="10.0.1.1"), "edge.nodes[0].address", "the gateway's"),
        (lambda e: e.update(backendPort=31443), "edge.backendPort", "nodePorts.https is 32443"),
        (lambda e: e.update(backendPort=443), "edge.backendPort", "greater than or equal to 30000"),
        (lambda e: e.update(backups=[{"name": "other01", "address": "10.0.2.46"}]), "edge.backupCAFile", "required"),
        (lambda e: e.update(backupCAFile="missing.pem"), "edge.backupCAFile", "without edge.backups"),
        (
            lambda e: e.update(backups=[{"name": "other01", "address": "10.0.2.46"}], backupCAFile="missing.pem"),
            "edge.backupCAFile",
            "missing.pem: no such file",
        ),
        (lambda e: e["acme"].update(caFile="site.yaml"), "edge.acme.caFile", "not PEM certificates"),
        (lambda e: e.update(backups=[{"name": "o", "address": "no spaces"}]), "edge.backups[0].address", "DNS name"),
    ],
)
def test_bad_edge_values_are_named(site_file, change, field, words):
    message = one_problem(site_file(edge(change)), field, words)
    line = int(message.split(":")[1])
    assert line > 0


def test_edge_needs_workers_and_a_nodeport_ingress(site_file):
    def no_workers(doc):
        doc["nodes"] = [n for n in doc["nodes"] if n["role"] != "worker"]

    one_problem(site_file(no_workers), "edge", "the site has none")

    def load_balancer(doc):
        doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"
        doc["addons"]["certificates"]["enabled"] = False  # it needs the HTTP NodePort (test_certificates.py)

    one_problem(site_file(load_balancer), "edge.backendPort", "required unless addons.ingress")

    def own_ingress(doc):  # the site runs its own ingress controller: the port is given
        doc["addons"]["ingress"] = {"enabled": False}
        doc["addons"]["naavre"]["enabled"] = False
        doc["addons"]["namespaceIsolation"]["enabled"] = (
            False  # its default is NaaVRE's labs (test_namespace_isolation.py)
        )
        doc["addons"]["certificates"]["enabled"] = False
        doc["edge"]["backendPort"] = 31000

    site = load_site(site_file(own_ingress))
    assert site.edge_backend_port == 31000


def test_an_edge_role_in_nodes_is_refused(site_file):
    one_problem(site_file(lambda d: d["nodes"][3].update(role="edge")), "nodes[3].role", "listed in edge.nodes")


def test_every_edge_problem_is_reported_at_once(site_file):
    def change(doc):
        doc["edge"].pop("vip")
        doc["edge"]["virtualRouterId"] = 51
        doc["edge"]["nodes"][0]["address"] = "10.0.1.46"

    assert len(problems(site_file(change))) == 3


# --- what it renders -------------------------------------------------------------------------


def test_haproxy_balances_over_every_worker_with_the_talks_checks(example_site):
    site, _ = site_and_secrets(example_site)
    cfg = haproxy_cfg(site, site.edge_nodes[0])
    for worker in site.workers:
        assert f"  server {worker.name} {worker.address}:32443\n" in cfg
    assert "fall 3 rise 2 ssl verify required ca-file /etc/haproxy/backend-ca.pem" in cfg
    assert (
        "option allbackups" in cfg and " backup" not in cfg.split("backend ingress")[1].split("backend unknown_host")[0]
    )
    assert "use_backend acme if acme_challenge" in cfg
    assert "redirect scheme https code 301 unless acme_challenge" in cfg
    assert "-m str naavre.vlic-lab.example.org\n" in cfg
    assert "default_backend unknown_host" in cfg
    for cp in site.control_planes:
        assert str(cp.address) not in cfg


def test_backups_are_backup_servers(site_file):
    def change(doc):
        doc["edge"]["backups"] = [
            {"name": "other01", "address": "10.0.2.46"},
            {"name": "other02", "address": "lb.other.org", "port": 8443},
        ]
        doc["edge"]["backupCAFile"] = "other-ca.pem"

    path = site_file(change)
    # a real CA certificate: another site's cluster CA
    other = SecretStore(path.parent / "other", "other").ensure()[0].ca.cert
    (path.parent / "other-ca.pem").write_text(other)
    site, secrets = site_and_secrets(path)
    cfg = haproxy_cfg(site, site.edge_nodes[0])
    assert "  server other01 10.0.2.46:443 backup\n" in cfg
    assert "  server other02 lb.other.org:8443 backup resolvers system init-addr libc,none\n" in cfg
    files = {f.path: f for f in edge_files(site, secrets, site.edge_nodes[0])}
    bundle = files[PATHS["backend_ca"]].content
    assert bundle.startswith(secrets.ca.cert) and bundle.rstrip().endswith(other.rstrip())


def test_edge_user_data_starts_no_kubernetes_and_holds_no_cluster_keys(example_site):
    site, secrets = site_and_secrets(example_site)
    rendered = render_site(site, secrets)
    for node in site.edge_nodes:
        config = cloud_config(rendered[node.name].user_data)
        files = files_of(config)
        assert not [
            p for p in files if p.startswith(("/etc/kubernetes", "/etc/nodekiln/kubeadm", "/etc/nodekiln/bootstrap"))
        ]
        text = "\n".join(f["content"] for f in files.values())
        assert "PRIVATE KEY" not in text  # the cluster CA's certificate only
        assert secrets.ca.cert in files[PATHS["backend_ca"]]["content"]
        assert config["bootcmd"] == [["systemctl", "mask", "--now", *MASKED]]
        assert [
            "systemctl",
            "enable",
            "--now",
            "haproxy.service",
            "keepalived.service",
            "nodekiln-edge-certificate.timer",
        ] in config["runcmd"]
        assert files[PATHS["keepalived_conf"]]["permissions"] == "0600"
        assert f"auth_pass {secrets.vrrpPassword[:8]}" in files[PATHS["keepalived_conf"]]["content"]
        assert "virtual_router_id 52" in files[PATHS["keepalived_conf"]]["content"]
        assert "10.0.1.129/32" in files[PATHS["keepalived_conf"]]["content"]


def test_one_edge_node_has_no_keepalived(site_file):
    def one(doc):
        doc["edge"]["nodes"] = doc["edge"]["nodes"][:1]
        doc["edge"].pop("vip")

    site, secrets = site_and_secrets(site_file(one))
    assert str(site.edge_address) == "10.0.1.20"
    paths = [f.path for f in edge_files(site, secrets, site.edge_nodes[0])]
    assert not [p for p in paths if "keepalived" in p]
    config = cloud_config(render_site(site, secrets)["edge01"].user_data)
    assert ["systemctl", "enable", "--now", "haproxy.service", "nodekiln-edge-certificate.timer"] in config["runcmd"]


def test_certbot_uses_the_sites_acme_directory(site_file):
    for directory, url in [
        ("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory"),
        ("https://acme.example.net/directory", "https://acme.example.net/directory"),
    ]:
        site, secrets = site_and_secrets(site_file(edge(lambda e, d=directory: e["acme"].update(directory=d))))
        files = {f.path: f.content for f in edge_files(site, secrets, site.edge_nodes[0])}
        ini = files[PATHS["certbot_ini"]]
        assert f"server = {url}\n" in ini and "email = ops@example.org\n" in ini
        assert f"deploy-hook = {PATHS['deploy_hook']}\n" in ini
        assert "-d naavre.vlic-lab.example.org" in files[PATHS["issue"]]


def test_workers_open_the_ingress_nodeports_to_the_edge_only(example_site):
    site, _ = site_and_secrets(example_site)
    worker = ruleset(site, "worker")
    assert "elements = { 10.0.1.20, 10.0.1.21 }" in worker
    assert "tcp dport { 32080, 32443 } ip saddr @edge_nodes accept" in worker
    assert "30000-32767" not in worker  # firewall.nodePorts stays off
    assert "edge_nodes" not in ruleset(site, "control-plane")


def test_a_site_without_edge_renders_as_before(site_file):
    def no_edge(doc):
        doc.pop("edge")
        doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"

    site, secrets = site_and_secrets(site_file(no_edge))
    assert site.machines == site.nodes
    assert "edge_nodes" not in ruleset(site, "worker")
    assert sorted(render_site(site, secrets)) == sorted(n.name for n in site.nodes)
