# Ensure the kernel modules and sysctls Kubernetes networking needs are set at every boot:
# overlay (containerd's snapshotter), br_netfilter (bridged traffic seen by nftables),
# IP forwarding on. Inputs: none.
set -euo pipefail

nk_write /etc/modules-load.d/nodekiln-k8s.conf 0644 <<'CONF'
# Loaded at boot by systemd-modules-load (nodekiln: Kubernetes networking)
overlay
br_netfilter
CONF

nk_write /etc/sysctl.d/90-nodekiln-k8s.conf 0644 <<'CONF'
# nodekiln: what kubeadm's preflight and the CNI plugins expect
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
CONF
