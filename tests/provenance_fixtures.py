"""A small root tree as dpkg and the bake steps leave it, and a signed build made from it: what
the SBOM, signing, provenance and verify tests share (no image is built)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nodekiln.images import manifest, provenance, sbom
from testing.standin_build import sign_stand_in  # noqa: F401  (re-exported for the tests)
from tests.image.oci_archive import PRELOAD_IMAGE, write_oci_archive

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: lib/*
Copyright: 2021 Someone Else
License: Expat or Apache-2.0

Files: odd/*
Copyright: 2022 Another
License: GPL-2+ with OpenSSL exception

License: GPL-2+
 This program is free software.
"""

STATUS = """Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u5
Maintainer: Santiago Vila <sanvila@debian.org>

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>

Package: kubeadm
Status: install ok installed
Architecture: amd64
Version: 1:1.31.4-1.1
Maintainer: Kubernetes Authors <dev@kubernetes.io>

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""


def make_root_tree(tree: Path) -> Path:
    """A root tree with five installed packages (one foreign-architecture), copyright files in
    and out of the DEP-5 format (one through a symlinked doc folder), dpkg's md5sums lists, a
    local Kubernetes binary and a preloaded OCI archive."""
    (tree / "var/lib/dpkg/info").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(STATUS)
    info = tree / "var/lib/dpkg/info"
    (info / "base-files.md5sums").write_text("d41d8cd98f00b204e9800998ecf8427e  etc/debian_version\n")
    (info / "libc6:amd64.md5sums").write_text("00000000000000000000000000000000  lib/libc.so.6\n")
    (info / "libc6:i386.md5sums").write_text("11111111111111111111111111111111  lib/i386/libc.so.6\n")
    doc = tree / "usr/share/doc"
    (doc / "base-files").mkdir(parents=True)
    (doc / "base-files/copyright").write_text("This is the Debian prepackaged version of base-files.\n")
    (doc / "libc6").mkdir()
    (doc / "libc6/copyright").write_text(DEP5)
    (doc / "gcc-12-base").mkdir()
    (doc / "gcc-12-base/copyright").write_text(DEP5.replace("Expat or Apache-2.0", "LGPL-2.1+"))
    (doc / "libstdc++6").symlink_to("/usr/share/doc/gcc-12-base")  # absolute: inside the tree
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/kubectl").write_bytes(b"\x7fELF fake kubectl")
    (tree / "usr/share/nodekiln/images").mkdir(parents=True)
    write_oci_archive(tree / "usr/share/nodekiln/images/preload-test.oci.tar", PRELOAD_IMAGE)
    (tree / "usr/share/nodekiln/kubernetes-source.txt").write_text(
        "source: local directory\ndebs: 1\nbinaries: kubectl\nmissing: kubelet crictl\n"
    )
    return tree


def inside_manifest(tree: Path, site: str = "lab") -> dict[str, Any]:
    inputs = {
        "recipe": {"distribution": "debian", "release": "12", "mirror": "http://deb.debian.org/debian"},
        "kubernetesVersion": "1.31.4",
        "bakeSteps": {"images/steps/10-kernel.sh": "-" + "a" * 64, "images/run-steps.sh": "x" + "b" * 64},
        "localSource": {"kubeadm_1.31.4-1.1_amd64.deb": "-" + "c" * 64, "kubectl": "x" + "d" * 64},
        "preloadImages": {"images/preload-test.oci.tar": "e" * 64},
    }
    hash_hex = manifest.input_hash(inputs)
    return {
        "schema": manifest.SCHEMA,
        "site": site,
        "inputHash": hash_hex,
        "inputs": inputs,
        "packages": manifest.installed_packages(tree),
        "tools": {"qemu-img": "qemu-img version 7.2.0"},
    }


def signed_build(tmp: Path, site: str = "lab") -> tuple[Path, Path, Path]:
    """(site dir, artifact, manifest): a build as disk_tail leaves it, artifact of 64 KiB."""
    site_dir = tmp / "site"
    site_dir.mkdir(parents=True, exist_ok=True)
    tree = make_root_tree(tmp / "tree")
    inside = inside_manifest(tree, site)
    text = sbom.dumps(sbom.document(tree, inside))
    out = tmp / "out"
    out.mkdir()
    stem = f"{site}-{manifest.short(inside['inputHash'])}"
    artifact = out / f"{stem}.qcow2"
    artifact.write_bytes(hashlib.sha256(b"seed").digest() * 2048)
    full = {**inside, "artifacts": [manifest.artifact_entry(artifact, "qcow2")], "stages": [{"name": "manifest"}]}
    manifest_path = out / f"{stem}.manifest.json"
    manifest_path.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    provenance.publish(
        kind="image",
        site_dir=site_dir,
        site=site,
        stem=stem,
        out_dir=out,
        manifest_path=manifest_path,
        manifest=full,
        artifacts={"qcow2": artifact},
        sbom_text=text,
        seconds=12.5,
    )
    return site_dir, artifact, manifest_path
