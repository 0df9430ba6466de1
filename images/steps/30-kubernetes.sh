# Ensure kubeadm, kubelet, kubectl and crictl at the pinned Kubernetes version, held from
# upgrades (a node changes by being replaced), and stage container image archives for import.
# Inputs:
#   NODEKILN_K8S_VERSION           e.g. 1.31.4
#   NODEKILN_KUBERNETES_SOURCE     upstream (pkgs.k8s.io), local (a directory) or none
#   NODEKILN_KUBERNETES_SOURCE_DIR for local: .deb files, static binaries (any depth) and
#                                  OCI image archives (*.tar, *.oci.tar) to preload
# Whatever the source lacks is listed in /usr/share/nodekiln/kubernetes-source.txt.
set -euo pipefail

: "${NODEKILN_K8S_VERSION:?}" "${NODEKILN_KUBERNETES_SOURCE:?}"
wanted=(kubeadm kubelet kubectl crictl)
report=/usr/share/nodekiln/kubernetes-source.txt
mkdir -p /usr/share/nodekiln /usr/share/nodekiln/images
# Tools kubeadm's preflight checks for, whatever the Kubernetes source.
nk_packages conntrack socat ethtool iptables ebtables

install_kubelet_unit() {
    # The units kubeadm expects when the kubelet came as a static binary (the .deb ships them).
    nk_write /lib/systemd/system/kubelet.service 0644 <<'CONF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
CONF
    nk_write /lib/systemd/system/kubelet.service.d/10-kubeadm.conf 0644 <<'CONF'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
CONF
    nk_enable kubelet.service
}

case "$NODEKILN_KUBERNETES_SOURCE" in
upstream)
    nk_packages ca-certificates curl gpg
    minor=$(echo "$NODEKILN_K8S_VERSION" | cut -d. -f1-2)
    mkdir -p /etc/apt/keyrings
    if [ ! -s /etc/apt/keyrings/kubernetes-apt-keyring.gpg ]; then
        curl -fsSL --retry 3 "https://pkgs.k8s.io/core:/stable:/v${minor}/deb/Release.key" \
            | gpg --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
    fi
    nk_write /etc/apt/sources.list.d/kubernetes.list 0644 <<CONF
deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v${minor}/deb/ /
CONF
    apt-get update
    pkgver="${NODEKILN_K8S_VERSION}-*"
    apt-get install -y --no-install-recommends --allow-change-held-packages \
        "kubeadm=${pkgver}" "kubelet=${pkgver}" "kubectl=${pkgver}" cri-tools
    apt-mark hold kubeadm kubelet kubectl cri-tools
    echo "source: upstream pkgs.k8s.io v${minor}, all of: ${wanted[*]}" >"$report"
    ;;
local)
    dir=${NODEKILN_KUBERNETES_SOURCE_DIR:?}
    debs=()
    while IFS= read -r -d '' deb; do debs+=("$deb"); done < <(find "$dir" -name '*.deb' -print0 | sort -z)
    if [ "${#debs[@]}" -gt 0 ]; then
        apt-get install -y --no-install-recommends --allow-change-held-packages "${debs[@]}"
        for deb in "${debs[@]}"; do apt-mark hold "$(dpkg-deb -f "$deb" Package)"; done
    fi
    # Static binaries: every executable ELF file, installed under its own name.
    installed=()
    while IFS= read -r -d '' file; do
        if [ "$(head -c 4 "$file" | od -An -c | tr -d ' ')" = '177ELF' ]; then
            install -m 0755 "$file" "/usr/bin/$(basename "$file")"
            installed+=("$(basename "$file")")
        fi
    done < <(find "$dir" -type f -perm -u+x ! -name '*.deb' -print0 | sort -z)
    # OCI / docker image archives: imported into containerd's k8s.io namespace at first boot
    # (containerd is not running at build time, and its store lives on the data partition).
    while IFS= read -r -d '' archive; do
        install -m 0644 "$archive" /usr/share/nodekiln/images/
    done < <(find "$dir" -type f \( -name '*.tar' -o -name '*.oci' \) -print0)
    if [ -x /usr/bin/kubelet ] && [ ! -e /lib/systemd/system/kubelet.service ]; then
        install_kubelet_unit
    fi
    missing=()
    for bin in "${wanted[@]}"; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    {
        echo "source: local directory"
        echo "debs: ${#debs[@]}"
        echo "binaries: ${installed[*]:-none}"
        echo "missing: ${missing[*]:-none}"
    } >"$report"
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "WARNING: the local Kubernetes source lacks: ${missing[*]} (the image will not run kubeadm)"
    fi
    ;;
none)
    echo "source: none (OS-only appliance; missing: ${wanted[*]})" >"$report"
    ;;
*)
    echo "unknown NODEKILN_KUBERNETES_SOURCE=$NODEKILN_KUBERNETES_SOURCE" >&2
    exit 2
    ;;
esac
cat "$report"

# Preloaded images (local source archives or the recipe's preloadImages), imported once.
nk_write /usr/lib/nodekiln/import-images 0755 <<'CONF'
#!/bin/sh
# Import the container image archives baked into the image into containerd (k8s.io namespace).
set -eu
for archive in /usr/share/nodekiln/images/*; do
    [ -f "$archive" ] || continue
    ctr -n k8s.io images import "$archive"
done
mkdir -p /var/lib/nodekiln && touch /var/lib/nodekiln/images-imported
CONF
nk_write /etc/systemd/system/nodekiln-import-images.service 0644 <<'CONF'
[Unit]
Description=Import the container images baked into the node image
After=containerd.service
Requires=containerd.service
Before=kubelet.service
ConditionPathExists=!/var/lib/nodekiln/images-imported
ConditionDirectoryNotEmpty=/usr/share/nodekiln/images

[Service]
Type=oneshot
ExecStart=/usr/lib/nodekiln/import-images

[Install]
WantedBy=multi-user.target
CONF
nk_enable nodekiln-import-images.service
