"""What the addons' values templates see: the variables every template gets, plus each addon's own.

An addon is data (addons/<name>.yaml) plus one template. When its template needs values worked
out from the site (Calico's pool, MinIO's buckets, Velero's S3 location, NaaVRE's labs), its
definition names a function here (`context: <name>`), registered with `@context`; the catalog
rejects a name that is not registered. The plan knows no addon by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nodekiln import contract
from nodekiln.config import ports
from nodekiln.config.addons import LAB_SELECTOR, AddonBase, Bucket
from nodekiln.config.edge import ACME_DIRECTORIES
from nodekiln.secrets import KeyPair

if TYPE_CHECKING:
    from nodekiln.addons.catalog import AddonDef
    from nodekiln.config.site import Site

SecretKind = Literal["password", "user"]


class Secrets(Protocol):
    """The site's secrets store as the templates use it (plan.Secrets)."""

    def secret(self, name: str, kind: SecretKind = "password") -> str: ...

    def user_secret(self, name: str) -> str: ...

    def certificate(self, name: str, dns_names: list[str]) -> KeyPair: ...


@dataclass(frozen=True)
class Inputs:
    """What a context function may read: the site, the addon and where the others run."""

    site: Site
    definition: AddonDef
    addon: AddonBase
    namespaces: Mapping[str, str]  # release name -> namespace, for every release that is on
    secrets: Secrets


# Jinja takes any value: a template's variables are as varied as its values file.
Context = dict[str, Any]
ContextFunction = Callable[[Inputs], Context]

CONTEXTS: dict[str, ContextFunction] = {}


def context(name: str) -> Callable[[ContextFunction], ContextFunction]:
    """Register a function under the name an addon definition's `context:` gives."""

    def register(function: ContextFunction) -> ContextFunction:
        CONTEXTS[name] = function
        return function

    return register


def template_context(inputs: Inputs) -> Context:
    """Every variable of the addon's values template."""
    ctx = common(inputs)
    if inputs.definition.context is not None:
        ctx.update(CONTEXTS[inputs.definition.context](inputs))
    return ctx


def common(inputs: Inputs) -> Context:
    site = inputs.site
    return {
        "site": site,
        "addon": inputs.addon,
        "addons": site.addons,
        "namespace": inputs.namespaces[inputs.definition.name],
        "namespaces": inputs.namespaces,
        # the template pins both: what the manifests run and what the operators start
        "images": {**inputs.definition.operatorImages, **inputs.definition.images},
        "endpoint": {"address": str(site.endpoint_address), "port": site.endpoint_port},
        "secret": inputs.secrets.secret,
        "user_secret": inputs.secrets.user_secret,
        "contract": contract,
    }


@context("calico")
def calico(inputs: Inputs) -> Context:
    site = inputs.site
    return {"pool": str(site.addons.calico.ipPool or site.kubernetes.podSubnet)}


# The Secret the ingress serves when a request names no host it has a certificate for: the
# edge nodes connect without SNI, and their health checks verify it against the cluster CA.
INGRESS_DEFAULT_CERT = "nodekiln-ingress-default-cert"


@context("ingress")
def ingress(inputs: Inputs) -> Context:
    site = inputs.site
    if site.edge is None:
        return {"default_certificate": None}
    names = [f"ingress.{site.name}.{site.kubernetes.clusterDomain}", *site.edge.domains]
    return {
        "default_certificate": inputs.secrets.certificate("ingress-default-cert", names),
        "default_certificate_secret": INGRESS_DEFAULT_CERT,
    }


@context("minio")
def minio(inputs: Inputs) -> Context:
    spec = inputs.site.addons
    velero_on_minio = spec.velero.enabled and spec.velero.s3 == "minio"
    buckets = list(spec.minio.buckets)
    if velero_on_minio and spec.velero.bucket not in {b.name for b in buckets}:
        # Velero's backups need their bucket; the site lists only its own.
        buckets.insert(0, Bucket(name=spec.velero.bucket))
    return {"buckets": buckets, "velero_on_minio": velero_on_minio}


@context("velero")
def velero(inputs: Inputs) -> Context:
    site, secrets = inputs.site, inputs.secrets
    settings = site.addons.velero
    if settings.s3 == "minio":
        # MinIO in the cluster: nodekiln makes Velero's user there, so it makes the keys too.
        minio_namespace = inputs.namespaces.get("minio", "minio")
        s3 = {
            "url": f"http://minio.{minio_namespace}.svc.{site.kubernetes.clusterDomain}:9000",
            "region": "minio",
            "bucket": settings.bucket,
            "access_key": secrets.secret("velero-s3-access-key", "user"),
            "secret_key": secrets.secret("velero-s3-secret-key"),
        }
    else:
        external = settings.external
        assert external is not None, "check_addons requires addons.velero.external with s3: external"
        s3 = {
            "url": external.url,
            "region": external.region,
            "bucket": external.bucket,
            "access_key": secrets.user_secret("velero-s3-access-key"),
            "secret_key": secrets.user_secret("velero-s3-secret-key"),
        }
    return {"s3": s3}


# NaaVRE-helm's values chart (values/values.yaml) defines an `openlab` lab, and its
# check-required-values.yaml requires every value of it: a site without a lab of that slug turns
# it off with placeholders (only enabled labs reach the hub, the containerizer and the catalogue:
# templates/jupyterhub.yaml profileList, templates/global.yaml vlabs).
_OPENLAB_OFF: dict[str, Any] = {
    "enabled": False,
    "title": "NaaVRE Open Lab (off)",
    "description": "",
    "dirname": "Open Lab",
    "baseImageTagsUrl": "unused",
    "moduleMappingUrl": "unused",
    "cellGithubUrl": "unused",
    "cellGithubToken": "unused",
    "registryUrl": "unused",
}

# The vanilla flavor publishes the cells' base images with each release (values/values.yaml
# pairs image tag v0.3.16 with .../releases/download/v0.3.16/base_image_tags.json).
FLAVOR_TAGS_URL = "https://github.com/NaaVRE/flavors/releases/download/{tag}/base_image_tags.json"


def _image(reference: str) -> dict[str, str]:
    """name:tag -> the chart's {name, tag} (it writes "{{ .image.name }}:{{ .image.tag }}")."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        raise ValueError(f"image {reference!r} has no tag")
    return {"name": name, "tag": tag}


# The ClusterIssuers of the certificates addon: its `issuer` setting names one of them.
ISSUERS = {
    "letsencrypt-production": ACME_DIRECTORIES["letsencrypt"],
    "letsencrypt-staging": ACME_DIRECTORIES["letsencrypt-staging"],
}


def certificate_issuer(site: Site) -> str | None:
    """The ClusterIssuer Ingresses name when the certificates addon is on, else None."""
    certificates = site.addons.certificates
    return certificates.issuer if site.addons.enabled and certificates.enabled else None


@context("certificates")
def certificates(inputs: Inputs) -> Context:
    settings = inputs.site.addons.certificates
    return {"issuers": ISSUERS, "email": settings.account_email(inputs.site)}


@context("naavre")
def naavre(inputs: Inputs) -> Context:
    settings = inputs.site.addons.naavre
    vanilla = _image(inputs.definition.images["vanillaJupyter"])
    labs: dict[str, dict[str, Any]] = {}
    for slug, lab in settings.virtualLabs.items():
        image = _image(lab.image) if lab.image else vanilla
        labs[slug] = {
            **lab.model_dump(),
            "enabled": True,
            "dirname": lab.dirname or lab.title,
            "image": image,
            "baseImageTagsUrl": lab.baseImageTagsUrl or FLAVOR_TAGS_URL.format(tag=vanilla["tag"]),
            "cellGithubToken": inputs.secrets.user_secret(f"naavre-vlab-{slug}-cell-github-token"),
        }
    if "openlab" not in labs:
        labs["openlab"] = {**_OPENLAB_OFF, "image": vanilla}
    issuer = certificate_issuer(inputs.site)
    # tls unset: on when cert-manager makes the certificates, off otherwise (the edge or the
    # ingress's default certificate serves TLS then).
    tls = settings.tls if settings.tls is not None else issuer is not None
    return {
        "labs": labs,
        "certificate_issuer": issuer if tls else None,
        "tls": tls,
        "isolated_labs": isolates_labs(inputs, lab_labels(inputs.definition.name)),
        "hub_metrics": _hub_metrics_access(inputs),
    }


def _hub_metrics_access(inputs: Inputs) -> dict[str, Any] | None:
    """What the hub needs to let Prometheus read its metrics, when the monitoring addon scrapes it:
    a JupyterHub service with the read:metrics scope holding the token, and a way in through z2jh's
    hub NetworkPolicy (its only other source is pods labelled hub.jupyter.org/network-access-hub)."""
    if not scrapes_hub(inputs.site, inputs.namespaces):
        return None
    return {
        "service": HUB_METRICS_SERVICE,
        "scope": HUB_METRICS_SCOPE,
        "token": inputs.secrets.secret(HUB_METRICS_TOKEN),
        "from": [_in(inputs.namespaces["monitoring"])],
    }


def lab_labels(release: str) -> dict[str, str]:
    """The labels of a lab pod: z2jh's singleuser selector (jupyterhub.matchLabels: component,
    app, release; templates/_helpers.tpl) as KubeSpawner sets them (files/hub/jupyterhub_config.py
    common_labels: app = the chart's name, release = the release's)."""
    return {**LAB_SELECTOR, "app": "jupyterhub", "release": release}


def hub_labels(release: str) -> dict[str, str]:
    """The labels of JupyterHub's hub Service: z2jh templates/hub/service.yaml labels it
    jupyterhub.labels, whose legacy part is component (hub), app (the chart's name) and release."""
    return {"component": "hub", "app": "jupyterhub", "release": release}


# JupyterHub answers /hub/metrics only to a token with the read:metrics scope unless
# authenticate_prometheus is off (jupyterhub 5.2.1 jupyterhub/utils.py metrics_authentication),
# and takes the token as "Authorization: Bearer <token>" (handlers/base.py auth_header_pat). z2jh
# turns hub.services.<name>.api_token into such a service and hub.loadRoles.<name> into its role
# (files/hub/jupyterhub_config.py). Leaving authentication on keeps the metrics private: the
# proxy also routes <baseUrl>/hub/metrics from the public Ingress to the hub.
HUB_METRICS_SERVICE = "prometheus"
HUB_METRICS_SCOPE = "read:metrics"
HUB_METRICS_TOKEN = "naavre-hub-metrics-token"  # in the site's secrets store
HUB_METRICS_SECRET = "naavre-hub-metrics"  # the Kubernetes Secret in the monitoring namespace
HUB_METRICS_KEY = "token"  # its key holding the token
# The operator mounts each Secret of Prometheus' spec.secrets at /etc/prometheus/secrets/<name>/
# (prometheus-operator pkg/prometheus/statefulset.go, secretsDir).
PROMETHEUS_SECRETS_DIR = "/etc/prometheus/secrets"


def scrapes_hub(site: Site, namespaces: Mapping[str, str]) -> bool:
    """Whether the monitoring addon scrapes NaaVRE's hub (found by its prometheus.io annotations)."""
    return "naavre" in namespaces and "monitoring" in namespaces and site.addons.monitoring.scrapeAnnotations


# CoreDNS as kubeadm deploys it: Deployment `coredns` in kube-system, pods labelled
# k8s-app: kube-dns, serving port 53 over UDP and TCP (kubernetes/kubernetes
# cmd/kubeadm/app/phases/addons/dns/manifests.go, CoreDNSDeployment).
KUBE_DNS = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}, "port": 53}
# The label the API server gives every namespace (kubernetes.io/metadata.name: <name>, since 1.22).
NAMESPACE_NAME = "kubernetes.io/metadata.name"
# HTTPS: the labs reach NaaVRE's services at https://<addons.naavre.domain>/ (NaaVRE-helm
# values/templates/jupyterhub.yaml, the JupyterLab extensions' service URLs).
PUBLIC_PORT = 443


def _in(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME: namespace}}}


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


@context("namespace-isolation")
def namespace_isolation(inputs: Inputs) -> Context:
    """One policy per isolated namespace: the talk's egress (own namespace, kube-system) plus
    DNS and the site's public entry; ingress from the namespace itself and what it needs."""
    site, namespaces = inputs.site, inputs.namespaces
    settings = site.addons.namespaceIsolation
    ingress_namespace = namespaces.get("ingress")
    monitoring = namespaces.get("monitoring")  # the monitoring addon's scrapes, when it is on
    edge = site.edge_address
    if edge is not None:
        # the public names point at the edge (VIP or its one node): HAProxy passes to the ingress
        public: dict[str, Any] = {"cidr": f"{edge}/32", "port": PUBLIC_PORT}
    elif ingress_namespace is not None:
        # no edge: the public names reach the ingress controller's pods (its LoadBalancer)
        public = {"namespace": ingress_namespace}
    else:
        public = {}
    policies = []
    for entry in settings.entries(namespaces):
        sources = [entry.namespace]
        if entry.whole and ingress_namespace is not None:
            sources.append(ingress_namespace)  # the namespace's own Ingresses
        if monitoring is not None:
            sources.append(monitoring)
        sources.extend(entry.ingressFrom)
        policies.append(
            {
                "namespace": entry.namespace,
                "podSelector": {"matchLabels": dict(entry.podSelector)} if entry.podSelector else {},
                "kube_system": settings.kubeSystem == "all",
                "public": public,
                "egress": [
                    {
                        "cidr": str(rule.cidr),
                        "ports": [{"port": p.port, "protocol": p.protocol} for p in rule.ports],
                    }
                    for rule in entry.egress
                ],
                "sources": _unique(sources),
            }
        )
    return {"policies": policies, "dns": KUBE_DNS, "namespace_label": NAMESPACE_NAME}


def isolates_labs(inputs: Inputs, labels: dict[str, str]) -> bool:
    """Whether namespace-isolation covers pods with `labels` in this release's namespace."""
    spec = inputs.site.addons
    if not (spec.enabled and spec.namespaceIsolation.enabled):
        return False
    namespace = inputs.namespaces[inputs.definition.name]
    return any(
        entry.namespace == namespace and entry.selects(labels)
        for entry in spec.namespaceIsolation.entries(inputs.namespaces)
    )


def annotation_scrape_job(
    role: Literal["endpointslice", "pod"],
    *,
    name: str | None = None,
    only: tuple[list[str], str] | None = None,
    without: tuple[list[str], str] | None = None,
    credentials_file: str | None = None,
) -> dict[str, Any]:
    """A Prometheus scrape job for the objects annotated prometheus.io/scrape: "true" (Services,
    through their endpoints, or pods), taking path, port and scheme from the annotations.

    `only` keeps and `without` drops the targets whose (source labels, regex) match; a job with
    `credentials_file` sends its contents as a bearer token (the scrape config's authorization).
    The relabelling of Prometheus' documentation/examples/prometheus-kubernetes.yml (jobs
    kubernetes-service-endpoints and kubernetes-pods); meta label names per
    discovery/kubernetes/endpointslice.go and pod.go (annotation names sanitized to
    [a-zA-Z0-9_]).
    """
    meta = (
        "__meta_kubernetes_service_annotation_prometheus_io_"
        if role == "endpointslice"
        else ("__meta_kubernetes_pod_annotation_prometheus_io_")
    )
    relabel: list[dict[str, Any]] = [{"source_labels": [f"{meta}scrape"], "action": "keep", "regex": "true"}]
    if only is not None:
        relabel.append({"source_labels": only[0], "action": "keep", "regex": only[1]})
    if without is not None:
        relabel.append({"source_labels": without[0], "action": "drop", "regex": without[1]})
    relabel += [
        {"source_labels": [f"{meta}scheme"], "action": "replace", "target_label": "__scheme__", "regex": "(https?)"},
        {"source_labels": [f"{meta}path"], "action": "replace", "target_label": "__metrics_path__", "regex": "(.+)"},
        {
            "source_labels": ["__address__", f"{meta}port"],
            "action": "replace",
            "target_label": "__address__",
            "regex": r"(.+?)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace", "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace", "target_label": "pod"},
    ]
    if role == "endpointslice":
        relabel.append(
            {"source_labels": ["__meta_kubernetes_service_name"], "action": "replace", "target_label": "service"}
        )
    default_name = "kubernetes-service-endpoints" if role == "endpointslice" else "kubernetes-pods"
    job: dict[str, Any] = {
        "job_name": name or default_name,
        "kubernetes_sd_configs": [{"role": role}],
        "relabel_configs": relabel,
    }
    if credentials_file is not None:
        job["authorization"] = {"type": "Bearer", "credentials_file": credentials_file}
    return job


def hub_targets(namespace: str, release: str) -> tuple[list[str], str]:
    """Source labels and regex matching the endpoints of NaaVRE's hub Service, and nothing else:
    its namespace and its labels (service labels are __meta_kubernetes_service_label_<name>,
    discovery/kubernetes/service.go)."""
    labels = hub_labels(release)
    names = ["__meta_kubernetes_namespace", *(f"__meta_kubernetes_service_label_{k}" for k in labels)]
    return names, ";".join(re.escape(v) for v in [namespace, *labels.values()])


def scrape_jobs(site: Site, namespaces: Mapping[str, str]) -> list[dict[str, Any]]:
    """The annotation scrape jobs; NaaVRE's hub gets its own job, the only one holding its token."""
    if not site.addons.monitoring.scrapeAnnotations:
        return []
    if not scrapes_hub(site, namespaces):
        return [annotation_scrape_job("endpointslice"), annotation_scrape_job("pod")]
    hub = hub_targets(namespaces["naavre"], "naavre")
    return [
        annotation_scrape_job("endpointslice", without=hub),
        annotation_scrape_job("pod"),
        annotation_scrape_job(
            "endpointslice",
            name="naavre-jupyterhub",
            only=hub,
            credentials_file=f"{PROMETHEUS_SECRETS_DIR}/{HUB_METRICS_SECRET}/{HUB_METRICS_KEY}",
        ),
    ]


@context("monitoring")
def monitoring(inputs: Inputs) -> Context:
    settings = inputs.site.addons.monitoring
    return {
        # the ports kubeadm's components serve their metrics on (contract.metrics_args)
        "ports": {
            "etcd": ports.ETCD_METRICS,
            "controllerManager": ports.KUBE_CONTROLLER_MANAGER,
            "scheduler": ports.KUBE_SCHEDULER,
            "kubeProxy": ports.KUBE_PROXY_METRICS,
            "nodeExporter": ports.NODE_EXPORTER,
        },
        "retention_size": f"{settings.retention_bytes() // 2**20}MiB",
        "scrape_configs": scrape_jobs(inputs.site, inputs.namespaces),
        # the hub's token, as the Secret Prometheus mounts (the same secret as NaaVRE's overlay)
        "hub_metrics": (
            {"secret": HUB_METRICS_SECRET, "key": HUB_METRICS_KEY, "token": inputs.secrets.secret(HUB_METRICS_TOKEN)}
            if scrapes_hub(inputs.site, inputs.namespaces)
            else None
        ),
    }
