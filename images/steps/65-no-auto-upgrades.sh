# Ensure nothing upgrades packages or refreshes apt on a running node: a node changes by
# being replaced with a new image. Inputs: none.
set -euo pipefail

nk_write /etc/apt/apt.conf.d/20auto-upgrades 0644 <<'CONF'
// nodekiln: immutable nodes are replaced, never upgraded in place
APT::Periodic::Update-Package-Lists "0";
APT::Periodic::Unattended-Upgrade "0";
APT::Periodic::Download-Upgradeable-Packages "0";
APT::Periodic::AutocleanInterval "0";
CONF
if dpkg-query -W unattended-upgrades >/dev/null 2>&1; then
    apt-get purge -y unattended-upgrades
fi
nk_mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
