"""One real Packer build (qemu builder; TCG here) of the image the other image tests build with
diskimage-builder — same site, same recipe, same local Kubernetes binaries — then ONE boot
that runs the very same checks (tests/image/test_node_image.py's, on this image), and the two
images' installed package lists compared.

Kept to one build and one boot (CI time): the checks that need a second boot (BIOS) or a
reboot run for the diskimage-builder image only. The Packer build starts from the local
nodekiln-base image (diskimage-builder, cached by its inputs under build/test-images/base/).
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from collections.abc import Callable, Iterator

import pytest

from nodekiln.images.build import BuildResult
from nodekiln.images.packer_build import BUILD_KEY_COMMENT, build_image_packer
from testing import qemu
from tests.image import conftest as image_tests
from tests.image import test_node_image as node_tests
from tests.image.conftest import TEST_IMAGES, kubernetes_local_dir, seed_files

# ~40 min under TCG (a Packer build VM running the bake steps, then a boot): kvm_only
pytestmark = [pytest.mark.slow, pytest.mark.kvm_only, pytest.mark.timeout(3600)]

# Checks of test_node_image.py that boot a second VM or reboot: diskimage-builder image only.
NOT_HERE = {"test_bios_boot_reaches_the_same_state", "test_var_survives_a_reboot"}
FIXTURES = {"host", "node_image", "test_site", "uefi_vm"}
CHECKS: list[Callable[..., None]] = [
    f
    for name, f in sorted(vars(node_tests).items())
    if name.startswith("test_")
    and callable(f)
    and name not in NOT_HERE
    and set(inspect.signature(f).parameters) <= FIXTURES
]


def _require(*tools: str) -> None:
    packages = {"packer": "packer", "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "zstd": "zstd"}
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: apt-get install -y {packages[tool]}", pytrace=False)


def _build(test_site) -> BuildResult:
    return build_image_packer(
        test_site, "packer-qemu", TEST_IMAGES, kubernetes_source_override=f"local:{kubernetes_local_dir()}"
    )


@pytest.fixture(scope="module")
def packer_image(test_site) -> image_tests.TestImage:
    _require("packer", "qemu-system-x86_64", "qemu-img", "zstd")
    result = _build(test_site)
    return image_tests.TestImage(result.image, result.manifest_path, ["kubectl", "helm"], result)


@pytest.fixture(scope="module")
def packer_vm(packer_image: image_tests.TestImage, test_site, ssh_key) -> Iterator[qemu.VM]:
    node = test_site.nodes[0]
    with qemu.boot(
        packer_image.path,
        seed_files(test_site, node, ssh_key[1]),
        address=str(node.address),
        cidr=str(test_site.network.cidr),
        gateway=str(test_site.network.gateway),
        user=test_site.ssh.user,
        key=ssh_key[0],
        firmware="uefi",
        workdir=TEST_IMAGES if TEST_IMAGES.exists() else None,
    ) as vm:
        yield vm


@pytest.fixture(scope="module")
def packer_host(packer_vm: qemu.VM):
    return packer_vm.testinfra_host()


def test_packer_manifest_names_the_builder(packer_image: image_tests.TestImage) -> None:
    beside = json.loads(packer_image.manifest.read_text())
    assert beside["inputs"]["builder"] == "packer-qemu" and beside["tools"]["packer"]
    assert packer_image.path.name == f"{beside['site']}-{beside['inputHash'][:16]}.qcow2"


def test_same_inputs_skip_the_packer_build(test_site, packer_image: image_tests.TestImage) -> None:
    started = time.monotonic()
    again = _build(test_site)
    assert again.cache_hit and again.image == packer_image.path
    assert time.monotonic() - started < 60  # hashing inputs and the base image; no VM


@pytest.mark.parametrize("check", CHECKS, ids=[f.__name__ for f in CHECKS])
def test_packer_image_passes_the_node_checks(check, packer_image, packer_vm, packer_host, test_site) -> None:
    given = {"host": packer_host, "node_image": packer_image, "test_site": test_site, "uefi_vm": packer_vm}
    check(**{name: given[name] for name in inspect.signature(check).parameters})


def test_no_build_access_is_left(packer_host) -> None:
    keys = packer_host.run("sudo cat /var/root/.ssh/authorized_keys").stdout
    assert BUILD_KEY_COMMENT not in keys
    assert packer_host.run("ls /etc/ssh/ssh_host_ed25519_key.pub").rc == 0  # this boot's own


def test_packer_and_dib_images_install_the_same_packages(
    packer_image: image_tests.TestImage, node_image: image_tests.TestImage
) -> None:
    packer_packages = json.loads(packer_image.manifest.read_text())["packages"]
    dib_packages = json.loads(node_image.manifest.read_text())["packages"]
    only_packer = sorted(set(packer_packages) - set(dib_packages))
    only_dib = sorted(set(dib_packages) - set(packer_packages))
    assert (only_packer, only_dib) == ([], []), (
        f"only in the Packer image: {only_packer}; only in the DIB image: {only_dib}"
    )
    differ = {
        p: (packer_packages[p], dib_packages[p]) for p in packer_packages if packer_packages[p] != dib_packages[p]
    }
    assert differ == {}, f"versions differ (packer, dib): {differ}"
