# Shared helpers for the bake steps; sourced by run-steps.sh, never run on its own.
# Both builders (the diskimage-builder element and Packer's shell provisioner) run the steps
# through run-steps.sh, inside the image being built, as root.

# Install the Debian packages a step needs, skipping those already present: under
# diskimage-builder package-installs.yaml has installed them all in one apt transaction (fast),
# under Packer this does the work. `nk_packages` lines in each step are the source of truth;
# a unit test checks package-installs.yaml lists the same packages.
nk_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# Write a file only when its content differs, so reruns change nothing (idempotence).
# Usage: nk_write PATH MODE <<'EOF' ... EOF
nk_write() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    mkdir -p "$(dirname "$path")"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
    else
        install -m "$mode" "$tmp" "$path"
        rm -f "$tmp"
    fi
}

# Enable/disable units without a running systemd (we are in a chroot or a build VM).
nk_enable() { systemctl enable "$@" >/dev/null 2>&1 || systemctl enable "$@"; }
nk_disable() {
    local unit
    for unit in "$@"; do
        systemctl disable "$unit" >/dev/null 2>&1 || true
    done
}
nk_mask() { systemctl mask "$@" >/dev/null 2>&1 || true; }
