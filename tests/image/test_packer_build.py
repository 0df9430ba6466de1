"""One real Packer build (qemu builder, TCG here) from a local base image, then one boot with
the same node checks as the diskimage-builder image, and the two images' package lists.

Slow: the base image (diskimage-builder, cached by its inputs), the Packer build (boot the
base, run the bake steps, export the tree), one boot of the result. The diskimage-builder
image of the same recipe is found in the shared build directory when the image tests built it
already (cache hit), else built here — its manifest is all this module reads of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from nodekiln.images.build import BuildResult, build_image
from nodekiln.images.packer_build import build_image_packer
from nodekiln.site import Site, load_site
from tests.image import node_checks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path(os.environ.get("NODEKILN_TEST_IMAGES", REPO / "build" / "test-images"))
SOURCE = "none"  # the Kubernetes package repos are out of reach here; same recipe for both backends


def _require(*tools: str) -> None:
    packages = {"packer": "packer", "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "zstd": "zstd"}
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: apt-get install -y {packages[tool]}", pytrace=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    folder = tmp_path_factory.mktemp("packer-site")
    text = (REPO / "sites/example/site.yaml").read_text().replace("kubernetesSource: upstream", f"kubernetesSource: {SOURCE}")
    (folder / "site.yaml").write_text(text)
    return load_site(folder / "site.yaml")


@pytest.fixture(scope="module")
def packer_image(site: Site) -> BuildResult:
    _require("packer", "qemu-system-x86_64", "qemu-img", "zstd")
    return build_image_packer(site, "packer-qemu", IMAGES, install_tools=False)


@pytest.fixture(scope="module")
def dib_image(site: Site) -> BuildResult:
    return build_image(site, IMAGES, install_tools=False)


def test_packer_build_names_artifacts_by_input_hash(packer_image: BuildResult) -> None:
    manifest = json.loads(packer_image.manifest_path.read_text())
    assert manifest["inputs"]["builder"] == "packer-qemu"
    assert packer_image.image.name == f"{packer_image.site}-{manifest['inputHash'][:16]}.qcow2"
    assert [s["name"] for s in manifest["bakeSteps"]] == sorted(p.stem for p in (REPO / "images/steps").glob("[0-9][0-9]-*.sh"))


def test_same_inputs_skip_the_build(site: Site, packer_image: BuildResult) -> None:
    started = time.monotonic()
    again = build_image_packer(site, "packer-qemu", IMAGES, install_tools=False)
    assert again.cache_hit and again.image == packer_image.image
    assert time.monotonic() - started < 30  # hashing the inputs (and the base image), no VM


def test_packer_image_boots_and_passes_the_node_checks(site: Site, packer_image: BuildResult, tmp_path: Path) -> None:
    from nodekiln.qemu import boot, cloud_config, generate_ssh_key, network_config

    node = site.nodes[0]
    key, public = generate_ssh_key(tmp_path)
    seed = {
        "user-data": cloud_config(node.name, site.ssh.user, public),
        "meta-data": f"instance-id: {node.name}-packer\nlocal-hostname: {node.name}\n",
        "network-config": network_config(str(node.address), str(site.network.cidr), str(site.network.gateway),
                                          [str(d) for d in site.network.dns]),
    }
    beside = json.loads(packer_image.manifest_path.read_text())
    with boot(packer_image.image, seed, address=str(node.address), cidr=str(site.network.cidr),
              gateway=str(site.network.gateway), user=site.ssh.user, key=key, firmware="bios",
              timeout=900) as vm:
        node_checks.check_node(vm.testinfra_host(), beside)


def test_packer_and_dib_images_install_the_same_packages(packer_image: BuildResult, dib_image: BuildResult) -> None:
    packer_packages = json.loads(packer_image.manifest_path.read_text())["packages"]
    dib_packages = json.loads(dib_image.manifest_path.read_text())["packages"]
    only_packer = sorted(set(packer_packages) - set(dib_packages))
    only_dib = sorted(set(dib_packages) - set(packer_packages))
    assert (only_packer, only_dib) == ([], []), f"only in the Packer image: {only_packer}; only in the DIB image: {only_dib}"
    versions = {p: (packer_packages[p], dib_packages[p]) for p in packer_packages if packer_packages[p] != dib_packages[p]}
    assert versions == {}, f"versions differ (packer, dib): {versions}"
