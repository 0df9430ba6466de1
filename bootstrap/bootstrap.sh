#!/bin/bash
{# raw: bash array lengths (dollar, brace, hash) would open a Jinja comment #}
{% raw -%}
# nodekiln first boot: apply the firewall, start the load balancer when it runs as host
# services, then `kubeadm init` (the first control plane) or wait for the endpoint and
# `kubeadm join` (all others) -- once. Safe to run again after a reboot or a failure: a rerun
# runs kubeadm again, skipping the phases that refuse to run twice (nodekiln.contract, through
# bootstrap.env), and the node is marked done only when kubeadm finished and every file its
# phases leave is there. `kubeadm reset` is never run: it would delete the pre-generated PKI.
set -euo pipefail
. /etc/nodekiln/bootstrap.env

state=/var/lib/nodekiln
log() { echo "nodekiln-bootstrap: $*"; }

if [ -e "$state/bootstrap.done" ]; then
  log "bootstrap finished on an earlier boot; nothing to do"
  exit 0
fi
mkdir -p "$state"

log "applying the $ROLE firewall (/etc/nftables.conf)"
nft -f /etc/nftables.conf
systemctl enable nftables.service >/dev/null 2>&1 || true

for unit in $HA_SERVICES; do
  log "starting $unit (load balancer as host service)"
  systemctl enable --now "$unit"
done

if ! command -v kubeadm >/dev/null; then
  log "kubeadm is not in this image (built with kubernetesSource none?): cannot join a cluster"
  exit 1
fi

wait_for_endpoint() {
  local delay=2 deadline=$((SECONDS + WAIT_SECONDS))
  until curl --silent --fail --insecure --max-time 5 "https://$ENDPOINT/healthz" >/dev/null; do
    if ((SECONDS >= deadline)); then
      log "gave up: https://$ENDPOINT/healthz did not answer within $WAIT_SECONDS s"
      return 1
    fi
    log "waiting for https://$ENDPOINT/healthz (next try in $delay s)"
    sleep "$delay"
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
}

args=(--config /etc/nodekiln/kubeadm.yaml)
attempt=first
if [ -e "$state/bootstrap.started" ]; then
  # An earlier attempt did not finish. The phases it ran reuse what they left (certificates,
  # kubeconfigs) or write it again (manifests, kubelet files; API objects are created or
  # updated), so kubeadm runs again -- without the phases that refuse a second run. Skipping
  # preflight also keeps the rerun's ignore list as it is: no `all` beside named checks.
  attempt=rerun
  read -r -a skip <<<"$RERUN_SKIP_PHASES"
  for entry in $RERUN_SKIP_WHEN_DONE; do
    if [ -e "${entry#*=}" ]; then
      skip+=("${entry%%=*}")
    fi
  done
  if [ "${#skip[@]}" -gt 0 ]; then
    args+=("--skip-phases=$(IFS=,; echo "${skip[*]}")")
    log "rerun after an unfinished attempt: skipping phases ${skip[*]}"
  fi
fi
touch "$state/bootstrap.started"

if [ "$ROLE" = init ]; then
  log "kubeadm init ($attempt attempt)"
  kubeadm init "${args[@]}"
else
  wait_for_endpoint
  if [ "$attempt" = first ]; then
    # Control planes join one after another: concurrent etcd member additions fail.
    sleep "$JOIN_DELAY"
  fi
  log "kubeadm join as $ROLE through $ENDPOINT ($attempt attempt)"
  kubeadm join "${args[@]}"
fi

missing=()
for file in $DONE_FILES; do
  [ -e "$file" ] || missing+=("$file")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "kubeadm returned, but these files of its phases are missing: ${missing[*]}; not marking the bootstrap done"
  exit 1
fi
touch "$state/bootstrap.done"
log "done"
{% endraw %}
