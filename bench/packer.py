"""`packer_qemu_build_s`: a cold Packer build (qemu builder; KVM where it works, TCG here) of
the same recipe `image_cold_build_s` builds with diskimage-builder (the example site, the
local kubectl + helm source of bench.image), on the same machine.

Cold for the node image: a fresh output directory. The base image (nodekiln-base, the disk
Packer boots) is an input like the cloud image a site names: built once and kept under
build/bench/packer-base, so its own build (~5 min, diskimage-builder) is not in the figure.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.figures import Figure
from nodekiln.report import Reporter

REPO = Path(__file__).resolve().parent.parent
BASE_CACHE = REPO / "build" / "bench" / "packer-base"


def packer_qemu_build_s() -> Figure:

    from bench.image import EXAMPLE, _local_source
    from nodekiln.config.site import load_site
    from nodekiln.images.packer_base import build_base_image
    from nodekiln.images.packer_build import build_image_packer

    site = load_site(EXAMPLE)
    base = build_base_image(site.image, BASE_CACHE)
    out = Path(tempfile.mkdtemp(prefix="nodekiln-bench-packer-"))
    try:
        started = time.perf_counter()
        result = build_image_packer(
            site,
            "packer-qemu",
            out,
            kubernetes_source_override=_local_source(),
            report=Reporter.quiet(),
            base_image=base,
        )
        seconds = time.perf_counter() - started
        assert not result.cache_hit
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return Figure("packer_qemu_build_s", round(seconds, 1), "s", "<= 2700")
