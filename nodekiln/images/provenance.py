"""The provenance of a build: an in-toto Statement v1 with a SLSA v1 provenance predicate.

Written beside the artifacts as `<stem>.provenance.json` and signed like them. It says what
was built (subject: each artifact with its sha256), from what (buildDefinition: the recipe as
externalParameters; resolvedDependencies: every input the manifest's input hash covers, each
with its sha256 — bake steps, the DIB element, the assembly code, the local Kubernetes source's
files, the preloaded OCI archives, for an ISO its code and the nodes' seeds — and the package
mirror, which is named, not hashed: the packages themselves are in the SBOM), by whom
(runDetails.builder: the site's builder key identity, nodekiln's and the tools' versions) and
when (runDetails.metadata: start and finish of the build).

`publish` is the one call a build makes at its end: SBOM beside, provenance, signatures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nodekiln.files import write_atomic
from nodekiln.images import sbom, signing

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://nodekiln.invalid/build-types/{kind}/v1"
BUILDER_ID = "https://nodekiln.invalid/builders/{identity}"
SUFFIX = ".provenance.json"

# The manifest's input groups that are files by digest, and the name prefix of each.
FILE_INPUTS = {"bakeSteps": "", "localSource": "kubernetes-source/", "preloadImages": "", "isoCode": ""}


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest_entry(name: str, value: str) -> dict[str, Any]:
    """A ResourceDescriptor of one hashed input ('x<hex>', '-<hex>', '<hex>' or 'symlink:…')."""
    if value.startswith("symlink:"):
        return {"name": name, "annotations": {"symlinkTo": value[len("symlink:") :]}}
    hex_digest = value[1:] if value[:1] in ("x", "-") and len(value) == 65 else value
    entry: dict[str, Any] = {"name": name, "digest": {"sha256": hex_digest}}
    if value[:1] == "x" and len(value) == 65:
        entry["annotations"] = {"executable": True}
    return entry


def resolved_dependencies(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every input the manifest records, as SLSA ResourceDescriptors (sorted by name)."""
    out: list[dict[str, Any]] = []
    image = inputs.get("image")
    if isinstance(image, dict):  # an ISO: the root tree's inputs, then its own
        out.extend(resolved_dependencies(image))
    for group, prefix in FILE_INPUTS.items():
        for name, value in sorted((inputs.get(group) or {}).items()):
            out.append(_digest_entry(prefix + name, str(value)))
    for node, files in sorted((inputs.get("seeds") or {}).items()):
        for name, value in sorted(files.items()):
            out.append(_digest_entry(f"seeds/{node}/{name}", str(value)))
    for name, value in sorted((inputs.get("givenTree") or {}).items()):
        if len(str(value)) == 64:
            out.append(_digest_entry(f"given-tree/{name}", str(value)))
    recipe = inputs.get("recipe") or {}
    for key in ("mirror", "securityMirror"):
        if recipe.get(key):
            entry: dict[str, Any] = {"name": key, "uri": str(recipe[key])}
            note = (
                f"snapshot {recipe['snapshot']}"
                if recipe.get("snapshot")
                else "not pinned: the SBOM lists what it gave"
            )
            entry["annotations"] = {"content": note}
            out.append(entry)
    return out


def statement(
    *,
    kind: str,
    manifest: dict[str, Any],
    artifacts: list[dict[str, Any]],
    byproducts: list[Path],
    builder_identity: str,
    started: dt.datetime,
    finished: dt.datetime,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """The in-toto statement of one build (`manifest`: the full manifest beside the artifacts)."""
    from nodekiln import __version__

    inputs = manifest.get("inputs") or {}
    recipe = inputs.get("recipe") or (inputs.get("image") or {}).get("recipe") or {}
    external: dict[str, Any] = {
        "site": manifest.get("site"),
        "recipe": recipe,
        "kubernetesVersion": inputs.get("kubernetesVersion") or (inputs.get("image") or {}).get("kubernetesVersion"),
    }
    for key in ("appliance", "nodes"):
        if key in inputs:
            external[key] = inputs[key]
    argv = command if command is not None else ["invoke", *sys.argv[1:]]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": a["file"], "digest": {"sha256": a["sha256"]}} for a in artifacts],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE.format(kind=kind),
                "externalParameters": external,
                "internalParameters": {
                    "inputHash": manifest.get("inputHash"),
                    "command": shlex.join(argv),
                    "stages": [s.get("name") for s in manifest.get("stages", [])],
                },
                "resolvedDependencies": resolved_dependencies(inputs),
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID.format(identity=builder_identity),
                    "version": {
                        "nodekiln": __version__,
                        **{k: str(v) for k, v in (manifest.get("tools") or {}).items()},
                    },
                },
                "metadata": {
                    "invocationId": f"{manifest.get('inputHash')}@{_rfc3339(started)}",
                    "startedOn": _rfc3339(started),
                    "finishedOn": _rfc3339(finished),
                },
                "byproducts": [
                    {"name": p.name, "digest": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}}
                    for p in byproducts
                ],
            },
        },
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def beside(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """(SBOM, provenance) beside the artifacts of `stem`."""
    return out_dir / f"{stem}{sbom.BESIDE_SUFFIX}", out_dir / f"{stem}{SUFFIX}"


def published(out_dir: Path, stem: str, files: list[Path]) -> bool:
    """Whether a build's publication is complete: `files` (artifacts, manifest), the SBOM and the
    provenance beside them, each with its signature. A build interrupted after its manifest but
    before its signatures is not complete, so the cache does not take it."""
    sbom_path, provenance_path = beside(out_dir, stem)
    return all(p.exists() and Path(f"{p}{signing.SIG_SUFFIX}").exists() for p in [*files, sbom_path, provenance_path])


def publish(
    *,
    kind: str,
    site_dir: Path,
    site: str,
    stem: str,
    out_dir: Path,
    manifest_path: Path,
    manifest: dict[str, Any],
    artifacts: dict[str, Path],
    sbom_text: str,
    seconds: float,
) -> list[Path]:
    """At a build's end: the SBOM beside the artifacts, the provenance, and the builder key's
    signature of each artifact, the manifest, the SBOM and the provenance. Returns the files."""
    key = signing.builder_key(site_dir, site)
    sbom_path, provenance_path = beside(out_dir, stem)
    write_atomic(sbom_path, sbom_text)
    finished = dt.datetime.now(dt.UTC)
    started = finished - dt.timedelta(seconds=seconds)
    entries = manifest.get("artifacts") or []
    write_atomic(
        provenance_path,
        dumps(
            statement(
                kind=kind,
                manifest=manifest,
                artifacts=entries,
                byproducts=[manifest_path, sbom_path],
                builder_identity=key.identity,
                started=started,
                finished=finished,
            )
        ),
    )
    files = [*artifacts.values(), manifest_path, sbom_path, provenance_path]
    signing.sign_all(key, files)
    return files


def publish_iso(site_dir: Path, site: str, iso: Path, manifest_path: Path, tree: Path, seconds: float) -> list[Path]:
    """`publish` for the appliance ISO: its SBOM is made from the root tree it holds."""
    manifest = json.loads(manifest_path.read_text())
    stem = iso.name  # <site>-<hash>.iso: the SBOM is <stem>.iso.spdx.json beside the ISO's manifest
    from nodekiln import __version__

    doc = sbom.document(tree, manifest, kind="iso", tool_version=__version__)
    return publish(
        kind="iso",
        site_dir=site_dir,
        site=site,
        stem=stem,
        out_dir=iso.parent,
        manifest_path=manifest_path,
        manifest=manifest,
        artifacts={"iso": iso},
        sbom_text=sbom.dumps(doc),
        seconds=seconds,
    )
