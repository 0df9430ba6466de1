#!/bin/bash
# Run the bake steps in order, inside the image being built, as root.
#
# Usage: run-steps.sh STAGE_DIR
# STAGE_DIR holds steps/ (these scripts), env (settings as shell assignments) and, for a
# local Kubernetes source, local/. Both builders call this one script: the diskimage-builder
# element from install.d, Packer as a shell provisioner after uploading the stage directory.
# Each step is framed by NODEKILN-STEP lines that nodekiln parses for progress and timings.
set -euo pipefail

stage=$(cd "${1:?usage: run-steps.sh STAGE_DIR}" && pwd)
set -a
# shellcheck disable=SC1091
. "$stage/env"
set +a
export NODEKILN_STAGE=$stage
export DEBIAN_FRONTEND=noninteractive

# Installing systemd-resolved points /etc/resolv.conf at its stub file, which does not exist in
# a build chroot: steps that download (upstream Kubernetes, extra packages, the kernel) resolve
# through the build host's servers (saved in the stage), and the link is put back at the end.
if [ -L /etc/resolv.conf ] && [ ! -e /etc/resolv.conf ] && [ -s "$stage/resolv.conf" ]; then
    link=$(readlink /etc/resolv.conf)
    rm -f /etc/resolv.conf
    cp "$stage/resolv.conf" /etc/resolv.conf
    trap 'rm -f /etc/resolv.conf; ln -s "$link" /etc/resolv.conf' EXIT
fi

for step in "$stage"/steps/[0-9][0-9]-*.sh; do
    name=$(basename "$step" .sh)
    echo "NODEKILN-STEP-BEGIN $name"
    start=$(date +%s.%N)
    bash -euo pipefail -c '. "$1/steps/lib.sh"; . "$2"' nodekiln-step "$stage" "$step"
    end=$(date +%s.%N)
    echo "NODEKILN-STEP-END $name $(awk "BEGIN{printf \"%.2f\", $end - $start}")"
done
