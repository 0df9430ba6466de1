"""Image tests: build the example site's node image ONCE per session, boot it, hand out hosts.

- `node_image`: the built image (qcow2 + manifest beside it). NODEKILN_TEST_IMAGE=PATH tests an
  image built elsewhere (`invoke test-image IMAGE`); otherwise the example site is built into
  build/test-images with the Kubernetes binaries from a local directory (real kubectl and helm
  from the npm layer package, see addons/tools/fetch-helm.sh): the upstream repository is not
  reachable here. Unchanged inputs make it a cache hit.
- `booted(firmware)`: one VM per firmware per session (UEFI on q35, BIOS on pc), booted from a
  copy-on-write overlay with a NoCloud seed, SSH and cloud-init done, killed at session end.

The seed's user-data comes from `seed_files()`; it is a minimal cloud-config of our own until
the tests switch to `nodekiln.bootstrap.render` output (one line: see the comment in seed_files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodekiln.images.build import BuildResult, build_image
from testing import qemu

from .oci_archive import PRELOAD_IMAGE, write_oci_archive

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "sites" / "example" / "site.yaml"
TEST_IMAGES = REPO / "build" / "test-images"
TOOLS = REPO / "build" / "tools"


def kubernetes_local_dir() -> Path:
    """A directory of real Kubernetes client binaries (kubectl, helm) and an OCI image archive
    to preload, for `local:DIR`."""
    bindir = TOOLS / "bin"
    if not ((bindir / "kubectl").exists() and (bindir / "helm").exists()):
        fetch = REPO / "addons" / "tools" / "fetch-helm.sh"
        if not fetch.exists() or shutil.which("npm") is None:
            pytest.fail(
                "no kubectl/helm binaries to bake in and no npm to fetch them: apt-get install -y npm", pytrace=False
            )
        subprocess.run(["bash", str(fetch), str(TOOLS)], check=True, cwd=REPO)
    local = TEST_IMAGES / "kubernetes-local"
    local.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl", "helm"):
        target = local / name
        if not target.exists() or target.stat().st_size != (bindir / name).stat().st_size:
            shutil.copy2(bindir / name, target)
    write_oci_archive(local / "preload-test.oci.tar", PRELOAD_IMAGE)
    return local


@dataclass
class TestImage:
    path: Path
    manifest: Path
    local_binaries: list[str]
    result: BuildResult | None


def load_test_site():
    from nodekiln.config.site import load_site

    return load_site(Path(os.environ.get("NODEKILN_SITE") or EXAMPLE))


@pytest.fixture(scope="session")
def test_site():
    return load_test_site()


def build_test_image(site, out_dir: Path = TEST_IMAGES) -> BuildResult:
    return build_image(site, out_dir, kubernetes_source_override=f"local:{kubernetes_local_dir()}")


@pytest.fixture(scope="session")
def node_image(test_site) -> TestImage:
    given = os.environ.get("NODEKILN_TEST_IMAGE")
    if given:
        path = Path(given).resolve()
        stem = path.name.rsplit(".", 1)[0]
        return TestImage(path, path.with_name(f"{stem}.manifest.json"), [], None)
    result = build_test_image(test_site)
    return TestImage(result.image, result.manifest_path, ["kubectl", "helm"], result)


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> tuple[Path, str]:
    """A key pair made for this test session only."""
    return qemu.generate_ssh_key(tmp_path_factory.mktemp("ssh"))


def seed_files(site, node, public_key: str) -> dict[str, bytes | str]:
    """NoCloud seed for `node`: what `invoke render` writes for it, for a copy of the site that
    also trusts this test session's key (the site's own keys stay; secrets are the copy's)."""
    import tempfile

    import yaml

    from nodekiln.bootstrap.render import render_site
    from nodekiln.config.site import load_site
    from nodekiln.secrets import SecretStore

    doc = yaml.safe_load(site.file.read_text())
    doc["ssh"]["authorizedKeys"] = [*doc["ssh"]["authorizedKeys"], public_key]
    copy_dir = Path(tempfile.mkdtemp(prefix="nodekiln-test-site-"))
    (copy_dir / "site.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    copy = load_site(copy_dir / "site.yaml")
    secrets, _ = SecretStore(copy.directory, copy.name).ensure()
    rendered = render_site(copy, secrets)[node.name]
    return {"user-data": rendered.user_data, "meta-data": rendered.meta_data, "network-config": rendered.network_config}


class Boots:
    """Boots each firmware once per session, lazily; kills every VM at the end."""

    def __init__(self, image: TestImage, site, key: tuple[Path, str]):
        self.image, self.site, self.key = image, site, key
        self.vms: dict[str, qemu.VM] = {}
        self.stack = contextlib.ExitStack()

    def __call__(self, firmware: str, node_name: str | None = None) -> qemu.VM:
        """The first node (or `node_name`, e.g. an edge node) booted with `firmware`."""
        key = firmware if node_name is None else f"{firmware}:{node_name}"
        if key not in self.vms:
            node = next(n for n in self.site.machines if n.name == node_name) if node_name else self.site.nodes[0]
            self.vms[key] = self.stack.enter_context(
                qemu.boot(
                    self.image.path,
                    seed_files(self.site, node, self.key[1]),
                    address=str(node.address),
                    cidr=str(self.site.network.cidr),
                    gateway=str(self.site.network.gateway),
                    user=self.site.ssh.user,
                    key=self.key[0],
                    firmware=firmware,
                    workdir=TEST_IMAGES if TEST_IMAGES.exists() else None,
                )
            )
        return self.vms[key]

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="session")
def boots(node_image, test_site, ssh_key) -> Iterator[Boots]:
    b = Boots(node_image, test_site, ssh_key)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def uefi_vm(boots) -> qemu.VM:
    return boots("uefi")


@pytest.fixture(scope="session")
def host(uefi_vm):
    """testinfra host (paramiko) on the UEFI-booted node."""
    return uefi_vm.testinfra_host()
