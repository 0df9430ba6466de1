"""The SBOM (nodekiln/images/sbom.py): an SPDX 2.3 document that the real SPDX validator
(spdx-tools) accepts, with every dpkg package of the tree (the manifest's count), its version,
source package, licence and checksum, the local Kubernetes binaries and the OCI archives; the
same document for the same inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from nodekiln.images import manifest, sbom
from tests.image.oci_archive import PRELOAD_IMAGE
from tests.provenance_fixtures import inside_manifest, make_root_tree


def spdx_problems(doc: dict[str, Any], tmp_path: Path) -> list[str]:
    """What spdx-tools' validator finds wrong in `doc` (written as a .spdx.json file)."""
    path = tmp_path / "doc.spdx.json"
    path.write_text(sbom.dumps(doc))
    return [m.validation_message for m in validate_full_spdx_document(parse_file(str(path)))]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_root_tree(tmp_path / "tree")


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["SPDXID"]: p for p in doc["packages"]}


def test_the_sbom_of_a_tree_is_valid_spdx_2_3(tree: Path, tmp_path: Path) -> None:
    doc = sbom.document(tree, inside_manifest(tree))
    assert spdx_problems(doc, tmp_path) == []
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["dataLicense"] == "CC0-1.0"
    assert doc["SPDXID"] == "SPDXRef-DOCUMENT" and doc["documentDescribes"] == [sbom.IMAGE_ID]


def test_every_installed_package_once_as_the_manifest_counts_them(tree: Path) -> None:
    inside = inside_manifest(tree)
    doc = sbom.document(tree, inside)
    assert sbom.deb_package_count(doc) == len(inside["packages"]) == 5  # the removed one is not
    contained = {r["relatedSpdxElement"] for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert contained == {p["SPDXID"] for p in doc["packages"]} - {sbom.IMAGE_ID}


def test_a_package_has_version_source_purl_and_an_honest_checksum(tree: Path) -> None:
    doc = sbom.document(tree, inside_manifest(tree))
    libc = [p for p in doc["packages"] if p["name"] == "libc6"]
    assert len(libc) == 2  # amd64 and i386
    amd64 = next(p for p in libc if "arch=amd64" in p["externalRefs"][0]["referenceLocator"])
    assert amd64["versionInfo"] == "2.36-9+deb12u4"
    assert amd64["sourceInfo"] == "built from the Debian source package glibc 2.36-9+deb12u4"
    assert amd64["externalRefs"][0] == {
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64",
    }
    listed = (tree / "var/lib/dpkg/info/libc6:amd64.md5sums").read_bytes()
    assert amd64["checksums"] == [{"algorithm": "SHA256", "checksumValue": manifest.hashlib.sha256(listed).hexdigest()}]
    assert "not of a .deb" in amd64["comment"]
    kubeadm = next(p for p in doc["packages"] if p["name"] == "kubeadm")
    assert kubeadm["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/kubeadm@1%3A1.31.4-1.1?arch=amd64"
    assert kubeadm["checksums"][0]["checksumValue"] == "c" * 64  # the local .deb's own sha256
    assert "of the .deb file" in kubeadm["comment"]
    stdcpp = next(p for p in doc["packages"] if p["name"] == "libstdc++6")
    assert "checksums" not in stdcpp and "no checksum" in stdcpp["comment"]
    assert stdcpp["SPDXID"].startswith("SPDXRef-deb-libstdc--6-")  # SPDX ids: letters, digits, . and -


def test_licences_come_from_dep5_copyright_files_else_noassertion(tree: Path) -> None:
    doc = sbom.document(tree, inside_manifest(tree))
    named = {p["name"]: p for p in doc["packages"]}
    libc = named["libc6"]["licenseDeclared"]
    assert libc.startswith("GPL-2.0-or-later AND (MIT OR Apache-2.0) AND LicenseRef-Debian-GPL-2-with-OpenSSL")
    # libstdc++6's doc folder is an absolute symlink: resolved inside the tree, not on the host
    assert named["libstdc++6"]["licenseDeclared"].startswith("GPL-2.0-or-later AND LGPL-2.1-or-later")
    assert named["base-files"]["licenseDeclared"] == "NOASSERTION"  # not machine-readable
    assert named["kubeadm"]["licenseDeclared"] == "NOASSERTION"  # no copyright file
    refs = {e["licenseId"]: e for e in doc["hasExtractedLicensingInfos"]}
    (ref,) = refs
    assert refs[ref]["name"] == "GPL-2+ with OpenSSL exception" and refs[ref]["extractedText"]


def test_kubernetes_binaries_and_oci_archives_are_packages_with_digests(tree: Path) -> None:
    doc = sbom.document(tree, inside_manifest(tree))
    named = {p["name"]: p for p in doc["packages"]}
    kubectl = named["kubectl"]
    digest = manifest.sha256_file(tree / "usr/bin/kubectl")
    assert kubectl["checksums"] == [{"algorithm": "SHA256", "checksumValue": digest}]
    assert kubectl["packageFileName"] == "/usr/bin/kubectl" and "1.31.4" in kubectl["comment"]
    image = named[PRELOAD_IMAGE]
    archive = tree / "usr/share/nodekiln/images/preload-test.oci.tar"
    assert image["checksums"][0]["checksumValue"] == manifest.sha256_file(archive)
    assert image["primaryPackagePurpose"] == "CONTAINER" and image["versionInfo"] == "1"
    index = json.loads(sbom.tarfile.open(archive).extractfile("index.json").read())  # type: ignore[union-attr]
    digest = index["manifests"][0]["digest"]
    assert image["externalRefs"][0]["referenceLocator"] == (
        f"pkg:oci/preload-test@{digest.replace(':', '%3A')}?repository_url=registry.local%2Fnodekiln%2Fpreload-test&tag=1"
    )


def test_same_inputs_same_document_and_the_epoch_is_the_creation_time(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    inside = inside_manifest(tree)
    first, second = sbom.dumps(sbom.document(tree, inside)), sbom.dumps(sbom.document(tree, inside))
    assert first == second
    doc = json.loads(first)
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    assert doc["documentNamespace"] == f"https://nodekiln.invalid/spdx/image/lab/{inside['inputHash']}"
    other = {**inside, "inputHash": "f" * 64}
    assert json.loads(sbom.dumps(sbom.document(tree, other)))["documentNamespace"] != doc["documentNamespace"]


def test_the_tree_carries_the_sbom_beside_its_manifest(tree: Path) -> None:
    doc = sbom.write_inside(tree, inside_manifest(tree))
    assert json.loads((tree / sbom.SBOM_PATH).read_text()) == doc


def test_the_sbom_of_this_debian_host_is_valid_spdx(tmp_path: Path) -> None:
    """Real data: every package and copyright file of the machine the tests run on."""
    root = Path("/")
    if not (root / "var/lib/dpkg/status").exists():
        pytest.skip("not a dpkg system")
    inside = {"site": "host", "inputHash": "0" * 64, "inputs": {"recipe": {"distribution": "debian"}}}
    doc = sbom.document(root, inside)
    assert sbom.deb_package_count(doc) == len(manifest.installed_packages(root)) > 100
    assert spdx_problems(doc, tmp_path) == []
    declared = [p["licenseDeclared"] for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-deb-")]
    assert sum(d != "NOASSERTION" for d in declared) > len(declared) / 2  # most Debian packages are DEP-5
