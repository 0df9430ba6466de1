# Ensure chrony keeps time (etcd and certificates need it). Servers default to Debian's pool;
# cloud-init's ntp module replaces them per site.
# Inputs: none.
set -euo pipefail

nk_packages chrony
nk_enable chrony.service
