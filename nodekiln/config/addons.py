"""The site file's `addons:` section: which addons a site runs and their settings.

Every built-in addon has the same base (`enabled`, `version`, `namespace`, `values`) plus its
own settings; `releases:` adds the site's own Helm releases. Rules that span fields (NFS on
without a server, a CNI pool that is not the pod subnet, unknown dependencies, an override file
that does not parse) live in `check_addons`, which `check_site` calls, so they come out in the
site file's error format with the line of the field.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence
from functools import cache
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import Field, field_validator

from nodekiln import assets
from nodekiln.config.edge import EMAIL
from nodekiln.config.model import DNS_LABEL, DURATION, LABEL_NAME, LABEL_VALUE, Strict
from nodekiln.config.yamlsrc import PathKey
from nodekiln.errors import NodekilnError

if TYPE_CHECKING:  # the site imports this module: no import back at run time
    from nodekiln.config.site import Site

RELEASE_NAME = r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$"
ReleaseName = Annotated[
    str, Field(pattern=RELEASE_NAME, description="Helm release name: lower-case letters, digits and '-', at most 53")
]
Namespace = Annotated[str, Field(pattern=DNS_LABEL.pattern, description="Kubernetes namespace (DNS-1123 label)")]
Duration = Annotated[str, Field(pattern=DURATION.pattern, min_length=2, description="a duration like 10m or 1h30m")]
Cron = Annotated[
    str,
    Field(pattern=r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$", description='cron schedule, e.g. "0 2 * * *"'),
]


class AddonBase(Strict):
    enabled: bool = True
    version: str | None = Field(
        default=None, description="chart version instead of the pinned one (addons/<name>.yaml)"
    )
    namespace: Namespace | None = Field(default=None, description="namespace instead of the addon's default")
    values: str | None = Field(
        default=None, description="YAML file (beside the site file) merged over the rendered values"
    )

    def after_namespaces(self, namespaces: Mapping[str, str]) -> list[str]:
        """Namespaces this addon puts objects into besides its own: it is installed after the
        releases that install into them (they create them). `namespaces`: release -> namespace."""
        return []


class Calico(AddonBase):
    ipPool: IPv4Network | None = Field(
        default=None, description="Calico's IP pool; must equal kubernetes.podSubnet (the default)"
    )
    encapsulation: Literal["VXLANCrossSubnet", "VXLAN", "IPIP", "IPIPCrossSubnet", "None"] = "VXLANCrossSubnet"
    blockSize: int = Field(default=26, ge=20, le=32)
    mtu: int | None = Field(default=None, ge=576, le=9216)
    apiEndpoint: Literal["vip", "service"] = Field(
        default="vip",
        description="vip: Calico reaches the API server at the site endpoint (no kube-proxy needed); service: through the kubernetes Service",
    )


class Nfs(AddonBase):
    server: IPv4Address | str | None = Field(default=None, description="NFS server address or name")
    path: str | None = Field(default=None, description="exported directory, e.g. /export/k8s")
    storageClass: str = "nfs-client"
    defaultClass: bool = True
    mountOptions: list[str] = Field(default_factory=lambda: ["nfsvers=4.1"])
    reclaimPolicy: Literal["Delete", "Retain"] = "Delete"
    archiveOnDelete: bool = True


class Bucket(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    policy: Literal["none", "download", "upload", "public"] = "none"


class Minio(AddonBase):
    mode: Literal["standalone", "distributed"] = "standalone"
    replicas: int = Field(default=4, ge=4, le=32, description="servers in distributed mode")
    size: str = Field(default="100Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    storageClass: str | None = Field(
        default=None, description="storage class of MinIO's volumes (default: the cluster default)"
    )
    memory: str = Field(
        default="1Gi", pattern=r"^[0-9]+(Mi|Gi)$", description="memory request (the chart's default is 16Gi)"
    )
    buckets: list[Bucket] = Field(
        default_factory=list, description="extra buckets; Velero's is added when Velero uses MinIO"
    )


class ExternalS3(Strict):
    url: str = Field(pattern=r"^https?://", description="S3 endpoint URL")
    region: str = "us-east-1"
    bucket: str


class Schedule(Strict):
    cron: Cron = "0 2 * * *"
    ttl: Duration = "720h"
    includedNamespaces: list[str] = Field(default_factory=lambda: ["*"])
    excludedNamespaces: list[str] = Field(default_factory=list)


class Velero(AddonBase):
    s3: Literal["minio", "external"] = "minio"
    bucket: str = "velero"
    external: ExternalS3 | None = Field(
        default=None, description="the S3 location when s3: external (keys: secrets velero-s3-access-key/-secret-key)"
    )
    nodeAgent: bool = Field(
        default=True, description="node agent with kopia for file-system backups (NFS volumes have no snapshots)"
    )
    defaultVolumesToFsBackup: bool = True
    schedules: dict[Annotated[str, Field(pattern=RELEASE_NAME)], Schedule] = Field(
        default_factory=lambda: {"daily": Schedule()}
    )


class NodePorts(Strict):
    http: int = Field(default=30080, ge=30000, le=32767)
    https: int = Field(default=30443, ge=30000, le=32767)


class Ingress(AddonBase):
    className: str = Field(default="nginx", description="IngressClass served (NaaVRE's charts use nginx)")
    defaultClass: bool = True
    replicas: int = Field(default=2, ge=1, le=10)
    serviceType: Literal["LoadBalancer", "NodePort"] = "LoadBalancer"
    nodePorts: NodePorts = Field(default_factory=NodePorts)


class CertManager(AddonBase):
    pass


class Certificates(AddonBase):
    # Let's Encrypt's two ACME directories (one table: nodekiln/config/edge.py ACME_DIRECTORIES)
    issuer: Literal["letsencrypt-production", "letsencrypt-staging"] = Field(
        default="letsencrypt-production",
        description="the ClusterIssuer NaaVRE's Ingresses name (staging: untrusted certificates, high rate limits)",
    )
    email: str | None = Field(
        default=None, description="ACME account e-mail (Let's Encrypt's expiry notices); default edge.acme.email"
    )

    @field_validator("email")
    @classmethod
    def _email(cls, email: str | None) -> str | None:
        if email is not None and not EMAIL.match(email):
            raise ValueError(f"expected an e-mail address, e.g. ops@example.org, got {email!r}")
        return email

    def account_email(self, site: Site) -> str:
        """The e-mail the ACME accounts are registered with (check_addons makes sure there is one)."""
        if self.email is not None:
            return self.email
        assert site.edge is not None, "check_addons: email is required without an edge"
        return site.edge.acme.email


# prometheus-operator's types (crd-prometheuses.yaml spec.retention, spec.retentionSize patterns)
PROMETHEUS_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
VOLUME_SIZE = r"^[0-9]+(Mi|Gi|Ti)$"


class Monitoring(AddonBase):
    retention: str = Field(
        default="15d",
        pattern=PROMETHEUS_DURATION,
        min_length=2,
        description="how long Prometheus keeps samples, e.g. 15d",
    )
    size: str = Field(
        default="50Gi", pattern=VOLUME_SIZE, description="Prometheus' volume (on the default StorageClass)"
    )
    retentionSize: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(MiB|GiB|TiB)$",
        description="Prometheus drops the oldest blocks above this, e.g. 40GiB; default 85% of size",
    )
    storageClass: str | None = Field(
        default=None, description="StorageClass of the volumes instead of the cluster's default"
    )
    alertmanagerSize: str = Field(default="2Gi", pattern=VOLUME_SIZE, description="Alertmanager's volume")
    scrapeAnnotations: bool = Field(
        default=True,
        description="also scrape the Services and pods annotated prometheus.io/scrape (path, port): NaaVRE's hub",
    )

    def retention_bytes(self) -> int:
        """retentionSize in bytes: the site's, or 85% of the volume."""
        if self.retentionSize is not None:
            return _bytes(self.retentionSize.removesuffix("B"))
        return _bytes(self.size) * 85 // 100


def _bytes(size: str) -> int:
    """50Gi -> bytes (binary units, as Kubernetes quantities and prometheus-operator's ByteSize)."""
    number, unit = int(size[:-2]), size[-2:]
    power: int = {"Mi": 2, "Gi": 3, "Ti": 4}[unit]
    return int(number * 1024**power)


class KeycloakOperator(AddonBase):
    pass


class VirtualLab(Strict):
    # What NaaVRE-helm's values chart reads of a lab (values/values.yaml jupyterhub.vlabs.openlab,
    # templates/jupyterhub.yaml profileList, naavre/templates/job-create-vls-in-catalogue.yaml).
    # binderRef is gone: no template of either chart reads binder_ref since BinderHub was removed.
    title: str = Field(min_length=1)
    # check-required-values.yaml rejects an empty string: the catalogue shows it
    description: str = Field(min_length=1, description="what the lab is for (shown in NaaVRE's catalogue)")
    dirname: str | None = Field(default=None, description="folder under 'Virtual Labs/' in the lab; default: title")
    image: str | None = Field(
        default=None,
        description="the lab's Jupyter image (name:tag); default the pinned vanilla flavor (addons/naavre.yaml)",
    )
    cellGithubUrl: str = Field(description="repository made from the NaaVRE-cells template")
    registryUrl: str = Field(description="container registry for the lab's cells, e.g. ghcr.io/org/repo")
    baseImageTagsUrl: str | None = Field(
        default=None,
        description="base images of the lab's cells; default the vanilla flavor's release file for its pinned tag",
    )
    moduleMappingUrl: str = "https://raw.githubusercontent.com/QCDIS/NaaVRE-conf/main/module_mapping.json"


class NaavreUser(Strict):
    # The values chart passes only username and password to the realm import (values/templates/global.yaml).
    username: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class Naavre(AddonBase):
    domain: str | None = Field(default=None, description="DNS name that serves NaaVRE, e.g. naavre.example.org")
    s3Domain: str | None = Field(default=None, description="DNS name of NaaVRE's S3 (SeaweedFS); default s3.<domain>")
    tls: bool | None = Field(
        default=None,
        description="Ingresses with tls (secrets <domain>-tls and <s3Domain>-tls): cert-manager makes them when "
        "addons.certificates is on (the default then), else the site creates them",
    )
    chartsPath: str = Field(
        default="NaaVRE-helm",
        description="checkout of github.com/NaaVRE/NaaVRE-helm at the pinned ref, beside the site file",
    )
    adminEmail: str = "admin@example.org"
    virtualLabs: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")], VirtualLab] = Field(
        default_factory=dict
    )
    users: list[NaavreUser] = Field(
        default_factory=list, description="Keycloak users (passwords made in the secrets store)"
    )


# --- namespace isolation -------------------------------------------------------------------

# The labels JupyterHub's KubeSpawner gives NaaVRE's lab pods and z2jh's own singleuser
# NetworkPolicy selects them by (z2jh 4.1.0 in NaaVRE-helm's naavre chart: templates/singleuser/
# netpol.yaml podSelector = jupyterhub.matchLabels with componentLabel singleuser-server).
LAB_SELECTOR: dict[str, str] = {"component": "singleuser-server"}

# Namespaces every cluster has (kube-apiserver makes them; kubeadm's kube-public).
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class IsolationPort(Strict):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class IsolationEgress(Strict):
    cidr: IPv4Network = Field(description="destination network, e.g. 10.0.1.10/32 (host bits must be zero)")
    ports: list[IsolationPort] = Field(default_factory=list, description="none: every port")


class IsolatedNamespace(Strict):
    namespace: Namespace
    podSelector: dict[str, str] | None = Field(
        default=None,
        description="matchLabels of the pods isolated; leave out for the whole namespace (podSelector {})",
    )
    egress: list[IsolationEgress] = Field(
        default_factory=list, description="more destinations the pods may reach (CIDR and ports)"
    )
    ingressFrom: list[Namespace] = Field(
        default_factory=list, description="more namespaces whose pods may connect to the isolated pods"
    )
    external: bool = Field(
        default=False,
        description="the namespace is made outside nodekiln before `invoke addons` (no release of the site "
        "installs into it, so nothing else creates it)",
    )

    @field_validator("podSelector")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not LABEL_NAME.fullmatch(key):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label name, e.g. app.kubernetes.io/name")
            if not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"label value {value!r} of {key!r} is not a valid Kubernetes label value")
        return labels

    @property
    def whole(self) -> bool:
        return not self.podSelector

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether the entry's pod selector matches pods with these labels."""
        return all(labels.get(key) == value for key, value in (self.podSelector or {}).items())


class NamespaceIsolation(AddonBase):
    namespaces: list[IsolatedNamespace] | None = Field(
        default=None,
        description="namespaces given default NetworkPolicies; leave out for NaaVRE's virtual labs "
        "(NaaVRE's namespace, podSelector component: singleuser-server)",
    )
    kubeSystem: Literal["all", "dns"] = Field(
        default="all",
        description="egress to kube-system: all its pods (the talk's policy) or only CoreDNS on port 53",
    )

    def entries(self, namespaces: Mapping[str, str]) -> list[IsolatedNamespace]:
        """The namespaces isolated; `namespaces` is release name -> namespace of the releases on."""
        if self.namespaces is not None:
            return list(self.namespaces)
        labs = namespaces.get("naavre")
        return [IsolatedNamespace(namespace=labs, podSelector=dict(LAB_SELECTOR))] if labs else []

    def after_namespaces(self, namespaces: Mapping[str, str]) -> list[str]:
        return [entry.namespace for entry in self.entries(namespaces)]


class ExtraRelease(Strict):
    name: ReleaseName
    namespace: Namespace
    chart: str = Field(description="chart name (with repo) or a local chart directory beside the site file")
    repo: str | None = Field(
        default=None, pattern=r"^(https?|oci)://", description="chart repository URL; leave out for a local chart"
    )
    version: str | None = Field(default=None, description="chart version (required with repo)")
    values: str | None = Field(default=None, description="values file beside the site file")
    dependsOn: list[str] = Field(default_factory=list, description="releases installed before this one")
    waitFor: str = "the chart's resources are ready (helm --wait)"
    timeout: Duration = "10m"


class AddonsSpec(Strict):
    """What `invoke addons` installs. The example site turns every built-in addon on."""

    enabled: bool = Field(default=True, description="false: no addons at all")
    calico: Calico = Field(default_factory=Calico)
    nfs: Nfs = Field(default_factory=lambda: Nfs(enabled=False))
    minio: Minio = Field(default_factory=lambda: Minio(enabled=False))
    velero: Velero = Field(default_factory=lambda: Velero(enabled=False))
    ingress: Ingress = Field(default_factory=Ingress)
    certManager: CertManager = Field(default_factory=lambda: CertManager(enabled=False))
    certificates: Certificates = Field(default_factory=lambda: Certificates(enabled=False))
    monitoring: Monitoring = Field(default_factory=lambda: Monitoring(enabled=False))
    keycloakOperator: KeycloakOperator = Field(default_factory=lambda: KeycloakOperator(enabled=False))
    naavre: Naavre = Field(default_factory=lambda: Naavre(enabled=False))
    namespaceIsolation: NamespaceIsolation = Field(default_factory=lambda: NamespaceIsolation(enabled=False))
    timeout: Duration = Field(default="10m", description="default helm --timeout per release")
    charts: str | None = Field(
        default=None,
        description="folder of chart packages beside the site file (`helm pull CHART --repo URL --version V`: "
        "<chart>-<version>.tgz): the built-ins' charts come from there, not from their repositories (air-gapped sites)",
    )
    releases: list[ExtraRelease] = Field(
        default_factory=list, description="the site's own releases, installed after the built-ins they depend on"
    )

    def builtin(self, key: str) -> AddonBase:
        addon = getattr(self, key, None)
        if key not in BUILTIN_KEYS or not isinstance(addon, AddonBase):
            raise KeyError(key)
        return addon


def _settings_class(annotation: object) -> type[AddonBase] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, AddonBase) else None


# The one list of built-in addons and their order (listed to users, installed when nothing
# else decides): the fields of AddonsSpec that hold an addon's settings, in declared order.
# The catalog reads addons/<release_name(key)>.yaml for each.
BUILTIN_SETTINGS: dict[str, type[AddonBase]] = {
    key: cls for key, info in AddonsSpec.model_fields.items() if (cls := _settings_class(info.annotation)) is not None
}
BUILTIN_KEYS: tuple[str, ...] = tuple(BUILTIN_SETTINGS)


def release_name(key: str) -> str:
    """Site key -> release (and addon file) name: keycloakOperator -> keycloak-operator."""
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), key)


@cache
def _placement(folder: Path) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """Release -> (namespace, sameNamespaceAs, dependsOn) as addons/<name>.yaml give them (the
    catalog, nodekiln/addons/catalog.py, validates the files; the site model reads these keys only)."""
    found: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}
    for key in BUILTIN_KEYS:
        try:
            doc = yaml.safe_load((folder / f"{release_name(key)}.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise NodekilnError(f"{folder / release_name(key)}.yaml: {exc}") from None
        found[release_name(key)] = (
            str(doc.get("namespace", release_name(key))),
            doc.get("sameNamespaceAs"),
            tuple(str(d) for d in doc.get("dependsOn") or ()),
        )
    return found


def release_namespaces(spec: AddonsSpec, folder: Path | None = None) -> dict[str, str]:
    """Release name -> namespace of every release the site turns on (built-ins, then its own)."""
    placement = _placement(folder or assets.folder("addons"))
    by_release = {release_name(key): key for key in BUILTIN_KEYS}

    def namespace(name: str) -> str:
        own = spec.builtin(by_release[name]).namespace
        if own:
            return own
        default, same_as, _ = placement[name]
        if same_as in by_release and spec.builtin(by_release[same_as]).enabled:
            return namespace(same_as)
        return default

    found = {release_name(k): namespace(release_name(k)) for k in BUILTIN_KEYS if spec.builtin(k).enabled}
    found.update({extra.name: extra.namespace for extra in spec.releases})
    return found


def check_addons(site: Site) -> list[tuple[PathKey, str]]:
    """Rules of the addons section that span fields; (path, message) for each violation."""
    spec = site.addons
    found: list[tuple[PathKey, str]] = []
    if not spec.enabled:
        return found
    pod = site.kubernetes.podSubnet
    if spec.calico.enabled and spec.calico.ipPool is not None and spec.calico.ipPool != pod:
        found.append(
            (
                ("addons", "calico", "ipPool"),
                f"{spec.calico.ipPool} differs from kubernetes.podSubnet {pod}: Calico's pool must be the pod subnet (leave ipPool out to use it)",
            )
        )
    if spec.nfs.enabled:
        if not spec.nfs.server:
            found.append(
                (("addons", "nfs", "server"), "required when NFS is on: the NFS server's address, e.g. 10.0.1.10")
            )
        if not spec.nfs.path:
            found.append(
                (("addons", "nfs", "path"), "required when NFS is on: the exported directory, e.g. /export/k8s")
            )
        elif not spec.nfs.path.startswith("/"):
            found.append((("addons", "nfs", "path"), f"expected an absolute path, got {spec.nfs.path!r}"))
    if spec.velero.enabled:
        if spec.velero.s3 == "minio" and not spec.minio.enabled:
            found.append(
                (("addons", "velero", "s3"), "minio, but addons.minio is off: turn MinIO on or use s3: external")
            )
        if spec.velero.s3 == "external" and spec.velero.external is None:
            found.append(
                (
                    ("addons", "velero", "external"),
                    "required with s3: external: url, region and bucket of the S3 location",
                )
            )
    if spec.ingress.enabled and spec.ingress.serviceType == "NodePort":
        if spec.ingress.nodePorts.http == spec.ingress.nodePorts.https:
            found.append((("addons", "ingress", "nodePorts", "https"), "must differ from nodePorts.http"))
        if not site.firewall.nodePorts and site.edge is None:
            found.append(
                (
                    ("addons", "ingress", "serviceType"),
                    "NodePort, but firewall.nodePorts is false and the site has no edge section: the nodes would "
                    "drop the traffic (add an edge section, which is let in, or set firewall.nodePorts: true)",
                )
            )
    if spec.certificates.enabled:
        found.extend(_check_certificates(site))
    if spec.monitoring.enabled:
        found.extend(_check_monitoring(spec.monitoring))
    if spec.naavre.enabled:
        if not spec.naavre.domain:
            found.append((("addons", "naavre", "domain"), "required when NaaVRE is on: the DNS name that serves it"))
        if not spec.ingress.enabled:
            found.append(
                (
                    ("addons", "naavre", "enabled"),
                    "NaaVRE needs the ingress addon (class nginx): turn addons.ingress on",
                )
            )
        elif spec.ingress.className != "nginx":
            found.append(
                (("addons", "ingress", "className"), f"{spec.ingress.className!r}, but NaaVRE's charts use class nginx")
            )
        if not spec.keycloakOperator.enabled:
            found.append(
                (
                    ("addons", "naavre", "enabled"),
                    "NaaVRE's Keycloak needs the Keycloak operator: turn addons.keycloakOperator on",
                )
            )
        for slug, lab in spec.naavre.virtualLabs.items():
            # the values chart writes "{{ .image.name }}:{{ .image.tag }}" (templates/jupyterhub.yaml)
            name, _, tag = (lab.image or "").rpartition(":")
            if lab.image is not None and (not name or not tag or "/" in tag):
                found.append(
                    (
                        ("addons", "naavre", "virtualLabs", slug, "image"),
                        f"{lab.image!r}: expected name:tag, e.g. ghcr.io/naavre/flavors/naavre-fl-vanilla-jupyter:v0.3.16",
                    )
                )
    if spec.namespaceIsolation.enabled:
        found.extend(_check_isolation(site))
    known = {release_name(k) for k in BUILTIN_KEYS if spec.builtin(k).enabled}
    seen: dict[str, int] = {}
    for i, extra in enumerate(spec.releases):
        if extra.name in seen:
            found.append(
                (("addons", "releases", i, "name"), f"{extra.name!r} repeats addons.releases[{seen[extra.name]}].name")
            )
        elif extra.name in {release_name(k) for k in BUILTIN_KEYS}:
            found.append(
                (
                    ("addons", "releases", i, "name"),
                    f"{extra.name!r} is a built-in addon's release name: choose another",
                )
            )
        seen.setdefault(extra.name, i)
        if extra.repo and not extra.version:
            found.append((("addons", "releases", i, "version"), "required with repo: pin the chart version"))
        if not extra.repo and not (site.directory / extra.chart).is_dir():
            found.append(
                (
                    ("addons", "releases", i, "chart"),
                    f"no chart directory {site.directory / extra.chart} (give repo: for a chart from a repository)",
                )
            )
    names = known | {r.name for r in spec.releases}
    for i, extra in enumerate(spec.releases):
        for j, dep in enumerate(extra.dependsOn):
            if dep not in names:
                hint = (
                    f"expected one of {', '.join(sorted(names - {extra.name}))}"
                    if len(names) > 1
                    else "no other release is on"
                )
                found.append((("addons", "releases", i, "dependsOn", j), f"unknown addon or release {dep!r}: {hint}"))
            elif dep == extra.name:
                found.append((("addons", "releases", i, "dependsOn", j), "a release cannot depend on itself"))
    if not any(path[:3] == ("addons", "releases", i) for path, _ in found for i in range(len(spec.releases))):
        try:
            order(release_graph(spec))
        except CycleError as exc:
            # every circle runs through a site release: built-ins alone are ordered (the catalog checks it)
            first = next(i for i, r in enumerate(spec.releases) if r.name in exc.cycle)
            # told from the site release the message points at: [a, b, c, a] from b is [b, c, a, b]
            at = exc.cycle.index(spec.releases[first].name)
            circle = [*exc.cycle[at:-1], *exc.cycle[:at], exc.cycle[at]]
            found.append(
                (("addons", "releases", first, "dependsOn"), f"dependencies form a circle: {' -> '.join(circle)}")
            )
    if spec.charts is not None and not (site.directory / spec.charts).is_dir():
        found.append((("addons", "charts"), f"no folder {site.directory / spec.charts} (chart packages, helm pull)"))
    for key in BUILTIN_KEYS:
        addon = spec.builtin(key)
        if addon.enabled and addon.values:
            found.extend(_check_values_file(site, ("addons", key, "values"), addon.values))
    for i, extra in enumerate(spec.releases):
        if extra.values:
            found.extend(_check_values_file(site, ("addons", "releases", i, "values"), extra.values))
    return found


def _check_certificates(site: Site) -> list[tuple[PathKey, str]]:
    spec = site.addons
    found: list[tuple[PathKey, str]] = []
    if not spec.certManager.enabled:
        found.append(
            (("addons", "certificates", "enabled"), "the issuers are cert-manager's: turn addons.certManager on")
        )
    if not spec.ingress.enabled:
        found.append(
            (
                ("addons", "certificates", "enabled"),
                "HTTP-01 is answered through the site's ingress class: turn addons.ingress on",
            )
        )
    if site.edge is not None and spec.ingress.serviceType != "NodePort":
        found.append(
            (
                ("addons", "ingress", "serviceType"),
                "LoadBalancer, but the edge passes cert-manager's HTTP-01 challenges to the ingress's HTTP "
                "NodePort: set serviceType: NodePort",
            )
        )
    if spec.certificates.email is None and site.edge is None:
        found.append(
            (
                ("addons", "certificates", "email"),
                "required (the site has no edge.acme.email to use): the ACME account's e-mail, e.g. ops@example.org",
            )
        )
    return found


def _check_monitoring(monitoring: Monitoring) -> list[tuple[PathKey, str]]:
    # Prometheus counts its WAL and head chunks into retentionSize: at the volume's size it would
    # fill it before dropping a block
    if monitoring.retentionSize is not None and monitoring.retention_bytes() >= _bytes(monitoring.size):
        return [
            (
                ("addons", "monitoring", "retentionSize"),
                f"{monitoring.retentionSize} does not fit Prometheus' volume (size {monitoring.size}): "
                "expected less, e.g. 85% of it (leave retentionSize out for that)",
            )
        ]
    return []


def _check_isolation(site: Site) -> list[tuple[PathKey, str]]:
    spec = site.addons
    settings = spec.namespaceIsolation
    here: PathKey = ("addons", "namespaceIsolation")
    found: list[tuple[PathKey, str]] = []
    if not spec.calico.enabled:
        found.append(
            (
                (*here, "enabled"),
                "NetworkPolicies do nothing unless the CNI enforces them: turn addons.calico on",
            )
        )
    namespaces = release_namespaces(spec)
    if settings.namespaces is None:
        if "naavre" not in namespaces:
            found.append(
                (
                    (*here, "namespaces"),
                    "required when NaaVRE is off (the default isolates NaaVRE's virtual labs): "
                    "list the namespaces to isolate",
                )
            )
        return found
    owners: dict[str, list[str]] = {}
    for release, namespace in namespaces.items():
        owners.setdefault(namespace, []).append(release)
    seen: dict[str, int] = {}
    for i, entry in enumerate(settings.namespaces):
        at: PathKey = (*here, "namespaces", i)
        if entry.namespace in seen:
            found.append(
                (
                    (*at, "namespace"),
                    f"{entry.namespace!r} repeats addons.namespaceIsolation.namespaces[{seen[entry.namespace]}]"
                    ".namespace: give each namespace once",
                )
            )
            continue
        seen[entry.namespace] = i
        if entry.namespace in SYSTEM_NAMESPACES and entry.namespace != "default":
            found.append(
                ((*at, "namespace"), f"{entry.namespace!r} is Kubernetes' own: isolating it breaks the cluster")
            )
        elif entry.namespace not in owners and entry.namespace not in SYSTEM_NAMESPACES and not entry.external:
            found.append(
                (
                    (*at, "namespace"),
                    f"no release of the site installs into {entry.namespace!r}, so nothing creates it before its "
                    "policies: give a release that namespace (addons.releases), or set external: true if it is "
                    "made outside nodekiln before `invoke addons`",
                )
            )
        if entry.whole and namespaces.get("naavre") == entry.namespace:
            found.append(
                (
                    (*at, "podSelector"),
                    f"required for NaaVRE's namespace {entry.namespace!r}: isolating all of it cuts NaaVRE's own "
                    "services off GitHub, the registries and the API server; give the labs' "
                    "podSelector: {component: singleuser-server}",
                )
            )
        for j, source in enumerate(entry.ingressFrom):
            if source == entry.namespace:
                found.append(
                    ((*at, "ingressFrom", j), f"{source!r} is the namespace itself, whose pods are always let in")
                )
    return found


def release_graph(spec: AddonsSpec, namespaces: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Every release that is on and what it needs: the site's own releases their dependsOn, the
    built-ins theirs (addons/<name>.yaml) plus the releases installing into the namespaces they
    put objects into (`after_namespaces`: namespace-isolation after a site release in a listed
    namespace). The plan installs in this order; here it finds circles."""
    placement = _placement(assets.folder("addons"))
    namespaces = namespaces if namespaces is not None else release_namespaces(spec)
    graph: dict[str, list[str]] = {}
    for key in BUILTIN_KEYS:
        addon = spec.builtin(key)
        if addon.enabled:
            name = release_name(key)
            into = set(addon.after_namespaces(namespaces))
            owners = [r for r, ns in namespaces.items() if ns in into and r != name]
            graph[name] = [d for d in dict.fromkeys([*placement[name][2], *owners]) if d in namespaces]
    for extra in spec.releases:
        graph[extra.name] = list(extra.dependsOn)
    return graph


def _check_values_file(site: Site, path: PathKey, name: str) -> list[tuple[PathKey, str]]:
    file = site.directory / name
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [(path, f"values file {file} does not exist")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return [(path, f"values file {file} does not parse{where}: {getattr(exc, 'problem', None) or exc}")]
    except (OSError, UnicodeDecodeError) as exc:
        return [(path, f"cannot read values file {file}: {exc}")]
    if data is not None and not isinstance(data, dict):
        return [(path, f"values file {file} must hold a mapping, got {type(data).__name__}")]
    return []


# --- install order ---------------------------------------------------------------------------
# Here and not in the stage: the site model rejects circles in dependsOn (with the field's
# line), and the addons stage orders its plan with the same function.


class CycleError(NodekilnError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__(f"the releases depend on each other in a circle: {' -> '.join(cycle)}")


def order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Topological order of `deps` (name -> names it needs), stable in the mapping's order.

    Dependencies on names that are not keys are ignored (addons that are off).
    Raises CycleError naming one cycle.
    """
    rank = {name: i for i, name in enumerate(deps)}
    needs = {name: {d for d in ds if d in deps and d != name} for name, ds in deps.items()}
    users: dict[str, list[str]] = {name: [] for name in deps}
    for name, ds in needs.items():
        for d in ds:
            users[d].append(name)
    ready = [(rank[n], n) for n, ds in needs.items() if not ds]
    heapq.heapify(ready)
    done: list[str] = []
    remaining = {n: len(ds) for n, ds in needs.items()}
    while ready:
        _, name = heapq.heappop(ready)
        done.append(name)
        for user in users[name]:
            remaining[user] -= 1
            if remaining[user] == 0:
                heapq.heappush(ready, (rank[user], user))
    if len(done) < len(deps):
        raise CycleError(find_cycle({n: sorted(needs[n], key=rank.__getitem__) for n in deps if n not in done}))
    return done


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """One cycle in a graph known to have one: [a, b, ..., a]."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in deps.get(name, ()):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in deps:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return list(deps)[:1]
