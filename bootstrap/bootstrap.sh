#!/bin/bash
# nodekiln first boot: apply the firewall, start the load balancer when it runs as host
# services, then `kubeadm init` (the first control plane) or wait for the endpoint and
# `kubeadm join` (all others) -- once. Safe to run again after a reboot or a failure: every
# step checks whether its result is already there, and a finished bootstrap is a no-op.
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

if [ -f /etc/kubernetes/kubelet.conf ]; then
  log "the kubelet is configured already: an earlier run got that far"
else
  again=()
  # A rerun after a partial attempt: kubeadm's phases reuse the certificates, kubeconfigs
  # and manifests that exist, so only the preflight checks stand in the way.
  [ -e "$state/bootstrap.started" ] && again=(--ignore-preflight-errors=all)
  touch "$state/bootstrap.started"
  if [ "$ROLE" = init ]; then
    log "kubeadm init"
    kubeadm init --config /etc/nodekiln/kubeadm.yaml "${again[@]}"
  else
    wait_for_endpoint
    # Control planes join one after another: concurrent etcd member additions fail.
    sleep "$JOIN_DELAY"
    log "kubeadm join as $ROLE through $ENDPOINT"
    kubeadm join --config /etc/nodekiln/kubeadm.yaml "${again[@]}"
  fi
fi
touch "$state/bootstrap.done"
log "done"
