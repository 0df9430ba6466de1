"""The qemu command lines of the boot harness (disk images and ISOs share their parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodekiln import qemu
from nodekiln.images import isoboot


def test_network_forwards_ssh_to_the_sites_own_address():
    args = qemu.network_args(cidr="10.0.1.0/24", gateway="10.0.1.1", address="10.0.1.46", port=2222,
                             mac="52:54:00:00:00:46")
    netdev = args[args.index("-netdev") + 1]
    assert "net=10.0.1.0/24" in netdev and "host=10.0.1.1" in netdev
    assert "hostfwd=tcp:127.0.0.1:2222-10.0.1.46:22" in netdev
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:46" in args


def test_uefi_gets_a_private_variable_store_and_bios_the_pc_machine(tmp_path, monkeypatch):
    vars_file = tmp_path / "OVMF_VARS_4M.fd"
    vars_file.write_bytes(b"vars")
    monkeypatch.setattr(qemu, "OVMF_VARS", vars_file)
    uefi = qemu.firmware_args("uefi", tmp_path)
    assert uefi[:2] == ["-machine", "q35"] and (tmp_path / "OVMF_VARS.fd").read_bytes() == b"vars"
    assert qemu.firmware_args("bios", tmp_path) == ["-machine", "pc"]
    with pytest.raises(ValueError):
        qemu.firmware_args("coreboot", tmp_path)


def test_the_iso_boots_first_from_cd_or_usb_and_is_never_written():
    cd = isoboot.medium_args(Path("/x.iso"), "cdrom")
    usb = isoboot.medium_args(Path("/x.iso"), "usb")
    assert "ide-cd,drive=medium,bootindex=0" in cd and "media=cdrom" in cd[1]
    assert any(a.startswith("usb-storage,") and "bootindex=0" in a for a in usb)
    assert all("readonly=on" in a for a in (cd[1], usb[1]))
    with pytest.raises(ValueError):
        isoboot.medium_args(Path("/x.iso"), "floppy")


def test_disk_format_from_the_magic(tmp_path):
    (tmp_path / "a").write_bytes(b"QFI\xfb" + bytes(60))
    (tmp_path / "b").write_bytes(bytes(64))
    assert qemu.disk_format(tmp_path / "a") == "qcow2" and qemu.disk_format(tmp_path / "b") == "raw"
    assert f"serial={isoboot.DATA_SERIAL}" in " ".join(isoboot.data_disk_args(tmp_path / "a"))
