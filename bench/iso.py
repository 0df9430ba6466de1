"""Figures of the appliance ISO: size, build time from a root tree, boot to SSH (UEFI).

They time the ISO from a root tree: NODEKILN_ROOT_TREE (a directory or diskimage-builder's tar),
else the newest tree `invoke build-iso` cached under build/iso/trees, else one built here first
(diskimage-builder, ~10 min, cached there for the next run). The lab site below is also the one
the ISO boot tests use (tests/image/test_iso.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from bench.figures import Figure
from nodekiln.errors import NodekilnError

if TYPE_CHECKING:
    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets

LAB_CIDR = "10.20.0.0/24"
LAB_GATEWAY = "10.20.0.1"
LAB_CP = ("cp1", "10.20.0.11", "52:54:00:14:00:0b")  # chosen by MAC (in the site)
LAB_WORKER = ("wk1", "10.20.0.21")  # no MAC in the site: chosen by menu or an attached seed
LAB_USER = "debian"


def lab_site(directory: Path, public_key: str, *, wipe_foreign: bool = False, data_disk: str = "auto") -> Path:
    """A one-control-plane, one-worker site on qemu's user network; returns the site file."""
    cp, cp_addr, cp_mac = LAB_CP
    wk, wk_addr = LAB_WORKER
    directory.mkdir(parents=True, exist_ok=True)
    site = directory / "site.yaml"
    site.write_text(f"""\
apiVersion: nodekiln/v1alpha1
kind: Site
metadata: {{name: iso-lab}}
kubernetes: {{version: "1.31.4"}}
controlPlane: {{loadBalancer: none}}
network: {{cidr: {LAB_CIDR}, gateway: {LAB_GATEWAY}, dns: [10.20.0.3]}}
ssh:
  user: {LAB_USER}
  authorizedKeys: [{public_key!r}]
nodes:
  - {{name: {cp}, role: control-plane, address: {cp_addr}, mac: "{cp_mac}"}}
  - {{name: {wk}, role: worker, address: {wk_addr}}}
image: {{kubernetesSource: none}}
appliance:
  dataDisk: {{device: {data_disk}, wipeForeign: {str(wipe_foreign).lower()}}}
  menuTimeout: 1
""")
    return site


TREES = Path("build/iso")  # build-iso's default out folder: its trees/ are reused


def root_tree(site: Site, secrets: Secrets) -> Path:
    """The tree to time the ISO from; built (and cached where build-iso caches it) when none is."""
    given = os.environ.get("NODEKILN_ROOT_TREE")
    if given:
        if not Path(given).exists():
            raise NodekilnError(f"NODEKILN_ROOT_TREE={given}: no such directory or tar")
        return Path(given)
    trees = sorted((TREES / "trees").glob("*.tar"), key=lambda p: p.stat().st_mtime)
    if not trees:
        from nodekiln.images import iso

        print("iso figures: no root tree yet: building one with diskimage-builder (~10 min, cached)", flush=True)
        iso.build_iso(site, secrets, TREES)
        trees = sorted((TREES / "trees").glob("*.tar"), key=lambda p: p.stat().st_mtime)
    return trees[-1]


@cache
def _lab_build() -> tuple[Path, float, Path, Path]:
    """(ISO, seconds from an existing tree, private key, work dir) for the lab site."""
    from nodekiln.config.site import load_site
    from nodekiln.images import iso
    from nodekiln.secrets import SecretStore
    from testing.qemu import generate_ssh_key

    work = Path(tempfile.mkdtemp(prefix="nodekiln-bench-iso-", dir="build" if Path("build").is_dir() else None))
    atexit.register(shutil.rmtree, work, True)  # the ISO and the lab site's secrets
    key, public = generate_ssh_key(work)
    site = load_site(lab_site(work / "site", public))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    tree = root_tree(site, secrets)
    if not tree.is_dir():  # time the ISO from a tree, not the tar's extraction
        from nodekiln.images.dib import extract_tree

        extract_tree(tree, work / "tree")
        tree = work / "tree"
    started = time.monotonic()
    result = iso.build_iso(site, secrets, work / "out", tree=tree)
    return result.path, time.monotonic() - started, key, work


def iso_mb() -> Figure:
    path, _, _, _ = _lab_build()
    return Figure("iso_mb", round(path.stat().st_size / 2**20, 1), "MiB", "<= 800")


def iso_build_s() -> Figure:
    _, seconds, _, _ = _lab_build()
    return Figure("iso_build_s", round(seconds, 1), "s", "<= 120")


def iso_boot_s() -> Figure:
    from testing.isoboot import boot_iso

    path, _, key, work = _lab_build()
    _cp, address, mac = LAB_CP
    with boot_iso(
        path,
        firmware="uefi",
        medium="usb",
        mac=mac,
        address=address,
        cidr=LAB_CIDR,
        gateway=LAB_GATEWAY,
        user=LAB_USER,
        key=key,
        wait_cloud_init=False,
        workdir=work,
    ) as vm:
        seconds = vm.timings["ssh_s"]
    return Figure("iso_boot_s", seconds, "s", "<= 240")
