# Ensure the signed UEFI boot chain the distribution ships is in the image as plain files under
# /usr/lib/nodekiln/efi, for the disk and ISO assembly to put on the EFI system partition:
# shim (signed by Microsoft's UEFI CA, carrying the distribution's CA) and GRUB (signed by the
# distribution), which in turn accept only the distribution-signed kernel 10-kernel installed.
# They come from the image's own archive, in the same run as the kernel, so the three always
# belong together. Nothing to set: the recipe's secureBoot decides at assembly whether they are used.
#
# Why files and not installed packages: shim-signed's and grub-efi-amd64-signed's maintainer
# scripts run grub-install when /sys/firmware/efi exists, which in a chroot on a UEFI build host
# would write the host's boot entries. A node never reinstalls its boot loader: a new image does.
# `apt-get download` checks each .deb against the archive's signed index, as an install would.
set -euo pipefail

arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || { echo "12-boot-chain: no signed boot chain for $arch" >&2; exit 1; }
packages=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed)
target=/usr/lib/nodekiln/efi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
(cd "$work" && apt-get download -q "${packages[@]}")
mkdir -p "$work/x"
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/x"
done

# Debian's file names (shim-signed, shim-helpers-amd64-signed, grub-efi-amd64-signed): the
# ESP names are what shim loads next (\grubx64.efi and \mmx64.efi in its own directory).
pick() {  # pick DEST CANDIDATE...: the first candidate that exists
    local dest=$1 path
    shift
    for path in "$@"; do
        if [ -f "$work/x/$path" ]; then
            install -D -m 0644 "$work/x/$path" "$target.new/$dest"
            return 0
        fi
    done
    echo "12-boot-chain: none of $* in ${packages[*]}" >&2
    exit 1
}
rm -rf "$target.new"
pick shimx64.efi usr/lib/shim/shimx64.efi.signed.latest usr/lib/shim/shimx64.efi.signed
pick mmx64.efi usr/lib/shim/mmx64.efi.signed usr/lib/shim/mmx64.efi
pick grubx64.efi usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
pick gcdx64.efi usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed
for deb in "$work"/*.deb; do
    printf '%s\t%s\t%s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" \
        "$(sha256sum "$deb" | cut -d' ' -f1)"
done | sort >"$target.new/packages"
if [ -d "$target" ] && diff -qr "$target" "$target.new" >/dev/null; then
    rm -rf "$target.new"
else
    rm -rf "$target"
    mv "$target.new" "$target"
fi
echo "boot chain: $(cut -f1,2 "$target/packages" | tr '\t' ' ' | paste -sd, | sed 's/,/, /g')"
