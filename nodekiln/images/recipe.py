"""The image recipe: every input of a node image, pinned."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nodekiln.model import Strict

DISTRIBUTIONS = {"debian": {"12": "bookworm"}, "ubuntu": {"24.04": "noble"}}


class Containerd(Strict):
    source: Literal["distribution", "upstream"] = "distribution"
    version: str = "1.6.20"
    sandboxImage: str = "registry.k8s.io/pause:3.10"


class ImageRecipe(Strict):
    """What goes into the node image. Defaults give the example site's image."""

    distribution: Literal["debian", "ubuntu"] = "debian"
    release: str = "12"
    mirror: str = "http://deb.debian.org/debian"
    snapshot: str | None = Field(
        default=None, description="snapshot.debian.org timestamp (e.g. 20261120T000000Z) to pin the mirror"
    )
    containerd: Containerd = Field(default_factory=Containerd)
    kubernetesSource: str = Field(
        default="upstream",
        description="upstream (pkgs.k8s.io), local:DIR (.deb files, static binaries, OCI archives) or none",
    )
    extraPackages: list[str] = Field(default_factory=list)
    preloadImages: list[str] = Field(default_factory=list)
    diskSizeGiB: int = Field(default=6, ge=2, le=2048)
    formats: list[Literal["qcow2", "raw"]] = Field(default_factory=lambda: ["qcow2"])

    @field_validator("kubernetesSource")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in ("upstream", "none") or (value.startswith("local:") and len(value) > 6):
            return value
        raise ValueError("expected upstream, none or local:DIR")
