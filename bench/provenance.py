"""`invoke bench` figures of what is known about an artifact: the SBOM's package count (it must
list every package of the manifest) and the time `verify-image` takes to check the artifact,
its manifest, SBOM and provenance against the site's builder key. Both use the cold build of
bench/image.py (one build shared by the image figures)."""

from __future__ import annotations

import json
import time

from bench.figures import Figure
from nodekiln.images import sbom
from nodekiln.images.verify import companions, verify_artifact


def sbom_packages() -> Figure:
    from bench.image import _cold

    _, result, _, _, _ = _cold()
    doc = json.loads(companions(result.image, result.manifest_path).sbom.read_text())
    expected = len(result.manifest.get("packages") or {})
    return Figure(
        "sbom_packages",
        sbom.deb_package_count(doc),
        "packages",
        f"== {expected}",
        detail=f"dpkg packages in the SPDX SBOM beside {result.image.name}; the goal is the manifest's count "
        f"({len(doc['packages'])} SPDX packages in all, with the image itself, local binaries and OCI archives)",
    )


def verify_s() -> Figure:
    from bench.image import _cold

    _, result, site, _, _ = _cold()
    started = time.perf_counter()
    verified = verify_artifact(site.directory, site.name, result.image, result.manifest_path)
    seconds = time.perf_counter() - started
    size = result.image.stat().st_size / 2**20
    return Figure(
        "verify_s",
        round(seconds, 2),
        "s",
        "<= 10",
        detail=f"verify-image of the {size:.0f} MiB qcow2: 4 ssh-keygen signature checks, the artifact's sha256 "
        f"against manifest and provenance, the SBOM ({verified.packages} packages)",
    )
