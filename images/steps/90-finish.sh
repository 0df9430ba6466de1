# Ensure the image carries no per-machine or build-time state: a fresh initramfs (with the
# immutable-layout script), no machine-id, no SSH host keys, no apt lists or caches, no logs,
# no cloud-init state. Inputs: none.
set -euo pipefail

# Builders may have skipped the kernel's own initramfs run (INITRD=No: nodekiln's DIB build
# does, to make it once, here, after every hook and module change): create or update it.
for kdir in /lib/modules/*; do
    version=$(basename "$kdir")
    [ -e "/boot/vmlinuz-$version" ] || continue
    if [ -e "/boot/initrd.img-$version" ]; then
        update-initramfs -u -k "$version"
    else
        update-initramfs -c -k "$version"
    fi
done
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old
rm -f /etc/ssh/ssh_host_*
# An empty machine-id makes systemd create one at first boot (first-boot semantics too).
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
cloud-init clean --logs >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.log' -o -name '*.gz' -o -name '*.[0-9]' \) -delete
rm -rf /var/log/journal/*
