"""Checks that run before a build spends minutes: host tools, and the sources it will fetch.

Host tools: on Debian or Ubuntu as root the missing packages are installed; elsewhere the
error gives the exact install command. Sources: the Debian mirror and (for
kubernetesSource: upstream) the Kubernetes package repository must answer within a few
seconds, else the error says what to use instead.
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nodekiln.config.recipe import ImageRecipe
from nodekiln.errors import NodekilnError
from nodekiln.images.manifest import IMAGES_DIR
from nodekiln.run import run

# program or file the build needs -> Debian package that provides it
BUILD_TOOLS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "/usr/lib/grub/i386-pc/boot.img": "grub-pc-bin",
    "/usr/lib/grub/x86_64-efi/linux.mod": "grub-efi-amd64-bin",
    "tar": "tar",
    "sudo": "sudo",
    "kpartx": "kpartx",  # diskimage-builder's checks want it even though nodekiln never uses it
}
BOOT_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf",
}
REACH_TIMEOUT = 4.0


class PreflightError(NodekilnError):
    """The host or the network cannot run this build; the message says what to do."""


def host_packages_file() -> Path:
    return IMAGES_DIR / "host-packages.txt"


def missing_packages(tools: dict[str, str]) -> list[str]:
    missing: set[str] = set()
    for tool, package in tools.items():
        found = (
            Path(tool).exists()
            if tool.startswith("/")
            else (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin"))
        )
        if not found:
            missing.add(package)
    return sorted(missing)


def is_debian_like() -> bool:
    return Path("/etc/debian_version").exists()


def install_command(packages: list[str]) -> str:
    prefix = "" if os.geteuid() == 0 else "sudo "
    return f"{prefix}apt-get install -y --no-install-recommends {' '.join(packages)}"


def ensure_host_tools(tools: dict[str, str] | None = None, *, install: bool = True) -> list[str]:
    """Install (Debian/Ubuntu as root) or name the missing host packages; return what was installed."""
    packages = missing_packages(tools if tools is not None else BUILD_TOOLS)
    if shutil.which("disk-image-create") is None:
        raise PreflightError("disk-image-create is not installed: pip install -e . (diskimage-builder)")
    if not packages:
        return []
    if install and is_debian_like() and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        result = run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env, check=False)
        if result.returncode != 0:  # stale package lists: refresh once
            run(["apt-get", "update"], env=env)
            run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env)
        return packages
    hint = install_command(packages) if is_debian_like() else f"install the packages {' '.join(packages)}"
    raise PreflightError(f"missing host tools (packages: {', '.join(packages)}); run: {hint}")


@dataclass(frozen=True)
class Reach:
    url: str
    ok: bool
    detail: str


def reachable(url: str, timeout: float = REACH_TIMEOUT) -> Reach:
    """Does `url` answer within `timeout` seconds (DNS included)? Any HTTP answer counts."""
    outcome: list[Reach] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "nodekiln"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                outcome.append(Reach(url, True, f"HTTP {resp.status}"))
        except urllib.error.HTTPError as exc:
            outcome.append(Reach(url, exc.code < 500, f"HTTP {exc.code}"))
        except Exception as exc:  # DNS failure, refused, timeout, TLS
            outcome.append(Reach(url, False, str(getattr(exc, "reason", exc))))

    # getaddrinfo ignores socket timeouts: bound the whole probe with a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else Reach(url, False, f"no answer within {timeout:.0f} s")


def kubernetes_repo_url(kubernetes_version: str) -> str:
    minor = ".".join(kubernetes_version.split(".")[:2])
    return f"https://pkgs.k8s.io/core:/stable:/v{minor}/deb/Release.key"


def upstream_unreachable_message(url: str, detail: str) -> str:
    return (
        f"the upstream Kubernetes package repository is not reachable from this host "
        f"({url}: {detail}).\n"
        "Build with the Kubernetes binaries from elsewhere:\n"
        "  --kubernetes-source local:DIR   a directory of .deb files, static binaries "
        "(kubeadm, kubelet, kubectl, crictl) and OCI image archives\n"
        "  --kubernetes-source none        an OS-only image without Kubernetes"
    )


def check_sources(recipe: ImageRecipe, kubernetes_version: str, site_dir: Path) -> None:
    """Fail in seconds if the build's sources are unreachable or missing."""
    checks = []
    mirror, _ = recipe.effective_mirror()
    checks.append(("mirror", f"{mirror.rstrip('/')}/dists/{recipe.codename}/Release"))
    if recipe.kubernetes_source_kind == "upstream":
        checks.append(("kubernetes", kubernetes_repo_url(kubernetes_version)))
    results: dict[str, Reach] = {}
    threads = []
    for name, url in checks:
        t = threading.Thread(target=lambda n=name, u=url: results.__setitem__(n, reachable(u)), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(REACH_TIMEOUT + 2.0)
    mirror_check = results.get("mirror")
    if mirror_check is None or not mirror_check.ok:
        detail = mirror_check.detail if mirror_check else "no answer"
        raise PreflightError(
            f"the distribution mirror is not reachable: {checks[0][1]} ({detail}); "
            "set image.mirror (or image.snapshot) in the site file"
        )
    kube = results.get("kubernetes")
    if recipe.kubernetes_source_kind == "upstream" and (kube is None or not kube.ok):
        url = kubernetes_repo_url(kubernetes_version)
        raise PreflightError(upstream_unreachable_message(url, kube.detail if kube else "no answer"))
    local = recipe.local_source_dir(site_dir)
    if local is not None and not local.is_dir():
        raise PreflightError(f"kubernetesSource {recipe.kubernetesSource}: {local} is not a directory")
    for item in recipe.preloadImages:
        if not (site_dir / item).is_file():
            raise PreflightError(f"image.preloadImages: {site_dir / item} is not a file (an OCI image archive)")
