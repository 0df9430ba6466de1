# Ensure the recipe's extra packages (image.extraPackages: any package of the configured
# mirror) are installed, before 80-trim strips their documentation.
# Inputs: NODEKILN_EXTRA_PACKAGES  space-separated package names (may be empty).
set -euo pipefail

# shellcheck disable=SC2086  # a list of names: word splitting is intended
[ -z "${NODEKILN_EXTRA_PACKAGES:-}" ] || nk_packages $NODEKILN_EXTRA_PACKAGES
