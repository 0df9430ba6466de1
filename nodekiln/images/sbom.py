"""The SBOM of an image: an SPDX 2.3 JSON document of everything installed in its root tree.

Made from the root tree and the inside manifest before the disk is assembled, so the same
document lies in the image (/usr/share/nodekiln/sbom.spdx.json) and beside the artifact
(`<stem>.spdx.json`); the artifact's own digest is in the manifest and provenance beside it
(a file cannot hold its own hash).

What each package says, and where it comes from:
- every installed dpkg package (one SPDX package per entry of the manifest's `packages`: same
  count): name, version, architecture and Debian source package from /var/lib/dpkg/status;
  the purl `pkg:deb/<distribution>/<name>@<version>?arch=<arch>`; `licenseDeclared` from the
  `License:` fields of /usr/share/doc/<pkg>/copyright when it is in Debian's machine-readable
  (DEP-5) format, mapped to SPDX identifiers where nodekiln knows the Debian short name, else a
  `LicenseRef-Debian-…` (listed in `hasExtractedLicensingInfos`), NOASSERTION otherwise;
  `checksums`: the SHA256 of the .deb for the packages installed from a local Kubernetes source
  (the .deb's bytes, by file name), for every other package the SHA256 of dpkg's installed file
  list with MD5 sums (/var/lib/dpkg/info/<pkg>.md5sums), *not* of a .deb: the package's
  `comment` says which one it is;
- the Kubernetes static binaries of a local source (the bake step's report names them): the
  SHA256 of the installed /usr/bin/<name>;
- the preloaded OCI / docker image archives (/usr/share/nodekiln/images/): the archive's
  SHA256 and, when its index names one, the image reference and manifest digest (pkg:oci).

Deterministic: no clock but the build epoch, no random ids. `documentNamespace` is derived
from the input hash, `creationInfo.created` from SOURCE_DATE_EPOCH (the recipe's or the
environment's) or else the time the manifest was written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from nodekiln.files import write_atomic

SBOM_PATH = "usr/share/nodekiln/sbom.spdx.json"  # inside the image, relative to /
BESIDE_SUFFIX = ".spdx.json"
NAMESPACE_BASE = "https://nodekiln.invalid/spdx"  # .invalid: a name nobody can own (RFC 2606)
IMAGE_ID = "SPDXRef-Image"
IMAGES_DIR = "usr/share/nodekiln/images"
NOASSERTION = "NOASSERTION"

# Debian's short licence names (DEP-5 "License Specification") -> SPDX identifiers. Keys are
# normalised by `_normalise`; a name not here becomes a LicenseRef.
DEBIAN_TO_SPDX: dict[str, str] = {
    **{f"gpl-{v}": f"GPL-{v}.0-only" for v in ("1", "2", "3")},
    **{f"gpl-{v}+": f"GPL-{v}.0-or-later" for v in ("1", "2", "3")},
    **{f"lgpl-{v}": f"LGPL-{v}-only" for v in ("2.0", "2.1", "3.0")},
    **{f"lgpl-{v}+": f"LGPL-{v}-or-later" for v in ("2.0", "2.1", "3.0")},
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
    "agpl-3": "AGPL-3.0-only",
    "agpl-3+": "AGPL-3.0-or-later",
    "gfdl-1.2": "GFDL-1.2-only",
    "gfdl-1.2+": "GFDL-1.2-or-later",
    "gfdl-1.3": "GFDL-1.3-only",
    "gfdl-1.3+": "GFDL-1.3-or-later",
    "apache-2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "expat": "MIT",
    "mit": "MIT",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "isc": "ISC",
    "zlib": "Zlib",
    "bsl-1.0": "BSL-1.0",
    "curl": "curl",
    "x11": "X11",
    "cc0-1.0": "CC0-1.0",
    "cc0": "CC0-1.0",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "openssl": "OpenSSL",
    "ftl": "FTL",
    "fsfullr": "FSFULLR",
    "fsful": "FSFUL",
    "fsfap": "FSFAP",
    "openldap-2.8": "OLDAP-2.8",
    "artistic-2.0": "Artistic-2.0",
    "psf-2.0": "PSF-2.0",
    "python-2.0": "Python-2.0",
    "0bsd": "0BSD",
    "unlicense": "Unlicense",
    "wtfpl": "WTFPL",
    "mit-0": "MIT-0",
    "ntp": "NTP",
    "ijg": "IJG",
    "libpng": "Libpng",
    "libtiff": "libtiff",
    "cc-by-3.0": "CC-BY-3.0",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
}


# ---------------------------------------------------------------------------------------------
# Reading the tree


@dataclass(frozen=True)
class DebPackage:
    key: str  # the manifest's key: name, plus :arch for a foreign architecture
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    maintainer: str
    homepage: str


def dpkg_packages(tree: Path) -> list[DebPackage]:
    """The installed packages of the tree's dpkg status, keyed as manifest.installed_packages."""
    status = tree / "var/lib/dpkg/status"
    found: dict[str, DebPackage] = {}
    if not status.exists():
        return []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if not (fields.get("Status", "").endswith(" installed") and "Package" in fields):
            continue
        arch = fields.get("Architecture", "")
        name = fields["Package"]
        key = name + (f":{arch}" if arch not in ("", "all", "amd64") else "")
        version = fields.get("Version", "")
        source, source_version = name, version
        if fields.get("Source"):
            m = re.match(r"^(\S+)(?:\s+\((\S+)\))?", fields["Source"])
            if m:
                source, source_version = m.group(1), m.group(2) or version
        found[key] = DebPackage(
            key, name, version, arch, source, source_version, fields.get("Maintainer", ""), fields.get("Homepage", "")
        )
    return [found[k] for k in sorted(found)]


def _in_tree(tree: Path, rel: str, hops: int = 8) -> Path | None:
    """`rel` inside `tree` with its symlinks resolved inside the tree (never the host's)."""
    parts = list(PurePosixPath(rel.lstrip("/")).parts)
    current = PurePosixPath("/")
    while parts and hops >= 0:
        part = parts.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        real = tree / str(candidate).lstrip("/")
        if real.is_symlink():
            hops -= 1
            target = PurePosixPath(os.readlink(real))
            parts = [*target.parts, *parts] if not target.is_absolute() else [*target.parts[1:], *parts]
            if target.is_absolute():
                current = PurePosixPath("/")
            continue
        current = candidate
    path = tree / str(current).lstrip("/")
    return path if not parts and path.exists() else None


def _dep5_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a DEP-5 copyright file: {field: value} (continuation lines kept)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif m := re.match(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$", line):
                last = m.group(1).lower()
                fields[last] = m.group(2).strip()
        if fields:
            out.append(fields)
    return out


def _normalise(name: str) -> str:
    n = re.sub(r"\s+", " ", name.strip()).lower()
    n = re.sub(r"^(a?l?gpl)v?-?(\d)", r"\1-\2", n)  # GPLv2+ -> gpl-2+
    n = re.sub(r"^((?:a|l)?gpl-\d)\.0(\+?)$", r"\1\2", n)  # GPL-2.0+ -> gpl-2+
    n = re.sub(r"^(a?gpl-\d)-or-later$", r"\1+", n)
    return n


def license_ref(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.-]+", "-", name.strip()).strip("-.")[:48] or "unnamed"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"LicenseRef-Debian-{clean}-{digest}"


@dataclass
class Licences:
    """Licence references made while reading copyright files: SPDX's extracted licences."""

    refs: dict[str, str] = field(default_factory=dict)  # LicenseRef id -> Debian name

    def atom(self, name: str) -> str:
        spdx = DEBIAN_TO_SPDX.get(_normalise(name))
        if spdx:
            return spdx
        ref = license_ref(name)
        self.refs.setdefault(ref, name)
        return ref

    def expression(self, value: str) -> str:
        """A DEP-5 `License:` first line (`GPL-2+ or Artistic`, `A and B, C`) as SPDX."""
        tokens = [t for t in re.split(r"[\s,]+", value.strip()) if t]
        parts: list[str] = []
        current: list[str] = []
        for token in tokens:
            if token.lower() in ("or", "and"):
                if current:
                    parts.append(self.atom(" ".join(current)))
                    current = []
                if parts and parts[-1] not in ("OR", "AND"):
                    parts.append(token.upper())
            else:
                current.append(token)
        if current:
            parts.append(self.atom(" ".join(current)))
        while parts and parts[-1] in ("OR", "AND"):
            parts.pop()
        if not parts:
            return ""
        return parts[0] if len(parts) == 1 else "(" + " ".join(parts) + ")"

    def extracted(self) -> list[dict[str, str]]:
        return [
            {
                "licenseId": ref,
                "name": name,
                "extractedText": (
                    f"The licence that Debian's machine-readable copyright files name {name!r}; nodekiln knows "
                    "no SPDX identifier for it. Its text is in /usr/share/doc/<package>/copyright of each "
                    "package of this document that declares it."
                ),
            }
            for ref, name in sorted(self.refs.items())
        ]


def declared_licence(tree: Path, package: str, licences: Licences) -> str:
    """The SPDX expression of a package's DEP-5 copyright file, or NOASSERTION."""
    path = _in_tree(tree, f"usr/share/doc/{package}/copyright")
    if path is None or not path.is_file():
        return NOASSERTION
    try:
        paragraphs = _dep5_paragraphs(path.read_text(errors="replace"))
    except OSError:
        return NOASSERTION
    form = paragraphs[0].get("format", "") if paragraphs else ""
    if "copyright-format" not in form and "dep5" not in form:
        return NOASSERTION
    with_files = [p for p in paragraphs[1:] if "files" in p and p.get("license")]
    used = with_files or [p for p in paragraphs if p.get("license")]
    expressions = []
    for paragraph in used:
        first = paragraph["license"].split("\n", 1)[0]
        expr = licences.expression(first)
        if expr and expr not in expressions:
            expressions.append(expr)
    if not expressions:
        return NOASSERTION
    return " AND ".join(expressions)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _spdx_id(prefix: str, name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.-]", "-", name)
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"SPDXRef-{prefix}-{clean}"


def _purl_part(value: str) -> str:
    return quote(value, safe=".-_~")


def local_debs(input_data: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """{(package, version without epoch, arch): sha256} of the .deb files of a local source."""
    out: dict[tuple[str, str, str], str] = {}
    for rel, digest in (input_data.get("localSource") or {}).items():
        name = PurePosixPath(rel).name
        m = re.match(r"^([^_]+)_([^_]+)_([^_]+)\.deb$", name)
        if m and isinstance(digest, str):
            out[(m.group(1), m.group(2).replace("%3a", ":"), m.group(3))] = digest.lstrip("x-")
    return out


def _strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def deb_spdx_package(
    tree: Path, pkg: DebPackage, distribution: str, licences: Licences, debs: dict[tuple[str, str, str], str]
) -> dict[str, Any]:
    qualifiers = f"?arch={_purl_part(pkg.architecture)}" if pkg.architecture else ""
    purl = f"pkg:deb/{distribution}/{_purl_part(pkg.name.lower())}@{_purl_part(pkg.version)}{qualifiers}"
    entry: dict[str, Any] = {
        "SPDXID": _spdx_id("deb", pkg.key),
        "name": pkg.name,
        "versionInfo": pkg.version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": declared_licence(tree, pkg.name, licences),
        "copyrightText": NOASSERTION,
        "sourceInfo": f"built from the Debian source package {pkg.source} {pkg.source_version}",
        "primaryPackagePurpose": "INSTALL",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}],
    }
    if pkg.homepage:
        entry["homepage"] = pkg.homepage
    deb = debs.get((pkg.name, _strip_epoch(pkg.version), pkg.architecture))
    info = tree / "var/lib/dpkg/info"
    # Multi-Arch: same packages keep their lists as <name>:<arch>.*
    candidates = (info / f"{pkg.name}:{pkg.architecture}.md5sums", info / f"{pkg.name}.md5sums")
    md5sums = next((p for p in candidates if p.is_file()), None)
    if deb:
        entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": deb}]
        entry["comment"] = "checksum: SHA256 of the .deb file of the local Kubernetes source it was installed from"
    elif md5sums is not None:
        entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": _sha256(md5sums)}]
        entry["comment"] = (
            f"checksum: SHA256 of dpkg's list of the installed files with their MD5 sums "
            f"(/var/lib/dpkg/info/{md5sums.name}), not of a .deb file"
        )
    else:
        entry["comment"] = "no checksum: the package installs no files dpkg lists with MD5 sums"
    return entry


def kubernetes_binaries(tree: Path) -> list[str]:
    """The static binaries the local Kubernetes source installed (the bake step's report)."""
    report = tree / "usr/share/nodekiln/kubernetes-source.txt"
    if not report.exists():
        return []
    for line in report.read_text().splitlines():
        if line.startswith("binaries:"):
            names = line.split(":", 1)[1].split()
            return sorted(n for n in names if n != "none" and (tree / "usr/bin" / n).is_file())
    return []


def binary_spdx_package(tree: Path, name: str, kubernetes_version: str) -> dict[str, Any]:
    digest = _sha256(tree / "usr/bin" / name)
    return {
        "SPDXID": _spdx_id("bin", name),
        "name": name,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "packageFileName": f"/usr/bin/{name}",
        "checksums": [{"algorithm": "SHA256", "checksumValue": digest}],
        "primaryPackagePurpose": "APPLICATION",
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": f"pkg:generic/{_purl_part(name)}?checksum=sha256:{digest}",
            }
        ],
        "comment": (
            "a static binary of the local Kubernetes source, installed as /usr/bin/" + name + "; its version "
            f"is not recorded (the site's Kubernetes version is {kubernetes_version}); checksum: SHA256 of the file"
        ),
    }


def oci_reference(archive: Path) -> tuple[str, str]:
    """(image reference, manifest digest) of an OCI or docker archive, '' where it names none."""
    try:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            if "index.json" in names:
                member = tar.extractfile("index.json")
                index = json.load(member) if member else {}
                manifests = index.get("manifests") or [{}]
                first = manifests[0]
                annotations = first.get("annotations") or {}
                ref = annotations.get("io.containerd.image.name") or annotations.get(
                    "org.opencontainers.image.ref.name", ""
                )
                return str(ref), str(first.get("digest", ""))
            if "manifest.json" in names:
                member = tar.extractfile("manifest.json")
                data = json.load(member) if member else []
                tags = (data[0].get("RepoTags") or [""]) if data else [""]
                return str(tags[0] or ""), ""
    except (tarfile.TarError, OSError, ValueError, KeyError, IndexError, AttributeError):
        pass
    return "", ""


def _oci_purl(ref: str, digest: str, file_digest: str, filename: str) -> str:
    if ref and digest and re.match(r"^[a-z0-9]+:[0-9a-f]+$", digest):
        repo, tag = ref, ""
        last = ref.rsplit("/", 1)[-1]
        if ":" in last:
            repo, tag = ref.rsplit(":", 1)
        name = repo.rsplit("/", 1)[-1]
        purl = f"pkg:oci/{_purl_part(name.lower())}@{_purl_part(digest)}?repository_url={_purl_part(repo)}"
        return purl + (f"&tag={_purl_part(tag)}" if tag else "")
    return f"pkg:generic/{_purl_part(filename)}?checksum=sha256:{file_digest}"


def oci_spdx_packages(tree: Path) -> list[dict[str, Any]]:
    folder = tree / IMAGES_DIR
    if not folder.is_dir():
        return []
    out = []
    for archive in sorted(p for p in folder.iterdir() if p.is_file()):
        digest = _sha256(archive)
        ref, manifest_digest = oci_reference(archive)
        entry: dict[str, Any] = {
            "SPDXID": _spdx_id("oci", archive.name),
            "name": ref or archive.name,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "packageFileName": f"/{IMAGES_DIR}/{archive.name}",
            "checksums": [{"algorithm": "SHA256", "checksumValue": digest}],
            "primaryPackagePurpose": "CONTAINER",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": _oci_purl(ref, manifest_digest, digest, archive.name),
                }
            ],
            "comment": "a container image archive imported into containerd at first boot; checksum: SHA256 of the archive"
            + (f"; image manifest digest {manifest_digest}" if manifest_digest else ""),
        }
        if ref and ":" in ref.rsplit("/", 1)[-1]:
            entry["versionInfo"] = ref.rsplit(":", 1)[1]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# The document


def build_epoch(inside: dict[str, Any], now: dt.datetime | None = None) -> dt.datetime:
    """SOURCE_DATE_EPOCH of the recipe or of the manifest, else of the environment, else the
    manifest's `builtAt`, else `now`."""
    recipe = (inside.get("inputs") or {}).get("recipe") or {}
    for value in (recipe.get("sourceDateEpoch"), inside.get("sourceDateEpoch"), os.environ.get("SOURCE_DATE_EPOCH")):
        if value not in (None, ""):
            try:
                return dt.datetime.fromtimestamp(int(str(value)), dt.UTC)
            except ValueError:
                continue
    if inside.get("builtAt"):  # the manifest beside the artifact (the ISO's SBOM is made from it)
        try:
            return dt.datetime.fromisoformat(str(inside["builtAt"]).replace("Z", "+00:00")).astimezone(dt.UTC)
        except ValueError:
            pass
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)


def document(
    tree: Path,
    inside: dict[str, Any],
    *,
    kind: str = "image",
    created: dt.datetime | None = None,
    tool_version: str = "",
) -> dict[str, Any]:
    """The SPDX 2.3 document of the root tree `tree` whose inside manifest is `inside`."""
    site = str(inside.get("site", "site"))
    input_hash = str(inside.get("inputHash", ""))
    input_data = inside.get("inputs") or {}
    recipe = input_data.get("recipe") or (input_data.get("image") or {}).get("recipe") or {}
    distribution = str(recipe.get("distribution") or "debian")
    kubernetes_version = str(
        input_data.get("kubernetesVersion") or (input_data.get("image") or {}).get("kubernetesVersion") or ""
    )
    when = build_epoch(inside, created)
    licences = Licences()
    debs = local_debs(input_data) or local_debs(input_data.get("image") or {})
    packages = [deb_spdx_package(tree, p, distribution, licences, debs) for p in dpkg_packages(tree)]
    packages += [binary_spdx_package(tree, n, kubernetes_version) for n in kubernetes_binaries(tree)]
    packages += oci_spdx_packages(tree)
    stem = f"{site}-{input_hash[:16]}"
    top = {
        "SPDXID": IMAGE_ID,
        "name": f"nodekiln {kind} {stem}",
        "versionInfo": input_hash,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": (
            f"the root tree of the {kind} of site {site}, input hash {input_hash}; the artifacts' own SHA256 "
            "are in the manifest and the provenance beside them"
        ),
    }
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"nodekiln-{kind}-{stem}",
        "documentNamespace": f"{NAMESPACE_BASE}/{kind}/{quote(site, safe='')}/{input_hash}",
        "creationInfo": {
            "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: nodekiln{'-' + tool_version if tool_version else ''}"],
            "comment": (
                "Made from the root tree before the disk was assembled: dpkg's status database, "
                "/usr/share/doc/*/copyright (DEP-5) and the nodekiln manifest."
            ),
        },
        "documentDescribes": [IMAGE_ID],
        "packages": [top, *packages],
        "relationships": [
            {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": IMAGE_ID},
            *(
                {"spdxElementId": IMAGE_ID, "relationshipType": "CONTAINS", "relatedSpdxElement": p["SPDXID"]}
                for p in packages
            ),
        ],
    }
    extracted = licences.extracted()
    if extracted:
        doc["hasExtractedLicensingInfos"] = extracted
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def deb_package_count(doc: dict[str, Any]) -> int:
    """How many dpkg packages the document lists (the manifest's package count)."""
    return sum(1 for p in doc.get("packages", []) if str(p.get("SPDXID", "")).startswith("SPDXRef-deb-"))


def write_inside(tree: Path, inside: dict[str, Any], *, kind: str = "image") -> dict[str, Any]:
    """Put the SBOM into the tree (/usr/share/nodekiln/sbom.spdx.json); return it."""
    from nodekiln import __version__

    doc = document(tree, inside, kind=kind, tool_version=__version__)
    write_atomic(tree / SBOM_PATH, dumps(doc))
    return doc


def beside_path(artifact_stem_path: Path) -> Path:
    """`<out>/<stem>.spdx.json` for `<out>/<stem>.<anything>`."""
    return artifact_stem_path.with_name(artifact_stem_path.name + BESIDE_SUFFIX)
