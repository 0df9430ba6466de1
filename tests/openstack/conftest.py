"""A real local OpenStack (Keystone, Glance, Neutron, Placement, Nova with the fake virt driver,
MariaDB, RabbitMQ) for the whole session, on 127.0.0.1 with fresh databases.

Installed by `bash tests/openstack/install.sh` (cached); started by testing.devcloud,
the same code `invoke bench` uses. Without the install the tests are skipped locally and fail
in CI (CI=true), where a missing install is a broken pipeline, not a reason to skip.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import devcloud

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "sites" / "example" / "site.yaml"


@pytest.fixture(scope="session")
def cloud() -> Iterator[devcloud.DevCloud]:
    if os.environ.get("NODEKILN_DEVCLOUD"):  # a cloud kept running between runs (development)
        attached = devcloud.DevCloud.attach(Path(os.environ["NODEKILN_DEVCLOUD"]))
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(attached.clouds_yaml)
        yield attached
        return
    reason = devcloud.available()
    if reason:  # slow tests fail, never skip, when their tools are missing
        pytest.fail(reason, pytrace=False)
    running = devcloud.DevCloud().start()
    saved = os.environ.get("OS_CLIENT_CONFIG_FILE")
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(running.clouds_yaml)
    try:
        yield running
    finally:
        if saved is None:
            os.environ.pop("OS_CLIENT_CONFIG_FILE", None)
        else:
            os.environ["OS_CLIENT_CONFIG_FILE"] = saved
        running.stop()


@pytest.fixture(scope="session")
def admin(cloud: devcloud.DevCloud):
    return cloud.connect("nodekiln-admin")


@pytest.fixture
def user(cloud: devcloud.DevCloud):
    """A fresh connection as the project member nodekiln runs as (its own call counter)."""
    return cloud.connect("nodekiln")


def openstack_section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "cloud": "nodekiln",
        "flavors": {"control-plane": "m1.small", "worker": "m1.small", "edge": "m1.small"},
        "configDrive": True,
        # Never connect to the site's private addresses from here: there is nothing there.
        "waitHealthz": False,
        "bootTimeout": 300,
    }
    section.update(overrides)
    return section


@pytest.fixture
def make_site(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Path]:
    """Write a copy of the example site with an openstack section for the local cloud.

    Every site gets its own name (tests share the cloud and project), so tests never see each
    other's resources."""
    base = yaml.safe_load(EXAMPLE.read_text())
    counter = iter(range(1000))

    def make(change: Callable[[dict[str, Any]], Any] | None = None, name: str | None = None, **section: Any) -> Path:
        doc = copy.deepcopy(base)
        doc["metadata"]["name"] = name or f"t{uuid.uuid4().hex[:8]}"
        doc["openstack"] = openstack_section(**section)
        if section.get("floatingIP"):  # its clients are outside the node network
            doc.setdefault("firewall", {})["apiFrom"] = ["198.51.100.0/24"]
        if change is not None:
            change(doc)
        path = tmp_path / f"site{next(counter)}" / "site.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


@pytest.fixture
def build_artifact() -> Callable[..., tuple[Path, Path]]:
    return write_build


def write_build(
    directory: Path,
    site_name: str,
    *,
    size_mib: int = 8,
    suffix: str = "qcow2",
    content_hash: str | None = None,
    secure_boot: str | None = None,
    site_dir: Path | None = None,
) -> tuple[Path, Path]:
    """A build artifact and its manifest as the image build writes them (small, made here),
    signed with the builder key of the site in `site_dir` (upload-image verifies it)."""
    from nodekiln import run

    content_hash = content_hash or hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / f"{site_name}-{content_hash[:16]}.{suffix}"
    if suffix == "qcow2":
        raw = image.with_suffix(".src")
        raw.write_bytes(os.urandom(size_mib * 2**20))
        run.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image])
        raw.unlink()
    else:
        with open(image, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(2**20))
    manifest = image.with_name(image.name.rsplit(".", 1)[0] + ".manifest.json")
    manifest.write_text(
        json.dumps(
            {
                "schema": "nodekiln/image-manifest/v1",
                "site": site_name,
                "inputHash": content_hash,
                "inputs": {"kubernetesVersion": "1.31.4", "recipe": {"distribution": "debian", "release": "12"}},
                **({"bootChain": {"secureBoot": secure_boot, "links": []}} if secure_boot else {}),
            }
        )
    )
    if site_dir is not None:
        from testing.standin_build import sign_stand_in

        sign_stand_in(site_dir, site_name, image, manifest)
    return image, manifest


@pytest.fixture(scope="session")
def boot_image(cloud: devcloud.DevCloud, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One uploaded image the deploy tests boot (the fake driver never reads it)."""
    from nodekiln.config.site import load_site
    from nodekiln.openstack.images import upload_image

    directory = tmp_path_factory.mktemp("boot-image")
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["openstack"] = openstack_section()
    (directory / "site.yaml").write_text(yaml.safe_dump(doc))
    site = load_site(directory / "site.yaml")
    image, manifest = write_build(directory / "build", site.name, size_mib=1, site_dir=site.directory)
    return upload_image(site, image, manifest, progress=False).name


def load_with_secrets(path: Path):
    """The site at `path` and its secrets (made on first use)."""
    from nodekiln.config.site import load_site
    from nodekiln.secrets import SecretStore

    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return site, secrets
