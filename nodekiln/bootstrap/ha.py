"""The highly available API endpoint: keepalived (VRRP VIP) and HAProxy on every control plane.

One rendered file per configuration (`keepalived.conf`, `check_apiserver.sh`, `haproxy.cfg`),
two ways to run it, chosen by `controlPlane.loadBalancerMode`:

- `static-pods`: kubelet runs pinned container images from `/etc/kubernetes/manifests`, with the
  host's config files mounted read-only;
- `host-services`: the Debian `keepalived` and `haproxy` packages of the node image run them,
  with a systemd drop-in each (the packages' units already read the same paths).

Both ways run the same command line (KEEPALIVED_ARGS, HAPROXY_ARGS), so what the netns test bed
proves about one holds for the other.

Timing (the figure `vip_failover_s`, goal <= 1.5 s after the holder dies):
RFC 3768 (VRRPv2) declares the master dead after 3 missed adverts plus a skew of
(256 - priority)/256 s; with kubeadm's example (advert 1 s) that is ~3.6 s. VRRPv3 would allow
sub-second adverts, but drops authentication (keepalived ignores `auth_pass` with v3), and the
site's VRRP password is what keeps a neighbouring cluster on the same segment and VRID from
taking our VIP. So: VRRPv2 with PASS, advert 1 s, `down_timer_adverts 1` (keepalived >= 2.2;
not RFC: a backup takes over after ONE missed advert) and high priorities (skew 0.02-0.1 s):
master-down ~1.1 s. The price: a single lost or >1 s late advert makes a backup claim the VIP
too; the master answers with its higher priority within an advert and the backup yields (a
brief duplicate, counted by the no-flapping check). On a LAN that is rare; on a congested or
CPU-starved network raise DOWN_TIMER_ADVERTS to 2 (failover ~2.1 s) or 3 (RFC, ~3.1 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodekiln import templates
from nodekiln.bootstrap.nodefiles import NodeFile
from nodekiln.config.site import APISERVER_PORT, Node, Site
from nodekiln.secrets import Secrets

# --- VRRP (keepalived) ---------------------------------------------------------------------
ADVERT_INT = 1  # seconds; VRRPv2 only allows whole seconds
DOWN_TIMER_ADVERTS = 1  # adverts missed before a backup takes over (RFC: 3)
# The init node is the preferred first holder; the others follow in site order. Distinct
# priorities 10 apart: the skew timers differ by ~40 ms, so two backups never race.
TOP_PRIORITY = 250
PRIORITY_STEP = 10
# Check script: every second, two failures in a row (~2 s) put the instance in FAULT (no
# weight: a node whose API server or HAProxy is broken must not hold the VIP at any priority);
# it then sends a priority-0 advert and a backup takes over at once. Two successes to recover.
CHECK_INTERVAL = 1
CHECK_TIMEOUT = 7  # the script makes at most three 2 s requests
CHECK_FALL = 2
CHECK_RISE = 2
# curl --max-time per request: room for HAProxy to give up on a dead server (timeout connect)
# and retry another, so a peer's death never fails this node's check
CHECK_MAX_TIME = 2

# --- HAProxy --------------------------------------------------------------------------------
# Health checks of every API server's /healthz: a dead one is out after 1 s + 2 x 0.5 s;
# a recovered one is back after 2 checks at 2 s (downinter: no hurry, avoids flapping).
HAPROXY_INTER = "1s"
HAPROXY_FASTINTER = "500ms"
HAPROXY_DOWNINTER = "2s"
HAPROXY_FALL = 2
HAPROXY_RISE = 2
# API servers are on the same LAN, where the kernel answers a SYN within milliseconds: no
# answer in 300 ms means a dead host. HAProxy then retries another server (redispatch) instead
# of holding the client until the health check notices.
HAPROXY_TIMEOUT_CONNECT = "300ms"
# Watches and `kubectl exec/logs -f` are long-lived, mostly idle connections.
HAPROXY_TIMEOUT_TUNNEL = "1h"

# --- How each way runs the same files ---------------------------------------------------------
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
CHECK_SCRIPT = "/etc/keepalived/check_apiserver.sh"
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
MANIFESTS = "/etc/kubernetes/manifests"
# foreground, log to stdout (kubelet's container log / the journal), this config only;
# haproxy -Ws: master-worker that tells systemd when it is ready (a no-op in a container)
KEEPALIVED_ARGS = (
    "keepalived",
    "--dont-fork",
    "--log-console",
    "--log-detail",
    "--vrrp",
    f"--use-file={KEEPALIVED_CONF}",
)
HAPROXY_ARGS = ("haproxy", "-Ws", "-db", "-f", HAPROXY_CFG)
HOST_BINARIES = {"keepalived": "/usr/sbin/keepalived", "haproxy": "/usr/sbin/haproxy"}


@dataclass(frozen=True)
class Vrrp:
    """What differs between the VRRP groups nodekiln renders (the API endpoint's, the edge's)."""

    purpose: str
    script: str  # the vrrp_script's name
    instance: str  # the vrrp_instance's name
    router_id: int


def priority_at(index: int) -> int:
    """The VRRP priority of the group's index-th node (site order)."""
    return max(TOP_PRIORITY - PRIORITY_STEP * index, 1)


@dataclass(frozen=True)
class PinnedImage:
    repository: str
    tag: str
    digest: str | None  # sha256:<64 hex> of the multi-arch index; None: not yet resolved
    binary: str  # the program's path inside the image
    source: str  # where the digest was read

    @property
    def reference(self) -> str:
        ref = f"{self.repository}:{self.tag}"
        return f"{ref}@{self.digest}" if self.digest else ref


# The one place that pins the static pods' images (the image build preloads `ha_images`).
HAPROXY_IMAGE = PinnedImage(
    repository="docker.io/library/haproxy",
    tag="2.8.29-alpine",  # LTS branch; runs as uid 99 (USER haproxy in the image)
    digest="sha256:beffc7b55d4fcd3207629513b9fe2c9d278505366300f872fe117efce73997f6",
    binary="/usr/local/sbin/haproxy",
    source="docker-library/repo-info repos/haproxy/remote/2.8.29-alpine.md (commit 0ed0a0ed)",
)
# Kolla's keepalived is Debian 12's keepalived 2.2.7, the same build the host-services mode and
# the netns test bed run (down_timer_adverts needs >= 2.2: osixia/keepalived:2.0.20, the image
# most guides use, would silently fall back to the RFC's 3 adverts). It has curl and iproute2
# for check_apiserver.sh. The digest could not be read here (no registry access): resolve it
# on a connected machine with `skopeo inspect docker://<repository>:<tag>` and set it below.
KEEPALIVED_IMAGE = PinnedImage(
    repository="quay.io/openstack.kolla/keepalived",
    tag="2024.1-debian-bookworm",
    digest=None,
    binary="/usr/sbin/keepalived",
    source="unresolved: no registry access on the build host",
)


def ha_images(site: Site) -> list[str]:
    """Container images the node image must preload (static-pods mode only)."""
    if not site.load_balanced or site.controlPlane.loadBalancerMode != "static-pods":
        return []
    return [KEEPALIVED_IMAGE.reference, HAPROXY_IMAGE.reference]


def ha_services(site: Site) -> list[str]:
    """systemd units the first-boot script enables and starts on a control plane."""
    if not site.load_balanced or site.controlPlane.loadBalancerMode != "host-services":
        return []
    # HAProxy first: the check script asks it before keepalived may claim the VIP.
    return ["haproxy.service", "keepalived.service"]


def priority(site: Site, node: Node) -> int:
    return priority_at([cp.name for cp in site.control_planes].index(node.name))


def _context(site: Site, node: Node) -> dict[str, object]:
    return {
        "site": site,
        "node": node,
        "vip": site.controlPlane.endpoint.vip,
        "port": site.endpoint_port,
        "apiserver_port": APISERVER_PORT,
        "interface": site.controlPlane.interface,
        "peers": [cp.address for cp in site.control_planes if cp.name != node.name],
        "priority": priority(site, node),
        "advert_int": ADVERT_INT,
        "down_timer_adverts": DOWN_TIMER_ADVERTS,
        "check": {
            "interval": CHECK_INTERVAL,
            "timeout": CHECK_TIMEOUT,
            "fall": CHECK_FALL,
            "rise": CHECK_RISE,
            "max_time": CHECK_MAX_TIME,
        },
        "lb": {
            "inter": HAPROXY_INTER,
            "fastinter": HAPROXY_FASTINTER,
            "downinter": HAPROXY_DOWNINTER,
            "fall": HAPROXY_FALL,
            "rise": HAPROXY_RISE,
            "timeout_connect": HAPROXY_TIMEOUT_CONNECT,
            "timeout_tunnel": HAPROXY_TIMEOUT_TUNNEL,
        },
        "paths": {"keepalived_conf": KEEPALIVED_CONF, "check_script": CHECK_SCRIPT, "haproxy_cfg": HAPROXY_CFG},
        "vrrp": Vrrp(
            purpose="the API endpoint's VIP",
            script="check_apiserver",
            instance="kube_apiserver",
            router_id=site.controlPlane.virtualRouterId,
        ),
    }


def keepalived_conf(site: Site, secrets: Secrets, node: Node) -> str:
    # keepalived's PASS authentication compares the first 8 characters only.
    return templates.render(
        "bootstrap", "keepalived.conf.j2", auth_pass=secrets.vrrpPassword[:8], **_context(site, node)
    )


def ha_files(site: Site, secrets: Secrets, node: Node) -> list[NodeFile]:
    """The HA files of one control plane of a load-balanced site; [] for anything else."""
    if node.role != "control-plane" or not site.load_balanced:
        return []
    ctx = _context(site, node)
    files = [
        NodeFile(KEEPALIVED_CONF, keepalived_conf(site, secrets, node), 0o600),  # holds the VRRP password
        NodeFile(CHECK_SCRIPT, templates.render("bootstrap", "check_apiserver.sh.j2", **ctx), 0o755),
        NodeFile(HAPROXY_CFG, templates.render("bootstrap", "haproxy.cfg.j2", **ctx), 0o644),
    ]
    if site.controlPlane.loadBalancerMode == "static-pods":
        files += [
            NodeFile(
                f"{MANIFESTS}/keepalived.yaml",
                _manifest("keepalived.pod.yaml.j2", KEEPALIVED_IMAGE, KEEPALIVED_ARGS, ctx),
                0o600,
            ),
            NodeFile(
                f"{MANIFESTS}/haproxy.yaml", _manifest("haproxy.pod.yaml.j2", HAPROXY_IMAGE, HAPROXY_ARGS, ctx), 0o600
            ),
        ]
    else:
        files += [
            NodeFile(
                "/etc/systemd/system/keepalived.service.d/10-nodekiln.conf",
                _dropin("keepalived.dropin.conf.j2", KEEPALIVED_ARGS, ctx),
            ),
            NodeFile(
                "/etc/systemd/system/haproxy.service.d/10-nodekiln.conf",
                _dropin("haproxy.dropin.conf.j2", HAPROXY_ARGS, ctx),
            ),
        ]
    return files


def _manifest(template: str, image: PinnedImage, args: tuple[str, ...], ctx: dict[str, object]) -> str:
    # kubeadm writes its own static pods 0600; the same here (they name host paths)
    return templates.render("bootstrap", template, image=image.reference, command=[image.binary, *args[1:]], **ctx)


def _dropin(template: str, args: tuple[str, ...], ctx: dict[str, object]) -> str:
    return templates.render("bootstrap", template, exec_start=" ".join([HOST_BINARIES[args[0]], *args[1:]]), **ctx)
