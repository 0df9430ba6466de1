"""The appliance ISO, booted for real in qemu (TCG here, ~2-5 min per boot): UEFI from a USB
stick with the node chosen by MAC address, then a reboot; BIOS from a CD with the node's
seed attached; a disk with a foreign partition table that must not be wiped.

One ISO per session, made from NODEKILN_ROOT_TREE (a root tree directory or the tar
diskimage-builder writes) when set, else from a tree built with diskimage-builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from bench.iso import LAB_CIDR, LAB_CP, LAB_GATEWAY, LAB_USER, LAB_WORKER, lab_site
from nodekiln.bootstrap.render import render_site
from nodekiln.config.site import load_site
from nodekiln.images import iso
from nodekiln.run import run
from nodekiln.secrets import SecretStore
from testing.isoboot import boot_iso, wait_console
from testing.qemu import generate_ssh_key

pytestmark = [pytest.mark.slow]

BOOT_TIMEOUT = 720.0


class Lab:
    def __init__(self, work: Path):
        self.work = work
        self.key, public = generate_ssh_key(work)
        self.site = load_site(lab_site(work / "site", public))
        self.secrets, _ = SecretStore(self.site.directory, self.site.name).ensure()
        tree = os.environ.get("NODEKILN_ROOT_TREE")
        self.tree = Path(tree) if tree else None
        self.result = iso.build_iso(self.site, self.secrets, work / "out", tree=self.tree)
        self.iso = self.result.path
        self.iso_sha = hashlib.sha256(self.iso.read_bytes()).hexdigest()
        self.seeds = render_site(self.site, self.secrets)


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    if os.geteuid() != 0:
        pytest.fail("the ISO tests build a root tree with diskimage-builder: run them as root", pytrace=False)
    if shutil.which("xorriso") is None or shutil.which("mksquashfs") is None:
        pytest.fail("xorriso and mksquashfs are needed: apt-get install -y xorriso squashfs-tools", pytrace=False)
    return Lab(tmp_path_factory.mktemp("iso-lab"))


def test_the_iso_is_built_once_and_is_a_cache_hit_after(lab: Lab) -> None:
    again = iso.build_iso(lab.site, lab.secrets, lab.work / "out", tree=lab.tree)
    assert again.cached and again.path == lab.iso
    assert lab.iso.name.startswith("iso-lab-") and lab.iso.stat().st_mode & 0o077 == 0
    assert iso.read_iso_file(lab.iso, "/nodekiln/nodes.map").decode() == f"{LAB_CP[2]} {LAB_CP[0]}\n"
    if lab.tree is None:  # built here: whatever the recipe's VM kernel, the ISO has every driver
        kernel = json.loads(lab.result.manifest.read_text())["kernel"]
        assert kernel.endswith("-amd64") and "-cloud-" not in kernel, kernel


def _sh(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command}: {result.stderr or result.stdout}"
    return result.stdout.strip()


def _check_node(host, name: str, address: str) -> None:
    root = host.mount_point("/")
    assert root.filesystem == "squashfs" and "ro" in root.options
    assert host.run("sudo touch /usr/nodekiln-write-test").rc != 0  # read-only, even for root
    var = host.mount_point("/var")
    assert var.filesystem == "ext4" and "rw" in var.options
    assert _sh(host, f"readlink -f {var.device}") == "/dev/vda1"
    assert host.mount_point("/etc").filesystem == "overlay"
    assert _sh(host, "sudo blkid -s LABEL -o value /dev/vda1") == "nodekiln-data"
    assert _sh(host, "lsblk -dno PTTYPE /dev/vda") == "gpt"
    assert _sh(host, "findmnt -no OPTIONS /run/nodekiln/medium").startswith("ro")
    assert _sh(host, "hostname") == name
    assert address in host.interface("eth0").addresses
    assert _sh(host, "sudo cat /var/lib/nodekiln/node") == name
    assert host.run("sudo nft list table inet nodekiln").rc == 0
    assert host.service("containerd").is_running


def _first_boot_facts(host) -> dict[str, str]:
    return {
        "prepared": _sh(host, "sudo grep -c ' prepared ' /var/lib/nodekiln/data-disk.log"),
        "fs_created": _sh(host, "sudo dumpe2fs -h /dev/vda1 2>/dev/null | grep 'Filesystem created'"),
        "host_key": _sh(host, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
        "cloud_init_users": _sh(host, "sudo stat -c %Y /var/lib/cloud/instance/sem/config_users_groups"),
        "instance": _sh(host, "sudo cat /var/lib/cloud/data/instance-id"),
    }


def _boot_cp_by_mac(lab: Lab, firmware: str, medium: str):
    """The control plane's machine (found by its MAC) from the ISO, with a blank disk."""
    _name, address, mac = LAB_CP
    return boot_iso(
        lab.iso,
        firmware=firmware,
        medium=medium,
        mac=mac,
        address=address,
        cidr=LAB_CIDR,
        gateway=LAB_GATEWAY,
        user=LAB_USER,
        key=lab.key,
        timeout=BOOT_TIMEOUT,
    )


def test_uefi_usb_stick_blank_disk_node_by_mac_then_reboot(lab: Lab) -> None:
    name, address, _mac = LAB_CP
    with _boot_cp_by_mac(lab, "uefi", "usb") as vm:
        host = vm.testinfra_host()
        _check_node(host, name, address)
        console = vm.console.read_text(errors="replace")
        assert "partitioning /dev/vda" in console and "node cp1 of site iso-lab (found by MAC address)" in console
        first = _first_boot_facts(host)
        assert first["prepared"] == "1" and first["instance"] == "nodekiln-iso-lab-cp1"
        _sh(host, "sudo mkdir -p /var/lib/nodekiln-test && echo kept | sudo tee /var/lib/nodekiln-test/state")
        _sh(host, "echo kept | sudo tee /etc/nodekiln-test")

        vm.reboot(timeout=BOOT_TIMEOUT)
        # Not `cloud-init status --wait`: while kubeadm has not succeeded (none in this image),
        # the rendered nodekiln-bootstrap.service (After=cloud-final, WantedBy=multi-user) forms an
        # ordering cycle on later boots and systemd drops cloud-final's job, so cloud-init never
        # reports done. Wait for the services the checks need instead.
        deadline = time.monotonic() + 300
        while vm.ssh("systemctl is-active containerd nftables")[0] != 0 and time.monotonic() < deadline:
            time.sleep(3)
        host = vm.testinfra_host()
        _check_node(host, name, address)
        assert _sh(host, "cat /var/lib/nodekiln-test/state") == "kept"
        assert _sh(host, "cat /etc/nodekiln-test") == "kept"  # /etc's overlay upper is on the disk
        assert _first_boot_facts(host) == first  # not partitioned, formatted or seeded again
        assert _sh(host, "sudo wc -l < /var/lib/nodekiln/boots.log") == "2"


def test_secure_boot_cd_boots_through_the_signed_chain(lab: Lab) -> None:
    """A PC from the shop: OVMF with Microsoft's keys, Secure Boot enforcing, booting the CD
    (El Torito EFI image: shim, the distribution's signed CD GRUB, the signed kernel)."""
    name, address, _mac = LAB_CP
    with _boot_cp_by_mac(lab, "uefi-secureboot", "cdrom") as vm:
        host = vm.testinfra_host()
        _check_node(host, name, address)
        efivar = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        assert _sh(host, f"od -An -t u1 {efivar}").split()[-1] == "1"
        assert _sh(host, "cat /sys/kernel/security/lockdown") == "none [integrity] confidentiality"
    chain = json.loads(lab.result.manifest.read_text())["bootChain"]
    assert [(link["stage"], bool(link["signers"])) for link in chain["links"]] == [
        ("shim", True),
        ("grub", True),
        ("kernel", True),
    ]
    assert chain["links"][1]["prefix"] == "/boot/grub"  # the CD GRUB's own, where our config goes


def test_bios_cd_with_the_node_seed_attached(lab: Lab) -> None:
    name, address = LAB_WORKER
    with boot_iso(
        lab.iso,
        firmware="bios",
        medium="cdrom",
        address=address,
        cidr=LAB_CIDR,
        gateway=LAB_GATEWAY,
        user=LAB_USER,
        key=lab.key,
        seed_files=lab.seeds[name].files(),
        timeout=BOOT_TIMEOUT,
    ) as vm:
        host = vm.testinfra_host()
        _check_node(host, name, address)
        assert "from the attached seed" in vm.console.read_text(errors="replace")
        # the seed now lives on the data disk: the machine no longer needs the seed medium
        assert _sh(host, "sudo cat /var/lib/cloud/seed/nocloud/meta-data").find(f"local-hostname: {name}") >= 0


def test_a_disk_with_a_foreign_partition_table_is_not_wiped(lab: Lab, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.raw"
    with open(foreign, "wb") as f:
        f.truncate(4 * 1024**3)
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", foreign],
        input="label: dos\nstart=2048, size=409600, type=83\n",
    )
    with open(foreign, "r+b") as f:  # some data in the partition
        f.seek(2048 * 512)
        f.write(b"precious data\n" * 1000)
    before = _head_digest(foreign)

    _name, address, mac = LAB_CP
    with boot_iso(
        lab.iso,
        firmware="bios",
        medium="cdrom",
        mac=mac,
        address=address,
        cidr=LAB_CIDR,
        gateway=LAB_GATEWAY,
        user=LAB_USER,
        key=lab.key,
        data_disk=foreign,
        wait_ssh=False,
        timeout=BOOT_TIMEOUT,
    ) as vm:
        wait_console(vm, "BOOT STOPPED", time.monotonic() + BOOT_TIMEOUT)
        time.sleep(3)
        console = vm.console.read_text(errors="replace")
    assert "the data disk /dev/vda holds a partition table (dos, 1 partitions)" in console
    assert "was NOT touched" in console and "appliance.dataDisk.wipeForeign: true" in console
    assert "partitioning" not in console
    assert _head_digest(foreign) == before


def _head_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(4 * 1024**2)).hexdigest()


def test_a_rebuild_from_the_same_tree_is_byte_identical(lab: Lab, tmp_path: Path) -> None:
    """The ISO half of reproducible builds: the same tree, site and secrets give the same ISO
    byte for byte (squashfs, the EFI image, ISO 9660 at the build epoch), and the same
    signature. The tree's own reproducibility is tests/image/test_reproducible.py's."""
    out = tmp_path / "out"
    if lab.tree is None:  # the tree this session built, linked into a second output folder
        shutil.copytree(lab.work / "out" / "trees", out / "trees", copy_function=os.link)
    again = iso.build_iso(lab.site, lab.secrets, out, tree=lab.tree)
    assert not again.cached and again.path != lab.iso and again.path.name == lab.iso.name
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == lab.iso_sha
    sig = Path(f"{lab.iso}.sig")
    assert Path(f"{again.path}.sig").read_bytes() == sig.read_bytes()


def test_the_iso_was_never_written(lab: Lab) -> None:
    assert hashlib.sha256(lab.iso.read_bytes()).hexdigest() == lab.iso_sha
