# Ensure the image carries no per-machine or build-time state, so that two builds of one recipe
# from one mirror state are byte-identical: the mirror state is recorded (each apt Release file
# and its sha256) and gives the build's epoch (SOURCE_DATE_EPOCH: the newest Release Date, or
# NODEKILN_SOURCE_DATE_EPOCH when set); a fresh initramfs made reproducibly (with the
# immutable-layout script); no machine-id, SSH host keys, iSCSI initiator name, random seed,
# apt lists or caches, ldconfig aux-cache, logs or cloud-init state; password ages at the epoch.
# Inputs: NODEKILN_SOURCE_DATE_EPOCH (optional).
set -euo pipefail

mkdir -p /usr/share/nodekiln
state=/usr/share/nodekiln/mirror-state.txt
newest=0
: >"$state.new"
for release in /var/lib/apt/lists/*Release; do
    [ -f "$release" ] || continue
    date=$(sed -n 's/^Date: //p' "$release" | head -n 1)
    seconds=$(date -u -d "$date" +%s 2>/dev/null || echo 0)
    [ "$seconds" -gt "$newest" ] && newest=$seconds
    printf '%s %s %s\n' "$(sha256sum <"$release" | cut -d' ' -f1)" "$seconds" "$(basename "$release")" >>"$state.new"
done
LC_ALL=C sort -k3 "$state.new" >"$state"
rm -f "$state.new"
epoch=${NODEKILN_SOURCE_DATE_EPOCH:-$newest}
if [ "$epoch" -gt 0 ]; then
    printf '%s\n' "$epoch" >/usr/share/nodekiln/source-date-epoch
    export SOURCE_DATE_EPOCH=$epoch
else
    echo "no apt Release file and no NODEKILN_SOURCE_DATE_EPOCH: the build has no epoch" >&2
    rm -f /usr/share/nodekiln/source-date-epoch
fi

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
# Per machine: steps/57-iscsi.sh removed the iSCSI name; systemd makes a random seed at boot.
rm -f /etc/iscsi/initiatorname.iscsi /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
# ldconfig's aux-cache records the inode numbers and change times of the libraries it saw.
rm -f /var/cache/ldconfig/aux-cache
# Every log of the build (dpkg, apt, alternatives, cloud-init); systemd-tmpfiles makes wtmp & co.
find /var/log -type f -delete
rm -rf /var/log/journal/*
# Password ages: the day users were created is the build's day; make it the epoch's.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    day=$((SOURCE_DATE_EPOCH / 86400))
    for shadow in /etc/shadow /etc/shadow-; do
        [ -f "$shadow" ] || continue
        awk -F: -v day="$day" 'BEGIN { OFS = ":" } $3 != "" { $3 = day } { print }' "$shadow" >"$shadow.nk"
        chmod --reference="$shadow" "$shadow.nk"
        chown --reference="$shadow" "$shadow.nk"
        mv "$shadow.nk" "$shadow"
    done
fi
