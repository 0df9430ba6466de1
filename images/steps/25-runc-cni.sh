# Ensure runc and the standard CNI plugins are installed. Debian ships the plugins in
# /usr/lib/cni (read-only root); /opt/cni/bin is writable (it lives on the data partition,
# CNI add-ons copy their own plugins there), so systemd-tmpfiles fills it with links at boot.
# Inputs: none.
set -euo pipefail

nk_packages runc containernetworking-plugins

# systemd-tmpfiles links each plugin at boot unless something (a CNI add-on) put its own
# file there: no extra service, nothing to run.
{
    echo "# nodekiln: /opt/cni/bin is writable (on /var); link the distribution's plugins into it"
    echo "d /opt/cni/bin 0755 root root -"
    echo "d /etc/cni/net.d 0755 root root -"
    for plugin in /usr/lib/cni/*; do
        echo "L /opt/cni/bin/${plugin##*/} - - - - $plugin"
    done
} | nk_write /usr/lib/tmpfiles.d/nodekiln-cni.conf 0644
