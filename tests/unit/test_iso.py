"""Appliance ISO pieces: xorriso arguments, boot menu, initramfs overlay, inputs and cache,
the site's appliance section, and the initramfs disk-selection logic (shell, on a fake sysfs)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from nodekiln.config.appliance import Appliance, DataDisk
from nodekiln.config.site import load_site
from nodekiln.errors import SiteError
from nodekiln.images import iso
from tests.efi_fixtures import make_chain, write_chain

NODES = [
    iso.MenuNode("cp1", "control-plane", "10.0.0.11", "52:54:00:AA:00:01"),
    iso.MenuNode("wk1", "worker", "10.0.0.21", None),
]


def test_xorriso_makes_a_hybrid_bios_and_uefi_iso(tmp_path: Path) -> None:
    argv = iso.xorriso_args(tmp_path / "staging", tmp_path / "out.iso", "NODEKILN_ABC")
    assert argv[:3] == ["xorriso", "-as", "mkisofs"]
    joined = " ".join(argv)
    # BIOS El Torito (GRUB's eltorito image, boot info table patched) and the hybrid MBR
    assert "-b boot/grub/eltorito.img -no-emul-boot -boot-load-size 4 -boot-info-table --grub2-boot-info" in joined
    assert argv[argv.index("--grub2-mbr") + 1].endswith("i386-pc/boot_hybrid.img")
    # UEFI: the FAT image as El Torito entry and as a partition (USB sticks)
    assert "--efi-boot boot/grub/efi.img -efi-boot-part --efi-boot-image" in joined
    assert argv[argv.index("-V") + 1] == "NODEKILN_ABC"
    assert argv[-1] == str(tmp_path / "staging") and argv[argv.index("-o") + 1] == str(tmp_path / "out.iso")
    assert f"--modification-date={iso.ISO_DATE}" in argv


def test_volume_id_is_a_valid_iso_label() -> None:
    vol = iso.volume_id("ab" * 32)
    assert vol == "NODEKILN_ABABABABABAB" and len(vol) <= 32


def test_boot_menu_has_the_automatic_entry_first_and_one_per_node() -> None:
    cfg = iso.grub_cfg("lab", NODES, "boot=nodekiln nodekiln.iso=V ro", 7)
    entries = [line for line in cfg.splitlines() if line.startswith("menuentry")]
    assert len(entries) == 3 and "automatic" in entries[0]
    assert "set timeout=7" in cfg and "set default=0" in cfg
    assert "linux /boot/vmlinuz boot=nodekiln nodekiln.iso=V ro nodekiln.node=wk1" in cfg
    assert "MAC 52:54:00:AA:00:01" in entries[1]
    automatic = cfg.split("menuentry")[1]
    assert "nodekiln.node=" not in automatic


def test_nodes_map_lists_nodes_with_a_mac_in_lower_case() -> None:
    assert iso.nodes_map(NODES) == "52:54:00:aa:00:01 cp1\n"


def test_kernel_cmdline_adds_the_boot_script_to_the_image_line(tmp_path: Path) -> None:
    (tmp_path / "usr/share/nodekiln").mkdir(parents=True)
    (tmp_path / "usr/share/nodekiln/kernel-cmdline").write_text("ro net.ifnames=0 console=ttyS0\n")
    line = iso.kernel_cmdline(tmp_path, "VOL")
    assert line.startswith("boot=nodekiln nodekiln.iso=VOL ro net.ifnames=0 console=ttyS0")


def test_appliance_conf_is_shell_the_initramfs_can_source(tmp_path: Path) -> None:
    conf = iso.appliance_conf("lab", Appliance(dataDisk=DataDisk(device="serial:S123", wipeForeign=True)), "h1")
    script = tmp_path / "conf"
    script.write_text(conf)
    out = subprocess.run(
        ["sh", "-c", f'. {script}; echo "$NK_SITE|$NK_DATA_DISK|$NK_WIPE_FOREIGN|$NK_DATA_LABEL|$NK_ISO_ID"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "lab|serial:S123|true|nodekiln-data|h1"


@pytest.mark.parametrize("device", ["auto", "/dev/sdb", "/dev/disk/by-id/nvme-X_1", "serial:WD-123"])
def test_data_disk_choices(device: str) -> None:
    assert DataDisk(device=device).device == device


@pytest.mark.parametrize("device", ["sdb", "/dev/", "serial:", "/dev/sd b", "serial:a'b", "first"])
def test_bad_data_disk_choices_are_rejected(device: str) -> None:
    with pytest.raises(ValueError):
        DataDisk(device=device)


def test_site_file_appliance_section(site_file) -> None:
    site = load_site(
        site_file(lambda d: d.update(appliance={"dataDisk": {"device": "serial:X1", "wipeForeign": True}}))
    )
    assert site.appliance.dataDisk.device == "serial:X1" and site.appliance.dataDisk.wipeForeign
    assert load_site(site_file()).appliance == Appliance()
    with pytest.raises(SiteError) as err:
        load_site(site_file(lambda d: d.update(appliance={"dataDisk": {"wipe": True}})))
    assert "appliance.dataDisk.wipe" in str(err.value)


def parse_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    out, i = [], 0
    while True:
        assert data[i : i + 6] == b"070701" and i % 4 == 0
        fields = [int(data[i + 6 + 8 * k : i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[i + 110 : i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        body = data[i : i + size]
        i = (i + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, body))


def test_cpio_archive_round_trips() -> None:
    data = iso.cpio_newc([("scripts", 0o755, None), ("scripts/x", 0o755, b"abc"), ("y", 0o644, b"12345")])
    members = parse_cpio(data)
    assert [(n, oct(m)) for n, m, _ in members] == [
        ("scripts", "0o40755"),
        ("scripts/x", "0o100755"),
        ("y", "0o100644"),
    ]
    assert members[1][2] == b"abc" and members[2][2] == b"12345"


def test_initrd_overlay_carries_the_boot_script_and_squashfs_module(tmp_path: Path) -> None:
    ko = tmp_path / "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs/squashfs.ko"
    ko.parent.mkdir(parents=True)
    ko.write_bytes(b"\x7fELFmodule")
    members = {n: body for n, _, body in parse_cpio(iso.initrd_overlay(tmp_path, "6.1.0-1-amd64"))}
    assert members["scripts/nodekiln"] == (iso.ASSETS / "nodekiln").read_bytes()
    assert members["scripts/nodekiln-lib"] == (iso.ASSETS / "nodekiln-lib").read_bytes()
    assert members["usr/lib/nodekiln/modules/squashfs.ko"] == b"\x7fELFmodule"
    combined = iso.combined_initrd(b"12345", b"070701rest")
    assert combined == b"12345\x00\x00\x00070701rest"  # the appended archive starts 4-byte aligned


def test_squashfs_keeps_api_dirs_empty_and_adds_missing_ones(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "tmp").mkdir()
    args = iso.squashfs_api_dirs(tmp_path)
    assert args[-3:] == ["-e", "dev/*", "tmp/*"]  # -e takes every argument after it
    assert "proc d 555 0 0" in args and "sys d 555 0 0" in args and "run d 755 0 0" in args


def _inputs(**change):
    base = dict(
        site_name="lab",
        image_inputs={"recipe": {"a": 1}},
        seeds={"cp1": {"user-data": b"u", "meta-data": b"m"}},
        nodes=NODES,
        appliance=Appliance(),
    )
    base.update(change)
    return iso.iso_inputs(**base)


def test_input_hash_covers_seeds_image_and_appliance_but_holds_no_secret() -> None:
    from nodekiln.images.manifest import input_hash

    h = input_hash(_inputs())
    assert h == input_hash(_inputs())
    assert h != input_hash(_inputs(seeds={"cp1": {"user-data": b"u2", "meta-data": b"m"}}))
    assert h != input_hash(_inputs(image_inputs={"recipe": {"a": 2}}))
    assert h != input_hash(_inputs(appliance=Appliance(dataDisk=DataDisk(wipeForeign=True))))
    assert h != input_hash(_inputs(nodes=NODES[:1]))
    text = json.dumps(_inputs())
    assert '"u"' not in text and "isoCode" in text  # seeds by digest only


def test_cache_hit_needs_the_iso_and_a_manifest_that_agrees(tmp_path: Path) -> None:
    target, manifest = iso.artifact_names(tmp_path, "lab", "f" * 64)
    assert target.name == "lab-ffffffffffffffff.iso"
    assert not iso.cached(target, manifest)
    target.write_bytes(b"x" * 10)
    assert not iso.cached(target, manifest)
    manifest.write_text(json.dumps({"artifacts": [{"file": target.name, "size": 10}]}))
    assert not iso.cached(target, manifest)  # no SBOM, provenance or signatures yet
    from nodekiln.images import provenance, signing

    sbom_path, provenance_path = provenance.beside(tmp_path, target.name)
    for path in (sbom_path, provenance_path):
        path.write_text("{}")
    for path in (target, manifest, sbom_path, provenance_path):
        Path(f"{path}{signing.SIG_SUFFIX}").write_text("signature")
    assert iso.cached(target, manifest)
    Path(f"{target}{signing.SIG_SUFFIX}").unlink()  # interrupted while signing
    assert not iso.cached(target, manifest)
    Path(f"{target}{signing.SIG_SUFFIX}").write_text("signature")
    target.write_bytes(b"x" * 11)  # a partial or foreign file under the name
    assert not iso.cached(target, manifest)


# --- the initramfs disk logic, on a fake sysfs ----------------------------------------------

LIB = iso.ASSETS / "nodekiln-lib"


@pytest.fixture
def fake_machine(tmp_path: Path):
    """A fake /sys with disks and NICs; stub blkid/udevadm answer from files under tmp/probe."""
    sys_root = tmp_path / "sys"
    probe = tmp_path / "probe"
    stubs = tmp_path / "bin"
    for d in (sys_root / "block", sys_root / "class/net", sys_root / "class/block", probe, stubs):
        d.mkdir(parents=True)
    (stubs / "blkid").write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        # blkid -p -o value -s KEY DEVICE
        for last; do :; done
        key=$5
        f="{probe}/$(basename "$last").$key"
        [ -f "$f" ] && cat "$f"
        exit 0
        """)
    )
    (stubs / "udevadm").write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        for arg; do case $arg in --name=*) name=${{arg#--name=}} ;; esac; done
        f="{probe}/$(basename "$name").udev"
        [ -f "$f" ] && cat "$f"
        exit 0
        """)
    )
    for stub in stubs.iterdir():
        stub.chmod(0o755)

    class Machine:
        def disk(
            self, name: str, gib: float = 8, removable: int = 0, parts: int = 0, serial: str | None = None
        ) -> None:
            d = sys_root / "block" / name
            d.mkdir()
            (d / "size").write_text(f"{int(gib * 2 * 1024 * 1024)}\n")
            (d / "removable").write_text(f"{removable}\n")
            (sys_root / "class/block" / name).symlink_to(d)
            for n in range(1, parts + 1):
                part = iso_part(name, n)
                (d / part).mkdir()
                (d / part / "partition").write_text(f"{n}\n")
                (sys_root / "class/block" / part).symlink_to(d / part)
            if serial:
                (probe / f"{name}.udev").write_text(f"ID_SERIAL=QEMU_{serial}\nID_SERIAL_SHORT={serial}\n")

        def probe(self, device: str, key: str, value: str) -> None:
            (probe / f"{device}.{key}").write_text(value + "\n")

        def nic(self, name: str, mac: str) -> None:
            (sys_root / "class/net" / name).mkdir()
            (sys_root / "class/net" / name / "address").write_text(mac + "\n")

        def sh(self, script: str) -> subprocess.CompletedProcess[str]:
            env = {
                **os.environ,
                "NK_SYS": str(sys_root),
                "NK_DEV": "/nonexistent-dev",
                "PATH": f"{stubs}:{os.environ['PATH']}",
            }
            return subprocess.run(["sh", "-c", f". {LIB}; {script}"], capture_output=True, text=True, env=env)

        def out(self, script: str) -> str:
            result = self.sh(script)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

    return Machine()


def shlex_split(text: str) -> str:
    """The class words as separate quoted arguments, as the boot script passes them."""
    import shlex

    return " ".join(shlex.quote(w) for w in text.split())


def iso_part(disk: str, n: int) -> str:
    return f"{disk}p{n}" if disk[-1].isdigit() else f"{disk}{n}"


def test_candidates_skip_removable_small_virtual_and_excluded_disks(fake_machine) -> None:
    m = fake_machine
    m.disk("sda", removable=1)  # the USB stick
    m.disk("loop0")
    m.disk("sr0")
    m.disk("vda", gib=1)  # too small
    m.disk("vdb")
    m.disk("nvme0n1")
    m.disk("vdc")
    assert m.out('nk_candidates "vdc"').split() == ["nvme0n1", "vdb"]
    assert m.out('nk_select_disk auto "nvme0n1"') == "vdb"


def test_no_candidate_is_a_clear_error(fake_machine) -> None:
    fake_machine.disk("sda", removable=1)
    result = fake_machine.sh('nk_select_disk auto ""')
    assert result.returncode == 1 and "no local disk" in result.stderr


def test_select_by_serial(fake_machine) -> None:
    m = fake_machine
    m.disk("sda", serial="AAA")
    m.disk("sdb", serial="BBB")
    assert m.out('nk_select_disk serial:BBB ""') == "sdb"
    result = m.sh('nk_select_disk serial:CCC ""')
    assert result.returncode == 1 and "serial number CCC" in result.stderr and "sda sdb" in result.stderr


def test_select_by_path_refuses_the_boot_medium_and_missing_disks(fake_machine) -> None:
    m = fake_machine
    m.disk("sda", parts=2)
    m.disk("sdb")
    assert m.out('nk_select_disk /dev/sdb ""') == "sdb"
    assert m.out("nk_disk_of /dev/sda2") == "sda"
    result = m.sh('nk_select_disk /dev/sda "sda"')
    assert result.returncode == 1 and "boot medium" in result.stderr
    result = m.sh('nk_select_disk /dev/sdz ""')
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_classify_blank_nodekiln_and_foreign_disks(fake_machine) -> None:
    m = fake_machine
    m.disk("vda")
    m.disk("vdb", parts=1)
    m.probe("vdb", "PTTYPE", "gpt")
    m.probe("vdb1", "LABEL", "nodekiln-data")
    m.disk("vdc", parts=2)
    m.probe("vdc", "PTTYPE", "dos")
    m.disk("vdd")
    m.probe("vdd", "TYPE", "ext4")
    m.disk("nvme0n1", parts=4)  # a nodekiln disk image: data is partition 4
    m.probe("nvme0n1", "PTTYPE", "gpt")
    m.probe("nvme0n1p4", "LABEL", "nodekiln-data")
    assert m.out("nk_classify vda") == "blank"
    assert m.out("nk_classify vdb") == "nodekiln vdb1"
    assert m.out("nk_classify vdc") == "foreign a partition table (dos, 2 partitions)"
    assert m.out("nk_classify vdd") == "foreign a file system (ext4)"
    assert m.out("nk_classify nvme0n1") == "nodekiln nvme0n1p4"


@pytest.mark.parametrize(
    ("allow", "cls", "action"),
    [
        ("false", "blank", "prepare"),
        ("false", "nodekiln vda1", "use"),
        ("false", "foreign a partition table (dos, 1 partitions)", "refuse"),
        ("true", "foreign a partition table (dos, 1 partitions)", "wipe"),
        ("true", "blank", "prepare"),
    ],
)
def test_decide_never_wipes_a_foreign_disk_unless_allowed(fake_machine, allow: str, cls: str, action: str) -> None:
    assert fake_machine.out(f"nk_decide {allow} {shlex_split(cls)}") == action


def test_node_by_mac(fake_machine, tmp_path: Path) -> None:
    m = fake_machine
    m.nic("lo", "00:00:00:00:00:00")
    m.nic("eth0", "52:54:00:12:34:56")
    m.nic("eth1", "52:54:00:AA:00:01")
    nodes = tmp_path / "nodes.map"
    nodes.write_text(iso.nodes_map(NODES))
    assert m.out(f"nk_node_by_mac {nodes}") == "cp1"
    nodes.write_text("52:54:00:ff:ff:ff other\n")
    assert m.sh(f"nk_node_by_mac {nodes}").returncode == 1
    assert m.out("nk_macs").split() == ["52:54:00:12:34:56", "52:54:00:AA:00:01"]


def test_part_names() -> None:
    assert subprocess.run(
        ["sh", "-c", f". {LIB}; nk_part_name vda 1; nk_part_name nvme0n1 1; nk_part_name mmcblk0 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split() == ["vda1", "nvme0n1p1", "mmcblk0p1"]


def test_boot_scripts_are_valid_posix_sh() -> None:
    for name in ("nodekiln", "nodekiln-lib"):
        subprocess.run(["sh", "-n", str(iso.ASSETS / name)], check=True)


def test_a_given_tree_is_identified_by_its_content(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "boot").mkdir()
    (tree / "boot/vmlinuz-1").write_text("k")
    (tree / "var/lib/dpkg/status").write_text("Package: a\n")
    first = iso.tree_identity(tree)
    assert first["boot"] == "vmlinuz-1" and first["etc/fstab"] == "absent"
    (tree / "var/lib/dpkg/status").write_text("Package: a\n\nPackage: b\n")
    assert iso.tree_identity(tree) != first
    tar = tmp_path / "root.tar"
    tar.write_bytes(b"tar")
    assert iso.tree_identity(tar) == {"tar": iso.mf.sha256_file(tar)}


def test_assembly_stages_are_announced_timed_and_the_iso_appears_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ISO's stages through the shared timer (programs faked: only the bookkeeping counts)."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    write_chain(tree, make_chain(), "vmlinuz-6.1.0-42-amd64")
    (tree / "boot/initrd.img-6.1.0-42-amd64").write_bytes(b"initrd")

    def grub(work: Path, volume: str, log: Path | None, uefi: bool = True) -> tuple[Path, Path]:
        (work / "eltorito.img").write_bytes(b"bios")
        (work / "BOOTX64.EFI").write_bytes(b"efi")
        return work / "eltorito.img", work / "BOOTX64.EFI"

    def xorriso(argv: list[str], **kwargs: object) -> None:
        out = Path(argv[argv.index("-o") + 1])
        assert out.name.endswith(".partial") and not (tmp_path / "out/lab.iso").exists()
        out.write_bytes(b"iso")

    monkeypatch.setattr(iso, "make_squashfs", lambda tree, target, log: target.write_bytes(b"sq"))
    monkeypatch.setattr(iso, "make_grub_images", grub)
    monkeypatch.setattr(iso, "make_efi_image", lambda efi, target, log: target.write_bytes(b"fat"))
    monkeypatch.setattr(iso, "run", xorriso)
    announced: list[str] = []
    content = iso.IsoContent("lab", NODES, {"cp1": {"user-data": b"#cloud-config\n"}}, Appliance(), "ab" * 32)
    target = tmp_path / "out/lab.iso"
    stages = iso.assemble_iso(tree, target, content, tmp_path / "work", on_stage=announced.append)
    assert announced == [s["name"] for s in stages] == ["squashfs", "boot", "xorriso"]
    assert all(isinstance(s["seconds"], float) for s in stages)
    assert target.read_bytes() == b"iso" and target.stat().st_mode & 0o077 == 0
    assert not list(target.parent.glob(".*partial")) and not (tmp_path / "work/iso").exists()
