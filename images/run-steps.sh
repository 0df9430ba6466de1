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

for step in "$stage"/steps/[0-9][0-9]-*.sh; do
    name=$(basename "$step" .sh)
    echo "NODEKILN-STEP-BEGIN $name"
    start=$(date +%s.%N)
    bash -euo pipefail -c '. "$1/steps/lib.sh"; . "$2"' nodekiln-step "$stage" "$step"
    end=$(date +%s.%N)
    echo "NODEKILN-STEP-END $name $(awk "BEGIN{printf \"%.2f\", $end - $start}")"
done
