"""A tiny but real OCI image archive (image layout in a tar) for the preload test.

No registry is reachable here, so the archive is written from scratch: one uncompressed layer
holding a text file, its config and manifest, and an index naming the image the way
`ctr images import` reads names (the `io.containerd.image.name` annotation).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
PRELOAD_IMAGE = "registry.local/nodekiln/preload-test:1"  # what the node image tests bake in


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}", "size": len(blob)}


def write_oci_archive(target: Path, name: str, content: bytes = b"baked by nodekiln\n") -> str:
    """Write the archive; returns the image's manifest digest."""
    layer = _tar({"nodekiln-preload.txt": content})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _descriptor(CONFIG, config),
            "layers": [_descriptor(LAYER, layer)],
        },
        sort_keys=True,
    ).encode()
    entry = {
        **_descriptor(MANIFEST, manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [entry]}, sort_keys=True).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for blob in (layer, config, manifest):
        files[f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}"] = blob
    data = _tar(files)
    if not target.exists() or target.read_bytes() != data:  # same bytes: the image's input hash holds
        target.write_bytes(data)
    return entry["digest"]
