"""The monitoring addon against the real kube-prometheus-stack 88.5.3 chart: it scrapes what
nodekiln's kubeadm configuration exposes, its scrape jobs pass promtool and find NaaVRE's hub
through its prometheus.io annotations (the real z2jh Service), its storage is the site's."""

from __future__ import annotations

import base64
import subprocess

import pytest
import yaml

from nodekiln import contract
from nodekiln.bootstrap.render import kubeadm_config
from nodekiln.secrets import generate
from testing import promrelabel
from testing.netpol import Pod, Policies
from tests.tools.conftest import render_site, require

pytestmark = pytest.mark.tools

# kubeadm labels its static pods component=<name> (cmd/kubeadm/app/util/staticpod/utils.go,
# ComponentPod) and kube-proxy's DaemonSet pods k8s-app=kube-proxy (cmd/kubeadm/app/phases/
# addons/proxy/manifests.go, KubeProxyDaemonSet19)
KUBEADM_SELECTORS = {
    "kube-controller-manager": {"component": "kube-controller-manager"},
    "kube-scheduler": {"component": "kube-scheduler"},
    "kube-etcd": {"component": "etcd"},
    "kube-proxy": {"k8s-app": "kube-proxy"},
}


def secret_text(secret: dict, key: str) -> str:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    return base64.b64decode(secret["data"][key]).decode()


@pytest.fixture(scope="module")
def monitoring(example_render):
    return example_render.releases["monitoring"]


def test_every_kubeadm_component_is_scraped_where_kubeadm_now_listens(example_render, monitoring):
    site = example_render.site
    docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm_config(site, generate(), site.init_node)) if d}
    cluster = docs["ClusterConfiguration"]
    listening = {
        "kube-controller-manager": (
            contract.extra_arg(cluster["controllerManager"]["extraArgs"], "bind-address"),
            10257,  # kubeadm's KubeControllerManagerPort: the secure port follows bind-address
        ),
        "kube-scheduler": (contract.extra_arg(cluster["scheduler"]["extraArgs"], "bind-address"), 10259),
        "kube-etcd": tuple(
            contract.extra_arg(cluster["etcd"]["local"]["extraArgs"], "listen-metrics-urls")
            .removeprefix("http://")
            .split(":")
        ),
        "kube-proxy": tuple(docs["KubeProxyConfiguration"]["metricsBindAddress"].split(":")),
    }
    services = {s["metadata"]["name"]: s for s in monitoring.of_kind("Service")}
    for component, selector in KUBEADM_SELECTORS.items():
        service = services[f"monitoring-kube-prometheus-{component}"]
        assert service["metadata"]["namespace"] == "kube-system"
        assert service["spec"]["selector"] == selector, component
        address, port = listening[component]
        assert address == "0.0.0.0", component  # not 127.0.0.1: reachable from Prometheus' pod
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [int(port)], component
    # the controller manager and the scheduler serve only TLS; etcd's metrics and kube-proxy's are plain
    monitors = {
        m["metadata"]["name"].removeprefix("monitoring-kube-prometheus-"): m
        for m in monitoring.of_kind("ServiceMonitor")
    }
    schemes = {c: monitors[c]["spec"]["endpoints"][0].get("scheme", "http") for c in KUBEADM_SELECTORS}
    assert schemes == {
        "kube-controller-manager": "https",
        "kube-scheduler": "https",
        "kube-etcd": "http",
        "kube-proxy": "http",
    }


def test_prometheus_keeps_the_sites_retention_on_a_default_class_volume(example_render, monitoring):
    settings = example_render.site.addons.monitoring
    (prometheus,) = monitoring.of_kind("Prometheus")
    spec = prometheus["spec"]
    assert spec["retention"] == settings.retention
    assert spec["retentionSize"] == f"{settings.retention_bytes() // 2**20}MiB"
    claim = spec["storage"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == settings.size and "storageClassName" not in claim
    # every ServiceMonitor of the cluster, not only the release's (an empty selector matches all)
    assert spec["serviceMonitorSelector"] == {} and spec["podMonitorSelector"] == {}


def scrape_jobs(monitoring) -> list[dict]:
    (prometheus,) = monitoring.of_kind("Prometheus")
    ref = prometheus["spec"]["additionalScrapeConfigs"]
    (secret,) = [s for s in monitoring.of_kind("Secret") if s["metadata"]["name"] == ref["name"]]
    return yaml.safe_load(secret_text(secret, ref["key"]))


# discovery/kubernetes/kubernetes.go (Role constants): what kubernetes_sd_configs accepts
KUBERNETES_SD_ROLES = {"endpoints", "endpointslice", "service", "pod", "node", "ingress"}


def promtool_check(jobs: list[dict], tmp_path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` of the jobs. Debian's promtool is built without Kubernetes service
    discovery ("field kubernetes_sd_configs not found"), so each job's discovery is swapped for
    static_configs: promtool then checks everything nodekiln wrote but the role, which the
    caller checks against Prometheus' roles. promtool also opens a job's credentials file: it is
    made under tmp_path, where the operator would mount the Secret in the pod."""
    swapped = []
    for job in jobs:
        job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
        if "authorization" in job:
            mounted = tmp_path / job["authorization"]["credentials_file"].lstrip("/")
            mounted.parent.mkdir(parents=True, exist_ok=True)
            mounted.write_text("token")
            job["authorization"] = {**job["authorization"], "credentials_file": str(mounted)}
        swapped.append({**job, "static_configs": [{"targets": ["192.0.2.1:9100"]}]})
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": swapped}))
    return subprocess.run([require("promtool"), "check", "config", str(config)], capture_output=True, text=True)


def test_the_annotation_scrape_jobs_pass_promtool(monitoring, tmp_path):
    jobs = scrape_jobs(monitoring)
    assert [j["job_name"] for j in jobs] == ["kubernetes-service-endpoints", "kubernetes-pods", "naavre-jupyterhub"]
    assert [sd["role"] for j in jobs for sd in j["kubernetes_sd_configs"]] == ["endpointslice", "pod", "endpointslice"]
    assert {sd["role"] for j in jobs for sd in j["kubernetes_sd_configs"]} <= KUBERNETES_SD_ROLES
    result = promtool_check(jobs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # and promtool can fail: an action Prometheus does not know, a regex RE2 does not take
    jobs[0]["relabel_configs"][0]["action"] = "kepp"
    jobs[1]["relabel_configs"][0]["regex"] = "(?<=x)true"
    result = promtool_check(jobs, tmp_path)
    assert result.returncode != 0 and "kepp" in result.stdout + result.stderr


def _kept_services(example_render, job: dict) -> dict[str, dict[str, str]]:
    """Every Service the site renders, as one endpoint each, through the job's relabelling."""
    kept = {}
    for release in example_render.releases.values():
        for service in release.of_kind("Service"):
            ports = service["spec"].get("ports") or [{"port": 80}]
            labels = promrelabel.service_endpoint_labels(
                service, release.release.namespace, "192.168.1.20", ports[0]["port"], "pod-0"
            )
            target = promrelabel.relabel(labels, job["relabel_configs"])
            if target is not None:
                kept[service["metadata"]["name"]] = target
    return kept


def test_naavres_hub_is_found_by_its_annotations_and_scraped_once(example_render, monitoring):
    """JupyterHub's hub Service (z2jh templates/hub/service.yaml, as NaaVRE renders it) carries
    prometheus.io/scrape, /path and /port. Its own job scrapes it there; the generic job leaves it
    out, and Services a ServiceMonitor scrapes already (the node exporter's chart annotates its
    own) too: nothing else in the site is annotated."""
    jobs = {j["job_name"]: j for j in scrape_jobs(monitoring)}
    assert _kept_services(example_render, jobs["kubernetes-service-endpoints"]) == {}
    kept = _kept_services(example_render, jobs["naavre-jupyterhub"])
    assert list(kept) == ["naavre-jupyter-hub"]
    hub = kept["naavre-jupyter-hub"]
    # the hub's base URL is NaaVRE's /jupyter/ (its values chart), the port the hub's 8081
    assert promrelabel.scrape_url(hub) == "http://192.168.1.20:8081/jupyter/hub/metrics"
    assert hub["namespace"] == "naavre" and hub["service"] == "naavre-jupyter-hub"
    # only this job sends a token
    assert [name for name, job in jobs.items() if "authorization" in job] == ["naavre-jupyterhub"]


def test_prometheus_holds_the_token_the_hub_grants_its_metrics_to(example_render, monitoring):
    """JupyterHub answers /hub/metrics only to a token with the read:metrics scope (jupyterhub
    5.2.1 utils.py metrics_authentication; z2jh 4.1.0 runs it). The hub job's bearer token is a
    file of a Secret Prometheus mounts (prometheus-operator: spec.secrets under
    /etc/prometheus/secrets/<name>/); z2jh's hub Secret holds the same token for a service whose
    role has that scope (files/hub/jupyterhub_config.py reads hub.services and hub.loadRoles from it)."""
    (job,) = [j for j in scrape_jobs(monitoring) if j["job_name"] == "naavre-jupyterhub"]
    assert job["authorization"]["type"] == "Bearer"
    directory, secret_name, key = job["authorization"]["credentials_file"].rsplit("/", 2)
    assert directory == "/etc/prometheus/secrets"
    (prometheus,) = monitoring.of_kind("Prometheus")
    assert secret_name in prometheus["spec"]["secrets"]
    (mounted,) = [s for s in monitoring.of_kind("Secret") if s["metadata"]["name"] == secret_name]
    token = secret_text(mounted, key)

    naavre = example_render.releases["naavre"]
    (hub_secret,) = [s for s in naavre.of_kind("Secret") if s["metadata"]["name"] == "naavre-jupyter-hub"]
    hub_values = yaml.safe_load(secret_text(hub_secret, "values.yaml"))["hub"]
    services = [
        name for name in hub_values["services"] if secret_text(hub_secret, f"hub.services.{name}.apiToken") == token
    ]
    assert services == ["prometheus"]
    granted = [role for role in hub_values["loadRoles"].values() if "prometheus" in role.get("services", [])]
    assert [role["scopes"] for role in granted] == [["read:metrics"]]
    # the token stays out of what the hub hands its users: authentication of the metrics is on
    assert hub_values.get("authenticatePrometheus") in (None, True)


def test_without_naavre_there_is_no_hub_job_and_no_token(tmp_path):
    rendered = render_site(tmp_path, {"naavre": {"enabled": False}, "namespaceIsolation": {"enabled": False}})
    monitoring = rendered.releases["monitoring"]
    assert [j["job_name"] for j in scrape_jobs(monitoring)] == ["kubernetes-service-endpoints", "kubernetes-pods"]
    (prometheus,) = monitoring.of_kind("Prometheus")
    assert "secrets" not in prometheus["spec"]
    assert "naavre-hub-metrics" not in {s["metadata"]["name"] for s in monitoring.of_kind("Secret")}


def test_prometheus_gets_through_the_hubs_network_policy_and_others_do_not(example_render):
    """z2jh's hub NetworkPolicy (templates/hub/netpol.yaml) lets in only pods labelled
    hub.jupyter.org/network-access-hub; NaaVRE's overlay adds the monitoring namespace."""
    policies = Policies.of((r.release.namespace, item) for r in example_render.releases.values() for item in r.objects)
    hub = Pod(
        "naavre",
        {"component": "hub", "app": "jupyterhub", "release": "naavre"},
        ip="192.168.10.6",
        ports={"http": 8081},
    )
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, ip="192.168.30.4")
    assert policies.selecting(hub, "Ingress")  # z2jh's policy is there
    assert policies.allows(prometheus, hub, 8081)
    assert not policies.allows(Pod("default", {"app": "curious"}, ip="192.168.40.2"), hub, 8081)


# What the real charts annotate prometheus.io/scrape on their pods, at the pinned versions
# (cert-manager's three, Traefik's metrics entrypoint, Velero's server and node agent).
ANNOTATED_WORKLOADS = {
    ("cert-manager", "cert-manager"),
    ("cert-manager", "cert-manager-cainjector"),
    ("cert-manager", "cert-manager-webhook"),
    ("ingress", "ingress-traefik"),
    ("velero", "velero"),
    ("velero", "node-agent"),
}


def test_the_addons_pods_are_scraped_on_a_port_they_declare(example_render, monitoring):
    """The pod job keeps every workload whose pods are annotated, at the annotated port, which one
    of its containers declares (so something listens there); nothing else is kept, and none of it
    is also a ServiceMonitor's (those are the monitoring release's own)."""
    (job,) = [j for j in scrape_jobs(monitoring) if j["job_name"] == "kubernetes-pods"]
    scraped = {}
    for name, release in example_render.releases.items():
        for workload in release.objects:
            if workload["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
                continue
            template = workload["spec"]["template"]
            targets = promrelabel.pod_targets(template, release.release.namespace, "192.168.5.9", "pod-0")
            kept = [promrelabel.relabel(t, job["relabel_configs"]) for t in targets]
            urls = {promrelabel.scrape_url(t) for t in kept if t is not None}
            if urls:
                scraped[(name, workload["metadata"]["name"])] = (urls, template)
    assert set(scraped) == ANNOTATED_WORKLOADS
    for key, (urls, template) in scraped.items():
        declared = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports") or []}
        annotations = template["metadata"]["annotations"]
        assert urls == {f"http://192.168.5.9:{annotations['prometheus.io/port']}/metrics"}, key
        assert int(annotations["prometheus.io/port"]) in declared, key
