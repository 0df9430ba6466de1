"""`invoke verify-image`: is this artifact what the site's builder made, unchanged?

For an artifact `<stem>.qcow2|.raw` (or `<stem>.iso`) the build wrote beside it the manifest,
the SBOM and the provenance, each with a `.sig` of the site's builder key. Verified, in order:
the four signatures (ssh-keygen -Y verify against the site's builder public key); the
artifact's sha256 is the one the manifest and the provenance's subject record; the
provenance's byproducts are the manifest and the SBOM as they are; the SBOM is the one of
this build (its namespace carries the input hash) and lists the manifest's packages.
Any failure is a VerificationError that names the file and what failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodekiln.errors import NodekilnError
from nodekiln.images import manifest as mf
from nodekiln.images import provenance, sbom, signing


class VerificationError(NodekilnError):
    """An artifact, or a file beside it, is not what the site's builder signed."""


@dataclass(frozen=True)
class Companions:
    artifact: Path
    manifest: Path
    sbom: Path
    provenance: Path

    @property
    def signed(self) -> list[Path]:
        return [self.artifact, self.manifest, self.sbom, self.provenance]


def companions(artifact: Path, manifest_path: Path | None = None) -> Companions:
    """The files a build writes beside `artifact` (the ISO keeps its suffix in their names)."""
    stem = artifact.name if artifact.suffix == ".iso" else artifact.name.rsplit(".", 1)[0]
    sbom_path, provenance_path = provenance.beside(artifact.parent, stem)
    return Companions(
        artifact, manifest_path or artifact.with_name(f"{stem}.manifest.json"), sbom_path, provenance_path
    )


@dataclass
class Verified:
    artifact: Path
    sha256: str
    input_hash: str
    packages: int
    checks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VerificationError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise VerificationError(f"{path}: not a JSON object")
    return data


def verify_artifact(site_dir: Path, site_name: str, artifact: Path, manifest_path: Path | None = None) -> Verified:
    """Verify `artifact` and the files beside it against site `site_name`'s builder key."""
    started = time.monotonic()
    files = companions(artifact, manifest_path)
    for path in files.signed:
        if not path.exists():
            raise VerificationError(
                f"{path}: missing beside {artifact.name}: a nodekiln build writes it (and {path.name}.sig); "
                "rebuild, or copy it along with the artifact"
            )
    key = signing.trusted_key(site_dir, site_name)
    checks = []
    for path in files.signed:
        try:
            signing.verify(key, path)
        except signing.SignatureError as exc:
            raise VerificationError(str(exc)) from None
        checks.append(f"signature of {path.name}: good ({key.identity})")

    found = mf.sha256_file(artifact)
    manifest = _json(files.manifest)
    recorded = {a.get("file"): a.get("sha256") for a in manifest.get("artifacts", []) if isinstance(a, dict)}
    if recorded.get(artifact.name) != found:
        raise VerificationError(
            f"{artifact}: its sha256 {found[:16]}… is not the {str(recorded.get(artifact.name))[:16]}… "
            f"that {files.manifest.name} records for {artifact.name}"
        )
    checks.append(f"sha256 of {artifact.name} = manifest's ({found[:16]}…)")

    statement = _json(files.provenance)
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement.get("subject", [])}
    if statement.get("_type") != provenance.STATEMENT_TYPE or subjects.get(artifact.name) != found:
        raise VerificationError(
            f"{files.provenance}: does not name {artifact.name} with sha256 {found[:16]}… as its subject"
        )
    byproducts = {
        b.get("name"): (b.get("digest") or {}).get("sha256")
        for b in statement.get("predicate", {}).get("runDetails", {}).get("byproducts", [])
    }
    for path in (files.manifest, files.sbom):
        if byproducts.get(path.name) != mf.sha256_file(path):
            raise VerificationError(f"{files.provenance}: its digest of {path.name} is not the file's")
    checks.append(f"provenance subject = {artifact.name}, byproducts = manifest and SBOM")

    doc = _json(files.sbom)
    input_hash = str(manifest.get("inputHash", ""))
    if not str(doc.get("documentNamespace", "")).endswith("/" + input_hash):
        raise VerificationError(
            f"{files.sbom}: its namespace is not of input hash {input_hash[:16]}… (another build's SBOM)"
        )
    count = sbom.deb_package_count(doc)
    if count != len(manifest.get("packages") or {}):
        raise VerificationError(
            f"{files.sbom}: lists {count} dpkg packages, the manifest {len(manifest.get('packages') or {})}"
        )
    checks.append(f"SBOM of this build: {count} packages, as the manifest")
    return Verified(artifact, found, input_hash, count, checks, time.monotonic() - started)


def given_tree(site_dir: Path, site_name: str, tree: Path) -> bool:
    """A root tree given to build-iso: verified when it carries a signature (`<tree>.sig`, a tar
    the builder key signed); True when it did. An unsigned tree is the caller's to trust."""
    sig = signing.signature_path(tree)
    if not sig.exists():
        return False
    try:
        signing.verify(signing.trusted_key(site_dir, site_name), tree)
    except signing.SignatureError as exc:
        raise VerificationError(f"refusing the root tree: {exc}") from None
    return True
