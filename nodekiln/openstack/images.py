"""`invoke upload-image`: put a built node image into Glance, once per content hash.

The image is named after the build's input hash (`nodekiln-<hash>`), so every site of the same
inputs shares it and a second upload is skipped. The file is streamed from disk (memory stays
flat) while its sha512 is computed; Glance's `os_hash_value` must match it, or the image is
deleted. An upload that was killed leaves a `queued`/`saving` image behind: the next run
deletes it before uploading again. Before anything is sent, the artifact is verified against the
site's builder key (signatures, sha256, SBOM): a changed or unsigned file is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodekiln import run
from nodekiln.openstack.cloud import OpenStackError, about, connect
from nodekiln.report import Reporter

if TYPE_CHECKING:
    from openstack.connection import Connection
    from openstack.image.v1.image import Image as ImageV1
    from openstack.image.v2.image import Image
    from rich.console import Console

    from nodekiln.config.site import Site

BUILD_DIR = Path("build/images")
# Statuses of an image whose upload did not finish (or failed): safe to delete on the next run.
UNFINISHED = frozenset({"queued", "saving", "uploading", "importing", "killed"})
BLOCK = 1024 * 1024


class ImageChecksumError(OpenStackError):
    """Glance stored other bytes than the local file holds."""


@dataclass
class UploadResult:
    image_id: str
    name: str
    reused: bool
    bytes: int = 0
    seconds: float = 0.0
    sha512: str = ""
    cleaned: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def image_name(content_hash: str) -> str:
    return f"nodekiln-{content_hash[:16]}"


def newest_artifact(site: Site, build_dir: Path = BUILD_DIR) -> tuple[Path, Path]:
    """The newest `<site>-<hash>.qcow2` (or .raw) under build/images and its manifest beside it."""
    manifests = sorted(build_dir.glob(f"{site.name}-*.manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in manifests:
        stem = manifest.name.removesuffix(".manifest.json")
        for suffix in (".qcow2", ".raw", ".img"):
            image = manifest.with_name(stem + suffix)
            if image.exists():
                return image, manifest
    raise OpenStackError(
        f"no built image of site {site.name} in {build_dir}/ ({site.name}-<hash>.qcow2 and its .manifest.json): run `invoke build-image` first, or pass --image"
    )


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OpenStackError(f"cannot read the image manifest {path}: {exc}") from None
    if not isinstance(data, dict) or not data.get("inputHash"):
        raise OpenStackError(f"{path} is not a nodekiln image manifest (no inputHash)")
    return data


def image_properties(site: Site, manifest: dict[str, Any], manifest_path: Path) -> dict[str, str]:
    """What users (and nodekiln) filter images on; Glance keeps them as strings."""
    spec = site.openstack
    assert spec is not None
    recipe = (manifest.get("inputs") or {}).get("recipe") or {}
    props = {
        "os_distro": str(recipe.get("distribution") or site.image.distribution),
        "os_version": str(recipe.get("release") or site.image.release),
        "hw_disk_bus": spec.image.hwDiskBus,
        "nodekiln_content_hash": str(manifest["inputHash"]),
        "nodekiln_kubernetes_version": str(
            (manifest.get("inputs") or {}).get("kubernetesVersion") or site.kubernetes.version
        ),
        "nodekiln_manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "nodekiln_site": site.name,
    }
    firmware = manifest.get("firmware") or spec.image.firmware
    if firmware == "uefi":
        props["hw_firmware_type"] = "uefi"
        # The artifact's own chain decides (its manifest), else the recipe. Nova's values
        # (nova/objects/fields.py SecureBoot): required, disabled, optional.
        mode = (manifest.get("bootChain") or {}).get("secureBoot") or site.image.secureBoot
        props["os_secure_boot"] = SECURE_BOOT_PROPERTY[mode]
        if mode != "off":
            # libvirt's Secure Boot firmware needs SMM, which only the q35 machine has
            # (Debian's 40-edk2-x86_64-secure-enrolled.json: machines pc-q35-*).
            props["hw_machine_type"] = "q35"
    return props


SECURE_BOOT_PROPERTY = {"required": "required", "supported": "optional", "off": "disabled"}


class _Reader:
    """A file read in large blocks that hashes (sha512) and reports what went by."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None):
        self._file = open(path, "rb")
        self._size = path.stat().st_size
        self._on_bytes = on_bytes
        self.sha512 = hashlib.sha512()
        self.sent = 0

    def __len__(self) -> int:  # requests sends Content-Length, not chunks
        return self._size

    def read(self, size: int = -1) -> bytes:
        # http.client asks for 8-16 KiB at a time; larger blocks cost far less Python per byte.
        block = self._file.read(max(size, BLOCK) if size and size > 0 else BLOCK)
        if block:
            self.sha512.update(block)
            self.sent += len(block)
            if self._on_bytes is not None:
                self._on_bytes(len(block))
        return block

    def close(self) -> None:
        self._file.close()


def _disk_file(site: Site, image_path: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    """The file to upload and its disk format: converted to raw with qemu-img when the site asks."""
    spec = site.openstack
    assert spec is not None
    have = "raw" if image_path.suffix in (".raw", ".img") else "qcow2"
    want = spec.image.diskFormat
    if want == have:
        return image_path, have
    target = image_path.with_suffix(f".{want}")
    if not target.exists() or target.stat().st_mtime < image_path.stat().st_mtime:
        partial = target.with_name(f".{target.name}.partial")
        run.run(["qemu-img", "convert", "-f", have, "-O", want, image_path, partial])
        partial.replace(target)
    return target, want


def upload_image(
    site: Site,
    image_path: Path,
    manifest_path: Path,
    *,
    conn: Connection | None = None,
    progress: bool = True,
    on_bytes: Callable[[int], None] | None = None,
    report: Reporter | None = None,
) -> UploadResult:
    """Upload (or reuse) the node image of this build; returns what was done."""
    spec = site.openstack
    if spec is None:
        raise OpenStackError(f"site {site.name} has no openstack section: add one to {site.file}")
    # Before any cloud call: an artifact the site's builder did not sign, or one changed since,
    # is refused (its signatures, digests and SBOM; nodekiln/images/verify.py).
    from nodekiln.images.verify import verify_artifact

    verify_artifact(site.directory, site.name, image_path, manifest_path)
    manifest = load_manifest(manifest_path)
    name = image_name(manifest["inputHash"])
    conn = conn or connect(spec)
    with about(f"image {name}: listing"):
        found = list(conn.image.images(name=name))
    cleaned: list[str] = []
    for image in found:
        if image.status == "active" and (image.properties or {}).get(
            "nodekiln_content_hash", getattr(image, "nodekiln_content_hash", None)
        ) in (None, manifest["inputHash"]):
            return UploadResult(image.id, name, reused=True, cleaned=cleaned)
        if image.status in UNFINISHED:
            with about(f"image {name} ({image.id}, left {image.status} by an interrupted upload): deleting"):
                conn.image.delete_image(image.id, ignore_missing=True)
            cleaned.append(image.id)

    path, disk_format = _disk_file(site, image_path, manifest)
    tags = sorted({"nodekiln", f"kubernetes-{site.kubernetes.version}", *spec.image.tags})
    from openstack.image.v2 import image as _image

    props = image_properties(site, manifest, manifest_path)
    with about(f"image {name}: creating"):
        created = conn.image._create(
            _image.Image,
            name=name,
            disk_format=disk_format,
            container_format="bare",
            visibility=spec.image.visibility,
            tags=tags,
            **props,
        )
    size = path.stat().st_size
    started = time.monotonic()
    display = _progress(name, size, (report or Reporter()).live) if progress else None
    callbacks = [cb for cb in (on_bytes, display.advance if display else None) if cb is not None]

    def on_block(n: int) -> None:
        for cb in callbacks:
            cb(n)

    reader = _Reader(path, on_block if callbacks else None)
    try:
        with about(f"image {name}: uploading {path.name}"):
            response = created.upload(conn.image, data=reader, size=size)
            from openstack import exceptions

            exceptions.raise_from_response(response)
    except BaseException:
        # Best effort; if this process dies instead, the next run deletes the queued image.
        try:
            conn.image.delete_image(created.id, ignore_missing=True)
        except Exception:
            pass
        raise
    finally:
        reader.close()
        if display is not None:
            display.stop()
    seconds = time.monotonic() - started
    local = reader.sha512.hexdigest()
    with about(f"image {name}: reading back"):
        stored = conn.image.get_image(created.id)
    verify(conn, stored, local)
    return UploadResult(
        stored.id, name, reused=False, bytes=reader.sent, seconds=seconds, sha512=local, cleaned=cleaned
    )


def verify(conn: Connection, image: Image | ImageV1, local_sha512: str) -> None:
    """Glance's checksum must be the local file's; otherwise the image is deleted."""
    algo, value = getattr(image, "hash_algo", None), getattr(image, "hash_value", None)
    if image.status != "active":
        conn.image.delete_image(image.id, ignore_missing=True)
        raise OpenStackError(f"image {image.name} ({image.id}) is {image.status} after the upload: deleted it")
    if algo != "sha512" or value != local_sha512:
        conn.image.delete_image(image.id, ignore_missing=True)
        raise ImageChecksumError(
            f"image {image.name} ({image.id}): Glance's {algo} {str(value)[:16]}… is not the local file's sha512 {local_sha512[:16]}…: deleted it"
        )


class _progress:
    """A rich progress bar in bytes, on standard error."""

    def __init__(self, name: str, total: int, console: Console):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task(name, total=total)
        self._progress.start()

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def stop(self) -> None:
        self._progress.stop()
