# Ensure keepalived and HAProxy are installed for control-plane HA, and certbot for the edge
# nodes (nodekiln/bootstrap/edge.py), none of them started: the site's cloud-init (or static
# pods) decides whether and how a node runs them. certbot's own twice-daily timer stays off:
# an edge node renews with nodekiln-edge-certificate.timer, which runs the deploy hook.
# Inputs: none.
set -euo pipefail

nk_packages keepalived haproxy certbot
nk_disable keepalived.service haproxy.service certbot.timer
# systemd applies presets on a first boot (empty machine-id): keep these off there too.
nk_write /etc/systemd/system-preset/10-nodekiln.preset 0644 <<'CONF'
disable keepalived.service
disable haproxy.service
disable certbot.timer
CONF
