"""`packer_qemu_build_s`: a cold Packer build (qemu builder; KVM where it works, TCG here) of
the same recipe `image_cold_build_s` builds with diskimage-builder, on the same machine.

Cold for the node image: a fresh output directory, so nothing of the node image is cached. The
base image (nodekiln-base, the disk Packer boots) is an input like the cloud image a site
names: it is built once and kept under build/bench/packer-base (its own time is the
`base image` stage of the manifest when it had to be built).

The recipe: the example site with kubernetesSource from NODEKILN_BENCH_KUBERNETES_SOURCE
(default `none`: this machine reaches no Kubernetes package repository), as for
image_cold_build_s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from nodekiln.bench import Figure

BASE_CACHE = Path("build/bench/packer-base")


def packer_qemu_build_s() -> Figure:
    from rich.console import Console

    from nodekiln.images.packer_base import build_base_image
    from nodekiln.images.packer_build import build_image_packer
    from nodekiln.site import load_site

    source = os.environ.get("NODEKILN_BENCH_KUBERNETES_SOURCE", "none")
    Path("build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nodekiln-bench-packer-", dir="build") as tmp:
        folder = Path(tmp)
        text = Path("sites/example/site.yaml").read_text().replace("kubernetesSource: upstream",
                                                                   f"kubernetesSource: {source}")
        (folder / "site.yaml").write_text(text)
        site = load_site(folder / "site.yaml")
        base = build_base_image(site.image, BASE_CACHE)
        console = Console(stderr=True, quiet=True)
        started = time.perf_counter()
        result = build_image_packer(site, "packer-qemu", folder / "out", console=console, base_image=base)
        seconds = time.perf_counter() - started
        assert not result.cache_hit
        shutil.rmtree(folder / "out", ignore_errors=True)
    return Figure("packer_qemu_build_s", round(seconds, 1), "s", "<= 2700")
