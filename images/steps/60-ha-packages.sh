# Ensure keepalived and HAProxy are installed for control-plane HA but not started: the
# site's cloud-init (or static pods) decides whether and how a node runs them.
# Inputs: none.
set -euo pipefail

nk_packages keepalived haproxy
nk_disable keepalived.service haproxy.service
# systemd applies presets on a first boot (empty machine-id): keep these off there too.
nk_write /etc/systemd/system-preset/10-nodekiln.preset 0644 <<'CONF'
disable keepalived.service
disable haproxy.service
CONF
