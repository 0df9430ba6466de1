"""The upstream contract: what kubeadm, the kubelet, etcd and Calico do on a node, per minor.

kubeadm and the kubelet cannot run where nodekiln is tested, so what they would do to the
immutable layout (read-only root, `/etc` overlay, `/var` on the data partition) is read from
their source and written down here, once, with the reference it was read from. The renderer,
the bake steps' inputs, the stand-in kubeadm of the tests and the boot checks all use this
module; nothing else states these facts. Re-read every reference when a minor is added.

A reference names repository, file and symbol; `READ_AT` is the commit each repository was read
at. Facts that changed between minors are per `Release`; the rest hold for 1.31 to 1.35.

This module imports nothing from nodekiln: the site model, the bootstrap renderer, the image
bake and the addons all read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nodekiln.config import ports

K8S = "kubernetes/kubernetes"
TIGERA = "tigera/operator"
CALICO = "projectcalico/calico"


@dataclass(frozen=True)
class Ref:
    """Where an upstream fact was read: repository, file, symbol (function, const, type)."""

    repo: str
    path: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.repo}/{self.path} ({self.symbol})"


# ---------------------------------------------------------------------------------------------
# Per release


@dataclass(frozen=True)
class Release:
    minor: int
    pause: str  # kubeadm's PauseVersion: the sandbox image its preflight pulls and expects
    # WaitForAllControlPlaneComponents on by default: `kubeadm init` (and a control-plane
    # join) also waits for kube-controller-manager's and kube-scheduler's health ports
    waits_for_all_components: bool
    etcd: str  # the etcd kubeadm deploys at the minor's .0 (SupportedEtcdVersion; later patches move it)

    @property
    def minor_name(self) -> str:
        return f"1.{self.minor}"


PAUSE_REF = Ref(K8S, "cmd/kubeadm/app/constants/constants.go", "PauseVersion")
ETCD_REF = Ref(K8S, "cmd/kubeadm/app/constants/constants.go", "SupportedEtcdVersion")
WAIT_ALL_REF = Ref(K8S, "cmd/kubeadm/app/features/features.go", "WaitForAllControlPlaneComponents")

RELEASES: dict[int, Release] = {
    r.minor: r
    for r in (
        Release(31, pause="3.10", waits_for_all_components=False, etcd="3.5.15-0"),
        Release(32, pause="3.10", waits_for_all_components=False, etcd="3.5.16-0"),
        Release(33, pause="3.10", waits_for_all_components=True, etcd="3.5.21-0"),
        Release(34, pause="3.10.1", waits_for_all_components=True, etcd="3.6.4-0"),
        Release(35, pause="3.10.1", waits_for_all_components=True, etcd="3.6.6-0"),
    )
}
SUPPORTED_MINORS = range(min(RELEASES), max(RELEASES) + 1)
# kubeadm's DefaultImageRepository; ClusterConfiguration.imageRepository as nodekiln renders it
IMAGE_REPOSITORY = "registry.k8s.io"


def minor_of(version: str) -> int:
    return int(version.removeprefix("v").split(".")[1])


def release(version: str) -> Release:
    """The facts of the minor of `version` ("1.31.4")."""
    minor = minor_of(version)
    if minor not in RELEASES:
        raise KeyError(f"Kubernetes 1.{minor} is not in nodekiln's contract (1.{min(RELEASES)} to 1.{max(RELEASES)})")
    return RELEASES[minor]


def pause_image(version: str) -> str:
    """The sandbox image containerd must use so kubeadm's preflight finds what it expects."""
    return f"{IMAGE_REPOSITORY}/pause:{release(version).pause}"


# ---------------------------------------------------------------------------------------------
# Node labels the kubelet accepts


LABELS_REF = Ref(K8S, "cmd/kubelet/app/options/options.go", "ValidateKubeletFlags")
KUBELET_LABELS_REF = Ref(
    K8S,
    "staging/src/k8s.io/kubelet/pkg/apis/well_known_labels.go",
    "kubeletLabels, kubeletLabelNamespaces, IsKubeletLabel",
)
# A --node-labels key whose prefix is kubernetes.io or k8s.io, or a subdomain of either, makes
# the kubelet exit at start unless IsKubeletLabel allows it.
RESTRICTED_LABEL_DOMAINS = ("kubernetes.io", "k8s.io")
KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    }
)
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")


def _in_domain(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def kubelet_refuses_label(key: str) -> bool:
    """True when the kubelet would refuse `key` in --node-labels (and so never start)."""
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if not any(_in_domain(namespace, d) for d in RESTRICTED_LABEL_DOMAINS):
        return False
    if key in KUBELET_LABELS:
        return False
    return not any(_in_domain(namespace, ns) for ns in KUBELET_LABEL_NAMESPACES)


# ---------------------------------------------------------------------------------------------
# Host paths: what the static pods mount, what the kubelet and Calico create or write


Need = Literal["exists", "writable"]


@dataclass(frozen=True)
class HostPath:
    """A path on the node that a component mounts or writes.

    need: "exists" -- mounted read-only, or a DirectoryOrCreate/FileOrCreate hostPath the kubelet
    creates when missing (it must exist in the image or lie on a writable file system);
    "writable" -- the component writes into it.
    """

    path: str
    component: str
    need: Need
    ref: Ref


VOLUMES_REF = Ref(K8S, "cmd/kubeadm/app/phases/controlplane/volumes.go", "getHostPathVolumesForTheControlPlane")
ETCD_VOLUMES_REF = Ref(K8S, "cmd/kubeadm/app/phases/etcd/local.go", "GetEtcdPodSpec")
KUBELET_DEFAULTS_REF = Ref(K8S, "pkg/kubelet/apis/config/v1beta1/defaults.go", "SetDefaults_KubeletConfiguration")
KUBELET_DIRS_REF = Ref(K8S, "pkg/kubelet/kubelet.go", "setupDataDirs")
FLEX_PROBE_REF = Ref(K8S, "pkg/volume/flexvolume/probe.go", "flexVolumeProber.Init, createPluginDir")
KUBEADM_KUBELET_REF = Ref(K8S, "cmd/kubeadm/app/componentconfigs/kubelet.go", "kubeletConfig.Default")

# kubeadm's defaultFlexvolumeDirVolumePath, the kubelet's volumePluginDir default and the Tigera
# operator's flexVolumePath default for kubeadm clusters: all the same path under read-only /usr.
UPSTREAM_FLEX_VOLUME_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
TIGERA_FLEX_DEFAULT = UPSTREAM_FLEX_VOLUME_DIR + "/"  # the operator's spelling, with the slash
# nodekiln's choice (as Typhoon and Flatcar's docs do): under the kubelet's own writable root.
FLEX_VOLUME_DIR = "/var/lib/kubelet/volumeplugins"
KUBELET_ROOT = "/var/lib/kubelet"
STATIC_POD_PATH = "/etc/kubernetes/manifests"
CERTIFICATES_DIR = "/etc/kubernetes/pki"
ETCD_DATA_DIR = "/var/lib/etcd"
CA_CERTS_DIR = "/etc/ssl/certs"
# mounted into the API server and controller manager only when they exist on the host
# (kubernetes#124361, 1.31: /etc/pki/ca-trust and /etc/pki/tls/certs instead of all of /etc/pki)
CA_CERTS_EXTRA_DIRS = (
    "/etc/pki/ca-trust",
    "/etc/pki/tls/certs",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
)


# ---------------------------------------------------------------------------------------------
# Metrics (the monitoring addon)
#
# kubeadm binds the controller manager's and the scheduler's secure ports (bind-address) and
# etcd's metrics (listen-metrics-urls http://127.0.0.1:2381) to the loopback address, and
# kube-proxy defaults metricsBindAddress to 127.0.0.1:10249: Prometheus in a pod reaches none of
# them. With monitoring on they listen on every address; nftables lets in only the pod and node
# networks (bootstrap/firewall.py). The ClusterConfiguration is shared by every control plane
# (join reads it from the kubeadm-config ConfigMap), so no per-node address can go in it.
METRICS_BIND_ADDRESS = "0.0.0.0"
KCM_BIND_REF = Ref(
    K8S, "cmd/kubeadm/app/phases/controlplane/manifests.go", "getControllerManagerCommand (bind-address)"
)
SCHEDULER_BIND_REF = Ref(K8S, "cmd/kubeadm/app/phases/controlplane/manifests.go", "getSchedulerCommand (bind-address)")
ETCD_METRICS_REF = Ref(K8S, "cmd/kubeadm/app/phases/etcd/local.go", "getEtcdCommand (listen-metrics-urls)")
KUBE_PROXY_METRICS_REF = Ref(
    K8S, "staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go", "KubeProxyConfiguration.MetricsBindAddress"
)
# The static pods' probes follow the bind addresses: for 0.0.0.0 kubeadm leaves the probe host
# empty (the kubelet probes the pod's address, the node's: host network); for etcd it probes the
# first listen-metrics-urls host, 0.0.0.0, which Linux connects to as the local host.
PROBE_ADDRESS_REF = Ref(K8S, "cmd/kubeadm/app/util/staticpod/utils.go", "getProbeAddress, GetEtcdProbeEndpoint")
# kube-proxy's configuration in kubeadm's config file: kubeadm uploads it to the kube-proxy
# ConfigMap that every node's kube-proxy reads (componentconfigs/kubeproxy.go).
KUBE_PROXY_CONFIG_REF = Ref(
    K8S, "cmd/kubeadm/app/componentconfigs/kubeproxy.go", "kubeProxyHandler (kubeproxy.config.k8s.io/v1alpha1)"
)


def metrics_args() -> dict[str, list[dict[str, str]]]:
    """The v1beta4 extraArgs of ClusterConfiguration that expose the control plane's metrics."""
    return {
        "controllerManager": [{"name": "bind-address", "value": METRICS_BIND_ADDRESS}],
        "scheduler": [{"name": "bind-address", "value": METRICS_BIND_ADDRESS}],
        "etcd": [{"name": "listen-metrics-urls", "value": f"http://{METRICS_BIND_ADDRESS}:{ports.ETCD_METRICS}"}],
    }


def kube_proxy_metrics_address() -> str:
    return f"{METRICS_BIND_ADDRESS}:{ports.KUBE_PROXY_METRICS}"


def extra_arg(args: Sequence[Mapping[str, str]] | None, name: str) -> str | None:
    """kubeadm's GetArgValue on a v1beta4 extraArgs list ([{name, value}]): the last one wins."""
    found = None
    for arg in args or ():
        if arg.get("name") == name:
            found = arg.get("value")
    return found


def control_plane_host_paths(
    cluster: Mapping[str, Any], existing: Iterable[str] = CA_CERTS_EXTRA_DIRS
) -> list[HostPath]:
    """The hostPaths kubeadm puts into the control-plane static pods for this ClusterConfiguration.

    `existing`: which of CA_CERTS_EXTRA_DIRS exist on the node (kubeadm's
    isExtraVolumeMountNeeded stats them on the host); all of them by default.
    """
    certs = cluster.get("certificatesDir", CERTIFICATES_DIR)
    kcm_args = (cluster.get("controllerManager") or {}).get("extraArgs")
    flex = extra_arg(kcm_args, "flex-volume-plugin-dir") or UPSTREAM_FLEX_VOLUME_DIR
    data_dir = ((cluster.get("etcd") or {}).get("local") or {}).get("dataDir", ETCD_DATA_DIR)
    paths = [
        HostPath(certs, "kube-apiserver, kube-controller-manager", "exists", VOLUMES_REF),
        HostPath(CA_CERTS_DIR, "kube-apiserver, kube-controller-manager", "exists", VOLUMES_REF),
        HostPath("/etc/kubernetes/controller-manager.conf", "kube-controller-manager", "exists", VOLUMES_REF),
        HostPath("/etc/kubernetes/scheduler.conf", "kube-scheduler", "exists", VOLUMES_REF),
        # mounted read-write: flex drivers talk to their backends through sockets there
        HostPath(flex, "kube-controller-manager (flexvolume-dir, DirectoryOrCreate)", "exists", VOLUMES_REF),
        *(
            HostPath(d, "kube-apiserver, kube-controller-manager (CA certificates)", "exists", VOLUMES_REF)
            for d in existing
        ),
        HostPath(data_dir, "etcd (etcd-data, DirectoryOrCreate)", "writable", ETCD_VOLUMES_REF),
        HostPath(f"{certs}/etcd", "etcd (etcd-certs, DirectoryOrCreate)", "exists", ETCD_VOLUMES_REF),
    ]
    return paths


def kubelet_host_paths(kubelet: Mapping[str, Any]) -> list[HostPath]:
    """What the kubelet creates or writes with this KubeletConfiguration (kubeadm's defaults)."""
    plugins = kubelet.get("volumePluginDir", UPSTREAM_FLEX_VOLUME_DIR).rstrip("/")
    static = kubelet.get("staticPodPath", STATIC_POD_PATH)
    return [
        HostPath(
            KUBELET_ROOT,
            "kubelet (root-dir: pods, plugins, plugins_registry, pod-resources, pki)",
            "writable",
            KUBELET_DIRS_REF,
        ),
        HostPath("/var/log/pods", "kubelet (pod logs)", "writable", KUBELET_DIRS_REF),
        HostPath("/var/log/containers", "kubelet (log links)", "writable", KUBELET_DIRS_REF),
        HostPath(static, "kubelet (staticPodPath; kubeadm writes the manifests)", "writable", KUBEADM_KUBELET_REF),
        # the flexvolume prober creates it at start (MkdirAll) and watches it
        HostPath(plugins, "kubelet (volumePluginDir)", "writable", FLEX_PROBE_REF),
        HostPath("/etc/kubernetes", "kubeadm (kubeconfigs, bootstrap-kubelet.conf)", "writable", KUBEADM_KUBELET_REF),
    ]


TIGERA_FLEX_REF = Ref(
    TIGERA,
    "pkg/controller/installation/core_controller.go",
    "fillDefaults (FlexVolumePath); validation.go validateCustomResource",
)
TIGERA_NODE_REF = Ref(TIGERA, "pkg/render/node.go", "nodeComponent.nodeVolumes, flexVolumeContainer")
TIGERA_CNI_REF = Ref(TIGERA, "pkg/render/node.go", "nodeComponent.cniDirectories")
TIGERA_CSI_REF = Ref(TIGERA, "pkg/render/csi.go", "csiComponent.csiVolumes")
# Mounted with Bidirectional propagation (calico-csi at the kubelet's root; from Calico 3.32
# ebpf-bootstrap at /sys/fs and /var/run/calico): containerd refuses unless the host mount is
# shared (containerd internal/cri/opts/spec_linux_opts.go, withMounts/ensureShared).
SHARED_MOUNTS_REF = Ref("containerd/containerd", "internal/cri/opts/spec_linux_opts.go", "withMounts, ensureShared")
SHARED_MOUNTS = (KUBELET_ROOT, "/run", "/sys/fs")
# calico-node mounts it as type Directory (must exist) from Calico 3.32 (pkg/render/node.go, nodeVolumes)
BPFFS = "/sys/fs/bpf"
# felix masquerades traffic from a natOutgoing pool to anything outside every IP pool (other
# nodes' addresses included): it reaches another node from its own node's address.
CALICO_NAT_REF = Ref(CALICO, "felix/rules/nat.go", "DefaultRuleRenderer.NATOutgoingChain, makeNATOutgoingRuleIPTables")
FLEX_VOLUME_NONE = "None"  # Installation.spec.flexVolumePath: no flexvol driver, no such hostPath


def calico_host_paths(installation: Mapping[str, Any]) -> list[HostPath]:
    """What calico-node, its init containers and csi-node-driver mount and write for this
    Installation spec (kubernetesProvider "": the operator's defaults for plain kubeadm; the CNI
    directories are fixed in operator 1.38, Calico 3.30)."""
    flex = installation.get("flexVolumePath") or TIGERA_FLEX_DEFAULT
    paths = [
        HostPath("/lib/modules", "calico-node (read-only)", "exists", TIGERA_NODE_REF),
        HostPath("/run/xtables.lock", "calico-node (FileOrCreate)", "writable", TIGERA_NODE_REF),
        HostPath("/var/run/calico", "calico-node", "writable", TIGERA_NODE_REF),
        HostPath("/var/lib/calico", "calico-node", "writable", TIGERA_NODE_REF),
        HostPath("/var/run/nodeagent", "calico-node (policysync, DirectoryOrCreate)", "writable", TIGERA_NODE_REF),
        HostPath("/var/log/calico/cni", "calico-node (CNI plugin log)", "writable", TIGERA_NODE_REF),
        HostPath("/etc/cni/net.d", "calico-node install-cni (CNI config)", "writable", TIGERA_CNI_REF),
        HostPath("/opt/cni/bin", "calico-node install-cni (CNI binaries)", "writable", TIGERA_CNI_REF),
    ]
    # the 3.30 chart sets it from its top-level kubeletVolumePluginPath (default /var/lib/kubelet),
    # the 3.32 chart from installation.kubeletVolumePluginPath (default None: no CSI driver)
    kubelet_dir = installation.get("kubeletVolumePluginPath") or KUBELET_ROOT
    if kubelet_dir != "None":  # csi-node-driver (pkg/render/csi.go, csiVolumes)
        paths += [
            HostPath(
                f"{kubelet_dir}/plugins/csi.tigera.io",
                "csi-node-driver (socket-dir, DirectoryOrCreate)",
                "writable",
                TIGERA_CSI_REF,
            ),
            HostPath(
                f"{kubelet_dir}/plugins_registry",
                "csi-node-driver-registrar (registration-dir)",
                "writable",
                TIGERA_CSI_REF,
            ),
        ]
    if flex != FLEX_VOLUME_NONE:
        # the operator concatenates (FlexVolumePath + "nodeagent~uds"): a path must end in "/"
        paths.append(
            HostPath(
                f"{flex}nodeagent~uds", "calico-node flexvol-driver (writes its driver)", "writable", TIGERA_NODE_REF
            )
        )
    return paths


# ---------------------------------------------------------------------------------------------
# Preflight


VALIDATE_IGNORE_REF = Ref(K8S, "cmd/kubeadm/app/apis/kubeadm/validation/validation.go", "ValidateIgnorePreflightErrors")
PREFLIGHT_REF = Ref(K8S, "cmd/kubeadm/app/preflight/checks.go", "RunInitNodeChecks, RunJoinNodeChecks, addCommonChecks")
JOIN_PREFLIGHT_REF = Ref(K8S, "cmd/kubeadm/app/cmd/phases/join/preflight.go", "runPreflight")


def check_ignore_list(flags: Iterable[str], config: Iterable[str]) -> list[str] | str:
    """kubeadm's ValidateIgnorePreflightErrors: the merged, lower-cased set, or its error text.

    The flag's and the configuration's lists are merged; 'all' together with any named check
    is refused before any phase runs."""
    merged = sorted({item.lower() for item in [*flags, *config]})
    if "all" in merged and len(merged) > 1:
        return f"ignore-preflight-errors: Invalid value: \"{','.join(merged)}\": don't specify individual checks if 'all' is used"
    return merged


@dataclass(frozen=True)
class Check:
    """A preflight check that the state of the node decides (others test the machine: CPU,
    memory, kernel, binaries). `name` is kubeadm's: the kind, then the path with every '/'
    made '-' (DirAvailableCheck.Name, FileAvailableCheck.Name), or Port-N."""

    kind: Literal["FileAvailable", "DirAvailable", "Port"]
    target: str  # a path, or a port number
    roles: tuple[str, ...]  # init, control-plane (joining), worker
    fires_when: str  # FileAvailable: the file exists; DirAvailable: the dir is not empty; Port: in use

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.target.replace('/', '-')}"


_CP = ("init", "control-plane")
_ALL = ("init", "control-plane", "worker")
# What a node's own state can trip, in 1.31-1.35. kubeadm's init checks only the four manifest
# files it writes (no DirAvailable of the manifests folder since kubernetes#57287) and join has
# no folder check since 1.23 (kubernetes#104942): the keepalived and HAProxy manifests nodekiln
# pre-places trip nothing, so its configurations ignore no check; a rerun skips the preflight
# phase instead of ignoring checks, so it never needs `all`. A control plane that joins
# runs RunJoinNodeChecks and then RunInitNodeChecks(isSecondaryControlPlane=true); the CA file
# check is for workers only (cfg.ControlPlane == nil).
PREFLIGHT_CHECKS: tuple[Check, ...] = (
    *(
        Check("Port", str(port), _CP, "a listener is on it")
        for port in (ports.APISERVER, ports.KUBE_SCHEDULER, ports.KUBE_CONTROLLER_MANAGER)
    ),
    *(
        Check("FileAvailable", f"{STATIC_POD_PATH}/{c}.yaml", _CP, "it exists")
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
    ),
    Check("Port", str(ports.KUBELET), _ALL, "a listener is on it"),
    *(Check("Port", str(port), _CP, "a listener is on it") for port in ports.ETCD),
    Check("DirAvailable", ETCD_DATA_DIR, _CP, "it is not empty"),
    Check("FileAvailable", "/etc/kubernetes/kubelet.conf", ("control-plane", "worker"), "it exists"),
    Check("FileAvailable", "/etc/kubernetes/bootstrap-kubelet.conf", ("control-plane", "worker"), "it exists"),
    Check("FileAvailable", f"{CERTIFICATES_DIR}/ca.crt", ("worker",), "it exists"),
)


def preflight_checks(role: str) -> tuple[Check, ...]:
    return tuple(c for c in PREFLIGHT_CHECKS if role in c.roles)


# ---------------------------------------------------------------------------------------------
# Phases and what each leaves behind


INIT_PHASES_REF = Ref(K8S, "cmd/kubeadm/app/cmd/init.go", "newCmdInit (initRunner.AppendPhase)")
JOIN_PHASES_REF = Ref(K8S, "cmd/kubeadm/app/cmd/join.go", "newCmdJoin (joinRunner.AppendPhase)")
# ControlPlaneKubeletLocalMode: alpha in 1.31-1.32 (off), beta on by default in 1.33, GA in 1.35.
# With it on, a joining control plane adds its etcd member in the top-level phase etcd-join
# and waits for its kubelet's TLS bootstrap in kubelet-wait-bootstrap, after etcd-join;
# control-plane-join/etcd does nothing. With it off, kubelet-start waits for the TLS bootstrap
# and control-plane-join/etcd adds the member.
LOCAL_MODE_REF = Ref(
    K8S,
    "cmd/kubeadm/app/cmd/phases/join/controlplanejoin.go",
    "NewEtcdJoinPhase, getControlPlaneJoinPhaseFlags (RunIf ControlPlaneKubeletLocalMode)",
)
SKIP_PHASES_REF = Ref(
    K8S,
    "cmd/kubeadm/app/cmd/init.go, join.go",
    "newInitData/newJoinData: a non-empty --skip-phases replaces the configuration's skipPhases",
)


@dataclass(frozen=True)
class Phase:
    """A top-level kubeadm phase: the files it leaves (empty: only API objects or a wait), and
    whether a rerun of the whole command may run it again ("safe") or must skip it ("skip":
    always when it leaves nothing, else once its first file exists)."""

    name: str
    leaves: tuple[str, ...] = ()
    rerun: Literal["safe", "skip"] = "safe"
    roles: tuple[str, ...] = _ALL
    minors: range = SUPPORTED_MINORS
    why: str = ""
    ref: Ref | None = None
    done_when: str | None = None  # rerun "skip" phases that leave files: skipped once this exists


KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_FILES = ("/var/lib/kubelet/config.yaml", "/var/lib/kubelet/kubeadm-flags.env")
# NodeLocalCRISocket (beta, on by default from 1.34): kubelet-start also writes this file
INSTANCE_CONFIG = "/var/lib/kubelet/instance-config.yaml"
LOCAL_MODE_MINORS = range(33, SUPPORTED_MINORS.stop)
NO_LOCAL_MODE_MINORS = range(SUPPORTED_MINORS.start, 33)
MANIFESTS = tuple(
    f"{STATIC_POD_PATH}/{c}.yaml" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
)
REUSES = "reuses certificates and kubeconfigs on disk that the CA signed (the pre-generated CAs among them)"

INIT_PHASES: tuple[Phase, ...] = (
    Phase(
        "preflight",
        rerun="skip",
        why="the first attempt's manifests, ports and etcd data fail its checks",
        ref=PREFLIGHT_REF,
    ),
    Phase(
        "certs",
        (f"{CERTIFICATES_DIR}/apiserver.crt", f"{CERTIFICATES_DIR}/etcd/server.crt"),
        roles=("init",),
        why=REUSES,
        ref=Ref(K8S, "cmd/kubeadm/app/phases/certs/certs.go", "writeCertificateFilesIfNotExist"),
    ),
    Phase(
        "kubeconfig",
        (
            ADMIN_CONF,
            "/etc/kubernetes/super-admin.conf",
            KUBELET_CONF,
            "/etc/kubernetes/controller-manager.conf",
            "/etc/kubernetes/scheduler.conf",
        ),
        roles=("init",),
        why="reuses a kubeconfig on disk with the same CA",
        ref=Ref(K8S, "cmd/kubeadm/app/phases/kubeconfig/kubeconfig.go", "createKubeConfigFileIfNotExists"),
    ),
    Phase(
        "etcd",
        (f"{STATIC_POD_PATH}/etcd.yaml",),
        roles=("init",),
        why="writes the manifest again",
        ref=Ref(K8S, "cmd/kubeadm/app/phases/etcd/local.go", "CreateLocalEtcdStaticPodManifestFile"),
    ),
    Phase(
        "control-plane",
        MANIFESTS,
        roles=("init",),
        why="writes the manifests again",
        ref=Ref(K8S, "cmd/kubeadm/app/phases/controlplane/manifests.go", "CreateStaticPodFiles"),
    ),
    Phase(
        "kubelet-start",
        KUBELET_FILES,
        roles=("init",),
        why="writes the kubelet's files again and restarts it",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/kubelet.go", "runKubeletStart"),
    ),
    Phase(
        "wait-control-plane",
        roles=("init",),
        why="waits again (from 1.33 for every component's health port too)",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/waitcontrolplane.go", "runWaitControlPlanePhase"),
    ),
    Phase(
        "upload-config",
        roles=("init",),
        why="creates or updates the kubeadm-config and kubelet-config ConfigMaps",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/uploadconfig.go", "runUploadKubeadmConfig"),
    ),
    Phase(
        "upload-certs",
        roles=("init",),
        why="does nothing without --upload-certs (nodekiln ships the PKI itself)",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/uploadcerts.go", "runUploadCerts"),
    ),
    Phase(
        "mark-control-plane",
        roles=("init",),
        why="patches the node's label and taints again",
        ref=Ref(K8S, "cmd/kubeadm/app/phases/markcontrolplane/markcontrolplane.go", "MarkControlPlane"),
    ),
    Phase(
        "bootstrap-token",
        roles=("init",),
        why="creates or updates the token Secret and the RBAC rules",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/bootstraptoken.go", "runBootstrapToken (UpdateOrCreateTokens)"),
    ),
    Phase(
        "kubelet-finalize",
        roles=("init",),
        why="points kubelet.conf at the rotated client certificate again",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/init/kubeletfinalize.go", "runKubeletFinalizeCertRotation"),
    ),
    Phase(
        "addon",
        roles=("init",),
        why="creates or updates CoreDNS and kube-proxy",
        ref=Ref(K8S, "cmd/kubeadm/app/phases/addons/dns/dns.go", "EnsureDNSAddon"),
    ),
    Phase("show-join-command", roles=("init",), why="prints only"),
)

ETCD_MANIFEST = f"{STATIC_POD_PATH}/etcd.yaml"
KUBELET_START_REF = Ref(K8S, "cmd/kubeadm/app/cmd/phases/join/kubelet.go", "runKubeletStartJoinPhase")
KUBELET_START_RERUN = (
    'refuses when a Ready node of the same name exists ("a Node with name %q and status %q '
    'already exists in the cluster"): once kubelet.conf is there a rerun skips it'
)
ETCD_IDEMPOTENT = (
    "adds the etcd member again: a member with the same peer URL is taken as added "
    "(kubernetes#127491, 1.32; backported to 1.31)"
)
JOIN_PHASES: tuple[Phase, ...] = (
    Phase(
        "preflight",
        rerun="skip",
        roles=("control-plane", "worker"),
        why="the first attempt's kubelet.conf, manifests, ports and etcd data fail its checks",
        ref=JOIN_PREFLIGHT_REF,
    ),
    Phase(
        "control-plane-prepare",
        (f"{CERTIFICATES_DIR}/apiserver.crt", "/etc/kubernetes/controller-manager.conf", *MANIFESTS),
        roles=("control-plane",),
        why=REUSES + "; writes the manifests again",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/join/controlplaneprepare.go", "NewControlPlanePreparePhase"),
    ),
    Phase(
        "check-etcd",
        roles=("control-plane",),
        why="checks the etcd cluster's health through the API",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/join/checketcd.go", "runCheckEtcdPhase"),
    ),
    # kubelet.conf appears once the kubelet's TLS bootstrap has registered the node: within
    # kubelet-start before 1.33, in kubelet-wait-bootstrap from 1.33 (ControlPlaneKubeletLocalMode)
    Phase(
        "kubelet-start",
        (KUBELET_CONF, *KUBELET_FILES),
        rerun="skip",
        done_when=KUBELET_CONF,
        roles=("control-plane", "worker"),
        minors=NO_LOCAL_MODE_MINORS,
        why=KUBELET_START_RERUN,
        ref=KUBELET_START_REF,
    ),
    Phase(
        "kubelet-start",
        KUBELET_FILES,
        rerun="skip",
        done_when=KUBELET_CONF,
        roles=("control-plane", "worker"),
        minors=LOCAL_MODE_MINORS,
        why=KUBELET_START_RERUN,
        ref=KUBELET_START_REF,
    ),
    Phase(
        "etcd-join",
        (ETCD_MANIFEST,),
        roles=("control-plane",),
        minors=LOCAL_MODE_MINORS,
        why=ETCD_IDEMPOTENT,
        ref=LOCAL_MODE_REF,
    ),
    Phase(
        "kubelet-wait-bootstrap",
        (KUBELET_CONF,),
        roles=("control-plane", "worker"),
        minors=LOCAL_MODE_MINORS,
        why="waits for the kubelet's health port and kubelet.conf",
        ref=LOCAL_MODE_REF,
    ),
    Phase(
        "control-plane-join",
        (ETCD_MANIFEST,),
        roles=("control-plane",),
        minors=NO_LOCAL_MODE_MINORS,
        why=ETCD_IDEMPOTENT + "; labels and taints the node",
        ref=LOCAL_MODE_REF,
    ),
    Phase(
        "control-plane-join",
        roles=("control-plane",),
        minors=LOCAL_MODE_MINORS,
        why="labels and taints the node (its etcd sub-phase does nothing)",
        ref=LOCAL_MODE_REF,
    ),
    Phase(
        "wait-control-plane",
        roles=("control-plane",),
        why="waits again (from 1.33 for every component's health port)",
        ref=Ref(K8S, "cmd/kubeadm/app/cmd/phases/join/waitcontrolplane.go", "runWaitControlPlanePhase"),
    ),
)


def phases(role: str, minor: int) -> tuple[Phase, ...]:
    """The top-level phases `kubeadm init` (role init) or `kubeadm join` runs, in order, on a node
    of `role` at Kubernetes 1.`minor`."""
    chosen = INIT_PHASES if role == "init" else JOIN_PHASES
    return tuple(p for p in chosen if role in p.roles and minor in p.minors)


def leaves(phase: Phase, minor: int) -> tuple[str, ...]:
    extra = (INSTANCE_CONFIG,) if phase.name == "kubelet-start" and minor >= 34 else ()
    return (*phase.leaves, *extra)


def rerun_skip_phases(role: str, minor: int) -> list[str]:
    """Phases a rerun after a failed attempt always skips."""
    return [p.name for p in phases(role, minor) if p.rerun == "skip" and not p.done_when]


@dataclass(frozen=True)
class SkipWhenDone:
    phase: str
    marker: str  # the file that phase leaves once it has done its work


def rerun_skip_when_done(role: str, minor: int) -> list[SkipWhenDone]:
    """Phases a rerun skips once their `done_when` file exists (they refuse to run twice)."""
    return [SkipWhenDone(p.name, p.done_when) for p in phases(role, minor) if p.rerun == "skip" and p.done_when]


def done_markers(role: str, minor: int) -> list[str]:
    """Files that exist once every phase of `role` has run: a bootstrap is done when kubeadm
    returned 0 and these are there (kubelet.conf alone is written long before: init's kubeconfig
    phase, join's TLS bootstrap)."""
    return list(dict.fromkeys(path for p in phases(role, minor) for path in leaves(p, minor)))


@dataclass(frozen=True)
class Layout:
    """nodekiln's side of the contract: where the immutable image lets a node write."""

    # the read-only root, except these (mounted by the initramfs, tmpfs, or links into /var)
    writable: tuple[str, ...] = ("/var", "/etc", "/run", "/tmp", "/opt", "/root", "/home")
    notes: dict[str, str] = field(
        default_factory=lambda: {
            "/var": "the data partition",
            "/etc": "overlay, upper layer on /var",
            "/run": "tmpfs",
            "/tmp": "tmpfs",
            "/opt": "link to /var/opt",
            "/root": "link to /var/root",
            "/home": "link to /var/home",
        }
    )

    def is_writable(self, path: str) -> bool:
        return any(path == w or path.startswith(w.rstrip("/") + "/") for w in self.writable)


LAYOUT = Layout()
