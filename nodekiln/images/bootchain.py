"""The UEFI boot chain of an image: which binaries go on the EFI system partition, checked
against their own signatures, and what the manifest says of them.

With `secureBoot: required | supported` the chain is the one the distribution signs, taken from
the tree (bake step 12-boot-chain puts it in /usr/lib/nodekiln/efi):

  firmware ─► EFI/BOOT/BOOTX64.EFI  shim, signed by Microsoft's UEFI CA (in every PC's db);
              it carries the distribution's CA and loads \\grubx64.efi from its own directory
              (shim's DEFAULT_LOADER, rhboot/shim Makefile), MokManager (\\mmx64.efi) on demand,
              and the fallback loader only if \\EFI\\BOOT\\fbx64.efi exists (shim.c
              should_use_fallback): there is none, so no boot entry is ever written.
          ─► EFI/BOOT/grubx64.efi   GRUB, signed by the distribution. It cannot carry our
              configuration: its built-in one sources `$prefix/grub.cfg`, the prefix read from
              the binary (/EFI/debian for Debian's grubx64.efi, /boot/grub for its CD image).
          ─► /boot/vmlinuz-*         the kernel, signed by the distribution, verified by GRUB
              through shim's protocol. The initramfs is not signed (README, security notes).

With `secureBoot: off` the ESP holds GRUB built by grub-mkimage with our configuration inside:
unsigned, refused by firmware that enforces Secure Boot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from nodekiln.config.recipe import SecureBoot
from nodekiln.errors import NodekilnError
from nodekiln.images import efi

CHAIN_DIR = "usr/lib/nodekiln/efi"  # images/steps/12-boot-chain.sh writes it
FALLBACK_DIR = "EFI/BOOT"  # the removable-media path: firmware boots it without a boot entry
FIRST_STAGE = f"{FALLBACK_DIR}/BOOTX64.EFI"
SHIM_NEXT = f"{FALLBACK_DIR}/grubx64.efi"
SHIM_MOK_MANAGER = f"{FALLBACK_DIR}/mmx64.efi"
DISK_GRUB = "grubx64.efi"
CD_GRUB = "gcdx64.efi"


class BootChainError(NodekilnError):
    """The image cannot be given the boot chain its recipe asks for."""


@dataclass(frozen=True)
class SignedChain:
    shim: bytes
    mok_manager: bytes
    grub: bytes
    grub_name: str
    kernel: bytes
    kernel_file: str
    packages: dict[str, tuple[str, str]]  # package -> (version, sha256 of the .deb)

    @property
    def vendor_ca(self) -> str:
        """The common name of the CA shim accepts GRUB and the kernel by."""
        cert = x509.load_der_x509_certificate(efi.vendor_certificate(self.shim))
        return efi.common_name(cert.subject)

    @property
    def grub_prefix(self) -> str:
        return efi.grub_image(self.grub).prefix


def read_packages(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            name, version, digest = line.split("\t")
            out[name] = (version, digest)
    return out


def signed_chain(tree: Path, kernel_file: str, grub_name: str = DISK_GRUB) -> SignedChain:
    chain = tree / CHAIN_DIR
    needed = ["shimx64.efi", "mmx64.efi", grub_name, "packages"]
    missing = [n for n in needed if not (chain / n).is_file()]
    if missing:
        raise BootChainError(
            f"the tree has no signed boot chain ({', '.join(f'/{CHAIN_DIR}/{n}' for n in missing)} missing; "
            "bake step 12-boot-chain puts it there): rebuild the image, or set image.secureBoot: off"
        )
    return SignedChain(
        shim=(chain / "shimx64.efi").read_bytes(),
        mok_manager=(chain / "mmx64.efi").read_bytes(),
        grub=(chain / grub_name).read_bytes(),
        grub_name=grub_name,
        kernel=(tree / "boot" / kernel_file).read_bytes(),
        kernel_file=kernel_file,
        packages=read_packages((chain / "packages").read_text()),
    )


def check(chain: SignedChain) -> None:
    """Each link signed by the one before it would accept: shim by Microsoft (it is what the
    firmware's db trusts), GRUB and the kernel by the CA built into shim. Names are compared
    here; the signatures themselves are proven by firmware in the Secure Boot boot tests."""
    try:
        _check(chain)
    except efi.PeError as e:
        raise BootChainError(f"the boot chain cannot be read: {e}") from None


def _check(chain: SignedChain) -> None:
    problems = []
    if not efi.signers(chain.shim):
        problems.append("shim (BOOTX64.EFI) is not signed")
    vendor = chain.vendor_ca
    for what, data in (("GRUB", chain.grub), (f"the kernel {chain.kernel_file}", chain.kernel)):
        found = efi.signers(data)
        if not found:
            problems.append(f"{what} is not signed (Secure Boot would refuse it)")
        elif not any(s.issuer == vendor for s in found):
            names = ", ".join(f"{s.subject} (issued by {s.issuer})" for s in found)
            problems.append(f"{what} is signed by {names}, not by a certificate of shim's CA {vendor!r}")
    if problems:
        raise BootChainError("the boot chain would not pass Secure Boot: " + "; ".join(problems))


def esp_files(chain: SignedChain, early_cfg: str) -> dict[str, bytes]:
    """The ESP's files for the signed chain (path on the ESP -> content). The configuration
    that finds the root goes where the signed GRUB's built-in prefix points."""
    prefix = chain.grub_prefix.strip("/")
    if not prefix:
        raise BootChainError(f"{chain.grub_name} has no built-in prefix: cannot tell where its grub.cfg goes")
    return {
        FIRST_STAGE: chain.shim,
        SHIM_NEXT: chain.grub,
        SHIM_MOK_MANAGER: chain.mok_manager,
        f"{prefix}/grub.cfg": early_cfg.encode(),
    }


def kernel_package(tree: Path, kernel_file: str) -> str | None:
    """The package that installed /boot/<kernel_file>, from dpkg's file lists."""
    wanted = f"/boot/{kernel_file}"
    for listing in sorted((tree / "var/lib/dpkg/info").glob("linux-image-*.list")):
        if wanted in listing.read_text().splitlines():
            return listing.name.removesuffix(".list").split(":")[0]
    return None


def _link(stage: str, data: bytes, **facts: Any) -> dict[str, Any]:
    try:
        found = efi.signers(data)
    except efi.PeError:  # not an EFI binary at all: nothing signed it
        found = []
    return {
        "stage": stage,
        **facts,
        "sha256": hashlib.sha256(data).hexdigest(),
        "signers": [{"subject": s.subject, "issuer": s.issuer} for s in found],
    }


def record(
    tree: Path, kernel_file: str, mode: SecureBoot, packages: dict[str, str], grub_name: str = DISK_GRUB
) -> dict[str, Any]:
    """The manifest's `bootChain`: the mode and each link with its package, version and signers."""
    kernel = (tree / "boot" / kernel_file).read_bytes()
    kpkg = kernel_package(tree, kernel_file)
    kernel_link = _link("kernel", kernel, path=f"/boot/{kernel_file}", package=kpkg, version=packages.get(kpkg or ""))
    if mode == "off":
        grub_link = {"stage": "grub", "esp": FIRST_STAGE, "builtBy": "grub-mkimage", "signers": []}
        return {"secureBoot": mode, "links": [grub_link, kernel_link]}
    chain = signed_chain(tree, kernel_file, grub_name)

    def deb(name: str) -> dict[str, str]:
        version, digest = chain.packages.get(name, ("", ""))
        return {"package": name, "version": version, "debSha256": digest}

    return {
        "secureBoot": mode,
        "links": [
            {**_link("shim", chain.shim, esp=FIRST_STAGE, **deb("shim-signed")), "trusts": chain.vendor_ca},
            {**_link("grub", chain.grub, esp=SHIM_NEXT, **deb("grub-efi-amd64-signed")), "prefix": chain.grub_prefix},
            kernel_link,
        ],
        "mokManager": _link("mok-manager", chain.mok_manager, esp=SHIM_MOK_MANAGER, **deb("shim-helpers-amd64-signed")),
    }


def summary(record: dict[str, Any]) -> str:
    """One line for the build's report: each link, its version and who signed it."""

    def link(entry: dict[str, Any]) -> str:
        what = {"grub": "GRUB"}.get(entry["stage"], entry["stage"])
        if entry.get("builtBy"):
            what += f" ({entry['builtBy']})"
        version = f" {entry['version']}" if entry.get("version") else ""
        issuers = sorted({s["issuer"] for s in entry.get("signers", [])})
        signed = f" signed by {' and '.join(issuers)}" if issuers else " unsigned"
        return f"{what}{version}{signed}"

    return f"boot chain (secureBoot: {record['secureBoot']}): " + " → ".join(link(e) for e in record["links"])
