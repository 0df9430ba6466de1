# Ensure runc and the standard CNI plugins are installed. Debian ships the plugins in
# /usr/lib/cni (read-only root); /opt/cni/bin is writable (it lives on the data partition,
# CNI add-ons copy their own plugins there), so it is filled with links at first boot.
# Inputs: none.
set -euo pipefail

nk_packages runc containernetworking-plugins

nk_write /usr/lib/tmpfiles.d/nodekiln-cni.conf 0644 <<'CONF'
# nodekiln: /opt/cni/bin is writable (on /var); link the distribution's plugins into it
d /opt/cni/bin 0755 root root -
d /etc/cni/net.d 0755 root root -
CONF
nk_write /usr/lib/nodekiln/link-cni-plugins 0755 <<'CONF'
#!/bin/sh
# Link each distribution CNI plugin into /opt/cni/bin unless something put its own there.
set -eu
mkdir -p /opt/cni/bin
for plugin in /usr/lib/cni/*; do
    [ -e "/opt/cni/bin/${plugin##*/}" ] || ln -s "$plugin" "/opt/cni/bin/${plugin##*/}"
done
CONF
nk_write /etc/systemd/system/nodekiln-cni-plugins.service 0644 <<'CONF'
[Unit]
Description=Link the distribution's CNI plugins into /opt/cni/bin
Before=containerd.service kubelet.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/lib/nodekiln/link-cni-plugins

[Install]
WantedBy=multi-user.target
CONF
nk_enable nodekiln-cni-plugins.service
