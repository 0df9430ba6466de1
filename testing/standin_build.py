"""Stand-in builds that verify: for the tests and benchmarks that upload a small artifact they
made themselves (no image is built) through `upload-image`, which refuses unsigned artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from nodekiln.images import manifest, provenance, sbom


def sign_stand_in(site_dir: Path, site_name: str, artifact: Path, manifest_path: Path) -> None:
    """Make a stand-in build (an artifact and a bare manifest written by a test, as
    tests/openstack/conftest.py's write_build does) verify as a nodekiln build: the manifest
    records the artifact, an SBOM of an empty tree and the provenance lie beside it, and all four
    are signed with the site's builder key. For tests that upload such stand-ins."""
    full = json.loads(manifest_path.read_text())
    full.setdefault("packages", {})
    fmt = artifact.suffix.lstrip(".")
    full["artifacts"] = [manifest.artifact_entry(artifact, fmt)]
    manifest_path.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    empty = manifest_path.with_name(f".{artifact.name}.empty-tree")
    empty.mkdir(exist_ok=True)
    stem = artifact.name if fmt == "iso" else artifact.name.rsplit(".", 1)[0]
    provenance.publish(
        kind="image",
        site_dir=site_dir,
        site=site_name,
        stem=stem,
        out_dir=artifact.parent,
        manifest_path=manifest_path,
        manifest=full,
        artifacts={fmt: artifact},
        sbom_text=sbom.dumps(sbom.document(empty, full)),
        seconds=0.0,
    )
    empty.rmdir()
