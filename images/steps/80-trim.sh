# Ensure the image is small and boots fast: no documentation, manual pages or foreign locales
# (also for packages installed later), no tools to add apt repositories, no legacy containerd shims, no kernel modules for hardware a server node never has
# (sound, Wi-Fi, Bluetooth, GPUs, cameras), no timers or services that would do work at boot.
# Inputs: none.
set -euo pipefail

nk_write /etc/dpkg/dpkg.cfg.d/90-nodekiln-nodoc 0644 <<'CONF'
# nodekiln: keep images small
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/bin/containerd-shim
path-exclude /usr/bin/containerd-shim-runc-v1
CONF
find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find /usr/share/doc -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/lintian/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

# diskimage-builder's base element installs software-properties-common (add-apt-repository),
# and with it PackageKit, polkit, AppStream and ICU: ~100 MB that a node never uses.
purge=()
for pkg in software-properties-common python3-software-properties packagekit; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        purge+=("$pkg")
    fi
done
if [ "${#purge[@]}" -gt 0 ]; then
    apt-get purge -y --auto-remove "${purge[@]}"
fi
# containerd's legacy shims (v1 API): the CRI config uses io.containerd.runc.v2 only.
rm -f /usr/bin/containerd-shim /usr/bin/containerd-shim-runc-v1

for kernel in /lib/modules/*; do
    [ -d "$kernel/kernel" ] || continue
    for sub in sound drivers/gpu drivers/media drivers/net/wireless drivers/bluetooth \
        net/bluetooth drivers/staging drivers/isdn drivers/iio drivers/input/touchscreen \
        drivers/input/joystick drivers/input/tablet drivers/hid/amd-sfh-hid drivers/video/fbdev \
        net/mac80211 net/wireless drivers/net/can net/can drivers/comedi drivers/usb/gadget; do
        rm -rf "${kernel:?}/kernel/$sub"
    done
    depmod -a "$(basename "$kernel")"
done

nk_mask e2scrub_all.timer e2scrub_reap.service man-db.timer dpkg-db-backup.timer \
    systemd-pstore.service
