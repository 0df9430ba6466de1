"""The edge nodes: HAProxy with Let's Encrypt certificates in front of the cluster's ingress.

What the setup in the talk runs by hand, rendered from the site's `edge` section: HAProxy
terminates TLS for the site's domains with a certificate certbot obtains through HTTP-01, sends
HTTP to HTTPS except the ACME path, balances over the ingress's HTTPS NodePort on every worker
(`check fall 3 rise 2 ssl verify required ca-file`: the workers must present a certificate of
the cluster's CA), fails over to the backup clusters (`option allbackups` with `backup`
servers), and answers unknown hosts from an error backend. Two edge nodes share a VIP through
keepalived, with the control planes' timing (ha.py).

The edge boots the node image; nothing of Kubernetes starts there (the user-data masks the
kubelet and containerd). Debian's haproxy.service, certbot and keepalived of the image run it.

Certificates (the figure `edge_cert_issue_s`): `issue.sh` runs `certbot certonly
--keep-until-expiring` every hour from a timer: it obtains the certificate once DNS points
here, renews it within 30 days of expiry, and does nothing otherwise. certbot answers the
challenge on 127.0.0.1 (HAProxy's `certbot` backend); its deploy hook joins chain and key into
HAProxy's PEM, checks it with `haproxy -c`, and reloads HAProxy (SIGUSR2 to the master, as
Debian's unit does), so renewals drop no connection. Until the first certificate a self-signed
placeholder lets HAProxy start; a failed issuance leaves the last good certificate.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from nodekiln import templates
from nodekiln.bootstrap import ha
from nodekiln.bootstrap.nodefiles import NodeFile
from nodekiln.config import ports
from nodekiln.config.edge import Edge
from nodekiln.config.site import Node, Site
from nodekiln.secrets import Secrets

# --- HAProxy to the ingress ---------------------------------------------------------------------
# The talk's health checks (`check fall 3 rise 2`), every 2 s; after a first failure the checks
# come every 500 ms (fastinter), so a dead worker is out ~3 s after it stopped answering. A
# request sent to it meanwhile is refused at once and retried on another server (redispatch).
EDGE_LB = {
    "inter": "2s",
    "fall": 3,
    "rise": 2,
    "fastinter": "500ms",
    "timeout_connect": "1s",
    "timeout_check": "1s",
    "timeout_tunnel": ha.HAPROXY_TIMEOUT_TUNNEL,
}
# Debian's haproxy.service (haproxy 2.6, /lib/systemd/system/haproxy.service): its CONFIG and
# PIDFILE, and the command line it runs; the deploy hook reloads through the same pid file.
HAPROXY_CFG = ha.HAPROXY_CFG
PIDFILE = "/run/haproxy.pid"
HAPROXY_ARGS = ("haproxy", "-Ws", "-f", HAPROXY_CFG, "-p", PIDFILE)
EDGE_DIR = "/etc/nodekiln/edge"
PATHS = {
    "haproxy_cfg": HAPROXY_CFG,
    "pidfile": PIDFILE,
    "stats_socket": "/run/haproxy/admin.sock",
    "certificate": "/etc/haproxy/certs/site.pem",
    "backend_ca": "/etc/haproxy/backend-ca.pem",
    "acme_ca": f"{EDGE_DIR}/acme-ca.pem",
    "issue": f"{EDGE_DIR}/issue.sh",
    "deploy_hook": f"{EDGE_DIR}/deploy-hook.sh",
    "acme_route": f"{EDGE_DIR}/acme-route.sh",
    "placeholder": f"{EDGE_DIR}/placeholder.sh",
    "certbot_ini": "/etc/letsencrypt/cli.ini",
    "keepalived_conf": ha.KEEPALIVED_CONF,
    "check_script": "/etc/keepalived/check_haproxy.sh",
    "service": "/etc/systemd/system/nodekiln-edge-certificate.service",
    "timer": "/etc/systemd/system/nodekiln-edge-certificate.timer",
    "haproxy_dropin": "/etc/systemd/system/haproxy.service.d/10-nodekiln-edge.conf",
}
PORTS = {"http": ports.HTTP, "https": ports.HTTPS, "acme": ports.ACME_STANDALONE, "health": ports.EDGE_HEALTH}
# what the user-data starts, in order (HAProxy before keepalived: its check asks HAProxy)
SERVICES = ("haproxy.service", "keepalived.service", "nodekiln-edge-certificate.timer")
# Kubernetes' units of the node image, masked on an edge node
MASKED = ("kubelet.service", "containerd.service")


def _edge(site: Site) -> Edge:
    if site.edge is None:
        raise ValueError(f"site {site.name} has no edge section")
    return site.edge


def _is_ipv4(address: str) -> bool:
    try:
        IPv4Address(address)
    except ValueError:
        return False
    return True


def cert_name(site: Site) -> str:
    """certbot's lineage (/etc/letsencrypt/live/<name>/): one certificate for all the domains."""
    return site.name


def peers(site: Site, node: Node) -> list[str]:
    return [str(e.address) for e in _edge(site).nodes if e.name != node.name]


def services(site: Site) -> list[str]:
    paired = len(_edge(site).nodes) == 2
    return [s for s in SERVICES if paired or s != "keepalived.service"]


def cluster_acme_port(site: Site) -> int | None:
    """The ingress's HTTP NodePort where cert-manager answers HTTP-01 (addons.certificates on),
    or None: then only the edge's own certbot answers challenges."""
    addons = site.addons
    if not (addons.enabled and addons.certificates.enabled and addons.ingress.enabled):
        return None
    return addons.ingress.nodePorts.http if addons.ingress.serviceType == "NodePort" else None


def backend_ca(site: Site, secrets: Secrets) -> str:
    """The CAs HAProxy trusts towards its servers: the cluster's, then the backup clusters'."""
    edge = _edge(site)
    bundle = secrets.ca.cert
    if edge.backupCAFile:
        bundle = bundle.rstrip("\n") + "\n" + site.site_file_text(edge.backupCAFile).strip("\n") + "\n"
    return bundle


def _context(site: Site, node: Node) -> dict[str, object]:
    edge = _edge(site)
    index = [e.name for e in edge.nodes].index(node.name)
    return {
        "site": site,
        "node": node,
        "domains": edge.domains,
        "acme": edge.acme,
        "acme_ca": edge.acme.caFile is not None,
        "cert_name": cert_name(site),
        "backend_port": site.edge_backend_port,
        "cluster_acme_port": cluster_acme_port(site),
        "backups": edge.backups,
        "named_backups": [b.address for b in edge.backups if not _is_ipv4(b.address)],
        "ports": PORTS,
        "paths": PATHS,
        "lb": EDGE_LB,
        "peers": peers(site, node),
        # keepalived (pair only)
        "vip": edge.vip,
        "interface": site.controlPlane.interface,  # the site's NIC name, as on every node
        "priority": ha.priority_at(index),
        "advert_int": ha.ADVERT_INT,
        "down_timer_adverts": ha.DOWN_TIMER_ADVERTS,
        "check": {
            "interval": ha.CHECK_INTERVAL,
            "timeout": ha.CHECK_TIMEOUT,
            "fall": ha.CHECK_FALL,
            "rise": ha.CHECK_RISE,
            "max_time": ha.CHECK_MAX_TIME,
        },
        "vrrp": ha.Vrrp(
            purpose="the edge's VIP", script="check_haproxy", instance="edge", router_id=edge.virtualRouterId
        ),
    }


def haproxy_cfg(site: Site, node: Node) -> str:
    return templates.render("bootstrap", "edge/haproxy.cfg.j2", **_context(site, node))


def edge_files(site: Site, secrets: Secrets, node: Node) -> list[NodeFile]:
    """Every file nodekiln writes on an edge node, sorted by path."""
    edge = _edge(site)
    ctx = _context(site, node)

    def render(name: str) -> str:
        return templates.render("bootstrap", f"edge/{name}", **ctx)

    files = [
        NodeFile("/etc/nftables.conf", render("nftables.conf.j2"), 0o755),
        NodeFile(PATHS["haproxy_cfg"], haproxy_cfg(site, node)),
        NodeFile(PATHS["backend_ca"], backend_ca(site, secrets)),
        NodeFile(PATHS["haproxy_dropin"], render("haproxy.dropin.conf.j2")),
        NodeFile(PATHS["placeholder"], render("placeholder.sh.j2"), 0o755),
        NodeFile(PATHS["certbot_ini"], render("certbot-cli.ini.j2")),
        NodeFile(PATHS["issue"], render("issue.sh.j2"), 0o755),
        NodeFile(PATHS["deploy_hook"], render("deploy-hook.sh.j2"), 0o755),
        NodeFile(PATHS["acme_route"], render("acme-route.sh.j2"), 0o755),
        NodeFile(PATHS["service"], render("certificate.service.j2")),
        NodeFile(PATHS["timer"], render("certificate.timer.j2")),
    ]
    if edge.acme.caFile:
        files.append(NodeFile(PATHS["acme_ca"], site.site_file_text(edge.acme.caFile)))
    if len(edge.nodes) == 2:
        # holds the VRRP password: the site's, like the control planes' (another VRID)
        auth_pass = secrets.vrrpPassword[:8]
        files += [
            NodeFile(
                PATHS["keepalived_conf"],
                templates.render("bootstrap", "keepalived.conf.j2", auth_pass=auth_pass, **ctx),
                0o600,
            ),
            NodeFile(PATHS["check_script"], render("check_haproxy.sh.j2"), 0o755),
        ]
    return sorted(files)
