# Ensure keepalived and HAProxy are installed for control-plane HA but not started: the
# site's cloud-init (or static pods) decides whether and how a node runs them.
# Inputs: none.
set -euo pipefail

nk_packages keepalived haproxy
nk_disable keepalived.service haproxy.service
