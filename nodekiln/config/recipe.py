"""The image recipe: every input of a node image, pinned."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nodekiln import contract
from nodekiln.config.model import Strict

DISTRIBUTIONS = {"debian": {"12": "bookworm"}, "ubuntu": {"24.04": "noble"}}
# (main, security) archives when the recipe names none
DEFAULT_MIRRORS = {
    "debian": ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security"),
    "ubuntu": ("http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu"),
}


class Containerd(Strict):
    source: Literal["distribution", "upstream"] = "distribution"
    version: str = "1.6.20"
    sandboxImage: str | None = Field(
        default=None,
        description="the sandbox (pause) image; default: the one kubeadm of the site's Kubernetes minor expects "
        "(nodekiln.contract: 3.10 for 1.31-1.33, 3.10.1 for 1.34-1.35); set it for a mirror",
    )


class PackerOpenStack(Strict):
    """Where `--builder packer-openstack` bakes: inside the cloud, from the base image it offers."""

    cloud: str | None = Field(default=None, description="clouds.yaml entry; default: the OS_* variables")
    sourceImage: str = Field(
        description="the cloud's base image (name) with cloud-init and OpenSSH, e.g. its Debian 12"
    )
    flavor: str = Field(description="flavor of the build server")
    networks: list[str] = Field(default_factory=list, description="network IDs the build server is attached to")
    floatingIpNetwork: str | None = Field(
        default=None, description="external network for the build server's floating IP"
    )
    securityGroups: list[str] = Field(default_factory=list)
    sshUser: str = Field(default="debian", description="the base image's login user (it needs sudo)")


class PackerRecipe(Strict):
    """How the Packer backends (`--builder packer-qemu|packer-openstack`) build this recipe."""

    baseImage: str | None = Field(
        default=None,
        description="packer-qemu: local qcow2/raw base image with cloud-init and OpenSSH (e.g. a Debian 12 "
        "genericcloud file), relative to the site; default: nodekiln builds one with diskimage-builder",
    )
    sshUser: str = Field(
        default="root", description="packer-qemu: the user the build key is given to (not root: needs sudo)"
    )
    memoryMiB: int = Field(default=2048, ge=512)
    cpus: int | None = Field(default=None, ge=1, description="default: every host core")
    openstack: PackerOpenStack | None = None


ImageFormat = Literal["qcow2", "raw"]
SecureBoot = Literal["required", "supported", "off"]


def _default_formats() -> list[ImageFormat]:
    return ["qcow2"]


class ImageRecipe(Strict):
    """What goes into the node image. Defaults give the example site's image."""

    distribution: Literal["debian", "ubuntu"] = "debian"
    release: str = "12"
    mirror: str | None = Field(
        default=None,
        description="package archive; default: the distribution's own (deb.debian.org, archive.ubuntu.com)",
    )
    securityMirror: str | None = Field(
        default=None,
        description="security archive; default: deb.debian.org/debian-security or security.ubuntu.com",
    )
    snapshot: str | None = Field(
        default=None,
        pattern=r"^[0-9]{8}T[0-9]{6}Z$",
        description="snapshot.debian.org (or snapshot.ubuntu.com) timestamp, e.g. 20261120T000000Z, to pin the archive",
    )
    containerd: Containerd = Field(default_factory=Containerd)
    kubernetesSource: str = Field(
        default="upstream",
        description="upstream (pkgs.k8s.io), local:DIR (.deb files, static binaries, OCI archives) or none",
    )
    kernel: Literal["cloud", "generic"] = Field(
        default="cloud",
        description="cloud: the distribution's kernel for virtual machines (virtio, Xen, Hyper-V, ENA, "
        "NVMe; 40 % of the generic kernel's modules: smaller image, faster boot); generic: "
        "every hardware driver, for disks written to bare metal (build-iso always uses it)",
    )
    secureBoot: SecureBoot = Field(
        default="supported",
        description="supported: boot through the distribution's signed chain (shim, GRUB, kernel), with or without "
        "Secure Boot; required: the same, and clouds are told to enforce it (Glance os_secure_boot=required); "
        "off: nodekiln's own unsigned GRUB, which firmware enforcing Secure Boot refuses",
    )
    extraPackages: list[str] = Field(default_factory=list)
    preloadImages: list[str] = Field(default_factory=list)
    diskSizeGiB: int = Field(default=6, ge=2, le=2048)
    formats: list[ImageFormat] = Field(default_factory=_default_formats)
    qcow2Compression: Literal["zstd", "zlib"] = Field(
        default="zstd",
        description="zstd: ~3 % smaller and 3x faster to write than zlib; needs QEMU >= 5.1 to read",
    )
    # Not part of model_dump (nor of the diskimage-builder input hash): the Packer backend adds
    # these settings to its own input hash.
    packer: PackerRecipe = Field(
        default_factory=PackerRecipe, exclude=True, description="settings of the Packer backends"
    )

    def sandbox_image(self, kubernetes_version: str) -> str:
        """The pause image containerd runs pods with: kubeadm's own for the minor, unless set."""
        return self.containerd.sandboxImage or contract.pause_image(kubernetes_version)

    @property
    def codename(self) -> str:
        return DISTRIBUTIONS[self.distribution][self.release]

    @property
    def kubernetes_source_kind(self) -> str:
        """upstream, local or none."""
        return self.kubernetesSource.split(":", 1)[0]

    def local_source_dir(self, base: Path) -> Path | None:
        """The local source directory, relative paths taken from `base` (the site's folder)."""
        if self.kubernetes_source_kind != "local":
            return None
        path = Path(self.kubernetesSource.split(":", 1)[1]).expanduser()
        return path if path.is_absolute() else (base / path)

    def effective_mirror(self) -> tuple[str, str]:
        """(main, security) mirrors, pinned to the snapshot when one is set."""
        if self.snapshot:
            if self.distribution == "ubuntu":
                return (
                    f"https://snapshot.ubuntu.com/ubuntu/{self.snapshot}",
                    f"https://snapshot.ubuntu.com/ubuntu/{self.snapshot}",
                )
            return (
                f"http://snapshot.debian.org/archive/debian/{self.snapshot}",
                f"http://snapshot.debian.org/archive/debian-security/{self.snapshot}",
            )
        main, security = DEFAULT_MIRRORS[self.distribution]
        return self.mirror or main, self.securityMirror or security

    @model_validator(mode="after")
    def _release_known(self) -> ImageRecipe:
        releases = DISTRIBUTIONS[self.distribution]
        if self.release not in releases:
            raise ValueError(
                f"{self.distribution} release {self.release!r} is not supported; use one of {sorted(releases)}"
            )
        if self.containerd.source != "distribution":
            raise ValueError("containerd.source: only 'distribution' is implemented so far")
        return self

    @field_validator("kubernetesSource")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in ("upstream", "none") or (value.startswith("local:") and len(value) > 6):
            return value
        raise ValueError("expected upstream, none or local:DIR")
