# Ensure swap stays off (the kubelet refuses to start with swap by default): no swap entries
# in fstab, and systemd's swap target masked so no swap partition or file is ever activated.
# Inputs: none.
set -euo pipefail

if [ -f /etc/fstab ] && grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
    sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/# disabled by nodekiln: /' /etc/fstab
fi
systemctl mask swap.target >/dev/null 2>&1 || true
