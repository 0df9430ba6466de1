"""`invoke bench` figures of the node image: one cold build of the example site shared by all four.

The Kubernetes source is the same local directory the tests bake in (real kubectl and helm from
the npm layer package, fetched by addons/tools/fetch-helm.sh): the upstream repository is not
reachable from the build machine.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

from bench import image_boot as image_bench
from bench.figures import Figure
from nodekiln import run
from nodekiln.config.site import Site, load_site
from nodekiln.images.build import BuildResult

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "sites" / "example" / "site.yaml"


def _local_source() -> str:
    tools = REPO / "build" / "tools"
    if not (tools / "bin" / "kubectl").exists():
        run.run(["bash", str(REPO / "addons" / "tools" / "fetch-helm.sh"), str(tools)])
    local = Path(tempfile.mkdtemp(prefix="nodekiln-bench-k8s-"))
    for name in ("kubectl", "helm"):
        shutil.copy2(tools / "bin" / name, local / name)
    return f"local:{local}"


@cache
def _cold() -> tuple[Figure, BuildResult, Site, Path, str]:
    site = load_site(EXAMPLE)
    out = Path(tempfile.mkdtemp(prefix="nodekiln-bench-images-"))
    source = _local_source()
    figure, result = image_bench.image_cold_build_s(site, out, kubernetes_source_override=source)
    return figure, result, site, out, source


def image_cold_build_s() -> Figure:
    return _cold()[0]


def image_cache_hit_s() -> Figure:
    _, _, site, out, source = _cold()
    return image_bench.image_cache_hit_s(site, out, kubernetes_source_override=source)


def image_qcow2_mb() -> Figure:
    return image_bench.image_qcow2_mb(_cold()[1].image)


def boot_to_cloudinit_s() -> Figure:
    _, result, site, _, _ = _cold()
    return image_bench.boot_to_cloudinit_s(result.image, site)


def boot_secureboot_s() -> Figure:
    """boot_to_cloudinit_s with OVMF's Secure Boot firmware, Microsoft's keys, enforcing."""
    _, result, site, _, _ = _cold()
    return image_bench.boot_to_cloudinit_s(result.image, site, "uefi-secureboot", "boot_secureboot_s")


def rebuild_identical() -> Figure:
    """1 when a second cold build of the example (same recipe, same mirror state, another output
    folder: no cache) gives a qcow2 byte-identical to the first (the shared cold build), else 0;
    the detail names both sha256 and, on a difference, the differing paths."""
    from nodekiln.images.build import build_image
    from nodekiln.images.compare import compare_artifacts, sha256_file

    _, first, site, _, source = _cold()
    out = Path(tempfile.mkdtemp(prefix="nodekiln-bench-rebuild-"))
    try:
        second = build_image(site, out, kubernetes_source_override=source)
        sums = f"sha256 {sha256_file(first.image)[:16]} / {sha256_file(second.image)[:16]}"
        result = compare_artifacts(first.image, second.image, work=out)
        detail = sums if result.identical else f"{sums}; " + "; ".join(result.differences[:20])
        if len(result.differences) > 20:
            detail += f"; ... {len(result.differences) - 20} more"
        return Figure("rebuild_identical", 1.0 if result.identical else 0.0, "bool", "== 1", detail)
    finally:
        shutil.rmtree(out, ignore_errors=True)
