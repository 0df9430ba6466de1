"""The Packer driver without running Packer: versions, machine-readable lines, manifests,
inputs and the build VM's seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nodekiln.config.site import load_site
from nodekiln.images import packer
from nodekiln.images.packer_build import Progress, packer_inputs, remove_build_access, seed_files


@pytest.mark.parametrize(
    "text, expected, plugins",
    [
        ("Packer v1.6.6\n", (1, 6, 6), False),
        ("Packer v1.11.2\n\nYour version of Packer is out of date! The latest version\nis 1.12.0.", (1, 11, 2), True),
        ("1.7.0", (1, 7, 0), True),
    ],
)
def test_version(text: str, expected: tuple[int, int, int], plugins: bool) -> None:
    version = packer.PackerVersion.parse(text)
    assert version.tuple == expected
    assert version.needs_plugins is plugins


def test_unreadable_version() -> None:
    with pytest.raises(packer.PackerError):
        packer.PackerVersion.parse("command not found")


def test_machine_readable_lines() -> None:
    event = packer.parse_line("1700000000,,ui,say,==> qemu.node: Waiting for SSH%!(PACKER_COMMA) up to 30m\\nnext")
    assert event == packer.Event(1700000000, "", "ui", ("say", "==> qemu.node: Waiting for SSH, up to 30m\nnext"))
    assert event.ui_kind == "say"
    artifact = packer.parse_line("1700000001,qemu.node,artifact,0,file,0,out/packer-disk.qcow2")
    assert artifact.target == "qemu.node" and artifact.data == ("0", "file", "0", "out/packer-disk.qcow2")
    assert packer.parse_line("not,machine readable") is None
    assert packer.parse_line("") is None


def test_manifest_last_run_only(tmp_path: Path) -> None:
    doc = {
        "builds": [
            {
                "name": "node",
                "builder_type": "qemu",
                "files": [{"name": "old.qcow2", "size": 1}],
                "artifact_id": "VM",
                "packer_run_uuid": "old",
                "custom_data": {"tree": "old.tar.zst"},
            },
            {
                "name": "node",
                "builder_type": "qemu",
                "files": [{"name": "out/packer-disk.qcow2", "size": 2}],
                "artifact_id": "VM",
                "packer_run_uuid": "new",
                "custom_data": {"tree": "t.tar.zst"},
            },
        ],
        "last_run_uuid": "new",
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (built,) = packer.read_manifest(tmp_path / "m.json")
    assert built.files == [Path("out/packer-disk.qcow2")]
    assert built.custom_data["tree"] == "t.tar.zst"
    with pytest.raises(packer.PackerError):
        packer.read_manifest(tmp_path / "missing.json")


def test_progress_shows_bake_steps() -> None:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    progress = Progress(Console(file=out, width=120), "packer-qemu")
    for line in [
        "1,,ui,say,==> qemu.node: Provisioning with shell script",
        "2,,ui,message,    qemu.node: NODEKILN-STEP-BEGIN 10-kernel",
        "3,,ui,message,    qemu.node: NODEKILN-STEP-END 10-kernel 0.42",
    ]:
        progress(packer.parse_line(line))
    assert progress.last_say == "Provisioning with shell script"
    assert progress.steps.steps == [{"name": "10-kernel", "seconds": 0.42}]
    assert "step 10-kernel 0.42 s" in out.getvalue()


def test_seed_gives_the_key_to_root_or_a_sudo_user() -> None:
    root = yaml.safe_load(seed_files("root", "ssh-ed25519 AAAA build")["user-data"])
    assert root == {"users": [], "disable_root": False, "ssh_authorized_keys": ["ssh-ed25519 AAAA build"]}
    user = yaml.safe_load(seed_files("debian", "ssh-ed25519 AAAA build")["user-data"])
    assert user["users"][0]["name"] == "debian" and "NOPASSWD" in user["users"][0]["sudo"]


def test_build_key_is_removed_from_the_tree(tmp_path: Path) -> None:
    keys = tmp_path / "var/root/.ssh/authorized_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text("ssh-ed25519 AAAAbuild nodekiln-test\n")
    net = tmp_path / "etc/systemd/network/10-cloud-init-eth0.network"
    net.parent.mkdir(parents=True)
    net.write_text("[Match]\n")
    removed = remove_build_access(tmp_path, "root", "ssh-ed25519 AAAAbuild nodekiln-test")
    assert not keys.exists() and not keys.parent.exists() and not net.exists()
    assert "var/root/.ssh/authorized_keys" in removed


def test_packer_inputs_differ_by_builder_and_base(tmp_path: Path, example_site: Path) -> None:
    site = load_site(example_site)
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"one")
    qemu = packer_inputs(site, "packer-qemu", base)
    assert qemu["builder"] == "packer-qemu" and "openstack" not in qemu["packer"]
    assert "baseImage" not in qemu["packer"] and "sha256" in qemu["baseImage"]
    base.write_bytes(b"two")
    assert packer_inputs(site, "packer-qemu", base)["baseImage"] != qemu["baseImage"]
    # The Packer settings stay out of the recipe's own dump (the diskimage-builder hash).
    assert "packer" not in site.image.model_dump(mode="json")


def test_openstack_builder_needs_its_settings(example_site: Path, tmp_path: Path) -> None:
    from nodekiln.errors import NodekilnError
    from nodekiln.images.packer_build import build_image_packer

    with pytest.raises(NodekilnError, match=r"image\.packer\.openstack"):
        build_image_packer(load_site(example_site), "packer-openstack", tmp_path)
    with pytest.raises(NodekilnError, match="unknown builder"):
        build_image_packer(load_site(example_site), "packer-vmware", tmp_path)


def test_openstack_variables_come_from_the_recipe(site_file, tmp_path: Path) -> None:
    from nodekiln.images.packer_build import packer_variables, plan_packer_build

    def change(doc):
        doc["image"]["packer"] = {
            "openstack": {
                "sourceImage": "debian-12",
                "flavor": "m1.large",
                "networks": ["net-1"],
                "floatingIpNetwork": "public",
            }
        }

    site = load_site(site_file(change))
    plan = plan_packer_build(site, "packer-openstack", tmp_path)
    variables = packer_variables(plan, "packer-openstack", tmp_path, None, None, None)
    assert variables["openstack_source_image"] == "debian-12" and variables["openstack_flavor"] == "m1.large"
    assert variables["openstack_networks"] == ["net-1"] and variables["ssh_username"] == "debian"
    assert variables["kubernetes_version"] == site.kubernetes.version and variables["image_name"] == plan.stem
    assert plan.inputs["packer"]["openstack"]["flavor"] == "m1.large"
