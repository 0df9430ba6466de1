# Ensure the immutable layout: the root file system is read-only (kernel line and fstab); the
# data partition is mounted on /var by the initramfs, which also puts an overlay on /etc whose
# upper layer lives on /var (so cloud-init, machine-id, SSH host keys and kubeadm can write
# /etc and the changes survive reboots); /tmp is a tmpfs; /root, /home and /opt are links into
# /var; the data partition grows to fill the disk at every boot; NICs are named eth0, eth1, ...
# on every platform (net.ifnames=0).
# Inputs: NODEKILN_ROOT_LABEL, NODEKILN_DATA_LABEL (file system labels the disk is made with).
set -euo pipefail

root_label=${NODEKILN_ROOT_LABEL:-nodekiln-root}
data_label=${NODEKILN_DATA_LABEL:-nodekiln-data}
nk_packages initramfs-tools zstd cloud-guest-utils fdisk e2fsprogs

nk_write /etc/fstab 0644 <<CONF
# nodekiln immutable layout: / read-only; /var (and /etc's overlay upper layer) on the data
# partition, mounted by the initramfs (script init-bottom/nodekiln-var)
LABEL=${root_label}  /     ext4   ro,noatime                        0 0
LABEL=${data_label}  /var  ext4   rw,noatime                        0 0
tmpfs                /tmp  tmpfs  mode=1777,nosuid,nodev,size=50%   0 0
CONF

# The kernel command line: disk assembly (nodekiln/images/disk.py) reads this file for its
# GRUB config; a builder using the distribution's GRUB (Packer) gets it from /etc/default/grub.d.
# quiet: under emulation every console line costs; errors still show.
cmdline="ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200 quiet"
mkdir -p /usr/share/nodekiln
printf '%s\n' "$cmdline" | nk_write /usr/share/nodekiln/kernel-cmdline 0644
nk_write /etc/default/grub.d/60-nodekiln.cfg 0644 <<CONF
GRUB_CMDLINE_LINUX="\$GRUB_CMDLINE_LINUX $cmdline"
GRUB_TIMEOUT=1
CONF

nk_write /etc/initramfs-tools/conf.d/nodekiln.conf 0644 <<'CONF'
# nodekiln: zstd decompresses fastest at boot; no swap, so no resume device to wait for
COMPRESS=zstd
RESUME=none
CONF
if ! grep -qx overlay /etc/initramfs-tools/modules; then
    echo overlay >>/etc/initramfs-tools/modules
fi
nk_write /etc/initramfs-tools/scripts/init-bottom/nodekiln-var 0755 <<CONF
#!/bin/sh
# nodekiln: mount the data partition on /var and an overlay on /etc (upper layer on /var),
# before systemd starts, so every unit sees a writable /etc and /var on a read-only root.
PREREQ=""
prereqs() { echo "\$PREREQ"; }
case "\$1" in prereqs) prereqs; exit 0 ;; esac

data=/dev/disk/by-label/${data_label}
i=0
while [ ! -e "\$data" ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
# Each step says so on the console (<6>: shown unless `quiet`; <3>: always), so a boot that
# stops here shows where.
if [ -e "\$data" ]; then
    mount -t ext4 -o rw,noatime "\$data" "\${rootmnt}/var"
    echo "<6>nodekiln: /var on \$data (waited \$i x 0.1 s)" >/dev/kmsg
else
    # No data partition (e.g. a live boot): keep the node usable, state is lost at reboot.
    echo "<3>nodekiln: no partition labelled ${data_label}, /var is a tmpfs" >/dev/kmsg
    mount -t tmpfs -o mode=0755 tmpfs "\${rootmnt}/var"
fi
modprobe overlay 2>/dev/null || true
upper="\${rootmnt}/var/lib/nodekiln/etc-overlay"
mkdir -p "\$upper/upper" "\$upper/work"
mount -t overlay overlay \
    -o "lowerdir=\${rootmnt}/etc,upperdir=\$upper/upper,workdir=\$upper/work" "\${rootmnt}/etc"
echo "<6>nodekiln: /etc is an overlay, its changes on /var" >/dev/kmsg
CONF

# /root, /home and /opt live on /var: cloud-init writes /root/.ssh, CNI add-ons /opt/cni/bin.
for dir in root home opt; do
    if [ -d "/$dir" ] && [ ! -L "/$dir" ]; then
        mkdir -p "/var/$dir"
        cp -a "/$dir/." "/var/$dir/"
        rm -rf "/${dir:?}"
        ln -s "var/$dir" "/$dir"
    fi
done
chmod 0700 /var/root

nk_write /usr/lib/nodekiln/grow-data 0755 <<'CONF'
#!/bin/sh
# Grow the partition holding /var to the end of its disk, then its file system (online).
# cloud-init's growpart/resizefs only handle /, so nodekiln does this for the data partition.
set -eu
dev=$(readlink -f "$(findmnt -no SOURCE /var)")
name=${dev##*/}
[ -e "/sys/class/block/$name/partition" ] || exit 0
disk=/dev/$(basename "$(readlink -f "/sys/class/block/$name/..")")
part=$(cat "/sys/class/block/$name/partition")
# Nothing to do unless the disk has at least 8 MiB after the partition (growpart is slow).
end=$(( $(cat "/sys/class/block/$name/start") + $(cat "/sys/class/block/$name/size") ))
disk_size=$(cat "/sys/class/block/${disk##*/}/size")
[ $(( disk_size - end )) -gt 16384 ] || exit 0
rc=0
growpart "$disk" "$part" || rc=$?
[ "$rc" -le 1 ] || exit "$rc"   # 1 = NOCHANGE
resize2fs "$dev"
CONF
nk_write /etc/systemd/system/nodekiln-grow-data.service 0644 <<'CONF'
[Unit]
Description=Grow the data partition (/var) to fill the disk
After=local-fs.target
ConditionPathIsMountPoint=/var

[Service]
Type=oneshot
ExecStart=/usr/lib/nodekiln/grow-data

[Install]
WantedBy=multi-user.target
CONF
nk_enable nodekiln-grow-data.service
