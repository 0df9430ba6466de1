"""The monitoring addon's settings and what it changes on the nodes: kubeadm's bind addresses and
the nftables and security-group ports that let Prometheus in."""

from __future__ import annotations

import typing

import pytest
import yaml

from nodekiln import contract
from nodekiln.addons.plan import build_plan
from nodekiln.bootstrap.firewall import metrics_ports, ruleset
from nodekiln.bootstrap.render import kubeadm_config
from nodekiln.config import ports
from nodekiln.config.site import load_site
from nodekiln.openstack.resources import rules as role_rules
from nodekiln.secrets import generate
from tests.unit.test_site import one_problem

CONTROL_PLANE_METRICS = [ports.ETCD_METRICS, ports.NODE_EXPORTER, ports.KUBE_PROXY_METRICS, 10257, 10259]


def monitoring(change):
    def apply(doc: dict[str, typing.Any]) -> None:
        change(doc["addons"]["monitoring"])

    return apply


def off(doc):
    doc["addons"]["monitoring"]["enabled"] = False


def docs(site) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(kubeadm_config(site, generate(), site.init_node)) if d}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (monitoring(lambda m: m.update(retention="two weeks")), "addons.monitoring.retention", "should match"),
        (monitoring(lambda m: m.update(size="50G")), "addons.monitoring.size", "should match"),
        (monitoring(lambda m: m.update(retentionSize="50GiB")), "addons.monitoring.retentionSize", "does not fit"),
        (monitoring(lambda m: m.update(retentionSize="40GB")), "addons.monitoring.retentionSize", "should match"),
    ],
)
def test_bad_settings_are_named(site_file, change, field, words):
    one_problem(site_file(change), field, words)


def test_retention_size_is_85_percent_of_the_volume_unless_given(site_file):
    site = load_site(site_file())
    values = yaml.safe_load(build_plan(site).files["monitoring.values.yaml"][0])
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["retention"] == "15d"
    assert spec["retentionSize"] == f"{50 * 1024 * 85 // 100}MiB"  # of 50Gi
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "50Gi"
    assert "storageClassName" not in claim  # the cluster's default StorageClass
    given = load_site(site_file(monitoring(lambda m: m.update(retentionSize="30GiB", storageClass="fast"))))
    spec = yaml.safe_load(build_plan(given).files["monitoring.values.yaml"][0])["prometheus"]["prometheusSpec"]
    assert spec["retentionSize"] == "30720MiB"
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "fast"


def test_grafana_password_comes_from_the_secrets_store(site_file):
    site = load_site(site_file())
    text = build_plan(site).files["monitoring.values.yaml"][0]
    password = yaml.safe_load(text)["grafana"]["adminPassword"]
    assert len(password) >= 20
    assert build_plan(site).files["monitoring.values.yaml"][0] == text  # generated once, then kept


def test_kubeadm_binds_the_metrics_to_every_address_only_with_monitoring(site_file):
    """kubeadm's defaults: bind-address 127.0.0.1 for the controller manager and the scheduler
    (contract.KCM_BIND_REF, SCHEDULER_BIND_REF), listen-metrics-urls http://127.0.0.1:2381 for
    etcd (ETCD_METRICS_REF), kube-proxy's metricsBindAddress 127.0.0.1:10249
    (KUBE_PROXY_METRICS_REF)."""
    on = docs(load_site(site_file()))
    cluster = on["ClusterConfiguration"]
    assert contract.extra_arg(cluster["controllerManager"]["extraArgs"], "bind-address") == "0.0.0.0"
    assert contract.extra_arg(cluster["scheduler"]["extraArgs"], "bind-address") == "0.0.0.0"
    assert contract.extra_arg(cluster["etcd"]["local"]["extraArgs"], "listen-metrics-urls") == "http://0.0.0.0:2381"
    assert on["KubeProxyConfiguration"]["metricsBindAddress"] == "0.0.0.0:10249"
    # what kubeadm itself adds stays (the flex volume directory of the read-only /usr)
    assert contract.extra_arg(cluster["controllerManager"]["extraArgs"], "flex-volume-plugin-dir")
    without = docs(load_site(site_file(off)))
    cluster = without["ClusterConfiguration"]
    assert "KubeProxyConfiguration" not in without and "scheduler" not in cluster
    assert "extraArgs" not in cluster["etcd"]["local"]
    assert contract.extra_arg(cluster["controllerManager"]["extraArgs"], "bind-address") is None


def test_nftables_opens_exactly_the_scraped_ports_to_pods_and_nodes(site_file):
    site = load_site(site_file())
    assert metrics_ports(site, "control-plane") == sorted(CONTROL_PLANE_METRICS)
    assert metrics_ports(site, "worker") == [ports.NODE_EXPORTER, ports.KUBE_PROXY_METRICS]
    for role in ("control-plane", "worker"):
        opened = ", ".join(str(p) for p in metrics_ports(site, role))
        text = ruleset(site, role)
        assert f"tcp dport {{ {opened} }} ip saddr @pod_network accept" in text
        assert f"tcp dport {{ {opened} }} ip saddr @node_network accept" in text
        assert text.count(str(ports.KUBE_PROXY_METRICS)) == 2  # those two rules and nothing else
    quiet = load_site(site_file(off))
    assert metrics_ports(quiet, "control-plane") == []
    for role in ("control-plane", "worker"):
        text = ruleset(quiet, role)
        assert str(ports.ETCD_METRICS) not in text and str(ports.NODE_EXPORTER) not in text


def test_security_groups_let_in_what_nftables_does(site_file):
    site = load_site(site_file())
    for role in ("control-plane", "worker"):
        rules = role_rules(site, role)
        for port in metrics_ports(site, role):
            sources = {r.remote_ip_prefix for r in rules if r.port_min == port == r.port_max}
            assert sources == {str(site.kubernetes.podSubnet), str(site.network.cidr)}, (role, port, sources)
    quiet = load_site(site_file(off))
    rules = role_rules(quiet, "control-plane")
    assert not [r for r in rules if r.port_min == ports.ETCD_METRICS]


def test_the_hub_and_prometheus_share_one_token_only_with_monitoring(site_file):
    plan = build_plan(load_site(site_file()))
    overlay_text, overlay_mode = plan.files["naavre.overlay.yaml"]
    values_text, values_mode = plan.files["monitoring.values.yaml"]
    hub = yaml.safe_load(overlay_text)["jupyterhub"]["hub"]
    monitoring_values = yaml.safe_load(values_text)
    (secret,) = monitoring_values["extraManifests"]
    assert hub["services"]["prometheus"]["api_token"] == secret["stringData"]["token"]
    assert len(secret["stringData"]["token"]) >= 20
    assert overlay_mode == values_mode == 0o600  # both hold it
    assert monitoring_values["prometheus"]["prometheusSpec"]["secrets"] == [secret["metadata"]["name"]]

    without = build_plan(load_site(site_file(off)))
    assert "monitoring.values.yaml" not in without.files
    assert "hub" not in (yaml.safe_load(without.files["naavre.overlay.yaml"][0]).get("jupyterhub") or {})
    no_annotations = build_plan(load_site(site_file(monitoring(lambda m: m.update(scrapeAnnotations=False)))))
    assert "hub" not in (yaml.safe_load(no_annotations.files["naavre.overlay.yaml"][0]).get("jupyterhub") or {})
    assert "extraManifests" not in yaml.safe_load(no_annotations.files["monitoring.values.yaml"][0])
