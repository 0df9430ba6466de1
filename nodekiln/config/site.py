"""The site file: one YAML document that describes a whole cluster, validated strictly.

`load_site` returns a `Site` or raises a `SiteError` that lists every problem in the file,
each with the file, the line, the field path and what was expected.
"""

from __future__ import annotations

import re
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from nodekiln import contract
from nodekiln.config import ports, yamlsrc
from nodekiln.config.addons import AddonsSpec, check_addons
from nodekiln.config.appliance import Appliance
from nodekiln.config.edge import Edge
from nodekiln.config.model import DNS_LABEL, DURATION, LABEL_NAME, LABEL_VALUE, Strict
from nodekiln.config.openstack import OpenStackSpec, check_openstack
from nodekiln.config.recipe import ImageRecipe
from nodekiln.errors import Problem, SiteError

API_VERSION = "nodekiln/v1alpha1"
# kubeadm's v1beta4 configuration API (what nodekiln renders) exists from 1.31 on; 1.35 is
# the newest release whose facts nodekiln.contract holds. Documented in the README.
SUPPORTED_MINORS = contract.SUPPORTED_MINORS
APISERVER_PORT = ports.APISERVER
# Ports of control-plane components that the endpoint must not take over.
RESERVED_PORTS = ports.RESERVED


DnsLabel = Annotated[
    str, Field(pattern=DNS_LABEL.pattern, description="DNS-1123 label: lower-case letters, digits and '-', at most 63")
]


class Metadata(Strict):
    name: DnsLabel
    description: str = ""


class Kubernetes(Strict):
    version: str = Field(description='Kubernetes release, quoted, e.g. "1.31.4" (1.31.0 to 1.35.x)')
    podSubnet: IPv4Network = IPv4Network("192.168.0.0/16")
    serviceSubnet: IPv4Network = IPv4Network("10.96.0.0/12")
    clusterDomain: str = "cluster.local"
    bootstrapTokenTTL: str = Field(default="24h", description="lifetime of the bootstrap token, e.g. 24h or 2h30m")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        match = re.fullmatch(r"v?1\.(\d+)\.(\d+)", value)
        if not match:
            raise ValueError(f'expected a release like "1.31.4", got {value!r}')
        if int(match.group(1)) not in SUPPORTED_MINORS:
            lo, hi = SUPPORTED_MINORS.start, SUPPORTED_MINORS.stop - 1
            raise ValueError(f"Kubernetes {value} is not supported: expected 1.{lo}.0 to 1.{hi}.x")
        return value.removeprefix("v")

    @field_validator("bootstrapTokenTTL")
    @classmethod
    def _ttl(cls, value: str) -> str:
        if not value or not DURATION.fullmatch(value):
            raise ValueError(f"expected a duration like 24h or 2h30m, got {value!r}")
        return value

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


class Endpoint(Strict):
    vip: IPv4Address | None = Field(default=None, description="virtual IP that keepalived moves between control planes")
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="endpoint port (load balancer default 7443; without one the apiserver's, default 6443)",
    )
    hostname: str | None = Field(
        default=None, description="DNS name of the endpoint, added to the API server certificate"
    )


class ControlPlane(Strict):
    endpoint: Endpoint = Field(default_factory=Endpoint)
    loadBalancer: Literal["keepalived-haproxy", "none"] = "keepalived-haproxy"
    loadBalancerMode: Literal["static-pods", "host-services"] = "static-pods"
    interface: str = Field(default="eth0", pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    virtualRouterId: int = Field(default=51, ge=1, le=255)


class Network(Strict):
    cidr: IPv4Network
    gateway: IPv4Address
    dns: list[IPv4Address] = Field(default_factory=list)
    ntp: list[str] = Field(default_factory=list)
    mtu: int | None = Field(default=None, ge=576, le=9216)


def _ssh_key(key: str) -> str:
    try:
        load_ssh_public_key(" ".join(key.split()[:2]).encode())
    except (ValueError, TypeError, IndexError):
        raise ValueError("not an OpenSSH public key: expected 'ssh-ed25519 AAAA... comment'") from None
    return key


SshKey = Annotated[str, AfterValidator(_ssh_key)]


class Ssh(Strict):
    user: DnsLabel = "debian"
    authorizedKeys: list[SshKey] = Field(min_length=1)


class Firewall(Strict):
    sshFrom: list[IPv4Network] = Field(default_factory=lambda: [IPv4Network("0.0.0.0/0")])
    apiFrom: list[IPv4Network] = Field(
        default_factory=list,
        description="networks besides the nodes and pods that may reach the Kubernetes API on the control planes "
        "(operators, CI runners, clients of openstack.floatingIP)",
    )
    nodePorts: bool = Field(default=False, description="open 30000-32767 on workers")
    extraTCPPorts: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)


class Taint(Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Node(Strict):
    name: DnsLabel
    # "edge": the nodes of the edge section (Site.machines); in `nodes` a site check refuses it
    role: Literal["control-plane", "worker", "edge"]
    address: IPv4Address
    mac: str | None = Field(
        default=None, pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", description="match the NIC by MAC instead of by name"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not LABEL_NAME.fullmatch(key):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label name")
            if not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"label value {value!r} of {key!r} is not a valid Kubernetes label value")
            if contract.kubelet_refuses_label(key):
                # the kubelet refuses such --node-labels at start (contract.LABELS_REF)
                raise ValueError(
                    f"label {key!r}: the kubelet refuses node labels in the kubernetes.io and k8s.io "
                    f"namespaces at start, except {', '.join(n + '/' for n in contract.KUBELET_LABEL_NAMESPACES)} "
                    f"and its own well-known labels; use your own prefix, e.g. example.org/{key.split('/')[-1]}"
                )
        return labels


class Site(Strict):
    apiVersion: Literal["nodekiln/v1alpha1"]
    kind: Literal["Site"]
    metadata: Metadata
    kubernetes: Kubernetes
    controlPlane: ControlPlane = Field(default_factory=ControlPlane)
    network: Network
    ssh: Ssh
    firewall: Firewall = Field(default_factory=Firewall)
    nodes: list[Node] = Field(min_length=1)
    image: ImageRecipe = Field(
        default_factory=ImageRecipe,
        description="the node image recipe, inline or the name of a recipe file beside the site file",
    )
    addons: AddonsSpec = Field(
        default_factory=AddonsSpec,
        description="Helm releases installed by `invoke addons`: CNI, storage, backups, ingress, NaaVRE, the site's own",
    )
    appliance: Appliance = Field(
        default_factory=Appliance,
        description="how the appliance ISO (`invoke build-iso`) prepares the machines it boots: data disk, wiping, boot menu",
    )
    openstack: OpenStackSpec | None = Field(
        default=None, description="where `invoke site-deploy` runs the site on OpenStack (cloud, flavors, network)"
    )
    edge: Edge | None = Field(
        default=None,
        description="the public load balancer: HAProxy with Let's Encrypt certificates in front of the ingress",
    )

    _file: Path = PrivateAttr(default=Path("site.yaml"))

    @property
    def file(self) -> Path:
        return self._file

    @property
    def directory(self) -> Path:
        return self._file.parent

    @property
    def name(self) -> str:
        return self.metadata.name

    @cached_property
    def control_planes(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "control-plane"]

    @cached_property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "worker"]

    @cached_property
    def edge_nodes(self) -> list[Node]:
        """The edge section's nodes, as nodes of role edge (they boot the same image)."""
        if self.edge is None:
            return []
        return [Node(name=e.name, role="edge", address=e.address, mac=e.mac) for e in self.edge.nodes]

    @cached_property
    def machines(self) -> list[Node]:
        """Every machine of the site: the Kubernetes nodes, then the edge nodes."""
        return [*self.nodes, *self.edge_nodes]

    @property
    def edge_address(self) -> IPv4Address | None:
        """Where the public names point: the edge pair's VIP, or the single edge node's address."""
        if self.edge is None:
            return None
        return self.edge.vip or self.edge.nodes[0].address

    @property
    def edge_backend_port(self) -> int | None:
        """The ingress's HTTPS NodePort the edge balances over the workers."""
        if self.edge is None:
            return None
        return self.edge.backendPort or self.addons.ingress.nodePorts.https

    def site_file_text(self, name: str) -> str:
        """A file the site names (CA bundles), read from beside the site file."""
        return (self.directory / name).read_text(encoding="utf-8")

    @property
    def init_node(self) -> Node:
        """The control plane that runs `kubeadm init`: the first one listed."""
        return self.control_planes[0]

    @property
    def load_balanced(self) -> bool:
        return self.controlPlane.loadBalancer != "none"

    @property
    def metrics_exposed(self) -> bool:
        """The monitoring addon is on: kubeadm binds the components' metrics to every address
        (contract.metrics_args) and nftables opens those ports to the pod and node networks."""
        return self.addons.enabled and self.addons.monitoring.enabled

    @property
    def endpoint_address(self) -> IPv4Address:
        return self.controlPlane.endpoint.vip if self.load_balanced else self.init_node.address  # type: ignore[return-value]

    @property
    def endpoint_port(self) -> int:
        port = self.controlPlane.endpoint.port
        return port if port is not None else (ports.LOAD_BALANCER if self.load_balanced else APISERVER_PORT)

    @property
    def apiserver_port(self) -> int:
        """The port kube-apiserver binds: the endpoint's when no load balancer sits in front."""
        return APISERVER_PORT if self.load_balanced else self.endpoint_port

    @property
    def endpoint(self) -> str:
        return f"{self.endpoint_address}:{self.endpoint_port}"


def default_site_path() -> Path:
    import os

    return Path(os.environ.get("NODEKILN_SITE") or "sites/example/site.yaml")


def load_site(path: Path | str | None = None) -> Site:
    """Load and validate a site file; every problem found is reported at once."""
    file = Path(path) if path is not None else default_site_path()
    source = yamlsrc.load(file)
    data = source.data
    if not isinstance(data, dict):
        raise SiteError([source.problem((), "expected a mapping with apiVersion: nodekiln/v1alpha1 and kind: Site")])
    image_source: yamlsrc.Source | None = None
    if isinstance(data.get("image"), str):
        image_file = file.parent / data["image"]
        image_source = yamlsrc.load(image_file)
        data = {**data, "image": image_source.data if image_source.data is not None else {}}
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        raise SiteError(_pydantic_problems(exc, source, image_source)) from None
    site._file = file
    problems = [source.problem(path, message) for path, message in check_site(site)]
    if problems:
        raise SiteError(problems)
    return site


def _pydantic_problems(
    exc: ValidationError, source: yamlsrc.Source, image_source: yamlsrc.Source | None
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        src = source
        if image_source is not None and loc[:1] == ("image",):
            src, loc = image_source, loc[1:]
        problems.append(src.problem(loc, _message(error)))
    return problems


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field (check its spelling; `invoke schema` lists every field)"
    if kind == "missing":
        return "required field is missing"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == DNS_LABEL.pattern:
        return f"expected a DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric, at most 63 (got {given!r})"
    if kind == "string_type" and isinstance(given, float):
        return f'{msg}: write it in quotes, e.g. "{given}"'
    if kind.startswith("ip_v4") or kind in (
        "string_pattern_mismatch",
        "literal_error",
        "int_parsing",
        "int_type",
        "bool_parsing",
        "less_than_equal",
        "greater_than_equal",
        "too_short",
    ):
        return f"{msg} (got {given!r})" if not isinstance(given, (dict, list)) else msg
    return msg


def check_site(site: Site) -> list[tuple[yamlsrc.PathKey, str]]:
    """Rules that span fields. Returns (path, message) for every violation."""
    found: list[tuple[yamlsrc.PathKey, str]] = []
    net = site.network
    cp = site.controlPlane
    cidr = net.cidr

    def usable(addr: IPv4Address) -> bool:
        return addr in cidr and (cidr.prefixlen >= 31 or addr not in (cidr.network_address, cidr.broadcast_address))

    if not usable(net.gateway):
        found.append((("network", "gateway"), f"gateway {net.gateway} is not a host address of network.cidr {cidr}"))

    names: dict[str, int] = {}
    addresses: dict[IPv4Address, int] = {}
    for i, node in enumerate(site.nodes):
        if node.name in names:
            found.append((("nodes", i, "name"), f"name {node.name!r} repeats nodes[{names[node.name]}].name"))
        names.setdefault(node.name, i)
        if node.address in addresses:
            found.append(
                (("nodes", i, "address"), f"address {node.address} repeats nodes[{addresses[node.address]}].address")
            )
        addresses.setdefault(node.address, i)
        if not usable(node.address):
            found.append(
                (("nodes", i, "address"), f"address {node.address} is not a host address of network.cidr {cidr}")
            )
        elif node.address == net.gateway:
            found.append((("nodes", i, "address"), f"address {node.address} is the gateway's"))

    count = len(site.control_planes)
    if count == 0:
        found.append((("nodes",), "no node has role control-plane: expected 1, 3 or 5"))
    elif count % 2 == 0:
        found.append((("nodes",), f"{count} control planes: etcd needs an odd number (1, 3, 5) to keep quorum"))

    vip = cp.endpoint.vip
    if site.load_balanced:
        if vip is None:
            found.append(
                (
                    ("controlPlane", "endpoint", "vip"),
                    "required with loadBalancer keepalived-haproxy: a free address of network.cidr",
                )
            )
        else:
            if not usable(vip):
                found.append(
                    (("controlPlane", "endpoint", "vip"), f"VIP {vip} is not a host address of network.cidr {cidr}")
                )
            if vip in addresses:
                found.append(
                    (
                        ("controlPlane", "endpoint", "vip"),
                        f"VIP {vip} is the address of nodes[{addresses[vip]}] ({site.nodes[addresses[vip]].name}): expected a free address",
                    )
                )
            if vip == net.gateway:
                found.append((("controlPlane", "endpoint", "vip"), f"VIP {vip} is the gateway's address"))
        port = site.endpoint_port
        if port == APISERVER_PORT:
            found.append(
                (
                    ("controlPlane", "endpoint", "port"),
                    f"port {port} is kube-apiserver's on the same hosts as HAProxy: expected another, e.g. 7443 or 8443",
                )
            )
        elif port in RESERVED_PORTS:
            found.append(
                (
                    ("controlPlane", "endpoint", "port"),
                    f"port {port} is {RESERVED_PORTS[port]}'s on control planes: expected another, e.g. 7443",
                )
            )
    else:
        if count > 1:
            found.append(
                (
                    ("controlPlane", "loadBalancer"),
                    f"loadBalancer none allows one control plane, the site has {count}: use keepalived-haproxy",
                )
            )
        if vip is not None:
            found.append(
                (
                    ("controlPlane", "endpoint", "vip"),
                    "remove it: with loadBalancer none the endpoint is the control plane's own address",
                )
            )
        if site.endpoint_port in RESERVED_PORTS:
            found.append(
                (
                    ("controlPlane", "endpoint", "port"),
                    f"port {site.endpoint_port} is {RESERVED_PORTS[site.endpoint_port]}'s",
                )
            )

    nets = {
        ("kubernetes", "podSubnet"): site.kubernetes.podSubnet,
        ("kubernetes", "serviceSubnet"): site.kubernetes.serviceSubnet,
        ("network", "cidr"): cidr,
    }
    keys = list(nets)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            if nets[keys[a]].overlaps(nets[keys[b]]):
                found.append((keys[b], f"{nets[keys[b]]} overlaps {yamlsrc.dotted(keys[a])} {nets[keys[a]]}"))
    if site.openstack is not None and site.openstack.floatingIP and not site.firewall.apiFrom:
        found.append(
            (
                ("openstack", "floatingIP"),
                "the floating IP's clients come from outside the node network and "
                "the firewall would drop them: list their networks in firewall.apiFrom (0.0.0.0/0 for anyone)",
            )
        )
    if site.openstack is not None and site.image.secureBoot == "required" and site.openstack.image.firmware != "uefi":
        found.append(
            (
                ("openstack", "image", "firmware"),
                "image.secureBoot is required, and Secure Boot exists only with UEFI firmware: set firmware: uefi",
            )
        )
    found.extend(check_addons(site))
    found.extend(check_edge(site))
    found.extend(check_openstack(site))
    return found


def _pem_certificates(site: Site, name: str) -> str | None:
    """None when `name` (beside the site file) holds PEM certificates, else what is wrong."""
    from cryptography import x509

    path = site.directory / name
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        return f"{path}: no such file (expected a PEM file of CA certificates beside the site file)"
    except (OSError, ValueError) as exc:
        return f"{path}: not PEM certificates ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None if certs else f"{path}: holds no certificate"


def check_edge(site: Site) -> list[tuple[yamlsrc.PathKey, str]]:
    """The edge section against the rest of the site."""
    found: list[tuple[yamlsrc.PathKey, str]] = []
    for i, node in enumerate(site.nodes):
        if node.role == "edge":
            found.append(
                (("nodes", i, "role"), "edge nodes are listed in edge.nodes (with the edge's domains and ACME account)")
            )
    edge = site.edge
    if edge is None:
        return found
    cidr = site.network.cidr

    def usable(addr: IPv4Address) -> bool:
        return addr in cidr and addr not in (cidr.network_address, cidr.broadcast_address)

    taken: dict[IPv4Address, str] = {n.address: f"nodes[{i}] ({n.name})" for i, n in enumerate(site.nodes)}
    taken[site.network.gateway] = "the gateway"
    if site.load_balanced and site.controlPlane.endpoint.vip is not None:
        taken[site.controlPlane.endpoint.vip] = "the API endpoint's VIP"
    names = {n.name: f"nodes[{i}]" for i, n in enumerate(site.nodes)}
    for i, machine in enumerate(edge.nodes):
        if machine.name in names:
            found.append((("edge", "nodes", i, "name"), f"name {machine.name!r} repeats {names[machine.name]}.name"))
        names.setdefault(machine.name, f"edge.nodes[{i}]")
        if not usable(machine.address):
            found.append(
                (
                    ("edge", "nodes", i, "address"),
                    f"address {machine.address} is not a host address of network.cidr {cidr}",
                )
            )
        elif machine.address in taken:
            found.append((("edge", "nodes", i, "address"), f"address {machine.address} is {taken[machine.address]}'s"))
        taken.setdefault(machine.address, f"edge.nodes[{i}] ({machine.name})")
    if len(edge.nodes) == 2:
        if edge.vip is None:
            found.append((("edge", "vip"), "required with two edge nodes: a free address of network.cidr they share"))
        elif not usable(edge.vip):
            found.append((("edge", "vip"), f"VIP {edge.vip} is not a host address of network.cidr {cidr}"))
        elif edge.vip in taken:
            found.append((("edge", "vip"), f"VIP {edge.vip} is {taken[edge.vip]}'s: expected a free address"))
        if site.load_balanced and edge.virtualRouterId == site.controlPlane.virtualRouterId:
            found.append(
                (
                    ("edge", "virtualRouterId"),
                    f"{edge.virtualRouterId} is controlPlane.virtualRouterId too: two VRRP groups on one "
                    "network need different ids",
                )
            )
    elif edge.vip is not None:
        found.append((("edge", "vip"), "remove it: one edge node is reached at its own address (a VIP needs two)"))
    if not site.workers:
        found.append((("edge",), "the edge balances the ingress over the workers, and the site has none"))
    ingress = site.addons.ingress
    if edge.backendPort is None and not (ingress.enabled and ingress.serviceType == "NodePort"):
        found.append(
            (
                ("edge", "backendPort"),
                "required unless addons.ingress runs with serviceType NodePort: the ingress's HTTPS NodePort",
            )
        )
    elif (
        edge.backendPort is not None
        and ingress.enabled
        and ingress.serviceType == "NodePort"
        and edge.backendPort != ingress.nodePorts.https
    ):
        found.append(
            (
                ("edge", "backendPort"),
                f"{edge.backendPort}, but addons.ingress.nodePorts.https is {ingress.nodePorts.https}: "
                "remove backendPort (the ingress's is used)",
            )
        )
    if edge.backups and edge.backupCAFile is None:
        found.append(
            (("edge", "backupCAFile"), "required with backups: the CA the backup servers' certificates chain to")
        )
    if edge.backupCAFile is not None:
        if not edge.backups:
            found.append((("edge", "backupCAFile"), "set without edge.backups: remove it or list the backup servers"))
        elif (problem := _pem_certificates(site, edge.backupCAFile)) is not None:
            found.append((("edge", "backupCAFile"), problem))
    if edge.acme.caFile is not None and (problem := _pem_certificates(site, edge.acme.caFile)) is not None:
        found.append((("edge", "acme", "caFile"), problem))
    backup_names: dict[str, int] = {}
    for i, backup in enumerate(edge.backups):
        if backup.name in backup_names:
            found.append(
                (
                    ("edge", "backups", i, "name"),
                    f"name {backup.name!r} repeats edge.backups[{backup_names[backup.name]}]",
                )
            )
        backup_names.setdefault(backup.name, i)
    return found


def json_schema() -> dict[str, Any]:
    """The site file's JSON Schema, for editors (yaml-language-server) and CI linters."""
    schema = Site.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://nodekiln.invalid/schemas/site-v1alpha1.json"
    schema["title"] = "nodekiln Site (nodekiln/v1alpha1)"
    return schema
