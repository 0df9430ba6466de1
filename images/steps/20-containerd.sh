# Ensure containerd is installed, uses the systemd cgroup driver, the pinned sandbox (pause)
# image and a certs.d directory for per-registry configuration (mirrors for air-gapped sites).
# Inputs: NODEKILN_SANDBOX_IMAGE (e.g. registry.k8s.io/pause:3.10).
set -euo pipefail

nk_packages containerd
: "${NODEKILN_SANDBOX_IMAGE:?}"

# containerd 1.6 config format (version 2), written whole: the default config plus our choices.
nk_write /etc/containerd/config.toml 0644 <<CONF
# nodekiln: containerd for Kubernetes (CRI), systemd cgroups, pinned sandbox image
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${NODEKILN_SANDBOX_IMAGE}"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
CONF
mkdir -p /etc/containerd/certs.d /etc/cni/net.d
nk_write /etc/containerd/certs.d/README 0644 <<'CONF'
One directory per registry host (e.g. docker.io/hosts.toml) configures mirrors and CAs;
cloud-init user-data writes them per site. See containerd docs/hosts.md.
CONF
nk_write /etc/crictl.yaml 0644 <<'CONF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
CONF
nk_enable containerd.service
