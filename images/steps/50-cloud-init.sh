# Ensure cloud-init configures each node at first boot from NoCloud (seed ISO), ConfigDrive or
# OpenStack metadata, renders network config for systemd-networkd, and does nothing slow at
# boot (no apt, no package upgrades). Inputs: none.
set -euo pipefail

nk_packages cloud-init cloud-guest-utils systemd-resolved
nk_write /etc/cloud/cloud.cfg.d/90-nodekiln.cfg 0644 <<'CONF'
# nodekiln: only the datasources nodekiln sites use; None last so a bare boot still works
datasource_list: [NoCloud, ConfigDrive, OpenStack, None]
system_info:
  network:
    renderers: [networkd]
# An immutable image: packages never change at boot
package_update: false
package_upgrade: false
apt:
  preserve_sources_list: true
# The root file system is read-only and sized to its content; /var grows instead
growpart:
  mode: "off"
resize_rootfs: false
# Boot time under emulation: RSA host keys take seconds to generate, GRUB is not the
# distribution's (no debconf to update), and the keys need not go to the console.
ssh_genkeytypes: [ed25519, ecdsa]
grub_dpkg:
  enabled: false
ssh:
  emit_keys_to_console: false
CONF
# debian-minimal enables no network service: cloud-init writes systemd-networkd files.
nk_enable systemd-networkd.service systemd-resolved.service
# Wait for one configured link, not all of them, and not for two minutes.
nk_write /etc/systemd/system/systemd-networkd-wait-online.service.d/nodekiln.conf 0644 <<'CONF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
CONF
