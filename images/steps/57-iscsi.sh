# Ensure every node has its own iSCSI initiator name (iSCSI volumes, e.g. Cinder's, are
# attached by it; open-iscsi says "Do NOT duplicate iSCSI InitiatorNames"): open-iscsi is
# installed, the name its postinst generated at build time is removed (every node of the image
# would share it), and a oneshot unit generates one with open-iscsi's own iscsi-iname at first
# boot, before iscsid can start. Inputs: none.
set -euo pipefail

# diskimage-builder's base element installs open-iscsi too; here it is for every builder.
nk_packages open-iscsi
rm -f /etc/iscsi/initiatorname.iscsi

mkdir -p /usr/lib/nodekiln
nk_write /usr/lib/nodekiln/iscsi-initiatorname 0755 <<'CONF'
#!/bin/sh
# Give this node its own iSCSI initiator name, written as open-iscsi's postinst writes it.
# Run once per node (the unit's condition: no name yet); the file lands in /etc's overlay.
set -eu
file=/etc/iscsi/initiatorname.iscsi
[ -e "$file" ] && exit 0
name=$(/sbin/iscsi-iname -p iqn.1993-08.org.debian:01)
case "$name" in iqn.*) ;; *) echo "iscsi-iname gave no name: '$name'" >&2; exit 1 ;; esac
mkdir -p /etc/iscsi
tmp=$(mktemp /etc/iscsi/.initiatorname.XXXXXX)
{
    echo "## DO NOT EDIT OR REMOVE THIS FILE!"
    echo "## If you remove this file, the iSCSI daemon will not start."
    echo "## If you change the InitiatorName, existing access control lists"
    echo "## may reject this initiator.  The InitiatorName must be unique"
    echo "## for each iSCSI initiator.  Do NOT duplicate iSCSI InitiatorNames."
    echo "## (generated at this node's first boot by nodekiln-iscsi-initiatorname.service)"
    printf 'InitiatorName=%s\n' "$name"
} >"$tmp"
chmod 600 "$tmp"
mv "$tmp" "$file"
CONF
nk_write /etc/systemd/system/nodekiln-iscsi-initiatorname.service 0644 <<'CONF'
[Unit]
Description=Generate this node's own iSCSI initiator name
Documentation=man:iscsi-iname(8)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target iscsid.socket iscsid.service open-iscsi.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=!/etc/iscsi/initiatorname.iscsi

[Service]
Type=oneshot
ExecStart=/usr/lib/nodekiln/iscsi-initiatorname

[Install]
WantedBy=sysinit.target
CONF
nk_enable nodekiln-iscsi-initiatorname.service
