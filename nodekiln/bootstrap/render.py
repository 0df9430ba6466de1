"""site + secrets -> per-node cloud-init NoCloud data. Pure: no network, deterministic.

The same site and secrets give byte-identical files: nothing here reads the clock, the
environment or random numbers, and every collection is emitted in a fixed order.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import yaml

from nodekiln import contract, templates
from nodekiln.bootstrap import edge
from nodekiln.bootstrap.firewall import firewall_files
from nodekiln.bootstrap.ha import ha_files, ha_services
from nodekiln.bootstrap.nodefiles import NodeFile
from nodekiln.config.site import Node, Site
from nodekiln.errors import NodekilnError
from nodekiln.files import write_tree_atomic
from nodekiln.secrets import Secrets

# OpenStack (Nova) refuses user_data over 64 KiB; cloud-init takes gzip'ed user-data as is.
USER_DATA_LIMIT = 65_535
BOOTSTRAP_WAIT_SECONDS = 1800
JOIN_STAGGER_SECONDS = 45
MARKER = ".nodekiln-render"
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "value": "", "effect": "NoSchedule"}


class RenderError(NodekilnError):
    """The site cannot be turned into cloud-init data (e.g. user-data too large)."""


@dataclass(frozen=True)
class RenderedNode:
    name: str
    user_data: bytes  # '#cloud-config' text, or gzip of it when larger than 64 KiB
    meta_data: str
    network_config: str

    @property
    def compressed(self) -> bool:
        return self.user_data[:2] == b"\x1f\x8b"

    def files(self) -> dict[str, bytes]:
        return {
            "user-data": self.user_data,
            "meta-data": self.meta_data.encode(),
            "network-config": self.network_config.encode(),
        }


def role_of(site: Site, node: Node) -> str:
    if node.role in ("worker", "edge"):
        return node.role
    return "init" if node.name == site.init_node.name else "control-plane"


def cert_sans(site: Site) -> list[str]:
    """API server certificate names: the endpoint (VIP, hostname) and every control plane."""
    names = [str(site.endpoint_address)]
    if site.controlPlane.endpoint.hostname:
        names.append(site.controlPlane.endpoint.hostname)
    for cp in site.control_planes:
        names += [cp.name, str(cp.address)]
    return list(dict.fromkeys(names))


def taints(node: Node) -> list[dict[str, str]]:
    own = [t.model_dump() for t in node.taints]
    if node.role == "control-plane" and not any(t["key"] == CONTROL_PLANE_TAINT["key"] for t in own):
        own.insert(0, CONTROL_PLANE_TAINT)
    return own


def pki_files(secrets: Secrets) -> list[NodeFile]:
    """The shared control-plane PKI that `kubeadm join --control-plane` expects to find."""
    pki = "/etc/kubernetes/pki"
    return [
        NodeFile(f"{pki}/ca.crt", secrets.ca.cert),
        NodeFile(f"{pki}/ca.key", secrets.ca.key, 0o600),
        NodeFile(f"{pki}/etcd/ca.crt", secrets.etcdCA.cert),
        NodeFile(f"{pki}/etcd/ca.key", secrets.etcdCA.key, 0o600),
        NodeFile(f"{pki}/front-proxy-ca.crt", secrets.frontProxyCA.cert),
        NodeFile(f"{pki}/front-proxy-ca.key", secrets.frontProxyCA.key, 0o600),
        NodeFile(f"{pki}/sa.pub", secrets.serviceAccount.cert),
        NodeFile(f"{pki}/sa.key", secrets.serviceAccount.key, 0o600),
    ]


def kubeadm_config(site: Site, secrets: Secrets, node: Node) -> str:
    role = role_of(site, node)
    context = {
        "site": site,
        "secrets": secrets,
        "node": node,
        "taints": taints(node),
        "cert_sans": cert_sans(site),
        "contract": contract,
        "metrics": contract.metrics_args() if site.metrics_exposed else None,
    }
    name = "kubeadm-init.yaml.j2" if role == "init" else "kubeadm-join.yaml.j2"
    return templates.render("bootstrap", name, **context)


def bootstrap_files(site: Site, node: Node) -> list[NodeFile]:
    role = role_of(site, node)
    release = contract.release(site.kubernetes.version)
    ordinal = [cp.name for cp in site.control_planes].index(node.name) if node.role == "control-plane" else 0
    env = templates.render(
        "bootstrap",
        "bootstrap.env.j2",
        site=site,
        node=node,
        role=role,
        wait_seconds=BOOTSTRAP_WAIT_SECONDS,
        join_delay=max(ordinal - 1, 0) * JOIN_STAGGER_SECONDS,
        ha_services=ha_services(site) if node.role == "control-plane" else [],
        release=release,
        rerun_skip=contract.rerun_skip_phases(role, release.minor),
        rerun_skip_when_done=[f"{s.phase}={s.marker}" for s in contract.rerun_skip_when_done(role, release.minor)],
        done_files=contract.done_markers(role, release.minor),
    )
    return [
        NodeFile("/etc/nodekiln/bootstrap.env", env),
        NodeFile("/etc/nodekiln/bootstrap.sh", templates.render("bootstrap", "bootstrap.sh"), 0o755),
        NodeFile(
            "/etc/systemd/system/nodekiln-bootstrap.service",
            templates.render("bootstrap", "nodekiln-bootstrap.service"),
        ),
    ]


def node_files(site: Site, secrets: Secrets, node: Node) -> list[NodeFile]:
    """Every file nodekiln writes on `node`, sorted by path. Workers and edge nodes get no CA keys."""
    if node.role == "edge":
        return edge.edge_files(site, secrets, node)
    files = [NodeFile("/etc/nodekiln/kubeadm.yaml", kubeadm_config(site, secrets, node), 0o600)]
    files += bootstrap_files(site, node)
    files += firewall_files(site, node)
    if node.role == "control-plane":
        files += pki_files(secrets)
        files += ha_files(site, secrets, node)
    paths = [f.path for f in files]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise RenderError(f"two stages write {', '.join(duplicates)} on {node.name}")
    return sorted(files)


_Dumper: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 1,000 nodes in well under 2 s


# misc: mypy takes no base class chosen at run time (libyaml's dumper when PyYAML was built with it).
class _BlockDumper(_Dumper):  # type: ignore[misc]
    """Multi-line strings as literal blocks, so user-data stays readable on the node."""


def _str(dumper: yaml.BaseDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def user_data(site: Site, secrets: Secrets, node: Node) -> bytes:
    fqdn = f"{node.name}.{site.name}.{site.kubernetes.clusterDomain}"
    # The template gives the readable head of the file; write_files is dumped after it.
    head = templates.render(
        "bootstrap",
        "cloudinit/user-data.yaml.j2",
        site=site,
        node=node,
        fqdn=fqdn,
        edge_masked=edge.MASKED,
        edge_services=edge.services(site) if node.role == "edge" else [],
    )
    write_files = [
        {"path": f.path, "owner": "root:root", "permissions": f"{f.mode:04o}", "content": f.content}
        for f in node_files(site, secrets, node)
    ]
    body = yaml.dump(
        {"write_files": write_files},
        Dumper=_BlockDumper,
        sort_keys=False,
        width=4096,
        allow_unicode=True,
        default_flow_style=None,
    )
    text = f"#cloud-config\n{head}{body}"
    data = text.encode()
    if len(data) <= USER_DATA_LIMIT:
        return data
    packed = gzip.compress(data, compresslevel=9, mtime=0)  # mtime=0: same input, same bytes
    if len(packed) > USER_DATA_LIMIT:
        raise RenderError(
            f"user-data of {node.name} is {len(data)} bytes ({len(packed)} gzip'ed): over the 64 KiB "
            f"that OpenStack and cloud-init accept; reduce what the site puts on this node"
        )
    return packed


def render_node(site: Site, secrets: Secrets, node: Node) -> RenderedNode:
    return RenderedNode(
        name=node.name,
        user_data=user_data(site, secrets, node),
        meta_data=templates.render(
            "bootstrap", "cloudinit/meta-data.yaml.j2", node=node, instance_id=f"nodekiln-{site.name}-{node.name}"
        ),
        network_config=templates.render(
            "bootstrap", "cloudinit/network-config.yaml.j2", site=site, node=node, interface=site.controlPlane.interface
        ),
    )


def render_site(site: Site, secrets: Secrets) -> dict[str, RenderedNode]:
    return {node.name: render_node(site, secrets, node) for node in site.machines}


def write_site(site: Site, secrets: Secrets, out_dir: Path) -> list[Path]:
    """Write DIR/<node>/{user-data,meta-data,network-config}; all of it or nothing."""
    marker = out_dir / MARKER
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.exists():
        raise RenderError(f"{out_dir}: not empty and not written by `invoke render`: choose another --out")
    rendered = render_site(site, secrets)  # everything is rendered before anything is written
    files = {MARKER: (f"rendered by nodekiln for site {site.name}\n".encode(), 0o644)}
    files |= {
        f"{name}/{file}": (data, 0o600 if file == "user-data" else 0o644)  # user-data holds keys
        for name, node in rendered.items()
        for file, data in node.files().items()
    }
    write_tree_atomic(out_dir, files)
    return [out_dir / name for name in rendered]
