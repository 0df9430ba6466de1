# Ensure the image carries no per-machine or build-time state: a fresh initramfs (with the
# immutable-layout script), no machine-id, no SSH host keys, no apt lists or caches, no logs,
# no cloud-init state. Inputs: none.
set -euo pipefail

update-initramfs -u -k all
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old
rm -f /etc/ssh/ssh_host_*
# An empty machine-id makes systemd create one at first boot (first-boot semantics too).
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
cloud-init clean --logs >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.log' -o -name '*.gz' -o -name '*.[0-9]' \) -delete
rm -rf /var/log/journal/*
