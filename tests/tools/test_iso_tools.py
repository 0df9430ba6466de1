"""The appliance ISO assembled by the real tools from a tiny stand-in tree (seconds): xorriso
reports both El Torito boot images and the EFI partition; the squashfs, the initramfs overlay
and every node's seed are where the boot script looks for them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nodekiln.config.appliance import Appliance, DataDisk
from nodekiln.images import bootchain, iso
from nodekiln.run import output, run
from tests.efi_fixtures import make_chain, write_chain

TOOLS = ("xorriso", "mksquashfs", "grub-mkimage", "mkfs.vfat", "mcopy", "unsquashfs")


@pytest.fixture(autouse=True)
def _iso_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: apt-get install -y xorriso squashfs-tools grub-common dosfstools mtools",
            pytrace=False,
        )


VERSION = "6.1.0-99-amd64"
CHAIN = make_chain()


def fake_tree(root: Path) -> Path:
    (root / "boot").mkdir(parents=True)
    # stand-ins for the signed chain bake step 12-boot-chain leaves (and a kernel signed like it)
    write_chain(root, CHAIN, f"vmlinuz-{VERSION}")
    (root / f"boot/initrd.img-{VERSION}").write_bytes(b"(\xb5/\xfd" + b"initrd" * 100)
    ko = root / f"lib/modules/{VERSION}/kernel/fs/squashfs/squashfs.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELF")
    (root / "usr/share/nodekiln").mkdir(parents=True)
    (root / "usr/share/nodekiln/kernel-cmdline").write_text("ro console=ttyS0\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: base-files\nStatus: install ok installed\nVersion: 12.4\n")
    (root / "dev").mkdir()
    (root / "dev/null").write_text("not a device")  # API dir contents are never packed
    return root


def test_assembled_iso_boots_bios_and_uefi_and_holds_what_the_boot_script_needs(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "tree")
    nodes = [
        iso.MenuNode("cp1", "control-plane", "10.0.0.11", "52:54:00:aa:00:01"),
        iso.MenuNode("wk1", "worker", "10.0.0.21", None),
    ]
    seeds = {
        n.name: {
            "user-data": f"#cloud-config\nhostname: {n.name}\n".encode(),
            "meta-data": f"instance-id: i-{n.name}\n".encode(),
            "network-config": b"version: 2\n",
        }
        for n in nodes
    }
    content = iso.IsoContent(
        "lab", nodes, seeds, Appliance(dataDisk=DataDisk(device="serial:X1")), "c0ffee" * 10, {"schema": iso.SCHEMA}
    )
    target = tmp_path / "out" / "lab.iso"
    stages = iso.assemble_iso(tree, target, content, tmp_path / "work")
    assert [s["name"] for s in stages] == ["squashfs", "boot", "xorriso"]
    assert target.stat().st_mode & 0o777 == 0o600

    report = output(["xorriso", "-indev", target, "-report_el_torito", "plain", "-report_system_area", "plain"])
    assert "El Torito boot img :   1  BIOS" in report and "/boot/grub/eltorito.img" in report
    assert "El Torito boot img :   2  UEFI" in report and "/boot/grub/efi.img" in report
    assert "grub2-mbr" in report and "GPT" in report
    efi_img = tmp_path / "efi.img"
    efi_img.write_bytes(iso.read_iso_file(target, "/boot/grub/efi.img"))
    env = {"MTOOLS_SKIP_CHECK": "1"}
    for path, data in ((bootchain.FIRST_STAGE, CHAIN.shim), (bootchain.SHIM_NEXT, CHAIN.cd_grub)):
        run(["mcopy", "-n", "-i", efi_img, f"::/{path}", tmp_path / "got"], env=env)
        assert (tmp_path / "got").read_bytes() == data, path
    early = run(["mtype", "-i", efi_img, "::/boot/grub/grub.cfg"], env=env).output  # the CD GRUB's prefix
    assert f"--label {iso.volume_id('c0ffee' * 10)}" in early
    assert iso.read_iso_file(target, "/.disk/info").startswith(b"nodekiln lab ")
    table = output(["sfdisk", "-d", target])
    assert "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in table  # the ESP, for USB sticks on UEFI
    assert f"Volume id    : '{iso.volume_id(content.hash_hex)}'" in output(["xorriso", "-indev", target, "-pvd_info"])

    assert iso.read_iso_file(target, "/nodekiln/nodes/wk1/meta-data") == b"instance-id: i-wk1\n"
    assert iso.read_iso_file(target, "/nodekiln/nodes.map") == b"52:54:00:aa:00:01 cp1\n"
    assert b"NK_DATA_DISK='serial:X1'" in iso.read_iso_file(target, "/nodekiln/appliance.conf")
    cfg = iso.read_iso_file(target, "/boot/grub/grub.cfg").decode()
    assert f"nodekiln.iso={iso.volume_id(content.hash_hex)}" in cfg and "nodekiln.node=wk1" in cfg
    initrd = iso.read_iso_file(target, "/boot/initrd.img")
    assert initrd.startswith(b"(\xb5/\xfd" + b"initrd" * 100) and b"scripts/nodekiln-lib" in initrd

    squashfs = tmp_path / "root.squashfs"
    squashfs.write_bytes(iso.read_iso_file(target, "/nodekiln/root.squashfs"))
    listing = run(["unsquashfs", "-lln", squashfs]).output
    for api_dir in ("proc", "sys", "run", "tmp", "dev"):
        assert f"squashfs-root/{api_dir}\n" in listing
    assert "squashfs-root/dev/null" not in listing
    assert "squashfs-root/var/lib/dpkg/status" in listing  # /var seeds the data disk
